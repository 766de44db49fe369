"""Layers around the GRUs against the real frameworks: ONNX export run by onnxruntime, ONNX
import of the nodes torch emits, Keras 3 models saved to files and converted, torch modules
captured through ONNX, and streaming equivalence with the whole-sequence run."""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest

from conftest import ATOL
from gru_engine.errors import InputShapeError, ModelDefinitionError, ModelFileError, StreamingError, UnsupportedError
from gru_engine.layers import (
    AveragePooling1D,
    BatchNormalization,
    Conv1D,
    Flatten,
    GlobalAveragePooling1D,
    GlobalMaxPooling1D,
    LayerNormalization,
    MaxPooling1D,
    Reshape,
    UnitNormalization,
    ZeroPadding1D,
)
from gru_engine.model import GRU, Activation, Dense, Model
from gru_engine.stream_layers import LayerStream

F32 = np.float32
TOL = ATOL[F32]


def r32(rng, *shape, scale=0.5):
    return (rng.standard_normal(shape) * scale).astype(F32)


def ort_session_of(proto):
    ort = pytest.importorskip("onnxruntime")
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])


# =========================================================================== ONNX export helpers


def export_layers_only(model: Model, opset: int = 17):
    """A graph of ``export_layer`` nodes for a model without GRUs (unit test of the helpers)."""
    from onnx import TensorProto, checker, helper

    from converters.onnx_io import _Builder
    from converters.onnx_layers import export_layer

    b = _Builder(np.float32, opset)
    b.fresh("x")
    cur = "x"
    for i in range(len(model.layers)):
        done = export_layer(b, model, i, f"l{i}", cur)
        if done is None:  # Dense / Activation: onnx_io's own helper
            from converters.onnx_io import _dense_activation_nodes

            layer = model.layers[i]
            if isinstance(layer, Dense):
                cur = b.op("Add", [b.op("MatMul", [cur, b.const(layer.kernel)]), b.const(layer.bias)])
            cur = _dense_activation_nodes(b, cur, layer.activation, layer.alpha, f"l{i}")
        else:
            cur = done[0]
    b.nodes.append(helper.make_node("Identity", [cur], ["y"]))
    out_shape = ["B", "T2", model.output_size] if model.output_is_sequence else ["B", model.output_size]
    g = helper.make_graph(b.nodes, "layers", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", model.input_size])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], b.inits)
    p = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    p.ir_version = 10
    checker.check_model(p)
    return p


def _export_cases(rng):
    f = lambda *s: r32(rng, *s)  # noqa: E731
    return [
        [Conv1D(kernel=f(5, 3, 3), bias=f(5), padding="causal", dilation=2, activation="gelu")],
        [Conv1D(kernel=f(6, 1, 3), bias=f(6), padding="same", stride=2, groups=3)],
        [Conv1D(kernel=f(6, 3, 4), padding="same", dilation=2, activation="swish")],
        [Conv1D(kernel=f(4, 3, 4), padding="same", stride=3, activation="softmax")],
        [Conv1D(kernel=f(4, 3, 2), padding="explicit", pads=(2, 1), stride=2, activation="leaky_relu", alpha=0.1)],
        [Conv1D(kernel=f(4, 3, 3), padding="valid", activation="hard_sigmoid")],
        [BatchNormalization(gamma=f(3), beta=f(3), mean=f(3), var=np.abs(f(3)) + 0.1)],
        [LayerNormalization(gamma=f(3), beta=f(3), epsilon=1e-5), UnitNormalization()],
        [AveragePooling1D(pool_size=3, stride=2, padding="same")],
        [MaxPooling1D(pool_size=4, stride=3, padding="same")],
        [AveragePooling1D(pool_size=3, stride=2, padding="explicit", pads=(1, 1), count_include_pad=True)],
        [AveragePooling1D(pool_size=3, stride=2, padding="explicit", pads=(1, 2))],
        [ZeroPadding1D((2, 1)), GlobalAveragePooling1D(), BatchNormalization(mean=f(3), var=np.ones(3, F32)), Flatten()],
        [GlobalMaxPooling1D(keepdims=True), Reshape(target_shape=(-1, 3))],
    ]


def test_export_helpers_match_onnxruntime(rng):
    for layers in _export_cases(rng):
        m = Model(tuple(layers), input_size=3)
        sess = ort_session_of(export_layers_only(m))
        for T in (7, 10):
            x = r32(rng, 2, T, 3, scale=1.0)
            y = m.run(x)[0]
            got = sess.run(None, {"x": x})[0]
            assert got.shape == y.shape, m.summary()
            np.testing.assert_allclose(got, y, atol=TOL, rtol=0, err_msg=m.summary())


def test_export_layernorm_before_opset17(rng):
    m = Model((LayerNormalization(gamma=r32(rng, 4), beta=r32(rng, 4)),), input_size=4)
    proto = export_layers_only(m, opset=15)
    assert "LayerNormalization" not in {n.op_type for n in proto.graph.node}
    x = r32(rng, 2, 5, 4, scale=2.0)
    np.testing.assert_allclose(ort_session_of(proto).run(None, {"x": x})[0], m.run(x)[0], atol=TOL, rtol=0)


def test_export_refuses_same_stride_dilation(rng):
    m = Model((Conv1D(kernel=r32(rng, 4, 3, 3), padding="same", stride=2, dilation=2),))
    with pytest.raises(UnsupportedError, match="no ONNX export"):
        export_layers_only(m)


# =========================================================================== ONNX import helpers


def _single_node_graph(op, x_shape, attrs, consts, n_inputs_named=()):
    """One node on a [B, C, T] (or other) float input, with constant inputs, run by onnxruntime."""
    from onnx import TensorProto, helper, numpy_helper

    inits, names = [], ["x"]
    for i, c in enumerate(consts):
        if c is None:
            names.append("")
            continue
        nm = f"c{i}"
        inits.append(numpy_helper.from_array(np.asarray(c), nm))
        names.append(nm)
    node = helper.make_node(op, names, ["y"], name=f"{op}_0", **attrs)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    p = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    p.ir_version = 10
    return p


def _to_layout(x_btf, layout):
    return np.ascontiguousarray(np.transpose(x_btf, ["btf".index(a) for a in layout]))


IMPORT_CASES = [
    # op, attrs, const factory, layout
    ("Conv", dict(kernel_shape=[3], pads=[2, 0], dilations=[1], strides=[1], group=1), lambda r: [r32(r, 5, 4, 3), r32(r, 5)], "bft"),
    ("Conv", dict(kernel_shape=[2], pads=[1, 1], dilations=[2], strides=[2], group=2), lambda r: [r32(r, 6, 2, 2), None], "bft"),
    ("Conv", dict(kernel_shape=[3], auto_pad="SAME_UPPER", strides=[2]), lambda r: [r32(r, 3, 4, 3), r32(r, 3)], "bft"),
    ("BatchNormalization", dict(epsilon=1e-5), lambda r: [r32(r, 4), r32(r, 4), r32(r, 4), np.abs(r32(r, 4)) + 0.5], "bft"),
    ("LayerNormalization", dict(axis=-1, epsilon=1e-5), lambda r: [r32(r, 4), r32(r, 4)], "btf"),
    ("AveragePool", dict(kernel_shape=[3], strides=[2], pads=[1, 1]), lambda r: [], "bft"),
    ("AveragePool", dict(kernel_shape=[3], strides=[2], pads=[1, 1], count_include_pad=1), lambda r: [], "bft"),
    ("MaxPool", dict(kernel_shape=[2], strides=[2]), lambda r: [], "bft"),
    ("GlobalAveragePool", {}, lambda r: [], "bft"),
    ("ReduceMean", dict(keepdims=0), lambda r: [np.array([1], np.int64)], "btf"),
    ("ReduceMax", dict(keepdims=1), lambda r: [np.array([1], np.int64)], "btf"),
    ("LpNormalization", dict(axis=-1, p=2), lambda r: [], "btf"),
    ("Pad", dict(mode="constant"), lambda r: [np.array([0, 0, 2, 0, 0, 1], np.int64)], "bft"),
]


@pytest.mark.parametrize("op,attrs,make,layout", IMPORT_CASES, ids=[f"{c[0]}{i}" for i, c in enumerate(IMPORT_CASES)])
def test_import_node_matches_onnxruntime(rng, op, attrs, make, layout):
    from converters.onnx_layers import import_node

    consts = make(rng)
    x = r32(rng, 2, 9, 4, scale=1.0)
    xl = _to_layout(x, layout)
    sess = ort_session_of(_single_node_graph(op, xl.shape, attrs, consts))
    ref = sess.run(None, {"x": xl})[0]
    layers, out_layout = import_node(op, attrs, consts, layout, 4, name=f"{op}_0")
    y = Model(tuple(layers), input_size=4).run(x)[0]
    if len(out_layout) == 3:
        ref = np.transpose(ref, [out_layout.index(a) for a in "btf"])
    np.testing.assert_allclose(y, ref, atol=TOL, rtol=0)


def test_import_node_refusals():
    from converters.onnx_layers import import_node

    W = np.zeros((4, 4, 3), F32)
    assert import_node("Gemm", {}, [], "btf", 4) is None
    with pytest.raises(UnsupportedError, match="layout 'btf'"):
        import_node("Conv", {}, [W], "btf", 4, name="c")
    with pytest.raises(UnsupportedError, match="auto_pad"):
        import_node("Conv", {"auto_pad": "SAME_LOWER"}, [W], "bft", 4, name="c")
    with pytest.raises(UnsupportedError, match="ceil_mode"):
        import_node("MaxPool", {"kernel_shape": [2], "ceil_mode": 1}, [], "bft", 4, name="p")
    with pytest.raises(UnsupportedError, match="constant zero padding"):
        import_node("Pad", {"mode": "reflect"}, [np.array([0, 0, 1, 0, 0, 1])], "bft", 4, name="p")
    with pytest.raises(UnsupportedError, match="must take 4 input channels"):
        import_node("Conv", {}, [np.zeros((4, 3, 3), F32)], "bft", 4, name="c")


# =========================================================================== streaming


def _stream_all(model, x, sizes):
    s = LayerStream(model, batch_size=x.shape[0])
    outs, t = [], 0
    for n in sizes:
        outs.append(s.run(x[:, t : t + n]))
        t += n
    return np.concatenate(outs, axis=1), s


def _streamable_models(rng):
    f = lambda *s: r32(rng, *s)  # noqa: E731
    gru = lambda i, h, **kw: GRU(W=f(1, 3 * h, i), R=f(1, 3 * h, h), B=f(1, 6 * h), linear_before_reset=1, **kw)  # noqa: E731
    return [
        [Conv1D(kernel=f(5, 3, 3), bias=f(5), padding="causal", dilation=2, activation="relu")],
        [Conv1D(kernel=f(5, 3, 3), bias=f(5), padding="valid", stride=2)],
        [Conv1D(kernel=f(4, 3, 2), padding="explicit", pads=(5, 0), stride=3)],
        [ZeroPadding1D((2, 0)), MaxPooling1D(pool_size=3, stride=2)],
        [MaxPooling1D(pool_size=3), ZeroPadding1D((2, 0)), Conv1D(kernel=f(4, 3, 2))],
        [Conv1D(kernel=f(6, 3, 3), padding="causal"), BatchNormalization(mean=f(6), var=np.ones(6, F32)),
         ZeroPadding1D((1, 0)), AveragePooling1D(pool_size=2), gru(6, 4), Dense(kernel=f(4, 3)), UnitNormalization()],
        [Conv1D(kernel=f(6, 3, 3), padding="causal", activation="tanh"), gru(6, 4), gru(4, 5, return_sequences=False),
         Dense(kernel=f(5, 3)), LayerNormalization(features=3)],
    ]


@pytest.mark.parametrize("k", range(7))
def test_streaming_equals_whole_sequence(rng, k):
    """Steps, random chunks and the whole-sequence run give the same outputs."""
    model = Model(tuple(_streamable_models(rng)[k]), input_size=3)
    T = 14
    x = r32(rng, 2, T, 3, scale=1.0)
    y = model.run(x)[0]
    steps, s = _stream_all(model, x, [1] * T)
    for trial in range(3):
        cuts = np.sort(rng.choice(np.arange(1, T), size=rng.integers(1, 6), replace=False))
        sizes = np.diff(np.concatenate([[0], cuts, [T]])).tolist()
        chunks, _ = _stream_all(model, x, sizes)
        np.testing.assert_allclose(chunks, steps, atol=TOL, rtol=0)
    if model.output_is_sequence:
        assert steps.shape == y.shape
        np.testing.assert_allclose(steps, y, atol=TOL, rtol=0)
    else:  # last-step model: each step outputs the result for the sequence so far
        np.testing.assert_allclose(steps[:, -1], y, atol=TOL, rtol=0)
        np.testing.assert_allclose(steps[:, 4], model.run(x[:, :5])[0], atol=TOL, rtol=0)


def test_streaming_with_keras_mask_and_state(rng):
    """Masking -> BN -> GRU: the mask reaches the GRU through the BN in chunks as in one run."""
    from gru_engine.model import Masking

    gru = GRU(W=r32(rng, 1, 12, 3), R=r32(rng, 1, 12, 4), masked_output="carry")
    bn = BatchNormalization(mean=r32(rng, 3), var=np.ones(3, F32))
    model = Model((Masking(mask_value=0.0), bn, gru, Dense(kernel=r32(rng, 4, 2))), input_size=3)
    x = r32(rng, 2, 9, 3, scale=1.0)
    x[0, 3] = 0.0
    x[1, 6:] = 0.0
    y = model.run(x)[0]
    for sizes in ([1] * 9, [4, 5], [2, 3, 4]):
        got, s = _stream_all(model, x, sizes)
        np.testing.assert_allclose(got, y, atol=TOL, rtol=0)
    np.testing.assert_allclose(s.state[0], model.run(x)[1], atol=TOL, rtol=0)
    # a model whose GRUs run in the fused Stream segment reports the same states
    conv_model = Model(tuple(_streamable_models(rng)[6]), input_size=3)
    got, s = _stream_all(conv_model, x, [3, 6])
    h_n = conv_model.run(x)[1]
    assert len(s.state) == 2 and isinstance(h_n, list)  # hidden sizes 4 and 5
    for a, b in zip(s.state, h_n):
        np.testing.assert_allclose(a, b, atol=TOL, rtol=0)
    s.reset()
    np.testing.assert_allclose(s.run(x), got, atol=0, rtol=0)


def test_model_stream_uses_layer_stream(rng):
    model = Model(tuple(_streamable_models(rng)[5]), input_size=3)
    s = model.stream(batch_size=2)
    assert isinstance(s, LayerStream)
    x = r32(rng, 2, 6, 3)
    y = model.run(x)[0]
    np.testing.assert_allclose(s.run(x[:, :3]), y[:, :2], atol=TOL, rtol=0)
    c = s.copy()
    np.testing.assert_allclose(s.run(x[:, 3:]), y[:, 2:], atol=TOL, rtol=0)
    np.testing.assert_allclose(c.run(x[:, 3:]), y[:, 2:], atol=TOL, rtol=0)
    out = np.empty((2, 3), F32)
    s.reset()
    assert s.step(x[:, 0], out=out) is out  # ZeroPadding's zero + x0 complete a pooling window
    np.testing.assert_allclose(out, y[:, 0], atol=TOL, rtol=0)
    assert s.step(x[:, 1], out=out) is None
    assert s.step(x[:, 2], out=out) is out
    np.testing.assert_allclose(out, y[:, 1], atol=TOL, rtol=0)
    with pytest.raises(InputShapeError, match="x_t must have shape"):
        s.step(x[:, :2])


def test_step_reports_no_output_with_none(rng):
    model = Model((MaxPooling1D(pool_size=3, stride=2),), input_size=2)
    s = LayerStream(model)
    x = r32(rng, 1, 7, 2)
    got = [s.step(x[:, t]) for t in range(7)]
    assert [g is not None for g in got] == [False, False, True, False, True, False, True]
    np.testing.assert_allclose(np.stack([g for g in got if g is not None], 1), model.run(x)[0], atol=0)
    s.reset()
    assert s.step(x[:, 0]) is None
    # a left ZeroPadding1D emits its zeros with the first step
    s2 = LayerStream(Model((ZeroPadding1D((2, 0)),), input_size=2))
    first = s2.step(x[:, 0])
    assert first.shape == (1, 3, 2) and np.all(first[:, :2] == 0)
    assert s2.step(x[:, 1]).shape == (1, 2)


def test_streaming_refuses_lookahead_layers(rng):
    W = r32(rng, 4, 3, 3)
    gru = GRU(W=r32(rng, 2, 12, 4), R=r32(rng, 2, 12, 4), direction="bidirectional")
    for layers, what in [
        ((Conv1D(kernel=W, padding="same"),), "Conv1D.*'same' padding"),
        ((Conv1D(kernel=W, padding="explicit", pads=(1, 1)),), "pads on the right"),
        ((MaxPooling1D(padding="same"),), "MaxPooling1D.*'same'"),
        ((AveragePooling1D(padding="explicit", pads=(1, 0)),), "AveragePooling1D"),
        ((ZeroPadding1D((1, 1)),), "ZeroPadding1D.*after the end"),
        ((Conv1D(kernel=W), GlobalAveragePooling1D()), "layer 1 \\(GlobalAveragePooling1D"),
        ((Conv1D(kernel=W, padding="causal"), gru), "bidirectional GRU"),
    ]:
        with pytest.raises(StreamingError, match=what):
            LayerStream(Model(layers, input_size=3))
    s = LayerStream(Model((Conv1D(kernel=W, padding="causal"),)))
    with pytest.raises(InputShapeError, match="x_chunk must have shape"):
        s.run(np.zeros((1, 2, 5), F32))

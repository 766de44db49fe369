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


def test_onnx_graph_conv_batchnorm_gru_folds_and_matches_onnxruntime(rng):
    """A hand-written ONNX graph x -> Transpose -> Conv -> BatchNormalization -> Relu ->
    Transpose -> GRU (layout 1): read by gru_engine.load, BN folded into the conv."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    import gru_engine

    H = 5
    inits = {"W": r32(rng, 6, 4, 3), "Bc": r32(rng, 6), "s": r32(rng, 6), "b": r32(rng, 6), "m": r32(rng, 6),
             "v": np.abs(r32(rng, 6)) + 0.5, "Wg": r32(rng, 1, 3 * H, 6), "Rg": r32(rng, 1, 3 * H, H),
             "Bg": r32(rng, 1, 6 * H)}
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]),
        helper.make_node("Conv", ["xt", "W", "Bc"], ["c"], kernel_shape=[3], pads=[2, 0]),
        helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["bn"], epsilon=1e-5),
        helper.make_node("Relu", ["bn"], ["r"]),
        helper.make_node("Transpose", ["r"], ["rt"], perm=[2, 0, 1]),
        helper.make_node("GRU", ["rt", "Wg", "Rg", "Bg"], ["Y", "Y_h"], hidden_size=H, linear_before_reset=1),
        helper.make_node("Squeeze", ["Y", "ax"], ["ys"]),
        helper.make_node("Transpose", ["ys"], ["y"], perm=[1, 0, 2]),
    ]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "T", H])],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()]
                          + [numpy_helper.from_array(np.array([1], np.int64), "ax")])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 10
    onnx.checker.check_model(proto)
    em = gru_engine.load(proto)
    assert [type(la).__name__ for la in em.layers] == ["Conv1D", "Activation", "GRU"]
    x = r32(rng, 2, 9, 4, scale=1.0)
    ref = ort_session_of(proto).run(None, {"x": x})[0]
    np.testing.assert_allclose(em.run(x)[0], ref, atol=TOL, rtol=0)


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


def _stream_steps(model, x, out=False):
    """Outputs of ``LayerStream.step`` over every step of x, concatenated ``(B, m, out)``."""
    s = LayerStream(model, batch_size=x.shape[0])
    buf = np.empty((x.shape[0], model.output_size), F32) if out else None
    outs = []
    for t in range(x.shape[1]):
        y = s.step(x[:, t], out=buf)
        if y is not None:
            outs.append(y.copy() if y.ndim == 3 else y[:, None].copy())
    if not outs:
        return np.zeros((x.shape[0], 0, model.output_size), F32)
    return np.concatenate(outs, axis=1)


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
    np.testing.assert_allclose(_stream_steps(model, x), steps, atol=TOL, rtol=0)
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


def _random_streamable_model(r: np.random.Generator) -> Model:
    f = lambda *s: (r.standard_normal(s) * 0.5).astype(F32)  # noqa: E731
    layers, size = [], 3
    for _ in range(int(r.integers(1, 5))):
        kind = r.choice(["causal", "valid", "leftpad", "maxpool", "avgpool", "zeropad", "bn", "ln", "unit", "act"])
        if kind in ("causal", "valid", "leftpad"):
            groups = int(r.choice([g for g in (1, 2, 3) if size % g == 0]))
            out = groups * int(r.integers(1, 4))
            K, d, stride = int(r.integers(1, 4)), int(r.integers(1, 3)), int(r.integers(1, 3))
            pad = dict(padding="explicit", pads=(int(r.integers(0, 5)), 0)) if kind == "leftpad" else dict(padding=kind)
            layers.append(Conv1D(kernel=f(out, size // groups, K), bias=f(out), stride=stride, dilation=d, groups=groups,
                                 activation=str(r.choice(["linear", "relu", "tanh"])), **pad))
            size = out
        elif kind in ("maxpool", "avgpool"):
            cls = MaxPooling1D if kind == "maxpool" else AveragePooling1D
            layers.append(cls(pool_size=int(r.integers(1, 4)), stride=int(r.integers(1, 4))))
        elif kind == "zeropad":
            layers.append(ZeroPadding1D((int(r.integers(0, 3)), 0)))
        elif kind == "bn":
            layers.append(BatchNormalization(gamma=f(size), beta=f(size), mean=f(size), var=np.abs(f(size)) + 0.5))
        elif kind == "ln":
            layers.append(LayerNormalization(gamma=f(size), beta=f(size)))
        elif kind == "unit":
            layers.append(UnitNormalization())
        else:
            layers.append(Activation(str(r.choice(["elu", "swish", "softmax"]))))
    if r.random() < 0.7:
        H = int(r.integers(1, 6))
        layers.append(GRU(W=f(1, 3 * H, size), R=f(1, 3 * H, H), B=f(1, 6 * H), linear_before_reset=int(r.integers(0, 2)),
                          return_sequences=bool(r.random() < 0.6)))
        size = H
        if r.random() < 0.5:
            layers.append(Dense(kernel=f(size, 2), activation="tanh"))
            size = 2
        if r.random() < 0.3:
            layers.append(BatchNormalization(mean=f(size), var=np.ones(size, F32)))
    return Model(tuple(layers), input_size=3)


def test_streaming_property_random_models():
    """Property: for random streamable models, steps and random chunkings equal model.run."""
    hyp = pytest.importorskip("hypothesis")
    st = hyp.strategies

    @hyp.settings(max_examples=40, deadline=None, derandomize=True)
    @hyp.given(seed=st.integers(0, 2**31 - 1), T=st.integers(1, 24))
    def check(seed, T):
        r = np.random.default_rng(seed)
        model = _random_streamable_model(r)
        x = (r.standard_normal((2, T, 3))).astype(F32)
        try:
            y = model.run(x)[0]
        except InputShapeError:  # too short for a layer: nothing to compare
            hyp.assume(False)
        cuts = np.sort(r.choice(np.arange(1, T), size=min(T - 1, int(r.integers(0, 5))), replace=False)) if T > 1 else []
        sizes = np.diff(np.concatenate([[0], cuts, [T]])).astype(int).tolist()
        steps, _ = _stream_all(model, x, [1] * T)
        chunks, _ = _stream_all(model, x, sizes)
        np.testing.assert_allclose(chunks, steps, atol=TOL, rtol=0, err_msg=model.summary())
        np.testing.assert_allclose(_stream_steps(model, x, out=bool(seed % 2)), steps, atol=TOL, rtol=0,
                                   err_msg=model.summary())
        if model.output_is_sequence:
            assert steps.shape == y.shape, model.summary()
            np.testing.assert_allclose(steps, y, atol=TOL, rtol=0, err_msg=model.summary())
        else:
            np.testing.assert_allclose(steps[:, -1], y, atol=TOL, rtol=0, err_msg=model.summary())

    check()


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


def test_model_stream_names_the_lookahead_layer(rng):
    """model.stream() routes conv models to LayerStream, which names what looks ahead."""
    m = Model((Conv1D(kernel=r32(rng, 2, 3, 3), padding="same"),))
    with pytest.raises(StreamingError, match="'same' padding looks ahead"):
        m.stream()


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
# =========================================================================== Keras


@pytest.fixture(scope="module")
def K():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    pytest.importorskip("h5py")
    return keras


def _bn_stats(model, rng):
    """Non-trivial moving statistics (fresh BN layers are the identity)."""
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            n = len(layer.get_weights())
            F = layer.get_weights()[0].shape[0]
            w = [rng.standard_normal(F).astype(F32) * 0.5 for _ in range(n - 1)] + [rng.uniform(0.5, 2.0, F).astype(F32)]
            layer.set_weights(w)


def _custom_loss(y_true, y_pred):  # a compile_config entry Keras cannot reload without custom_objects
    import keras

    return keras.ops.mean((y_true - y_pred) ** 4)


def _save_both(m, tmp_path, name):
    pk = os.path.join(tmp_path, f"{name}.keras")
    ph = os.path.join(tmp_path, f"{name}.h5")
    m.save(pk)
    m.save(ph)
    return pk, ph


def _brief_model(K, rng, padding=(2, 0), pool="max"):
    L = K.layers
    Pool = L.MaxPooling1D if pool == "max" else L.AveragePooling1D
    m = K.Sequential([
        K.Input((None, 4)),
        L.Conv1D(8, 3, padding="causal", dilation_rate=2, activation="relu"),
        L.BatchNormalization(),
        L.ZeroPadding1D(padding),
        Pool(2),
        L.GRU(6, return_sequences=True),
        L.Dense(5),
        L.UnitNormalization(),
    ])
    _bn_stats(m, rng)
    return m


@pytest.mark.parametrize("pool", ["max", "avg"])
def test_keras_conv_bn_pad_pool_gru_dense_unitnorm(K, rng, tmp_path, pool):
    """The issue's Keras shape, saved with a custom loss, converted from .keras and .h5."""
    from converters.keras_io import from_keras

    m = _brief_model(K, rng, pool=pool)
    m.compile(optimizer="adam", loss=_custom_loss)
    pk, ph = _save_both(m, tmp_path, f"brief_{pool}")
    x = r32(rng, 3, 11, 4, scale=1.0)
    ref = np.asarray(m.predict(x, verbose=0))
    for p in (pk, ph):
        em = from_keras(p)
        assert [type(la).__name__ for la in em.layers] == [
            "Conv1D", "BatchNormalization", "ZeroPadding1D", "MaxPooling1D" if pool == "max" else "AveragePooling1D",
            "GRU", "Dense", "UnitNormalization"]
        y = em.run(x)[0]
        assert y.shape == ref.shape
        np.testing.assert_allclose(y, ref, atol=TOL, rtol=0, err_msg=p)
    # the engine's ONNX file, run by onnxruntime, matches Keras too
    import gru_engine

    out = os.path.join(tmp_path, f"brief_{pool}.onnx")
    gru_engine.save(em, out)
    got = ort_session_of(__import__("onnx").load(out)).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, ref, atol=TOL, rtol=0)
    # streaming: this model is causal (left padding only), so steps equal the whole run
    steps, _ = _stream_all(em, x, [1] * x.shape[1])
    np.testing.assert_allclose(steps, ref, atol=TOL, rtol=0)
    np.testing.assert_allclose(_stream_steps(em, x, out=True), ref, atol=TOL, rtol=0)


def test_keras_symmetric_padding_runs_but_does_not_stream(K, rng, tmp_path):
    from converters.keras_io import from_keras

    m = _brief_model(K, rng, padding=1)
    pk, _ = _save_both(m, tmp_path, "brief_sym")
    x = r32(rng, 2, 9, 4, scale=1.0)
    em = from_keras(pk)
    np.testing.assert_allclose(em.run(x)[0], np.asarray(m.predict(x, verbose=0)), atol=TOL, rtol=0)
    with pytest.raises(StreamingError, match="ZeroPadding1D"):
        LayerStream(em)


def _keras_variety(K):
    L = K.layers
    return {
        "conv_same_stride": [L.Conv1D(6, 4, strides=2, padding="same", activation="tanh"), L.GRU(4)],
        "conv_valid_groups": [L.Conv1D(6, 3, groups=2, use_bias=False, activation="swish"),
                              L.LayerNormalization(epsilon=1e-5), L.GRU(4, return_sequences=True),
                              L.GlobalAveragePooling1D()],
        "conv_same_dilated": [L.Conv1D(4, 3, padding="same", dilation_rate=3, activation="gelu"),
                              L.BatchNormalization(center=False), L.LeakyReLU(), L.GlobalMaxPooling1D()],
        "pool_same_sym": [L.AveragePooling1D(3, strides=1, padding="same"), L.MaxPooling1D(3, 2, padding="same"),
                          L.GRU(4, return_sequences=True), L.ELU(alpha=0.7), L.Softmax()],
        "flatten_reshape": [L.Conv1D(4, 2, activation="elu"), L.GRU(5), L.Flatten(), L.Reshape((5,)),
                            L.BatchNormalization(scale=False), L.ReLU(), L.Dense(3, activation="selu"),
                            L.LayerNormalization(center=False), L.LayerNormalization(center=False, scale=False)],
        "depthwise_separable": [L.DepthwiseConv1D(3, depth_multiplier=2, padding="same", activation="relu"),
                                L.SeparableConv1D(5, 3, strides=2, padding="same", activation="tanh"),
                                L.SeparableConv1D(4, 2, dilation_rate=2, use_bias=False), L.GRU(3)],
        "conv_bn_folded": [L.Conv1D(6, 3, padding="causal"), L.BatchNormalization(), L.Activation("relu"),
                           L.GRU(4, return_sequences=True), L.Dense(3), L.BatchNormalization(epsilon=1e-5)],
        "activations": [L.Conv1D(5, 1, activation="hard_sigmoid"), L.Activation("softplus"), L.Activation("softsign"),
                        L.Activation("leaky_relu"), L.ReLU(negative_slope=0.1), L.Reshape((-1, 5)),
                        L.GRU(3, return_sequences=True), L.Activation("selu")],
    }


@pytest.mark.parametrize("case", ["conv_same_stride", "conv_valid_groups", "conv_same_dilated", "pool_same_sym",
                                  "flatten_reshape", "depthwise_separable", "conv_bn_folded", "activations"])
def test_keras_layer_options(K, rng, tmp_path, case):
    from converters.keras_io import from_keras

    layers = _keras_variety(K)[case]
    m = K.Sequential([K.Input((None, 4)), *layers])
    _bn_stats(m, rng)
    for w in m.weights:
        if "bias" in w.path or "depthwise" in w.path or "pointwise" in w.path:
            w.assign(rng.standard_normal(tuple(w.shape)).astype(F32) * 0.4)
    pk = os.path.join(tmp_path, f"{case}.keras")
    m.save(pk)
    x = r32(rng, 2, 12, 4, scale=1.0)
    ref = np.asarray(m.predict(x, verbose=0))
    for p in (pk,):
        em = from_keras(p)
        if case == "conv_bn_folded":  # both BNs folded into the linear layer before them
            assert [type(la).__name__ for la in em.layers] == ["Conv1D", "Activation", "GRU", "Dense"]
        y = em.run(x)[0]
        assert y.shape == ref.shape
        np.testing.assert_allclose(y, ref, atol=TOL, rtol=0, err_msg=f"{case} {p}")


def test_keras_masked_global_average(K, rng, tmp_path):
    """Embedding(mask_zero) -> GRU -> GlobalAveragePooling1D averages the unmasked steps (Keras)."""
    from converters.keras_io import from_keras

    L = K.layers
    m = K.Sequential([K.Input((None,), dtype="int32"), L.Embedding(9, 4, mask_zero=True),
                      L.GRU(5, return_sequences=True), L.GlobalAveragePooling1D(), L.Dense(2)])
    pk, _ = _save_both(m, tmp_path, "masked_gap")
    ids = np.array([[3, 1, 4, 1, 5, 0, 0], [2, 7, 0, 0, 0, 0, 0]], np.int64)
    np.testing.assert_allclose(from_keras(pk).run(ids)[0], np.asarray(m.predict(ids, verbose=0)), atol=TOL, rtol=0)


def test_keras_activation_formulas(K, rng):
    """keras.activations (Keras 3 defaults) == the engine's Activation kernels."""
    x = np.linspace(-6, 6, 49).astype(F32)[None, None, :]
    for name in ("linear", "relu", "tanh", "sigmoid", "hard_sigmoid", "softmax", "elu", "selu", "gelu", "swish",
                 "silu", "softplus", "softsign", "leaky_relu"):
        ref = np.asarray(K.ops.convert_to_numpy(K.activations.get(name)(K.ops.convert_to_tensor(x))))
        alpha = {"leaky_relu": 0.2, "elu": 1.0}.get(name, 0.0)
        y = Model((Activation(name, alpha=alpha),), input_size=49).run(x)[0]
        np.testing.assert_allclose(y, ref, atol=TOL, rtol=1e-6, err_msg=name)


def _edit_keras_config(src, dst, edit):
    with zipfile.ZipFile(src) as z:
        files = {n: z.read(n) for n in z.namelist()}
    cfg = json.loads(files["config.json"])
    edit(cfg["config"]["layers"])
    files["config.json"] = json.dumps(cfg).encode()
    with zipfile.ZipFile(dst, "w") as z:
        for n, data in files.items():
            z.writestr(n, data)


def test_keras_bad_configurations(K, rng, tmp_path):
    from converters.keras_io import from_keras

    L = K.layers
    m = K.Sequential([K.Input((None, 4)), L.Conv1D(6, 3, padding="causal"), L.MaxPooling1D(2), L.GRU(3)])
    pk = os.path.join(tmp_path, "ok.keras")
    m.save(pk)

    def conv(layers):
        return next(la for la in layers if la["class_name"] == "Conv1D")["config"]

    bad = os.path.join(tmp_path, "bad.keras")
    _edit_keras_config(pk, bad, lambda ls: conv(ls).update(padding="reflect"))
    with pytest.raises(UnsupportedError, match="padding='reflect'"):
        from_keras(bad)
    _edit_keras_config(pk, bad, lambda ls: conv(ls).update(data_format="channels_first"))
    with pytest.raises(UnsupportedError, match="channels_first"):
        from_keras(bad)
    _edit_keras_config(pk, bad, lambda ls: conv(ls).update(filters=7))
    with pytest.raises(ModelFileError, match="kernel"):
        from_keras(bad)
    _edit_keras_config(pk, bad, lambda ls: next(la for la in ls if la["class_name"] == "MaxPooling1D")["config"].update(
        padding="full"))
    with pytest.raises(UnsupportedError, match="padding='full'"):
        from_keras(bad)
    m2 = K.Sequential([K.Input((None, 4)), L.Conv1D(6, 3), L.LayerNormalization(rms_scaling=True)])
    p2 = os.path.join(tmp_path, "rms.keras")
    m2.save(p2)
    with pytest.raises(UnsupportedError, match="rms_scaling"):
        from_keras(p2)
    m3 = K.Sequential([K.Input((None, 4)), L.Conv1D(6, 3), L.Flatten()])
    p3 = os.path.join(tmp_path, "flat.keras")
    m3.save(p3)
    with pytest.raises(UnsupportedError, match="Flatten of a sequence"):
        from_keras(p3)


def test_keras_mask_into_conv_is_refused(K, tmp_path):
    from converters.keras_io import from_keras

    L = K.layers
    m = K.Sequential([K.Input((None, 4)), L.Masking(), L.LayerNormalization(), L.Conv1D(3, 2), L.GRU(2)])
    p = os.path.join(tmp_path, "masked_conv.keras")
    m.save(p)
    with pytest.raises(UnsupportedError, match="mask.*Conv1D|Conv1D.*mask"):
        from_keras(p)


def test_keras_bad_shape_chain_model_definition_error(rng):
    with pytest.raises(ModelDefinitionError, match="expects 4 input features"):
        Model((Conv1D(kernel=r32(rng, 3, 4, 2)),), input_size=5)


# =========================================================================== torch (module capture through ONNX)


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def _torch_modules(torch):
    nn = torch.nn

    class ConvGRU(nn.Module):
        """The issue's torch shape: Conv1d -> ReLU -> GRU (2 layers) -> Linear."""

        def __init__(self, causal=False):
            super().__init__()
            self.causal = causal
            self.conv = nn.Conv1d(4, 8, 3, padding=0 if causal else 1)
            self.gru = nn.GRU(8, 6, num_layers=2, batch_first=True)
            self.lin = nn.Linear(6, 3)

        def forward(self, x):
            h = x.transpose(1, 2)
            if self.causal:
                h = nn.functional.pad(h, (2, 0))
            h = torch.relu(self.conv(h))
            y, _ = self.gru(h.transpose(1, 2))
            return self.lin(y)

    class NormPool(nn.Module):
        """BatchNorm1d, strided dilated grouped conv, pooling, LayerNorm, activations."""

        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm1d(4)
            self.conv = nn.Conv1d(4, 8, 3, stride=2, dilation=2, groups=2, padding=2)
            self.avg = nn.AvgPool1d(3, stride=1, padding=1)
            self.mx = nn.MaxPool1d(2)
            self.gru = nn.GRU(8, 5, batch_first=True)
            self.ln = nn.LayerNorm(5)
            self.lin = nn.Linear(5, 2)

        def forward(self, x):
            h = self.bn(x.transpose(1, 2))
            h = nn.functional.gelu(self.conv(h))
            h = self.mx(self.avg(h))
            y, _ = self.gru(h.transpose(1, 2))
            return self.lin(nn.functional.silu(self.ln(y)))

    return ConvGRU, NormPool


def _randomise_bn(torch, module):
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1, 0.2)
                m.bias.normal_(0, 0.2)
    return module.eval()


@pytest.mark.parametrize("which", ["conv_gru", "conv_gru_causal", "norm_pool"])
def test_torch_module_capture(torch, rng, tmp_path, which):
    """Saved (state dict), reloaded, captured through ONNX, compared with torch and onnxruntime."""
    import gru_engine
    from converters.torch_io import from_torch

    ConvGRU, NormPool = _torch_modules(torch)
    torch.manual_seed(3)
    make = {"conv_gru": lambda: ConvGRU(), "conv_gru_causal": lambda: ConvGRU(causal=True), "norm_pool": NormPool}[which]
    src = _randomise_bn(torch, make())
    path = os.path.join(tmp_path, f"{which}.pt")
    torch.save(src.state_dict(), path)
    module = make()
    module.load_state_dict(torch.load(path, weights_only=True))
    module.eval()
    x = r32(rng, 2, 12, 4, scale=1.0)
    with torch.no_grad():
        ref = module(torch.from_numpy(x)).numpy()
    em = from_torch(module, torch.from_numpy(x))
    kinds = [type(la).__name__ for la in em.layers]
    assert "Conv1D" in kinds and kinds.count("GRU") == (2 if which != "norm_pool" else 1)
    y = em.run(x)[0]
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, atol=TOL, rtol=0)
    x2 = r32(rng, 3, 17, 4, scale=1.0)  # other batch and time sizes than the capture
    with torch.no_grad():
        np.testing.assert_allclose(em.run(x2)[0], module(torch.from_numpy(x2)).numpy(), atol=TOL, rtol=0)
    # the engine's own ONNX file, run by onnxruntime and read back
    out = os.path.join(tmp_path, f"{which}.onnx")
    gru_engine.save(em, out)
    sess = ort_session_of(__import__("onnx").load(out))
    np.testing.assert_allclose(sess.run(None, {"x": x2})[0], em.run(x2)[0], atol=TOL, rtol=0)
    back = gru_engine.load(out)
    assert [type(la).__name__ for la in back.layers] == kinds
    np.testing.assert_allclose(back.run(x2)[0], em.run(x2)[0], atol=0, rtol=0)
    if which == "conv_gru_causal":  # left padding + valid conv = causal: streams
        steps, _ = _stream_all(em, x, [1] * x.shape[1])
        np.testing.assert_allclose(steps, ref, atol=TOL, rtol=0)
    else:
        with pytest.raises(StreamingError):
            LayerStream(em)


@pytest.mark.parametrize("which", ["conv_gru", "norm_pool"])
def test_torch_onnx_file_dynamo(torch, rng, tmp_path, which):
    """Dynamo-exported ONNX files (static shapes spelled in reshapes, also after a stride and
    pooling shortened the sequence), read with gru_engine.load."""
    import gru_engine
    from converters.torch_io import export_module_onnx

    ConvGRU, NormPool = _torch_modules(torch)
    torch.manual_seed(5)
    module = _randomise_bn(torch, ConvGRU() if which == "conv_gru" else NormPool())
    x = r32(rng, 2, 12, 4, scale=1.0)
    p = os.path.join(tmp_path, "dyn.onnx")
    with open(p, "wb") as f:
        f.write(export_module_onnx(module, torch.from_numpy(x), dynamo=True))
    em = gru_engine.load(p)
    with torch.no_grad():
        np.testing.assert_allclose(em.run(x)[0], module(torch.from_numpy(x)).numpy(), atol=TOL, rtol=0)


@pytest.mark.parametrize("red", ["mean", "amax", "adaptive_avg_pool1d"])
def test_torch_time_reductions_after_gru(torch, rng, red):
    """y.mean(1) / y.amax(1) / adaptive_avg_pool1d(., 1) after a GRU -> global pooling layers."""
    from converters.torch_io import from_torch

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = torch.nn.GRU(4, 5, batch_first=True)
            self.lin = torch.nn.Linear(5, 2)

        def forward(self, x):
            y, _ = self.gru(x)
            if red == "mean":
                y = y.mean(dim=1)
            elif red == "amax":
                y = y.amax(dim=1)
            else:
                y = torch.nn.functional.adaptive_avg_pool1d(y.transpose(1, 2), 1).squeeze(-1)
            return self.lin(y)

    torch.manual_seed(2)
    module = Head().eval()
    x = r32(rng, 2, 7, 4, scale=1.0)
    em = from_torch(module, torch.from_numpy(x))
    assert any(type(la).__name__.startswith("Global") for la in em.layers)
    x2 = r32(rng, 3, 11, 4, scale=1.0)
    with torch.no_grad():
        np.testing.assert_allclose(em.run(x2)[0], module(torch.from_numpy(x2)).numpy(), atol=TOL, rtol=0)


def test_full_models_to_onnx_onnxruntime(rng, tmp_path):
    """gru_engine.save of models mixing these layers with GRUs: onnxruntime == engine, and reload."""
    import gru_engine

    for k, layers in enumerate(_streamable_models(rng) + [_export_cases(rng)[12]]):
        model = Model(tuple(layers), input_size=3)
        out = os.path.join(tmp_path, f"m{k}.onnx")
        gru_engine.save(model, out)
        x = r32(rng, 2, 13, 3, scale=1.0)
        got = ort_session_of(__import__("onnx").load(out)).run(None, {"x": x})[0]
        np.testing.assert_allclose(got, model.run(x)[0], atol=TOL, rtol=0, err_msg=model.summary())
        back = gru_engine.load(out)
        np.testing.assert_allclose(back.run(x)[0], model.run(x)[0], atol=0, rtol=0)

"""Bad ONNX files get typed errors, quickly and before any large allocation: truncated and
corrupt files, unsupported ops and attributes, absurd sizes, wrong shapes, missing tensors."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import gru_engine  # noqa: E402
from converters.onnx_io import to_onnx  # noqa: E402
from gru_engine import GRU, Dense, GRUEngineError, Model, ModelFileError, UnsupportedError  # noqa: E402


def fast(fn, *args, limit=5.0):
    t0 = time.perf_counter()
    try:
        return fn(*args)
    finally:
        assert time.perf_counter() - t0 < limit


def gru_graph(H=4, I=3, D=1, W=None, R=None, B=None, attrs=None, extra_nodes=(), drop=(), x_dims=None, name="g0"):
    rng = np.random.default_rng(0)
    W = rng.standard_normal((D, 3 * H, I)).astype(np.float32) if W is None else W
    R = rng.standard_normal((D, 3 * H, H)).astype(np.float32) if R is None else R
    inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(R, "R")]
    ins = ["X", "W", "R"]
    if B is not None:
        inits.append(numpy_helper.from_array(B, "B"))
        ins.append("B")
    inits = [t for t in inits if t.name not in drop]
    a = dict(hidden_size=H)
    a.update(attrs or {})
    node = helper.make_node("GRU", ins, ["Y", "Y_h"], name=name, **a)
    graph = helper.make_graph(
        [node, *extra_nodes], "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_dims or ["T", "N", I])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, None)],
        inits,
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    m.ir_version = 8
    return m


def small_engine_file(tmp_path):
    rng = np.random.default_rng(1)
    g = GRU(W=rng.standard_normal((1, 24, 5)), R=rng.standard_normal((1, 24, 8))).astype(np.float32)
    m = Model((g, Dense(kernel=rng.standard_normal((8, 2)).astype(np.float32))))
    path = tmp_path / "m.onnx"
    to_onnx(m, path)
    return path


# --------------------------------------------------------------------------- corrupt files


def test_missing_and_empty_file(tmp_path):
    with pytest.raises(ModelFileError, match="no such file"):
        gru_engine.load(tmp_path / "nope.onnx")
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(ModelFileError, match="empty"):
        gru_engine.load(tmp_path / "empty.onnx")


@pytest.mark.parametrize("frac", [0.02, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99])
def test_truncated_file(tmp_path, frac):
    path = small_engine_file(tmp_path)
    data = path.read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: int(len(data) * frac)])
    with pytest.raises(ModelFileError, match=str(cut)):
        fast(gru_engine.load, cut)


@pytest.mark.parametrize("seed", range(6))
def test_random_bytes(tmp_path, seed):
    p = tmp_path / "rand.onnx"
    p.write_bytes(np.random.default_rng(seed).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(GRUEngineError):
        fast(gru_engine.load, p)


def test_random_bytes_inside_a_valid_file(tmp_path):
    """Flipped bytes in the middle of a real file: either a typed error or a loadable model."""
    data = bytearray(small_engine_file(tmp_path).read_bytes())
    rng = np.random.default_rng(7)
    for _ in range(30):
        d = bytearray(data)
        for i in rng.integers(0, len(d), 8):
            d[i] = rng.integers(0, 256)
        try:
            fast(gru_engine.load, bytes(d))
        except GRUEngineError:
            pass


def test_bad_engine_metadata(tmp_path):
    m = onnx.load(str(small_engine_file(tmp_path)))
    for p in m.metadata_props:
        if p.key == "gru_engine.layers":
            p.value = "{not json"
    with pytest.raises(ModelFileError, match="JSON"):
        gru_engine.load(m)
    layers = json.loads(next(p.value for p in onnx.load(str(small_engine_file(tmp_path))).metadata_props
                              if p.key == "gru_engine.layers"))
    layers[0]["arrays"]["W"] = "does_not_exist"
    for p in m.metadata_props:
        if p.key == "gru_engine.layers":
            p.value = json.dumps(layers)
    with pytest.raises(ModelFileError, match="does_not_exist"):
        gru_engine.load(m)


def test_missing_external_data(tmp_path):
    rng = np.random.default_rng(2)
    m = gru_graph(H=64, I=64, W=rng.standard_normal((1, 192, 64)).astype(np.float32))
    path = tmp_path / "ext.onnx"
    onnx.save_model(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="ext.data",
                    size_threshold=0)
    assert gru_engine.load(path).layers[0].hidden_size == 64
    data = (tmp_path / "ext.data").read_bytes()
    (tmp_path / "ext.data").write_bytes(data[:100])
    with pytest.raises(ModelFileError, match="truncated|bytes"):
        gru_engine.load(path)
    os.remove(tmp_path / "ext.data")
    with pytest.raises(ModelFileError, match="ext.data"):
        gru_engine.load(path)
    with pytest.raises(ModelFileError, match="external"):
        gru_engine.load(path.read_bytes())


# --------------------------------------------------------------------------- unsupported


def test_unsupported_op_names_node_and_lists_supported():
    extra = [helper.make_node("LSTM", ["X", "W", "R"], ["Z"], hidden_size=4, name="lstm_7")]
    with pytest.raises(UnsupportedError, match=r"'lstm_7' \(LSTM\).*supported ops: .*GRU.*Transpose"):
        gru_engine.load(gru_graph(extra_nodes=extra))
    loop = helper.make_node("Loop", ["", ""], ["L"], name="loop_1",
                            body=helper.make_graph([], "b", [], []))
    with pytest.raises(UnsupportedError, match=r"'loop_1' \(Loop\)"):
        gru_engine.load(gru_graph(extra_nodes=[loop]))
    custom = helper.make_node("Foo", ["Y"], ["Q"], name="c", domain="com.example")
    with pytest.raises(UnsupportedError, match="domain 'com.example'"):
        gru_engine.load(gru_graph(extra_nodes=[custom]))


@pytest.mark.parametrize("attrs,err,match", [
    ({"foo": 1}, UnsupportedError, r"'g0' \(GRU\).*attribute 'foo'.*supported: activation_alpha"),
    ({"direction": "sideways"}, ModelFileError, "direction must be one of"),
    ({"layout": 2}, ModelFileError, "layout must be 0 or 1"),
    ({"clip": -1.0}, ModelFileError, "clip must be a positive"),
    ({"activations": ["Swish", "Tanh"]}, UnsupportedError, "'Swish' is not an ONNX RNN activation"),
    ({"activations": ["Sigmoid"]}, ModelFileError, "2 names per direction"),
    ({"linear_before_reset": 3}, ModelFileError, "linear_before_reset must be 0 or 1"),
])
def test_bad_gru_attributes(attrs, err, match):
    with pytest.raises(err, match=match):
        fast(gru_engine.load, gru_graph(attrs=attrs))


# --------------------------------------------------------------------------- absurd sizes


def test_absurd_hidden_size_attribute():
    with pytest.raises(ModelFileError, match="hidden_size must lie in"):
        fast(gru_engine.load, gru_graph(attrs={"hidden_size": 10**9}), limit=1.0)


def test_absurd_declared_tensor_without_data():
    m = gru_graph()
    t = m.graph.initializer[0]  # W
    del t.dims[:]
    t.dims.extend([1, 3 * 10**9, 3])
    with pytest.raises(ModelFileError, match="MAX_TENSOR_ELEMENTS|must hold"):
        fast(gru_engine.load, m, limit=1.0)
    t.dims[:] = [1, 3 * 10**5, 3]  # within limits but the data is far shorter
    with pytest.raises(ModelFileError, match=r"'W' must hold \d+ bytes"):
        fast(gru_engine.load, m, limit=1.0)


def test_absurd_constant_of_shape_and_input_size():
    shape = numpy_helper.from_array(np.array([10**6, 10**6, 10**6], np.int64), "big_shape")
    node = helper.make_node("ConstantOfShape", ["big_shape"], ["zeros"], name="cos")
    m = gru_graph(extra_nodes=[node])
    m.graph.initializer.append(shape)
    with pytest.raises(ModelFileError, match=r"'cos' \(ConstantOfShape\).*at most"):
        fast(gru_engine.load, m, limit=1.0)
    with pytest.raises(ModelFileError, match="feature size must be at most"):
        fast(gru_engine.load, gru_graph(x_dims=["T", "N", 10**9]), limit=1.0)


# --------------------------------------------------------------------------- wrong shapes / missing tensors


def test_wrong_weight_shapes_name_tensor_and_expected_shape():
    rng = np.random.default_rng(3)
    with pytest.raises(ModelFileError, match=r"W \('W'\) must have shape \(1, 12, 3\), got \(1, 12, 5\)"):
        gru_engine.load(gru_graph(W=rng.standard_normal((1, 12, 5)).astype(np.float32)))
    with pytest.raises(ModelFileError, match=r"R \('R'\) must have shape \(1, 12, 4\).*got \(1, 15, 5\)"):
        gru_engine.load(gru_graph(R=rng.standard_normal((1, 15, 5)).astype(np.float32)))
    with pytest.raises(ModelFileError, match=r"B \('B'\) must have shape \(1, 24\), got \(1, 12\)"):
        gru_engine.load(gru_graph(B=np.zeros((1, 12), np.float32)))
    with pytest.raises(ModelFileError, match=r"must have shape \(2, 3\*hidden_size"):
        gru_engine.load(gru_graph(attrs={"direction": "bidirectional"}))


def test_missing_initializer():
    with pytest.raises(ModelFileError, match="'W'.*missing initializer"):
        gru_engine.load(gru_graph(drop=("W",)))


def test_nan_weights():
    W = np.full((1, 12, 3), np.nan, np.float32)
    with pytest.raises(ModelFileError, match="NaN"):
        gru_engine.load(gru_graph(W=W))


def test_no_graph_input_or_output():
    m = gru_graph()
    del m.graph.output[:]
    with pytest.raises(GRUEngineError):
        gru_engine.load(m)


# --------------------------------------------------------------------------- fuzzing


def _mutants(proto, rng, n):
    """Randomly damaged copies of a graph: attributes, inputs, initializer dims and values, nodes."""
    for _ in range(n):
        p = onnx.ModelProto()
        p.CopyFrom(proto)
        g = p.graph
        for _ in range(int(rng.integers(1, 4))):
            kind = int(rng.integers(0, 6))
            if kind == 0 and len(g.node) > 1:
                del g.node[int(rng.integers(0, len(g.node)))]
            elif kind == 1:
                node = g.node[int(rng.integers(0, len(g.node)))]
                if node.input:
                    i = int(rng.integers(0, len(node.input)))
                    names = [t.name for t in g.initializer] + [o for nd in g.node for o in nd.output] + ["", "x"]
                    node.input[i] = names[int(rng.integers(0, len(names)))]
            elif kind == 2:
                node = g.node[int(rng.integers(0, len(g.node)))]
                for a in node.attribute:
                    if a.type == onnx.AttributeProto.INT:
                        a.i = int(rng.choice([-1, 0, 2, 3, 10**9]))
                    elif a.type == onnx.AttributeProto.INTS and len(a.ints):
                        a.ints[int(rng.integers(0, len(a.ints)))] = int(rng.integers(-3, 5))
                    elif a.type == onnx.AttributeProto.FLOAT:
                        a.f = float(rng.choice([-1.0, 0.0, np.nan, 1e30]))
            elif kind == 3 and len(g.initializer):
                t = g.initializer[int(rng.integers(0, len(g.initializer)))]
                if len(t.dims):
                    t.dims[int(rng.integers(0, len(t.dims)))] = int(rng.choice([0, 1, 7, 10**12]))
            elif kind == 4 and len(g.initializer):
                t = g.initializer[int(rng.integers(0, len(g.initializer)))]
                try:
                    a = numpy_helper.to_array(t).copy()
                except ValueError:  # dims already damaged by an earlier mutation
                    continue
                if a.size and a.dtype.kind in "fi":
                    a.reshape(-1)[int(rng.integers(0, a.size))] = rng.choice([-5, 0, 3, 10**6])
                    t.CopyFrom(numpy_helper.from_array(a, t.name))
            elif kind == 5 and len(g.node) > 2:
                i, j = rng.integers(0, len(g.node), 2)
                a, b = onnx.NodeProto(), onnx.NodeProto()
                a.CopyFrom(g.node[int(i)])
                b.CopyFrom(g.node[int(j)])
                g.node[int(i)].CopyFrom(b)
                g.node[int(j)].CopyFrom(a)
        yield p


def _fuzz_sources():
    rng = np.random.default_rng(5)
    g1 = GRU(W=rng.standard_normal((2, 12, 3)), R=rng.standard_normal((2, 12, 4)), direction="bidirectional")
    g2 = GRU(W=rng.standard_normal((1, 12, 8)), R=rng.standard_normal((1, 12, 4)), return_sequences=False)
    m = Model((g1.astype(np.float32), g2.astype(np.float32),
               Dense(kernel=rng.standard_normal((4, 2)).astype(np.float32), activation="gelu")))
    own = to_onnx(m, with_lengths=True, with_initial_state=True)
    del own.metadata_props[:]  # exercise the graph interpreter
    own.producer_name = "fuzz"
    return [own, gru_graph(attrs={"direction": "bidirectional", "activations": ["Elu", "Tanh"] * 2}, D=2)]


@pytest.mark.parametrize("source", [0, 1])
def test_fuzzed_graphs_never_crash(source):
    """Damaged graphs load or raise a gru_engine error: never an untyped crash, never a hang."""
    proto = _fuzz_sources()[source]
    rng = np.random.default_rng(100 + source)
    t0 = time.perf_counter()
    outcomes = {"ok": 0, "error": 0}
    for p in _mutants(proto, rng, 80):
        try:
            gru_engine.load(p)
            outcomes["ok"] += 1
        except GRUEngineError:
            outcomes["error"] += 1
    assert outcomes["error"] > 0
    assert time.perf_counter() - t0 < 60


def test_engine_metadata_with_bad_outputs(tmp_path):
    """An engine file whose output metadata was tampered with: ModelFileError, not a crash."""
    from gru_engine import Output

    rng = np.random.default_rng(0)
    W, R = rng.standard_normal((1, 6, 3)).astype(np.float32), rng.standard_normal((1, 6, 2)).astype(np.float32)
    proto = gru_engine.save(Model((GRU(W=W, R=R),), outputs=(Output("y"), Output("state"))), tmp_path / "ok.onnx")
    for outs in ([{"kind": "state", "gru": 5}], [{"kind": "y", "colour": 1}], "nope"):
        p = onnx.ModelProto()
        p.CopyFrom(proto)
        for prop in p.metadata_props:
            if prop.key == "gru_engine.model":
                meta = json.loads(prop.value)
                meta["outputs"] = outs
                prop.value = json.dumps(meta)
        with pytest.raises(ModelFileError):
            gru_engine.load(p)
    assert gru_engine.load(proto).outputs == (Output("y"), Output("state"))

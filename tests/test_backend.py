"""gru_engine.backend: the onnx.backend.base.Backend API, against ONNX's own GRU node test
cases (expected outputs computed by onnx) and onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ort_session

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.backend.base import Backend, BackendRep  # noqa: E402

import gru_engine.backend as backend  # noqa: E402
from converters.onnx_io import to_onnx  # noqa: E402
from gru_engine import GRU, Dense, InputShapeError, Model, UnsupportedError  # noqa: E402


def onnx_gru_cases():
    """ONNX's GRU node test cases; importing only their module (collect_testcases would run the
    test generators of every operator, which takes minutes)."""
    import importlib

    from onnx.backend.test.case import node

    node._TargetOpType = "GRU"
    importlib.import_module("onnx.backend.test.case.node.gru")
    cases = [c for c in node._NodeTestCases if c.name.startswith("test_gru")]
    assert len(cases) >= 6, [c.name for c in cases]
    return cases


@pytest.mark.parametrize("case", onnx_gru_cases(), ids=lambda c: c.name)
def test_onnx_node_test_cases(case):
    """ONNX's test_gru_* (incl. test_gru_batchwise, layout=1, which onnxruntime refuses), with
    the tolerances stored on each case (rtol 1e-3, atol 1e-7): ONNX's criterion, not ours."""
    rep = backend.prepare(case.model)
    for inputs, expected in case.data_sets:
        got = rep.run(inputs)
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            assert g.shape == e.shape and g.dtype == e.dtype
            np.testing.assert_allclose(g, e, rtol=case.rtol, atol=case.atol)


def test_api_shape():
    assert issubclass(backend.GRUEngineBackend, Backend)
    for fn in ("prepare", "run_model", "run_node", "supports_device"):
        assert callable(getattr(backend, fn))
    assert backend.supports_device("CPU") and not backend.supports_device("CUDA")
    assert isinstance(backend.prepare(_gru_model()[0]), BackendRep)


def _gru_model(direction="bidirectional", layout=0, seed=0):
    rng = np.random.default_rng(seed)
    D = 2 if direction == "bidirectional" else 1
    H, I = 5, 3
    W = rng.uniform(-0.4, 0.4, (D, 3 * H, I)).astype(np.float32)
    R = rng.uniform(-0.4, 0.4, (D, 3 * H, H)).astype(np.float32)
    B = rng.uniform(-0.4, 0.4, (D, 6 * H)).astype(np.float32)
    node = helper.make_node("GRU", ["X", "W", "R", "B", "seq", "h0"], ["Y", "Y_h"], hidden_size=H,
                            direction=direction, linear_before_reset=1, layout=layout)
    xs = ["T", "N", I] if layout == 0 else ["N", "T", I]
    hs = [D, "N", H] if layout == 0 else ["N", D, H]
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, xs),
         helper.make_tensor_value_info("seq", TensorProto.INT32, ["N"]),
         helper.make_tensor_value_info("h0", TensorProto.FLOAT, hs)],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(R, "R"), numpy_helper.from_array(B, "B")],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    m.ir_version = 8
    X = rng.standard_normal((6, 3, I)).astype(np.float32)
    h0 = rng.standard_normal((D, 3, H)).astype(np.float32)
    seq = np.array([6, 0, 4], np.int32)
    return m, (X, seq, h0), (W, R, B)


def test_list_and_dict_inputs_vs_onnxruntime():
    m, (X, seq, h0), _ = _gru_model()
    ref = ort_session(m).run(None, {"X": X, "seq": seq, "h0": h0})
    rep = backend.prepare(m)
    by_list = rep.run([X, seq, h0])
    by_dict = rep.run({"X": X, "seq": seq, "h0": h0})
    assert by_list._fields == ("Y", "Y_h")
    for a, b, r in zip(by_list, by_dict, ref):
        assert a.shape == r.shape == (6, 2, 3, 5)[: r.ndim] or a.shape == r.shape
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, r, atol=1e-5, rtol=0)


def test_layout_1_outputs_in_graph_layout():
    import naive

    m, (X, seq, h0), (W, R, B) = _gru_model("reverse", layout=1)
    Xb = X.transpose(1, 0, 2).copy()
    h0b = h0.transpose(1, 0, 2).copy()
    Y, Y_h = backend.run_model(m, [Xb, seq, h0b])
    rY, rY_h = naive.onnx_gru(Xb, W, R, B, seq, h0b, direction="reverse", linear_before_reset=1, layout=1)
    assert Y.shape == (3, 6, 1, 5) and Y_h.shape == (3, 1, 5)
    np.testing.assert_allclose(Y, rY, atol=1e-5, rtol=0)
    np.testing.assert_allclose(Y_h, rY_h, atol=1e-5, rtol=0)


def test_run_model_from_path_and_bytes(tmp_path):
    m, (X, seq, h0), _ = _gru_model("forward")
    path = tmp_path / "g.onnx"
    onnx.save(m, str(path))
    ref = ort_session(m).run(None, {"X": X, "seq": seq, "h0": h0})
    for src in (str(path), path, m.SerializeToString()):
        out = backend.run_model(src, {"X": X, "seq": seq, "h0": h0})
        np.testing.assert_allclose(out[0], ref[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_run_node_vs_onnxruntime(direction):
    rng = np.random.default_rng(3)
    D = 2 if direction == "bidirectional" else 1
    node = helper.make_node("GRU", ["X", "W", "R", "", "", "h0"], ["Y", "Y_h"], hidden_size=4, direction=direction,
                            activations=["HardSigmoid", "Softsign"] * D, clip=2.0)
    X = rng.standard_normal((5, 2, 3)).astype(np.float32)
    W = rng.uniform(-0.5, 0.5, (D, 12, 3)).astype(np.float32)
    R = rng.uniform(-0.5, 0.5, (D, 12, 4)).astype(np.float32)
    h0 = rng.standard_normal((D, 2, 4)).astype(np.float32)
    Y, Y_h = backend.run_node(node, [X, W, R, h0])
    graph = helper.make_graph(
        [node], "n",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, a.shape) for n, a in (("X", X), ("h0", h0))],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None), helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(R, "R")],
    )
    ref = ort_session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])).run(None, {"X": X, "h0": h0})
    np.testing.assert_allclose(Y, ref[0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(Y_h, ref[1], atol=1e-5, rtol=0)


def test_engine_file_through_backend():
    rng = np.random.default_rng(4)
    g = GRU(W=rng.uniform(-0.5, 0.5, (2, 12, 3)), R=rng.uniform(-0.5, 0.5, (2, 12, 4)), direction="bidirectional")
    model = Model((g.astype(np.float32), Dense(kernel=rng.standard_normal((8, 2)).astype(np.float32), activation="tanh")))
    proto = to_onnx(model, with_lengths=True, with_initial_state=True)
    x = rng.standard_normal((3, 7, 3)).astype(np.float32)
    lens = np.array([7, 1, 0])
    h0 = rng.standard_normal((2, 3, 4)).astype(np.float32)
    y, h_n = backend.prepare(proto).run([x, lens, h0])
    ry, rh = model.run(x, lengths=lens, initial_state=h0)
    np.testing.assert_array_equal(y, ry)
    np.testing.assert_array_equal(h_n, rh)
    ort = ort_session(proto).run(None, {"x": x, "lengths": lens, "initial_state": h0})
    np.testing.assert_allclose(y, ort[0], atol=1e-5, rtol=0)


def test_unsupported_device_and_graphs():
    m, _, _ = _gru_model()
    with pytest.raises(UnsupportedError, match="device"):
        backend.prepare(m, device="CUDA")
    lstm = helper.make_node("LSTM", ["X", "W", "R"], ["Y"], hidden_size=2, name="my_lstm")
    graph = helper.make_graph([lstm], "l", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "N", 2])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.zeros((1, 8, 2), np.float32), "W"),
                               numpy_helper.from_array(np.zeros((1, 8, 2), np.float32), "R")])
    lm = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    assert backend.is_compatible(m) and not backend.is_compatible(lm)
    with pytest.raises(UnsupportedError, match="'my_lstm' \\(LSTM\\).*supported ops: .*GRU"):
        backend.prepare(lm)
    with pytest.raises(UnsupportedError, match="only GRU"):
        backend.run_node(lstm, [np.zeros((1, 1, 2), np.float32)] * 3)


def test_bad_run_inputs():
    m, (X, seq, h0), _ = _gru_model()
    rep = backend.prepare(m)
    with pytest.raises(InputShapeError, match="unknown names"):
        rep.run({"X": X, "nope": X})
    with pytest.raises(InputShapeError, match="at most 3"):
        rep.run([X, seq, h0, h0])
    with pytest.raises(InputShapeError, match="'X'"):
        rep.run({"seq": seq})


def test_float16_graph_vs_onnxruntime():
    """float16 GRU graphs run in float32 inside; outputs come back as float16, like onnxruntime's."""
    from test_onnx_io import bare_gru_graph, weights

    rng = np.random.default_rng(12)
    W, R, B = weights(rng, 2, 5, 3, np.float16)
    m = bare_gru_graph(W, R, B, direction="bidirectional")
    feeds = {"X": rng.standard_normal((6, 2, 3)).astype(np.float16), "sequence_lens": np.array([6, 3], np.int32),
             "initial_h": rng.standard_normal((2, 2, 5)).astype(np.float16)}
    ref = ort_session(m).run(None, feeds)
    got = backend.prepare(m).run(feeds)
    for g, r in zip(got, ref):
        assert g.dtype == np.float16
        np.testing.assert_allclose(g.astype(np.float32), r.astype(np.float32), atol=2e-3, rtol=0)

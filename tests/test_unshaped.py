"""Graph inputs with no shape (unknown rank) or symbolic dims import; the data's shape is
checked at run time with an InputShapeError naming the graph input.

The models copy the GRU part of DeepFilterNet3's ONNX export (cut with
``onnx.utils.extract_model``): the graph input is the output of a Transpose, its type holds
only an element type (no ``shape`` field), the value infos between the nodes have no shape.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ort_session

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import gru_engine.backend as backend  # noqa: E402
from converters.onnx_io import from_onnx  # noqa: E402
from gru_engine import InputShapeError  # noqa: E402

I, H = 6, 8


def _unshaped_type(elem=TensorProto.FLOAT):
    """A tensor type with an element type and no shape field (rank unknown)."""
    vi = helper.make_tensor_value_info("_", elem, None)
    assert not vi.type.tensor_type.HasField("shape")
    return vi.type


def _gru_graph(batch_first: bool, input_dims="none", seed=0):
    rng = np.random.default_rng(seed)
    s = 1 / np.sqrt(H)
    W = rng.uniform(-s, s, (1, 3 * H, I)).astype(np.float32)
    R = rng.uniform(-s, s, (1, 3 * H, H)).astype(np.float32)
    B = rng.uniform(-s, s, (1, 6 * H)).astype(np.float32)
    nodes, x_name = [], "emb"
    if batch_first:  # (B, T, F) -> (T, B, F) as DeepFilterNet's /emb_gru/Transpose
        nodes.append(helper.make_node("Transpose", ["emb"], ["emb_t"], perm=[1, 0, 2]))
        x_name = "emb_t"
    nodes += [
        helper.make_node("GRU", [x_name, "W", "R", "B"], ["Y", "Y_h"], hidden_size=H, linear_before_reset=1),
        helper.make_node("Squeeze", ["Y", "ax1"], ["Ys"]),
    ]
    out = "Ys"
    if batch_first:
        nodes.append(helper.make_node("Transpose", ["Ys"], ["out"], perm=[1, 0, 2]))
        out = "out"
    if input_dims == "none":
        x = helper.make_value_info("emb", _unshaped_type())
    else:
        x = helper.make_tensor_value_info("emb", TensorProto.FLOAT, input_dims)
    graph = helper.make_graph(
        nodes, "emb_gru", [x],
        [helper.make_value_info(out, _unshaped_type()), helper.make_value_info("Y_h", _unshaped_type())],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(R, "R"), numpy_helper.from_array(B, "B"),
         numpy_helper.from_array(np.array([1], np.int64), "ax1")],
        value_info=[helper.make_value_info(n, _unshaped_type()) for n in ("Y", "Ys") + (("emb_t",) if batch_first else ())],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    m.ir_version = 8
    # no onnx.checker here: it requires a shape field on graph inputs and outputs, which the
    # extracted DeepFilterNet graph lacks and onnxruntime (like the ONNX IR) accepts
    return m


@pytest.mark.parametrize("batch_first", [True, False], ids=["transpose-first", "time-major"])
@pytest.mark.parametrize("dims", ["none", ["batch", "time", I], ["b", "t", "f"]], ids=["no-shape", "symbolic", "all-symbolic"])
def test_unshaped_input_imports_and_matches_onnxruntime(tmp_path, batch_first, dims):
    m = _gru_graph(batch_first, dims)
    if not batch_first and dims != "none":
        dims = [dims[1], dims[0], dims[2]]  # time-major graph: (time, batch, features)
        m = _gru_graph(batch_first, dims)
    path = tmp_path / "emb_gru.onnx"
    onnx.save(m, path)
    model, sig = from_onnx(str(path), return_signature=True)
    assert model.input_size == I
    sess = ort_session(m)
    rep = backend.prepare(m)
    rng = np.random.default_rng(1)
    for shape in ((2, 7, I), (1, 30, I), (3, 1, I)):
        x = rng.standard_normal(shape).astype(np.float32)
        if not batch_first:
            x = np.ascontiguousarray(np.swapaxes(x, 0, 1))
        want = sess.run(None, {"emb": x})
        got = rep.run([x])
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.shape == w.shape
            np.testing.assert_allclose(g, w, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dims", ["none", ["batch", "time", I]], ids=["no-shape", "symbolic"])
@pytest.mark.parametrize("bad", [(7, I), (2, 7, I, 1), (), (2, 7, I + 1)], ids=["rank2", "rank4", "scalar", "features"])
def test_wrong_shape_at_run_time_names_the_input(dims, bad):
    rep = backend.prepare(_gru_graph(True, dims))
    with pytest.raises(InputShapeError, match="graph input 'emb'") as e:
        rep.run([np.zeros(bad, np.float32)])
    assert str(bad) in str(e.value)


def test_declared_feature_size_is_checked():
    rep = backend.prepare(_gru_graph(True, [2, 5, I]))
    # declared batch and time sizes are exporters' example sizes: any size runs
    assert rep.run([np.zeros((3, 9, I), np.float32)])[0].shape == (3, 9, H)
    with pytest.raises(InputShapeError, match=r"graph input 'emb' must have shape \(\?, \?, 6\)"):
        rep.run([np.zeros((2, 5, I - 1), np.float32)])


def test_unknown_feature_size_without_weights_is_refused(tmp_path):
    """An unshaped input whose feature size no weight fixes cannot be a model: typed error."""
    node = helper.make_node("Relu", ["x"], ["y"])
    g = helper.make_graph([node], "g", [helper.make_value_info("x", _unshaped_type())],
                          [helper.make_value_info("y", _unshaped_type())])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])
    path = tmp_path / "relu.onnx"
    onnx.save(m, path)
    from gru_engine import GRUEngineError

    with pytest.raises(GRUEngineError, match="feature size of input 'x'"):
        from_onnx(str(path))

"""ONNX in and out (converters.onnx_io) against real references.

* Randomized bare GRU graphs (hypothesis, every attribute) loaded with ``from_onnx`` and run
  by the engine vs onnxruntime running the same graph.
* ``layout=1`` and float64 graphs vs the float64 spec oracle ``tests/naive.py`` (onnxruntime
  refuses both).
* ``onnx.reference.ReferenceEvaluator`` for the default-activation subset it implements.
* Round trips: model -> ``to_onnx`` -> onnxruntime == ``model.run`` == ``from_onnx(...).run``
  for every canonical feature.

Run ``PYTHONPATH=.:tests python tests/test_onnx_io.py [N]`` to print the worst abs error vs onnxruntime over a
seeded sweep of random configurations.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
from conftest import ATOL, ort_session, slow_without_jit

import naive
from converters.onnx_io import from_onnx, to_onnx
from gru_engine import GRU, Activation, Dense, Embedding, Masking, Model
from gru_engine.model import DENSE_ACTIVATIONS, RNN_ACTIVATIONS

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

D_OF = {"forward": 1, "reverse": 1, "bidirectional": 2}
SQUASHING = {"Sigmoid", "Tanh", "HardSigmoid", "Softsign", "ScaledTanh"}


# --------------------------------------------------------------------------- graphs


def bare_gru_graph(W, R, B, *, direction="forward", lbr=0, acts=(), alphas=(), betas=(), clip=None,
                   layout=0, lens="input", h0="input", h0_value=None, lens_value=None, opset=14,
                   outputs=("Y", "Y_h")):
    """One GRU node. lens / h0: "input" (graph input), "init" (initializer: *_value), None."""
    D, threeH, I = W.shape
    H = threeH // 3
    elem = helper.np_dtype_to_tensor_dtype(W.dtype)
    inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(R, "R")]
    x_shape = ["T", "N", I] if layout == 0 else ["N", "T", I]
    inputs = [helper.make_tensor_value_info("X", elem, x_shape)]
    node_in = ["X", "W", "R", "", "", ""]
    if B is not None:
        inits.append(numpy_helper.from_array(B, "B"))
        node_in[3] = "B"
    if lens == "input":
        inputs.append(helper.make_tensor_value_info("sequence_lens", TensorProto.INT32, ["N"]))
        node_in[4] = "sequence_lens"
    elif lens == "init":
        inits.append(numpy_helper.from_array(np.asarray(lens_value, np.int32), "sequence_lens"))
        node_in[4] = "sequence_lens"
    if h0 == "input":
        inputs.append(helper.make_tensor_value_info("initial_h", elem, [D, "N", H] if layout == 0 else ["N", D, H]))
        node_in[5] = "initial_h"
    elif h0 == "init":
        inits.append(numpy_helper.from_array(h0_value, "initial_h"))
        node_in[5] = "initial_h"
    while node_in[-1] == "":
        node_in.pop()
    attrs = dict(hidden_size=H, direction=direction, linear_before_reset=lbr)
    if layout:
        attrs["layout"] = layout
    if acts:
        attrs["activations"] = list(acts)
    if alphas:
        attrs["activation_alpha"] = [float(a) for a in alphas]
    if betas:
        attrs["activation_beta"] = [float(b) for b in betas]
    if clip is not None:
        attrs["clip"] = float(clip)
    outs = [o if o in outputs else "" for o in ("Y", "Y_h")]
    while outs[-1] == "":
        outs.pop()
    node = helper.make_node("GRU", node_in, outs, name="gru0", **attrs)
    gouts = [helper.make_tensor_value_info(o, elem, None) for o in outs if o]
    graph = helper.make_graph([node], "bare_gru", inputs, gouts, inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def run_loaded(proto, feeds):
    """Load with from_onnx and run through the signature: the graph's outputs in its layout."""
    model, sig = from_onnx(proto, return_signature=True)
    y, h = model.run(**sig.to_model_args(feeds))
    return sig.from_model_outputs(y, h, model)


def weights(rng, D, H, I, dtype=np.float32, bias=True):
    s = 1.0 / np.sqrt(H)
    W = rng.uniform(-s, s, (D, 3 * H, I)).astype(dtype)
    R = rng.uniform(-s, s, (D, 3 * H, H)).astype(dtype)
    B = rng.uniform(-s, s, (D, 6 * H)).astype(dtype) if bias else None
    return W, R, B


# --------------------------------------------------------------------------- randomized vs onnxruntime


@st.composite
def bare_configs(draw):
    direction = draw(st.sampled_from(list(D_OF)))
    D = D_OF[direction]
    default_acts = draw(st.booleans())
    acts = () if default_acts else tuple(draw(st.sampled_from(list(RNN_ACTIVATIONS))) for _ in range(2 * D))
    n_alpha = draw(st.integers(0, 4))
    n_beta = draw(st.integers(0, 4))
    alphas = tuple(draw(st.floats(0.05, 1.5)) for _ in range(n_alpha))
    betas = tuple(draw(st.floats(-0.5, 1.5)) for _ in range(n_beta))
    bounded = all(a in SQUASHING for a in acts)
    H = draw(st.integers(1, 64))
    I = draw(st.integers(1, 16))
    N = draw(st.integers(1, 4))
    T = draw(st.integers(1, 200 if bounded else 12))
    return dict(
        direction=direction, lbr=draw(st.integers(0, 1)), acts=acts, alphas=alphas, betas=betas,
        clip=draw(st.one_of(st.none(), st.floats(0.3, 5.0))),
        lens=draw(st.sampled_from(["input", None])), h0=draw(st.sampled_from(["input", None])),
        H=H, I=I, N=N, T=T, bias=draw(st.booleans()), seed=draw(st.integers(0, 2**31 - 1)),
    )


def check_vs_ort(cfg):
    """Build, run both; return (abs error, scale) with scale = max(1, max |reference|)."""
    rng = np.random.default_rng(cfg["seed"])
    D = D_OF[cfg["direction"]]
    H, I, N, T = cfg["H"], cfg["I"], cfg["N"], cfg["T"]
    W, R, B = weights(rng, D, H, I, bias=cfg["bias"])
    proto = bare_gru_graph(W, R, B, direction=cfg["direction"], lbr=cfg["lbr"], acts=cfg["acts"],
                           alphas=cfg["alphas"], betas=cfg["betas"], clip=cfg["clip"],
                           lens=cfg["lens"], h0=cfg["h0"])
    feeds = {"X": rng.standard_normal((T, N, I)).astype(np.float32)}
    if cfg["lens"]:
        lens = rng.integers(0, T + 1, N).astype(np.int32)
        lens[0] = T  # always one full row; a zero row appears often for small T
        if N > 1:
            lens[-1] = 0
        feeds["sequence_lens"] = lens
    if cfg["h0"]:
        feeds["initial_h"] = rng.uniform(-1, 1, (D, N, H)).astype(np.float32)
    ref = ort_session(proto).run(None, feeds)
    got = run_loaded(proto, feeds)
    assert [g.shape for g in got] == [r.shape for r in ref]
    if not all(np.all(np.isfinite(r)) for r in ref):
        return None  # an unbounded activation overflowed: nothing to compare
    err = max(float(np.max(np.abs(g - r), initial=0.0)) for g, r in zip(got, ref))
    scale = max(1.0, max(float(np.max(np.abs(r), initial=0.0)) for r in ref))
    return err, scale


@slow_without_jit
@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
@given(bare_configs())
def test_random_bare_gru_vs_onnxruntime(cfg):
    res = check_vs_ort(cfg)
    hypothesis.assume(res is not None)
    err, scale = res
    # 1e-5 absolute for outputs of order 1 (weights 1/sqrt(H)); unbounded activations can grow
    # the state, where float32 rounding is relative.
    assert err <= 1e-5 * scale, (err, scale, cfg)


@slow_without_jit
@pytest.mark.parametrize("direction", list(D_OF))
@pytest.mark.parametrize("lbr", [0, 1])
def test_long_sequence_default_activations(direction, lbr):
    cfg = dict(direction=direction, lbr=lbr, acts=(), alphas=(), betas=(), clip=None, lens="input",
               h0="input", H=64, I=16, N=3, T=300, bias=True, seed=7 + lbr)
    err, scale = check_vs_ort(cfg)
    assert scale == 1.0 and err <= 1e-5


def test_every_activation_in_both_slots():
    """Each of the 11 activations as f and as g, alpha/beta lists consumed as onnxruntime does."""
    names = list(RNN_ACTIVATIONS)
    for i, f in enumerate(names):
        g = names[(i * 5 + 3) % len(names)]
        cfg = dict(direction="bidirectional", lbr=i % 2, acts=(f, g, g, f), alphas=(0.4, 0.6, 0.9)[: i % 4],
                   betas=(0.3, 0.2)[: i % 3], clip=None if i % 2 else 4.0, lens="input", h0="input",
                   H=8, I=5, N=3, T=9, bias=True, seed=i)
        err, scale = check_vs_ort(cfg)
        assert err <= 1e-5 * scale, (f, g, err)


# --------------------------------------------------------------------------- layout=1, float64 vs the spec oracle


@pytest.mark.parametrize("direction", list(D_OF))
@pytest.mark.parametrize("layout,dtype", [(1, np.float32), (0, np.float64), (1, np.float64)])
def test_layout_and_float64_vs_naive(direction, layout, dtype):
    rng = np.random.default_rng(11)
    D = D_OF[direction]
    T, N, I, H = 7, 4, 3, 6
    W, R, B = weights(rng, D, H, I, dtype)
    acts = ("HardSigmoid", "Elu") * D
    proto = bare_gru_graph(W, R, B, direction=direction, lbr=1, acts=acts, alphas=(0.25, 0.75), clip=3.0,
                           layout=layout)
    X = rng.standard_normal((T, N, I) if layout == 0 else (N, T, I)).astype(dtype)
    h0 = rng.standard_normal((D, N, H) if layout == 0 else (N, D, H)).astype(dtype)
    lens = np.array([7, 0, 3, 5], np.int32)
    # attributes are float32 in ONNX: alpha 0.25 / 0.75 and clip 3 are exact in both dtypes
    Y, Y_h = run_loaded(proto, {"X": X, "sequence_lens": lens, "initial_h": h0})
    rY, rY_h = naive.onnx_gru(X, W, R, B, lens, h0, direction=direction, linear_before_reset=1,
                              activations=list(acts), activation_alpha=(0.25, 0.75), clip=3.0, layout=layout)
    assert Y.dtype == dtype and Y.shape == rY.shape and Y_h.shape == rY_h.shape
    tol = ATOL[dtype]
    np.testing.assert_allclose(Y, rY, rtol=0, atol=tol)
    np.testing.assert_allclose(Y_h, rY_h, rtol=0, atol=tol)


def test_initializer_initial_h_and_lengths_vs_naive():
    """initial_h and sequence_lens stored as initializers: the signature feeds them."""
    rng = np.random.default_rng(3)
    T, N, I, H = 6, 3, 4, 5
    W, R, B = weights(rng, 2, H, I)
    h0 = rng.standard_normal((2, N, H)).astype(np.float32)
    lens = np.array([6, 2, 0], np.int32)
    proto = bare_gru_graph(W, R, B, direction="bidirectional", lens="init", lens_value=lens, h0="init", h0_value=h0)
    X = rng.standard_normal((T, N, I)).astype(np.float32)
    Y, Y_h = run_loaded(proto, {"X": X})
    rY, rY_h = ort_session(proto).run(None, {"X": X})
    np.testing.assert_allclose(Y, rY, atol=1e-5, rtol=0)
    np.testing.assert_allclose(Y_h, rY_h, atol=1e-5, rtol=0)


def test_bare_gru_y_is_batch_first_concat():
    """Model.run of a bare GRU graph gives PyTorch's convention: (B, T, D*H), h_n = Y_h."""
    rng = np.random.default_rng(5)
    W, R, B = weights(rng, 2, 4, 3)
    proto = bare_gru_graph(W, R, B, direction="bidirectional", lens=None, h0=None)
    X = rng.standard_normal((5, 2, 3)).astype(np.float32)
    model = from_onnx(proto)
    y, h_n = model.run(X.transpose(1, 0, 2))
    rY, rY_h = ort_session(proto).run(None, {"X": X})
    np.testing.assert_allclose(y, rY.transpose(2, 0, 1, 3).reshape(2, 5, 8), atol=1e-5, rtol=0)
    np.testing.assert_allclose(h_n, rY_h, atol=1e-5, rtol=0)


def test_only_y_h_output():
    rng = np.random.default_rng(6)
    W, R, B = weights(rng, 1, 4, 3)
    proto = bare_gru_graph(W, R, B, lens=None, h0=None, outputs=("Y_h",))
    X = rng.standard_normal((5, 2, 3)).astype(np.float32)
    (got,) = run_loaded(proto, {"X": X})
    (ref,) = ort_session(proto).run(None, {"X": X})
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- onnx.reference


@pytest.mark.parametrize("direction", list(D_OF))
@pytest.mark.parametrize("lbr", [0, 1])
def test_vs_onnx_reference_evaluator(direction, lbr):
    """ReferenceEvaluator implements default activations without sequence_lens / clip."""
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(21)
    D = D_OF[direction]
    W, R, B = weights(rng, D, 5, 3)
    proto = bare_gru_graph(W, R, B, direction=direction, lbr=lbr, lens=None, h0="input")
    feeds = {"X": rng.standard_normal((6, 2, 3)).astype(np.float32),
             "initial_h": rng.standard_normal((D, 2, 5)).astype(np.float32)}
    ref = ReferenceEvaluator(proto).run(None, feeds)
    got = run_loaded(proto, feeds)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- round trips


def rand_gru(rng, I, H, direction="forward", dtype=np.float32, **kw):
    W, R, B = weights(rng, D_OF[direction], H, I, dtype)
    return GRU(W=W, R=R, B=B, direction=direction, **kw)


def assert_same_layers(a: Model, b: Model):
    assert a.input_size == b.input_size and len(a.layers) == len(b.layers) and a.name == b.name
    for la, lb in zip(a.layers, b.layers):
        assert type(la) is type(lb)
        for f in dataclasses.fields(la):
            va, vb = getattr(la, f.name), getattr(lb, f.name)
            if isinstance(va, np.ndarray):
                assert va.dtype == vb.dtype and np.array_equal(va, vb), f.name
            else:
                assert va == vb, (f.name, va, vb)


def stripped(proto):
    """The same graph without the engine's metadata: read by the graph interpreter."""
    p = onnx.ModelProto()
    p.CopyFrom(proto)
    del p.metadata_props[:]
    p.producer_name = "someone-else"
    return p


def roundtrip(model: Model, x, lengths=None, initial_state=None, tmp_path=None, ort=True, interpret=False):
    """to_onnx -> (file) -> onnxruntime and from_onnx; all must agree with model.run.
    interpret: also read the graph without the engine's metadata."""
    proto = to_onnx(model, with_lengths=lengths is not None, with_initial_state=initial_state is not None)
    assert proto.producer_name == "gru-engine"
    assert not any(n.op_type in ("Loop", "Scan") for n in proto.graph.node)
    assert sum(n.op_type == "GRU" for n in proto.graph.node) == len(model.gru_layers)
    y, h_n = model.run(x, lengths=lengths, initial_state=initial_state)
    source = proto
    if tmp_path is not None:
        path = tmp_path / "m.onnx"
        to_onnx(model, path, with_lengths=lengths is not None, with_initial_state=initial_state is not None)
        source = path
    back = from_onnx(source)
    assert_same_layers(model, back)
    y2, h2 = back.run(x, lengths=lengths, initial_state=initial_state)
    np.testing.assert_array_equal(y2, y)
    if interpret:
        y3, h3 = from_onnx(stripped(proto)).run(x, lengths=lengths, initial_state=initial_state)
        np.testing.assert_allclose(y3, y, atol=1e-6, rtol=1e-6)
        np.testing.assert_allclose(h3, h_n, atol=1e-6, rtol=0)
    if ort:
        feeds = {"x": x}
        if lengths is not None:
            feeds["lengths"] = np.asarray(lengths, np.int64)
        if initial_state is not None:
            if isinstance(initial_state, list):
                feeds.update({f"initial_state_{i}": s for i, s in enumerate(initial_state)})
            else:
                feeds["initial_state"] = initial_state
        outs = ort_session(proto).run(None, feeds)
        # rtol only matters for the huge values of exp(exp(x)) in the activation tests
        np.testing.assert_allclose(outs[0], y, atol=1e-5, rtol=1e-5)
        hs = h_n if isinstance(h_n, list) else [h_n]
        for o, h in zip(outs[1:], hs):
            np.testing.assert_allclose(o, h, atol=1e-5, rtol=0)
        return max(float(np.abs(o - r).max()) for o, r in zip(outs, [y] + hs))
    return 0.0


GRU_VARIANTS = [
    dict(direction=d, linear_before_reset=lbr, return_sequences=rs, merge=m, time_reversed_output=tro)
    for d, lbr, rs, m, tro in itertools.product(list(D_OF), [0, 1], [True, False], ["concat", "sum", "mul", "ave"],
                                                [False, True])
    if (d == "bidirectional" or m == "concat") and (d != "forward" or not tro)
]


@pytest.mark.parametrize("kw", GRU_VARIANTS, ids=lambda kw: "-".join(f"{v}" for v in kw.values()))
def test_roundtrip_gru_variants(kw):
    rng = np.random.default_rng(1)
    g = rand_gru(rng, 4, 5, activations=("HardSigmoid", "Softsign") * D_OF[kw["direction"]],
                 activation_alpha=(0.25,), clip=2.5, **kw)
    m = Model((g, Dense(kernel=rng.standard_normal((g.output_size(4), 3)).astype(np.float32))), name="v")
    x = rng.standard_normal((3, 6, 4)).astype(np.float32)
    D = g.num_directions
    roundtrip(m, x, interpret=True)
    roundtrip(m, x, lengths=[6, 2, 0], initial_state=rng.standard_normal((D, 3, 5)).astype(np.float32),
              interpret=True)


@pytest.mark.parametrize("masked_output", ["carry", "zero"])
@pytest.mark.parametrize("direction", list(D_OF))
@pytest.mark.parametrize("source", ["masking", "embedding"])
def test_roundtrip_keras_masks(masked_output, direction, source):
    """Prefix masks (trailing padding): carried / zeroed outputs, h0 kept for empty rows."""
    rng = np.random.default_rng(2)
    B, T = 4, 7
    valid = np.array([7, 3, 0, 5])
    tro = direction != "forward"
    if source == "masking":
        x = rng.standard_normal((B, T, 4)).astype(np.float32)
        x[np.arange(T)[None, :] >= valid[:, None]] = 0.0
        first, input_size = Masking(mask_value=0.0), 4
    else:
        x = rng.integers(1, 10, (B, T))
        x[np.arange(T)[None, :] >= valid[:, None]] = 0
        first, input_size = Embedding(table=rng.standard_normal((10, 4)).astype(np.float32), mask_zero=True), None
    g1 = rand_gru(rng, 4, 5, direction, masked_output=masked_output, time_reversed_output=tro)
    g2 = rand_gru(rng, g1.output_size(4), 5, "forward", return_sequences=False)
    m = Model((first, g1, g2, Dense(kernel=rng.standard_normal((5, 2)).astype(np.float32), activation="softmax")),
              input_size)
    S = g1.num_directions + 1
    # interpret=True: the mask glue is also recognised without the engine's metadata
    roundtrip(m, x, interpret=True)
    roundtrip(m, x, initial_state=rng.standard_normal((S, B, 5)).astype(np.float32), interpret=True)
    roundtrip(m, x, lengths=[7, 2, 1, 0], interpret=True)
    # the bare GRU output too (carry semantics visible in y)
    m1 = Model((first, g1), input_size)
    roundtrip(m1, x, initial_state=rng.standard_normal((g1.num_directions, B, 5)).astype(np.float32), interpret=True)


@pytest.mark.parametrize("act", list(DENSE_ACTIVATIONS))
def test_roundtrip_dense_activations(act):
    rng = np.random.default_rng(4)
    m = Model((rand_gru(rng, 3, 4, "bidirectional"), rand_gru(rng, 8, 4),
               Dense(kernel=rng.standard_normal((4, 5)).astype(np.float32), bias=rng.standard_normal(5).astype(np.float32),
                     activation=act, alpha=0.3),
               Activation(activation=act, alpha=0.2)))
    x = rng.standard_normal((2, 5, 3)).astype(np.float32)
    roundtrip(m, x, interpret=True)  # the interpreter recognises the activations written out as formulas


def test_roundtrip_different_hidden_sizes_file_and_float64(tmp_path):
    rng = np.random.default_rng(8)
    m = Model((rand_gru(rng, 3, 4), rand_gru(rng, 4, 6, "bidirectional")))
    x = rng.standard_normal((2, 5, 3)).astype(np.float32)
    roundtrip(m, x, lengths=[5, 3], initial_state=[rng.standard_normal((1, 2, 4)).astype(np.float32),
                                                    rng.standard_normal((2, 2, 6)).astype(np.float32)],
              tmp_path=tmp_path)
    m64 = m.astype(np.float64)
    proto = to_onnx(m64)
    assert proto.graph.initializer[0].data_type == TensorProto.DOUBLE
    roundtrip(m64, x.astype(np.float64), ort=False, tmp_path=tmp_path)
    # float64 against the spec oracle, through the file
    back = from_onnx(to_onnx(m64).SerializeToString())
    y, _ = back.run(x.astype(np.float64))
    g1, g2 = m64.layers
    Y1, _ = naive.onnx_gru(x.transpose(1, 0, 2), g1.W, g1.R, g1.B)
    h1 = Y1.transpose(2, 0, 1, 3).reshape(2, 5, 4)
    Y2, _ = naive.onnx_gru(h1.transpose(1, 0, 2), g2.W, g2.R, g2.B, direction="bidirectional")
    np.testing.assert_allclose(y, Y2.transpose(2, 0, 1, 3).reshape(2, 5, 12), atol=1e-10, rtol=0)


def test_to_onnx_graph_convention():
    rng = np.random.default_rng(9)
    m = Model((Embedding(table=rng.standard_normal((10, 3)).astype(np.float32)), rand_gru(rng, 3, 4, "bidirectional")))
    p = to_onnx(m, with_lengths=True, with_initial_state=True, opset=18)
    assert [i.name for i in p.graph.input] == ["x", "lengths", "initial_state"]
    assert [o.name for o in p.graph.output] == ["y", "h_n"]
    dims = [d.dim_param or d.dim_value for d in p.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "time"] and p.graph.input[0].type.tensor_type.elem_type == TensorProto.INT64
    x = rng.integers(0, 10, (3, 4))
    roundtrip(m, x, lengths=[4, 1, 0], initial_state=rng.standard_normal((2, 3, 4)).astype(np.float32))


# --------------------------------------------------------------------------- worst error report

if __name__ == "__main__":  # pragma: no cover - a measurement, not a test
    import sys
    import time

    rng = np.random.default_rng(2024)
    worst_abs, worst_rel, n = 0.0, 0.0, 0
    t0 = time.perf_counter()
    for i in range(int(sys.argv[1]) if len(sys.argv) > 1 else 200):
        direction = ["forward", "reverse", "bidirectional"][i % 3]
        D = D_OF[direction]
        default = i % 2 == 0
        acts = () if default else tuple(rng.choice(list(RNN_ACTIVATIONS), 2 * D))
        bounded = all(a in SQUASHING for a in acts)
        cfg = dict(direction=direction, lbr=int(rng.integers(0, 2)), acts=acts,
                   alphas=tuple(rng.uniform(0.05, 1.5, rng.integers(0, 4))),
                   betas=tuple(rng.uniform(-0.5, 1.5, rng.integers(0, 4))),
                   clip=None if rng.random() < 0.5 else float(rng.uniform(0.3, 5)),
                   lens="input" if rng.random() < 0.5 else None, h0="input" if rng.random() < 0.5 else None,
                   H=int(rng.integers(1, 65)), I=int(rng.integers(1, 17)), N=int(rng.integers(1, 5)),
                   T=int(rng.integers(1, 201 if bounded else 13)), bias=True, seed=int(rng.integers(2**31)))
        res = check_vs_ort(cfg)
        if res is None:  # overflowed configuration
            continue
        err, scale = res
        n += 1
        if scale == 1.0:
            worst_abs = max(worst_abs, err)
        worst_rel = max(worst_rel, err / scale)
    print(f"{n} random configurations in {time.perf_counter() - t0:.1f} s: worst |engine - onnxruntime| "
          f"{worst_abs:.3g} where outputs are within [-1, 1]; worst error / max(1, |ref|) {worst_rel:.3g}")


def test_symbolic_feature_size_is_taken_from_the_weights():
    rng = np.random.default_rng(13)
    W, R, B = weights(rng, 2, 5, 3)
    proto = bare_gru_graph(W, R, B, direction="bidirectional")
    dim = proto.graph.input[0].type.tensor_type.shape.dim[2]
    dim.Clear()
    dim.dim_param = "features"
    feeds = {"X": rng.standard_normal((6, 2, 3)).astype(np.float32), "sequence_lens": np.array([6, 2], np.int32),
             "initial_h": rng.uniform(-1, 1, (2, 2, 5)).astype(np.float32)}
    assert from_onnx(proto).input_size == 3
    for g, r in zip(run_loaded(proto, feeds), ort_session(proto).run(None, feeds)):
        np.testing.assert_allclose(g, r, atol=1e-5, rtol=0)

"""gru_engine.activations: accuracy of the float32 sigmoid / tanh (in ulps, against float64
and against onnxruntime), the NaN / inf rule of every activation, and the same NaN pattern
through every execution path (Model.run, Stream.step, chunked Stream.run, StreamPool on both
of its paths, CUDA when a GPU or the simulator is there).

Measured (test_float32_sigmoid_tanh_ulps_over_all_floats_in_range, every float32 in
[-20, 20], 2.2e9 inputs each, against float64): tanh32 max 1.50 ulps (at x = 1.3785),
sigmoid32 max 2.64 ulps (x = -5.5427); onnxruntime's Tanh max 104 ulps (at x = 1.96e-38; 5.5
ulps on normal-range outputs), its Sigmoid 7.2e7 ulps (it clamps the argument: at x = -17.7
it returns 1.49e-7 for 2.09e-8).
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from conftest import NO_JIT, random_gru_weights

from gru_engine import GRU, Activation, Dense, Model
from gru_engine import activations as A
from gru_engine.model import DENSE_ACTIVATIONS, RNN_ACTIVATIONS

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")

# ----------------------------------------------------------------------------- references
# float64 formulas written here, independently of the module under test.
_RNN_REF = {
    "Sigmoid": lambda x, a, b: 1 / (1 + np.exp(-x)),
    "Tanh": lambda x, a, b: np.tanh(x),
    "Relu": lambda x, a, b: np.where(x < 0, 0.0, x),
    "Affine": lambda x, a, b: a * x + b,
    "LeakyRelu": lambda x, a, b: np.where(x < 0, a * x, x),
    "ThresholdedRelu": lambda x, a, b: np.where(x <= a, 0.0, x),
    "ScaledTanh": lambda x, a, b: a * np.tanh(b * x),
    "HardSigmoid": lambda x, a, b: np.where(np.isnan(x), np.nan, np.clip(a * x + b, 0, 1)),
    "Elu": lambda x, a, b: np.where(x < 0, a * np.expm1(np.minimum(x, 0)), x),
    "Softsign": lambda x, a, b: np.where(np.isinf(x), np.sign(x), x / (1 + np.abs(x))),
    "Softplus": lambda x, a, b: np.logaddexp(0, x),
}


def _gelu(x):
    from math import erf

    return np.array([0.5 * v * (1 + erf(v / math.sqrt(2))) if np.isfinite(v) else (v if v > 0 else (0.0 if v < 0 else v))
                     for v in x.ravel()]).reshape(x.shape)


_DENSE_REF = {
    "linear": lambda x, a: x,
    "sigmoid": lambda x, a: 1 / (1 + np.exp(-x)),
    "tanh": lambda x, a: np.tanh(x),
    "relu": lambda x, a: np.where(x < 0, 0.0, x),
    "hard_sigmoid": lambda x, a: np.where(np.isnan(x), np.nan, np.clip(x / 6 + 0.5, 0, 1)),
    "elu": lambda x, a: np.where(x < 0, (a or 1.0) * np.expm1(np.minimum(x, 0)), x),
    "selu": lambda x, a: 1.0507009873554805 * np.where(x < 0, 1.6732632423543772 * np.expm1(np.minimum(x, 0)), x),
    "gelu": lambda x, a: _gelu(x),
    "swish": lambda x, a: np.where(x == -np.inf, -0.0, x / (1 + np.exp(-x))),
    "softplus": lambda x, a: np.logaddexp(0, x),
    "softsign": lambda x, a: np.where(np.isinf(x), np.sign(x), x / (1 + np.abs(x))),
    "leaky_relu": lambda x, a: np.where(x < 0, a * x, x),
    "gelu_tanh": lambda x, a: np.where(np.isinf(x), np.where(x > 0, x, 0.0),
                                       0.5 * x * (1 + np.tanh(0.7978845608028654 * (x + 0.044715 * x ** 3)))),
    "exp": lambda x, a: np.exp(x),
}

SPECIALS = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30, -1e-30, 1e-3, -1e-3, 0.3, -0.3, 0.7, -0.7,
                     2.5, -2.5, 9.5, -9.5, 15.0, -15.0, 30.0, -30.0, 95.0, -95.0, 3e38, -3e38])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(RNN_ACTIVATIONS))
def test_rnn_activation_table_nan_inf_rule(name, dtype):
    a, b = 0.3, 0.6
    x = SPECIALS.astype(dtype)
    got = np.empty_like(x)
    A.rnn_act_array(x, RNN_ACTIVATIONS[name], dtype(a), dtype(b), got)
    with np.errstate(all="ignore"):
        want = _RNN_REF[name](x.astype(np.float64), np.float64(dtype(a)), np.float64(dtype(b)))
    assert np.isnan(got[0]), f"{name}(NaN) must be NaN"
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"NaN pattern of {name}")
    rtol = 4e-7 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(got, want, rtol=rtol, atol=1e-37 if dtype == np.float32 else 1e-300, err_msg=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", [n for n in DENSE_ACTIVATIONS if n != "softmax"])
def test_dense_activation_table_nan_inf_rule(name, dtype):
    alpha = 0.2
    x = SPECIALS.astype(dtype)
    got = np.empty_like(x)
    A.dense_act_array(x, DENSE_ACTIVATIONS[name], dtype(alpha), got)
    with np.errstate(all="ignore"):
        want = _DENSE_REF[name](x.astype(np.float64), np.float64(dtype(alpha)))
    if name != "linear":
        assert np.isnan(got[0]), f"{name}(NaN) must be NaN"
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"NaN pattern of {name}")
    rtol = 5e-6 if dtype == np.float32 else 1e-13  # gelu_tanh: 1 + tanh(.) cancels near -2.5
    with np.errstate(over="ignore"):
        want_t = want.astype(dtype)  # exp(95) overflows float32 to inf, as the kernel does
    np.testing.assert_allclose(got, want_t, rtol=rtol, atol=1e-37 if dtype == np.float32 else 1e-300, err_msg=name)


def test_softmax_row_nan_and_inf():
    y = np.array([[1.0, 2.0, 3.0], [1.0, np.nan, 0.0], [np.inf, 1.0, 0.0]], np.float32)
    A.dense_act_row(y[0], DENSE_ACTIVATIONS["softmax"], np.float32(0))
    np.testing.assert_allclose(y[0], np.exp([1, 2, 3]) / np.exp([1, 2, 3]).sum(), rtol=1e-6)
    A.dense_act_row(y[1], DENSE_ACTIVATIONS["softmax"], np.float32(0))
    assert np.isnan(y[1]).all()  # a NaN anywhere in a row: the whole row is NaN
    A.dense_act_row(y[2], DENSE_ACTIVATIONS["softmax"], np.float32(0))
    assert np.isnan(y[2][0])  # inf - inf


def test_exp32_and_bitcast():
    x = np.linspace(-87, 88, 200001).astype(np.float32)
    got = np.array([A.exp32(v) for v in x[::997]], np.float32)
    ref = np.exp(x[::997].astype(np.float64))
    assert np.max(np.abs(got - ref) / np.spacing(ref.astype(np.float32)).astype(np.float64)) <= 1.25
    assert A.exp32(np.float32(-90)) == 0 and A.exp32(np.float32(89)) == np.inf
    assert A.bits_to_f32(np.int32(127 << 23)) == 1.0 and A.bits_to_f32(np.int32(130 << 23)) == 8.0
    assert np.isnan(A.exp32(np.float32(np.nan))) and A.exp32(np.float32(-np.inf)) == 0


# ----------------------------------------------------------------------------- ulps, exhaustive
def _max_ulps_chunked(fn_ours, fn_ref, chunk=1 << 24):
    """max |f(x) - ref(x)| in ulps of float32(ref) over every float32 x in [-20, 20]."""
    from numba import njit, prange

    @njit(cache=False, parallel=True)
    def worst(x, y, kind):
        nb = 64
        step = (x.shape[0] + nb - 1) // nb
        ws = np.zeros(nb)
        ats = np.zeros(nb, np.int64)
        for b in prange(nb):
            for i in range(b * step, min((b + 1) * step, x.shape[0])):
                v = np.float64(x[i])
                r = 1.0 / (1.0 + math.exp(-v)) if kind == 0 else math.tanh(v)
                m, e = math.frexp(abs(np.float32(r)))
                ulp = math.ldexp(1.0, max(e - 24, -149))
                u = abs(np.float64(y[i]) - r) / ulp
                if u > ws[b] or u != u:
                    ws[b] = u
                    ats[b] = i
        k = np.argmax(ws)
        return ws[k], ats[k]

    hi = int(np.float32(20.0).view(np.uint32)) + 1
    out = {}
    for label, fn in (("ours", fn_ours), ("ref", fn_ref)):
        best = (0.0, 0.0)
        for sign in (1, -1):
            for lo in range(0, hi, chunk):
                x = np.arange(lo, min(lo + chunk, hi), dtype=np.uint32).view(np.float32)
                if sign < 0:
                    x = -x
                y = fn(x)
                w, at = worst(x, y, fn_ref.kind)
                if w > best[0]:
                    best = (w, float(x[at]))
        out[label] = best
    return out


def _ort_unary(op):
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node(op, ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return lambda x: s.run(None, {"x": x})[0]


@pytest.mark.slow
@pytest.mark.skipif(NO_JIT, reason="2.2e9 inputs: needs the JIT")
@pytest.mark.parametrize("name,code,op,bound", [("sigmoid", 0, "Sigmoid", 3.0), ("tanh", 1, "Tanh", 2.0)])
def test_float32_sigmoid_tanh_ulps_over_all_floats_in_range(name, code, op, bound):
    """Every float32 in [-20, 20] (about 1.1e9 per sign): ours <= ``bound`` ulps and no worse
    than onnxruntime's float32 kernel, both against float64."""
    def ours(x):
        y = np.empty_like(x)
        A.sigmoid_tanh_array(x, code, y)
        return y

    ref = _ort_unary(op)
    ref.kind = code
    res = _max_ulps_chunked(ours, ref)
    print(f"{name}: engine max {res['ours'][0]:.2f} ulps at x={res['ours'][1]!r}; "
          f"onnxruntime max {res['ref'][0]:.2f} ulps at x={res['ref'][1]!r}")
    assert res["ours"][0] <= bound, res
    assert res["ours"][0] <= res["ref"][0], res


def test_float32_sigmoid_tanh_ulps_sampled():
    """A quick version of the exhaustive test: 2e6 inputs, bounded the same way."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-20, 20, 10**6), rng.uniform(-1, 1, 5 * 10**5),
                        np.sign(rng.uniform(-1, 1, 5 * 10**5)) * 10 ** rng.uniform(-38, 0, 5 * 10**5)]).astype(np.float32)
    xd = x.astype(np.float64)
    for code, ref, bound in ((0, 1 / (1 + np.exp(-xd)), 3.0), (1, np.tanh(xd), 2.0)):
        y = np.empty_like(x)
        A.sigmoid_tanh_array(x, code, y)
        ulps = np.abs(y - ref) / np.spacing(np.abs(ref).astype(np.float32)).astype(np.float64)
        assert ulps.max() <= bound, (code, ulps.max(), x[ulps.argmax()])


# ----------------------------------------------------------------------------- NaN patterns
GRU_VARIANTS = {
    "default": {},
    "lbr1": dict(linear_before_reset=1),
    "relu-thresholded": dict(activations=("HardSigmoid", "ThresholdedRelu"), activation_alpha=(0.2, 0.1)),
    "relu": dict(activations=("Sigmoid", "Relu"), linear_before_reset=1),
    "leaky-elu-clip": dict(activations=("Softsign", "LeakyRelu"), clip=0.5),
}


def _nan_model(variant, dense_act, rng, I=3, H=5):
    W, R, B = random_gru_weights(rng, I, H, 1)
    W2, R2, B2 = random_gru_weights(rng, H, H, 1)
    return Model((
        GRU(W=W, R=R, B=B, **GRU_VARIANTS[variant]),
        GRU(W=W2, R=R2, B=B2),
        Dense(kernel=rng.uniform(-0.5, 0.5, (H, 4)).astype(np.float32), bias=np.zeros(4, np.float32),
              activation=dense_act, alpha=0.2),
        Activation(activation="relu" if dense_act != "relu" else "tanh"),
    ))


#: variants whose new-gate function g is unbounded: an inf input makes g = inf, and the
#: update (1 - z) g + z h is then inf or 0 * inf = NaN depending on how the compiled loop
#: orders it (fastmath reassociation): the NaN rule covers NaN inputs, not inf through
#: unbounded gates, so those variants get NaN inputs only.
UNBOUNDED_G = {"relu-thresholded", "relu"}


def _nan_input(rng, B=4, T=6, I=3, infs=True):
    x = rng.uniform(-1, 1, (B, T, I)).astype(np.float32)
    x[1, 2, 0] = np.nan  # row 1: NaN from step 2 on
    if infs:
        x[2, 4, 1] = np.inf  # row 2: inf at step 4 (saturates the bounded gates: finite)
        x[3, 0, 2] = -np.inf
    return x


def _paths(model, x):
    """The model's output on x through each CPU path, as (B, T, out) arrays."""
    B, T = x.shape[:2]
    out = {"run": model.run(x)[0]}
    s = model.stream(B)
    out["Stream.step"] = np.stack([s.step(x[:, t]) for t in range(T)], axis=1)
    s = model.stream(B)
    out["Stream.run chunks"] = np.concatenate([s.run(x[:, :2]), s.run(x[:, 2:3]), s.run(x[:, 3:])], axis=1)
    from gru_engine import StreamPool

    for thr, label in ((1, "StreamPool batched"), (10**6, "StreamPool rows")):
        pool = StreamPool(model, capacity=B + 2, batch_threshold=thr)
        ids = [f"s{b}" for b in range(B)]
        for i in ids:
            pool.open(i)
        out[label] = np.stack([pool.step(ids, x[:, t]) for t in range(T)], axis=1)
    return out


@pytest.mark.parametrize("dense_act", ["sigmoid", "relu", "softmax", "elu", "hard_sigmoid"])
@pytest.mark.parametrize("variant", list(GRU_VARIANTS))
def test_same_nan_pattern_on_every_path(variant, dense_act):
    rng = np.random.default_rng(3)
    model = _nan_model(variant, dense_act, rng)
    x = _nan_input(rng, infs=variant not in UNBOUNDED_G)
    outs = _paths(model, x)
    ref = outs["run"]
    nan = np.isnan(ref)
    assert nan[1, 2:].all() and not nan[0].any(), "NaN must propagate from the NaN step on, and only there"
    for label, y in outs.items():
        assert y.shape == ref.shape, label
        np.testing.assert_array_equal(np.isnan(y), nan, err_msg=f"NaN pattern of {label} vs run")
        np.testing.assert_allclose(y, ref, atol=1e-5, rtol=0, err_msg=label)  # NaNs compare equal


def _cuda_usable() -> bool:
    if SIMULATOR:
        return True
    try:
        from numba import cuda

        return bool(cuda.is_available())
    except Exception:
        return False


needs_cuda = pytest.mark.skipif(not _cuda_usable(), reason="no CUDA GPU and NUMBA_ENABLE_CUDASIM is not set "
                                                           "(CI runs this on the simulator)")


@needs_cuda
@pytest.mark.parametrize("variant", list(GRU_VARIANTS))
def test_cuda_same_nan_pattern_as_cpu(variant):
    rng = np.random.default_rng(5)
    model = _nan_model(variant, "sigmoid", rng)
    x = _nan_input(rng, infs=variant not in UNBOUNDED_G)
    want = model.run(x)[0]
    got = model.run(x, device="cuda")[0]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    s = model.stream(x.shape[0], device="cuda")
    stepped = np.stack([s.step(x[:, t]) for t in range(x.shape[1])], axis=1)
    np.testing.assert_array_equal(np.isnan(stepped), np.isnan(want))


@needs_cuda
def test_cuda_device_activations_match_the_table():
    """Every RNN activation (as the g function of a GRU of H=1 with W=1, R=0, B=0, z = 0...)
    and every Dense activation on the special inputs: CUDA == activations.py, NaN included."""
    x = np.where(np.isfinite(SPECIALS), np.clip(SPECIALS, -60, 60), SPECIALS).astype(np.float32)
    layers = tuple(Activation(activation=a, alpha=0.2) for a in DENSE_ACTIVATIONS if a != "softmax")
    for layer in layers:
        m = Model((layer,), input_size=1)
        want = m.run(x.reshape(1, -1, 1))[0]
        got = m.run(x.reshape(1, -1, 1), device="cuda")[0]
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=layer.activation)
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-30, err_msg=layer.activation)
    for name in RNN_ACTIVATIONS:
        # f = Sigmoid keeps z, r finite; the tested activation is g, the new gate: with W = 1,
        # R = 0 and B = 0, h_t = (1 - z) g(x_t) with z = sigmoid(0) = 0.5 at every step.
        m = Model((GRU(W=np.array([[[0.0], [0.0], [1.0]]], np.float32), R=np.zeros((1, 3, 1), np.float32),
                       B=np.zeros((1, 6), np.float32), activations=("Sigmoid", name)),),
                  input_size=1)
        xs = x.reshape(-1, 1, 1)  # one step per row: each row sees one input
        want = m.run(xs)[0]
        got = m.run(xs, device="cuda")[0]
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=name)
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-30, err_msg=name)

"""Every activation of the engine, once: scalar functions that the kernels inline.

One module holds the math of every nonlinearity the engine evaluates: the 11 ONNX RNN
activations (gate functions of GRU nodes, codes of :data:`gru_engine.model.RNN_ACTIVATIONS`),
the 15 Dense / Activation-layer functions (codes of :data:`gru_engine.model.DENSE_ACTIVATIONS`,
softmax is a row operation: :func:`dense_act_row`), the gate clip and the float32 ``sigmoid``
and ``tanh`` used by every fused GRU loop. The CPU kernels (:mod:`kernels_cpu`,
:mod:`kernels_step`) call these functions. The CUDA device functions of :mod:`kernels_cuda`
are the one other implementation (device code calls CUDA's own ``exp``/``tanh``, and cannot
call CPU intrinsics); tests/test_activations.py runs them (simulator, or a GPU when present)
on the same inputs as this table, every code, NaN, +-inf and +-0 included, and requires the
same NaN pattern and values within a few float32 ulps. ``tests/naive.py`` keeps its own
float64 NumPy formulas on purpose: it is the oracle the kernels are tested against, so it
must not share their code.

**float32 sigmoid and tanh.** ``sigmoid`` and ``tanh`` of a float32 argument are computed
in float32 by :func:`sigmoid32` / :func:`tanh32`: an ``exp`` with Cody-Waite range reduction
and a degree-6 polynomial (Cephes' ``expf`` coefficients), ``2**n`` built from its exponent
bits, and for ``|x| < 0.625`` an odd polynomial for tanh (a relative minimax fit, error
< 5e-9). No library call and no data-dependent branch (the branches are selects), so LLVM
vectorises the fused gate loops. Measured against float64 over every float32 in [-20, 20]
(tests/test_activations.py, slow): tanh32 1.50 ulps, sigmoid32 2.64 ulps at most, where
onnxruntime's Tanh reaches 104 ulps (5.5 on normal-range outputs) and its Sigmoid 7.2e7
(it clamps its argument: at x = -17.7 it returns 1.5e-7 for 2.1e-8). float64 arguments use
``math.exp`` / ``math.tanh``.

**NaN and inf rule.** Every activation maps NaN to NaN (the comparisons are written so that
a NaN argument falls through to an arithmetic expression of it: ``0 if x < 0 else x``, never
``x if x > 0 else 0``), and is the limit of the function at +-inf (sigmoid(-inf) = 0,
tanh(+-inf) = +-1, Relu(inf) = inf, Affine(inf) = +-inf or NaN as IEEE arithmetic gives).
The clip of ONNX GRU nodes keeps NaN. The same input therefore gives the same NaN pattern in
``Model.run``, ``Stream.step``, chunked ``Stream.run``, ``StreamPool`` and on CUDA
(tests/test_activations.py checks each).
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from . import _cache  # noqa: F401  (numba caches the engine's kernels outside the package; before any @njit)
from . import config

_FM = config.FASTMATH
_EM = config.ERROR_MODEL

_f = np.float32


# --------------------------------------------------------------------------- float32 exp
def bits_to_f32(i):
    """The float32 whose bit pattern is the int32 ``i`` (a bitcast: 2**n from its exponent)."""
    return np.array(i, np.int32).view(np.float32)[()]


@intrinsic
def _bitcast_i32_f32(typingctx, i):
    if not isinstance(i, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        v = args[0]
        if v.type.width != 32:
            v = builder.trunc(v, ir.IntType(32))
        return builder.bitcast(v, ir.FloatType())

    return types.float32(i), codegen


@overload(bits_to_f32, inline="always")
def _ov_bits_to_f32(i):
    if isinstance(i, types.Integer):
        return lambda i: _bitcast_i32_f32(i)
    return None


_EXP_HI = _f(88.0)  # 2**127 * exp(r) stays finite: exp32 saturates at exp(88) = 1.65e38
_EXP_LO = _f(-87.33654)  # 2**-126, the smallest normal float32: no subnormal scale factor
_EXP_MAX = _f(88.72284)  # log(FLT_MAX): inf above
_INF32 = _f(np.inf)
_LOG2E = _f(1.44269504088896341)
_LN2_HI = _f(0.693359375)  # ln 2 in two parts: n * _LN2_HI is exact for |n| <= 127
_LN2_LO = _f(-2.12194440e-4)
_E6 = _f(1.9875691500e-4)  # Cephes expf: exp(r) = 1 + r + r**2 * P(r), |r| <= ln(2) / 2
_E5 = _f(1.3981999507e-3)
_E4 = _f(8.3334519073e-3)
_E3 = _f(4.1665795894e-2)
_E2 = _f(1.6666665459e-1)
_E1 = _f(5.0000001201e-1)
_ZERO = _f(0.0)
_HALF = _f(0.5)
_ONE = _f(1.0)
_TWO = _f(2.0)


@njit(cache=True, fastmath=_FM, error_model=_EM, inline="always")
def exp32(x):
    """exp of float32 ``x`` in float32: <= 1.25 ulps on [-87.3, 88]; 0 below (the true value
    is subnormal), exp(88) on (88, 88.72] (sigmoid32 and tanh32 call it with x <= 0 only),
    inf above; NaN -> NaN."""
    x0 = x
    x = _EXP_HI if x > _EXP_HI else x
    x = _EXP_LO if x < _EXP_LO else x
    n = np.floor(x * _LOG2E + _HALF)
    ni = np.int32(n)
    # The second product uses n converted back from the integer: the same value, but under
    # fastmath's reassociation LLVM would otherwise fold x - n*HI - n*LO into x - n*(HI+LO)
    # and undo the two-part reduction (measured: 4.4 ulps at |x| = 87 instead of 1).
    r = x - n * _LN2_HI
    r = r - np.float32(ni) * _LN2_LO
    p = _E6 * r + _E5
    p = p * r + _E4
    p = p * r + _E3
    p = p * r + _E2
    p = p * r + _E1
    y = p * (r * r) + r + _ONE
    y = y * bits_to_f32((ni + 127) << 23)
    y = _ZERO if x0 < _EXP_LO else y
    return _INF32 if x0 > _EXP_MAX else y


# Odd minimax polynomial of tanh on [0, 0.625]: tanh(x) = x + x**3 * T(x**2), relative error
# < 5e-9 (fitted in float64 by iteratively reweighted least squares, checked in the tests).
_TANH_SMALL = _f(0.625)
_T1 = _f(-0.33333284016826104)
_T2 = _f(0.13331493909757772)
_T3 = _f(-0.05374372583487421)
_T4 = _f(0.020651353789460113)
_T5 = _f(-0.005717923507674857)
_TANH_SAT = _f(10.0)  # tanh(10) rounds to 1.0f


@njit(cache=True, fastmath=_FM, error_model=_EM, inline="always")
def tanh32(x):
    """tanh of float32 ``x`` in float32, branch-free (<= 2 ulps on [-20, 20]; NaN -> NaN)."""
    a = abs(x)
    a = _TANH_SAT if a > _TANH_SAT else a
    e = exp32(-_TWO * a)
    big = (_ONE - e) / (_ONE + e)
    big = -big if x < _ZERO else big
    u = x * x
    p = _T5 * u + _T4
    p = p * u + _T3
    p = p * u + _T2
    p = p * u + _T1
    small = x + x * u * p
    return small if a < _TANH_SMALL else big


@njit(cache=True, fastmath=_FM, error_model=_EM, inline="always")
def sigmoid32(x):
    """logistic of float32 ``x`` in float32, branch-free (<= 3 ulps on [-20, 20]; NaN -> NaN)."""
    e = exp32(-abs(x))  # in (0, 1]: no overflow, and for x < 0 the small result keeps e's accuracy
    return (_ONE if x >= _ZERO else e) / (_ONE + e)


def sigmoid(x):
    """logistic of ``x``: :func:`sigmoid32` for float32, ``math.exp`` otherwise."""
    if isinstance(x, np.float32):
        return sigmoid32(x)
    return 1.0 / (1.0 + np.exp(-x))


def tanh(x):
    """tanh of ``x``: :func:`tanh32` for float32, ``math.tanh`` otherwise."""
    if isinstance(x, np.float32):
        return tanh32(x)
    return math.tanh(x)


@overload(sigmoid, jit_options={"fastmath": _FM, "error_model": _EM})
def _ov_sigmoid(x):
    if x == types.float32:
        return lambda x: sigmoid32(x)
    return lambda x: 1.0 / (1.0 + math.exp(-x))


@overload(tanh, jit_options={"fastmath": _FM, "error_model": _EM})
def _ov_tanh(x):
    if x == types.float32:
        return lambda x: tanh32(x)
    return lambda x: math.tanh(x)


# --------------------------------------------------------------------------- ONNX RNN activations
_INF = np.inf
_NEG_INF = -np.inf


@njit(cache=True, fastmath=_FM, error_model=_EM, inline="always")
def _softsign(x):
    """x / (1 + |x|), +-1 at +-inf (where the quotient is inf / inf)."""
    if abs(x) == _INF:
        return _ONE if x > 0.0 else -_ONE
    return x / (1.0 + abs(x))


@njit(cache=True, fastmath=_FM, error_model=_EM, inline="always")
def clip(x, c):
    """ONNX ``clip`` of a gate pre-activation: x in [-c, c] when c > 0 (NaN stays NaN)."""
    if c > 0.0:
        x = -c if x < -c else x
        x = c if x > c else x
    return x


@njit(cache=True, fastmath=_FM, error_model=_EM, inline="always")
def rnn_act(code, x, alpha, beta):
    """ONNX RNN activation ``code`` (model.RNN_ACTIVATIONS) of scalar ``x``; NaN -> NaN."""
    if code == 0:  # Sigmoid
        return sigmoid(x)
    elif code == 1:  # Tanh
        return tanh(x)
    elif code == 2:  # Relu
        return _ZERO if x < 0.0 else x
    elif code == 3:  # Affine
        return alpha * x + beta
    elif code == 4:  # LeakyRelu
        return alpha * x if x < 0.0 else x
    elif code == 5:  # ThresholdedRelu
        return _ZERO if x <= alpha else x
    elif code == 6:  # ScaledTanh
        return alpha * tanh(beta * x)
    elif code == 7:  # HardSigmoid
        v = alpha * x + beta
        v = _ZERO if v < 0.0 else v
        return _ONE if v > 1.0 else v
    elif code == 8:  # Elu
        return alpha * math.expm1(x) if x < 0.0 else x
    elif code == 9:  # Softsign
        return _softsign(x)
    else:  # Softplus
        return math.log1p(math.exp(x)) if x < 20.0 else x + math.log1p(math.exp(-x))


# --------------------------------------------------------------------------- Dense activations
_SELU_L = 1.0507009873554805
_SELU_A = 1.6732632423543772
_INV_SQRT2 = 0.7071067811865476
_GELU_C = 0.7978845608028654
_GELU_K = 0.044715


@njit(cache=True, fastmath=_FM, error_model=_EM, inline="always")
def dense_act(code, v, alpha):
    """Element-wise Dense activation ``code`` (model.DENSE_ACTIVATIONS, not softmax = 4) of ``v``.

    NaN -> NaN. ``alpha`` is the layer's parameter (elu: 0 means 1; leaky_relu: the slope).
    """
    if code == 1:  # sigmoid
        return sigmoid(v)
    elif code == 2:  # tanh
        return tanh(v)
    elif code == 3:  # relu
        return _ZERO if v < 0.0 else v
    elif code == 5:  # hard_sigmoid (Keras 3: relu6(x + 3) / 6)
        w = v / 6.0 + 0.5
        w = _ZERO if w < 0.0 else w
        return _ONE if w > 1.0 else w
    elif code == 6:  # elu
        a = alpha if alpha != 0.0 else 1.0
        return a * math.expm1(v) if v < 0.0 else v
    elif code == 7:  # selu
        return _SELU_L * (_SELU_A * math.expm1(v) if v < 0.0 else v)
    elif code == 8:  # gelu (erf)
        return _ZERO if v == _NEG_INF else 0.5 * v * (1.0 + math.erf(v * _INV_SQRT2))
    elif code == 9:  # swish / silu
        return _ZERO if v == _NEG_INF else v * sigmoid(v)
    elif code == 10:  # softplus
        return math.log1p(math.exp(v)) if v < 20.0 else v + math.log1p(math.exp(-v))
    elif code == 11:  # softsign
        return _softsign(v)
    elif code == 12:  # leaky_relu
        return alpha * v if v < 0.0 else v
    elif code == 13:  # gelu (tanh approximation)
        return _ZERO if v == _NEG_INF else 0.5 * v * (1.0 + tanh(_GELU_C * (v + _GELU_K * v * v * v)))
    elif code == 14:  # exp
        return np.exp(v)  # (inf on overflow, also without the JIT)
    return v  # 0: linear


@njit(cache=True, fastmath=_FM, error_model=_EM, inline="always")
def dense_act_row(y, code, alpha):
    """Dense activation ``code`` in place on the row y (F,); softmax (code 4) over the row.

    Softmax of a row holding a NaN is NaN everywhere (its max and its sum are NaN).
    """
    F = y.shape[0]
    if code == 0:
        return
    if code == 4:
        m = y[0]
        for j in range(1, F):
            v = y[j]
            m = v if (v > m or v != v) else m  # NaN wins, as in the sum below
        s = y[0] * 0.0
        for j in range(F):
            e = math.exp(y[j] - m)
            y[j] = e
            s += e
        inv = 1.0 / s
        for j in range(F):
            y[j] *= inv
        return
    for j in range(F):
        y[j] = dense_act(code, y[j], alpha)


@njit(cache=True, fastmath=_FM, error_model=_EM, nogil=True)
def rnn_act_array(x, code, alpha, beta, out):
    """out[i] = rnn_act(code, x[i], alpha, beta) (tests and the CUDA cross-check)."""
    for i in range(x.shape[0]):
        out[i] = rnn_act(code, x[i], alpha, beta)


@njit(cache=True, fastmath=_FM, error_model=_EM, nogil=True)
def dense_act_array(x, code, alpha, out):
    """out[i] = dense_act(code, x[i], alpha) (tests and the CUDA cross-check)."""
    for i in range(x.shape[0]):
        out[i] = dense_act(code, x[i], alpha)


@njit(cache=True, fastmath=_FM, error_model=_EM, nogil=True)
def sigmoid_tanh_array(x, code, out):
    """out = sigmoid32(x) (code 0) or tanh32(x) (code 1) for float32 x (tests); vectorised."""
    if code == 0:
        for i in range(x.shape[0]):
            out[i] = sigmoid32(x[i])
    else:
        for i in range(x.shape[0]):
            out[i] = tanh32(x[i])

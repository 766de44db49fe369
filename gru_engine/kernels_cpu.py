"""Numba CPU kernels. Arrays and scalars in, results written into arrays passed in.

Kernels trust their inputs: the callers in :mod:`gru_engine.api` validate, cast to the
model dtype, make arrays C-contiguous and allocate outputs and scratch. Every kernel has
one compiled signature per dtype (float32, float64) and is cached on disk.

Activation codes are those of :data:`gru_engine.model.RNN_ACTIVATIONS` (GRU gates) and
:data:`gru_engine.model.DENSE_ACTIVATIONS` (Dense / Activation layers).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from . import config

_FM = config.FASTMATH
_EM = config.ERROR_MODEL


@njit(cache=True, fastmath=_FM, error_model=_EM, inline="always")
def rnn_act(code, x, alpha, beta):
    """ONNX RNN activation ``code`` applied to scalar ``x`` (codes: model.RNN_ACTIVATIONS)."""
    if code == 0:  # Sigmoid
        return 1.0 / (1.0 + math.exp(-x))
    elif code == 1:  # Tanh
        return math.tanh(x)
    elif code == 2:  # Relu
        return max(x, 0.0)
    elif code == 3:  # Affine
        return alpha * x + beta
    elif code == 4:  # LeakyRelu
        return x if x >= 0.0 else alpha * x
    elif code == 5:  # ThresholdedRelu
        return x if x > alpha else 0.0
    elif code == 6:  # ScaledTanh
        return alpha * math.tanh(beta * x)
    elif code == 7:  # HardSigmoid
        return min(max(alpha * x + beta, 0.0), 1.0)
    elif code == 8:  # Elu
        return x if x >= 0.0 else alpha * (math.exp(x) - 1.0)
    elif code == 9:  # Softsign
        return x / (1.0 + abs(x))
    else:  # Softplus
        return math.log1p(math.exp(x)) if x < 20.0 else x + math.log1p(math.exp(-x))


@njit(cache=True, fastmath=_FM, error_model=_EM, inline="always")
def _clip(x, c):
    if c > 0.0:
        return min(max(x, -c), c)
    return x


@njit(cache=True, fastmath=_FM, error_model=_EM, parallel=True, nogil=True)
def gru_direction(
    XP, xo, R, Rb_h, h, mask, use_mask, reverse, lbr, acts, clip,
    zero_invalid, empty_zero, time_rev_out, Y, yo, gh, rh,
):
    """Run one GRU direction over whole sequences (all batch rows, rows in parallel).

    ONNX GRU equations, gates z, r, h:
      z = f(xp_z + R_z h),  r = f(xp_r + R_r h)
      h~ = g(xp_h + r * (R_h h + Rb_h))      when lbr = 1
      h~ = g(xp_h + R_h (r * h))             when lbr = 0 (Rb_h folded into xp_h)
      h  = (1 - z) * h~ + z * h

    XP (B, T, C): input projections ``x W' + Wb`` with Rb_z, Rb_r (and Rb_h when lbr = 0)
        added; this direction's 3H columns start at ``xo``.
    R (3H, H): recurrent weights of this direction. Rb_h (H,): recurrent h bias (lbr = 1).
    h (B, H): initial state in, final state out (last valid step).
    mask (B, T) uint8: step valid when nonzero (read only if use_mask).
    acts (6,): f code, f alpha, f beta, g code, g alpha, g beta. clip: 0 for none.
    zero_invalid: invalid steps output 0 (else the previous output, Keras masks).
    empty_zero: a row with no valid step ends with h = 0 (onnxruntime, length 0).
    time_rev_out: write the output of step t at T-1-t (Keras go_backwards).
    Y (B, T, CY): outputs, this direction's H columns start at ``yo``.
    gh (B, 3H), rh (B, H): scratch, one row per batch row (no sharing between threads).
    """
    Bn = XP.shape[0]
    T = XP.shape[1]
    H = R.shape[1]
    fc = int(acts[0])
    fa = acts[1]
    fb = acts[2]
    gc = int(acts[3])
    ga = acts[4]
    gb = acts[5]
    fast = fc == 0 and gc == 1 and clip <= 0.0
    one = XP.dtype.type(1.0)
    for b in prange(Bn):
        hb = h[b]
        ghb = gh[b]
        rhb = rh[b]
        any_valid = False
        for s in range(T):
            t = T - 1 - s if reverse else s
            to = T - 1 - t if time_rev_out else t
            yb = Y[b, to]
            if use_mask and mask[b, t] == 0:
                if zero_invalid:
                    for j in range(H):
                        yb[yo + j] = 0.0
                else:
                    for j in range(H):
                        yb[yo + j] = hb[j]
                continue
            any_valid = True
            xp = XP[b, t]
            # z, r rows of R h (and h rows too when lbr = 1)
            nrows = 3 * H if lbr else 2 * H
            for j in range(nrows):
                acc = XP.dtype.type(0.0)
                Rj = R[j]
                for k in range(H):
                    acc += Rj[k] * hb[k]
                ghb[j] = acc
            if fast:
                for j in range(2 * H):
                    ghb[j] = one / (one + math.exp(-(xp[xo + j] + ghb[j])))
            else:
                for j in range(2 * H):
                    ghb[j] = rnn_act(fc, _clip(xp[xo + j] + ghb[j], clip), fa, fb)
            if not lbr:
                for k in range(H):
                    rhb[k] = ghb[H + k] * hb[k]
                for j in range(H):
                    acc = XP.dtype.type(0.0)
                    Rj = R[2 * H + j]
                    for k in range(H):
                        acc += Rj[k] * rhb[k]
                    ghb[2 * H + j] = acc
                for j in range(H):
                    pre = xp[xo + 2 * H + j] + ghb[2 * H + j]
                    if fast:
                        ht = math.tanh(pre)
                    else:
                        ht = rnn_act(gc, _clip(pre, clip), ga, gb)
                    z = ghb[j]
                    hb[j] = (one - z) * ht + z * hb[j]
            else:
                for j in range(H):
                    pre = xp[xo + 2 * H + j] + ghb[H + j] * (ghb[2 * H + j] + Rb_h[j])
                    if fast:
                        ht = math.tanh(pre)
                    else:
                        ht = rnn_act(gc, _clip(pre, clip), ga, gb)
                    z = ghb[j]
                    hb[j] = (one - z) * ht + z * hb[j]
            for j in range(H):
                yb[yo + j] = hb[j]
        if empty_zero and not any_valid:
            for j in range(H):
                hb[j] = 0.0


@njit(cache=True, fastmath=_FM, error_model=_EM, nogil=True)
def dense_act_inplace(Y, code, alpha):
    """Apply Dense activation ``code`` in place to Y (N, F); softmax over the last axis."""
    N = Y.shape[0]
    F = Y.shape[1]
    one = Y.dtype.type(1.0)
    for n in range(N):
        y = Y[n]
        if code == 0:
            return
        elif code == 1:
            for j in range(F):
                y[j] = one / (one + math.exp(-y[j]))
        elif code == 2:
            for j in range(F):
                y[j] = math.tanh(y[j])
        elif code == 3:
            for j in range(F):
                y[j] = max(y[j], 0.0)
        elif code == 4:
            m = y[0]
            for j in range(1, F):
                m = max(m, y[j])
            s = Y.dtype.type(0.0)
            for j in range(F):
                e = math.exp(y[j] - m)
                y[j] = e
                s += e
            inv = one / s
            for j in range(F):
                y[j] *= inv
        elif code == 5:  # hard_sigmoid (Keras 3: relu6(x + 3) / 6)
            for j in range(F):
                y[j] = min(max(y[j] / 6.0 + 0.5, 0.0), 1.0)
        elif code == 6:  # elu
            a = alpha if alpha != 0.0 else 1.0
            for j in range(F):
                v = y[j]
                y[j] = v if v > 0.0 else a * (math.exp(v) - 1.0)
        elif code == 7:  # selu
            for j in range(F):
                v = y[j]
                y[j] = 1.0507009873554805 * (v if v > 0.0 else 1.6732632423543772 * (math.exp(v) - 1.0))
        elif code == 8:  # gelu (erf)
            for j in range(F):
                v = y[j]
                y[j] = 0.5 * v * (1.0 + math.erf(v * 0.7071067811865476))
        elif code == 9:  # swish / silu
            for j in range(F):
                v = y[j]
                y[j] = v / (one + math.exp(-v))
        elif code == 10:  # softplus
            for j in range(F):
                v = y[j]
                y[j] = math.log1p(math.exp(v)) if v < 20.0 else v + math.log1p(math.exp(-v))
        elif code == 11:  # softsign
            for j in range(F):
                v = y[j]
                y[j] = v / (one + abs(v))
        elif code == 12:  # leaky_relu
            for j in range(F):
                v = y[j]
                y[j] = v if v >= 0.0 else alpha * v
        elif code == 13:  # gelu (tanh approximation)
            for j in range(F):
                v = y[j]
                y[j] = 0.5 * v * (1.0 + math.tanh(0.7978845608028654 * (v + 0.044715 * v * v * v)))
        elif code == 14:  # exp
            for j in range(F):
                y[j] = math.exp(y[j])

"""Numba CPU kernels of the layers around the GRUs (:mod:`gru_engine.layers`).

Same contract as :mod:`gru_engine.kernels_cpu`: arrays and scalars in, results written into
arrays the caller allocated; no allocation, no Python objects, one compiled signature per
dtype (C-contiguous, writable float32 or float64). Inputs are trusted: the runners in
:mod:`gru_engine.layers` validate, cast and allocate.

Sequences are batch-first, channels-last: ``x (B, T, C)``.
"""

from __future__ import annotations

import math

from numba import njit, prange

from . import _cache  # noqa: F401  (numba caches the engine's kernels outside the package; before any @njit)
from . import config

_FM = config.FASTMATH
_EM = config.ERROR_MODEL


@njit(cache=True, fastmath=_FM, error_model=_EM, inline="always")
def _conv_row(x, Wp, bias, stride, dilation, groups, start, y, b, o):
    """Output step ``o`` of batch row ``b`` (see :func:`conv1d`)."""
    T = x.shape[1]
    Cout = y.shape[2]
    K = Wp.shape[0]
    Cg = Wp.shape[1]
    Og = Cout // groups
    yo = y[b, o]
    for oc in range(Cout):
        yo[oc] = bias[oc]
    t0 = start + o * stride
    for k in range(K):
        t = t0 + k * dilation
        if t < 0 or t >= T:
            continue
        xt = x[b, t]
        Wk = Wp[k]
        for g in range(groups):
            for c in range(Cg):
                xv = xt[g * Cg + c]
                Wc = Wk[c]
                for oc in range(g * Og, (g + 1) * Og):
                    yo[oc] += xv * Wc[oc]


@njit(cache=True, fastmath=_FM, error_model=_EM, parallel=True, nogil=True)
def conv1d(x, Wp, bias, stride, dilation, groups, start, y):
    """1-D convolution (cross-correlation, as ONNX Conv / torch / Keras) over time.

    x (B, T, Cin); Wp (K, Cin/groups, Cout): the kernel packed so the output channel is the
    contiguous axis (``Wp[k, c, o] = W[o, c, k]`` of the ONNX ``(Cout, Cin/groups, K)`` kernel);
    bias (Cout,); y (B, To, Cout) receives
        y[b, o, oc] = bias[oc] + sum_{k, c} Wp[k, c, oc] * x[b, start + o*stride + k*dilation, g*Cg + c]
    with g the group of oc; input indices outside [0, T) read as 0 (zero padding).
    ``start`` is minus the left padding (or an offset into a longer buffer when streaming).
    Output steps run in parallel; :func:`conv1d_serial` is the same for small calls.
    """
    To = y.shape[1]
    for n in prange(x.shape[0] * To):
        _conv_row(x, Wp, bias, stride, dilation, groups, start, y, n // To, n % To)


@njit(cache=True, fastmath=_FM, error_model=_EM, nogil=True)
def conv1d_serial(x, Wp, bias, stride, dilation, groups, start, y):
    """:func:`conv1d` on one thread (no thread-pool wake-up: streaming steps, small inputs)."""
    To = y.shape[1]
    for n in range(x.shape[0] * To):
        _conv_row(x, Wp, bias, stride, dilation, groups, start, y, n // To, n % To)


@njit(cache=True, fastmath=_FM, error_model=_EM, nogil=True)
def affine_channels(x, scale, shift, y):
    """``y[n, f] = x[n, f] * scale[f] + shift[f]`` (inference batch normalization); x (N, F),
    y may alias x."""
    N = x.shape[0]
    F = x.shape[1]
    for n in range(N):
        for f in range(F):
            y[n, f] = x[n, f] * scale[f] + shift[f]


@njit(cache=True, fastmath=_FM, error_model=_EM, nogil=True)
def layer_norm(x, gamma, beta, eps, y):
    """Layer normalization over the last axis, Keras / torch / ONNX formula:
    ``y = (x - mean) / sqrt(var + eps) * gamma + beta`` with the biased variance.
    x (N, F); y may alias x. Sums accumulate in float64."""
    N = x.shape[0]
    F = x.shape[1]
    for n in range(N):
        xr = x[n]
        m = 0.0
        for f in range(F):
            m += xr[f]
        m /= F
        v = 0.0
        for f in range(F):
            d = xr[f] - m
            v += d * d
        v /= F
        inv = 1.0 / math.sqrt(v + eps)
        for f in range(F):
            y[n, f] = (xr[f] - m) * inv * gamma[f] + beta[f]


@njit(cache=True, fastmath=_FM, error_model=_EM, nogil=True)
def unit_norm(x, eps, y):
    """L2 normalization over the last axis, Keras 3 ``UnitNormalization`` / torch
    ``F.normalize``: ``y = x / max(||x||_2, eps)``. x (N, F); y may alias x."""
    N = x.shape[0]
    F = x.shape[1]
    for n in range(N):
        ss = 0.0
        for f in range(F):
            ss += x[n, f] * x[n, f]
        nrm = math.sqrt(ss)
        inv = 1.0 / (nrm if nrm > eps else eps)
        for f in range(F):
            y[n, f] = x[n, f] * inv


@njit(cache=True, fastmath=_FM, error_model=_EM, inline="always")
def _pool_row(x, pool, stride, start, is_max, count_include_pad, y, b, o):
    """Output step ``o`` of batch row ``b`` (see :func:`pool1d`)."""
    T = x.shape[1]
    F = x.shape[2]
    yo = y[b, o]
    t0 = start + o * stride
    lo = max(t0, 0)
    hi = min(t0 + pool, T)
    if is_max:
        for f in range(F):
            yo[f] = -math.inf
        for t in range(lo, hi):
            xt = x[b, t]
            for f in range(F):
                if xt[f] > yo[f] or xt[f] != xt[f]:
                    yo[f] = xt[f]
    else:
        for f in range(F):
            yo[f] = 0.0
        for t in range(lo, hi):
            xt = x[b, t]
            for f in range(F):
                yo[f] += xt[f]
        cnt = pool if count_include_pad else hi - lo
        inv = 1.0 / cnt if cnt > 0 else 0.0
        for f in range(F):
            yo[f] *= inv


@njit(cache=True, fastmath=_FM, error_model=_EM, parallel=True, nogil=True)
def pool1d(x, pool, stride, start, is_max, count_include_pad, y):
    """Average / max pooling over time. x (B, T, F); y (B, To, F).

    Window ``o`` covers input steps ``start + o*stride + j`` for j in [0, pool); steps
    outside [0, T) are padding: ignored by max, and by the average unless
    ``count_include_pad`` (then they count as zeros, the divisor is ``pool``).
    """
    To = y.shape[1]
    for n in prange(x.shape[0] * To):
        _pool_row(x, pool, stride, start, is_max, count_include_pad, y, n // To, n % To)


@njit(cache=True, fastmath=_FM, error_model=_EM, nogil=True)
def pool1d_serial(x, pool, stride, start, is_max, count_include_pad, y):
    """:func:`pool1d` on one thread."""
    To = y.shape[1]
    for n in range(x.shape[0] * To):
        _pool_row(x, pool, stride, start, is_max, count_include_pad, y, n // To, n % To)


@njit(cache=True, fastmath=_FM, error_model=_EM, nogil=True)
def global_pool(x, mask, use_mask, is_max, y):
    """Average / max over all steps. x (B, T, F); mask (B, T) uint8 (read if use_mask:
    the average runs over the unmasked steps only, as Keras ``GlobalAveragePooling1D``);
    y (B, F)."""
    Bn = x.shape[0]
    T = x.shape[1]
    F = x.shape[2]
    for b in range(Bn):
        yb = y[b]
        if is_max:
            for f in range(F):
                yb[f] = -math.inf
            for t in range(T):
                xt = x[b, t]
                for f in range(F):
                    if xt[f] > yb[f] or xt[f] != xt[f]:
                        yb[f] = xt[f]
        else:
            for f in range(F):
                yb[f] = 0.0
            cnt = 0
            for t in range(T):
                if use_mask and mask[b, t] == 0:
                    continue
                cnt += 1
                xt = x[b, t]
                for f in range(F):
                    yb[f] += xt[f]
            inv = 1.0 / cnt if cnt > 0 else math.nan
            for f in range(F):
                yb[f] *= inv


# ----------------------------------------------------------------------------- streaming


@njit(cache=True, fastmath=_FM, error_model=_EM, nogil=True)
def ring_put(ring, last, x):
    """``ring[:, last] = x`` (x (B, F)): the newest input of a streaming window."""
    for b in range(ring.shape[0]):
        for f in range(ring.shape[2]):
            ring[b, last, f] = x[b, f]


@njit(cache=True, fastmath=_FM, error_model=_EM, nogil=True)
def conv1d_ring(ring, last, x, Wp, bias, dilation, groups, y):
    """One step of a causal convolution over a ring buffer (streaming): store the newest
    input ``x`` (B, Cin) at ring index ``last``, then compute the output whose window ends there.

    ring (B, S, Cin): the last S padded inputs, position p at ``ring[:, p % S]``. Tap k reads
    the input ``(K-1-k)*dilation`` steps before the newest. Wp, bias as :func:`conv1d`;
    y (B, Cout) (the caller applies the activation).
    """
    Bn = ring.shape[0]
    S = ring.shape[1]
    Cout = y.shape[1]
    K = Wp.shape[0]
    Cg = Wp.shape[1]
    Og = Cout // groups
    for b in range(Bn):
        for f in range(ring.shape[2]):
            ring[b, last, f] = x[b, f]
    for b in range(Bn):
        yo = y[b]
        for oc in range(Cout):
            yo[oc] = bias[oc]
        for k in range(K):
            xt = ring[b, (last - (K - 1 - k) * dilation + S) % S]
            Wk = Wp[k]
            for g in range(groups):
                for c in range(Cg):
                    xv = xt[g * Cg + c]
                    Wc = Wk[c]
                    for oc in range(g * Og, (g + 1) * Og):
                        yo[oc] += xv * Wc[oc]


@njit(cache=True, fastmath=_FM, error_model=_EM, nogil=True)
def pool1d_ring(ring, last, pool, is_max, y):
    """One output step of an unpadded pooling window ending at ring index ``last``
    (see :func:`conv1d_ring`); y (B, F)."""
    Bn = ring.shape[0]
    S = ring.shape[1]
    F = y.shape[1]
    for b in range(Bn):
        yo = y[b]
        if is_max:
            for f in range(F):
                yo[f] = -math.inf
        else:
            for f in range(F):
                yo[f] = 0.0
        for j in range(pool):
            xt = ring[b, (last - j + S) % S]
            for f in range(F):
                if is_max:
                    if xt[f] > yo[f] or xt[f] != xt[f]:
                        yo[f] = xt[f]
                else:
                    yo[f] += xt[f]
        if not is_max:
            inv = 1.0 / pool
            for f in range(F):
                yo[f] *= inv

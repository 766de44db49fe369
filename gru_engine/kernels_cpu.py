"""Numba CPU kernels. Arrays and scalars in, results written into arrays passed in.

Kernels trust their inputs: the callers in :mod:`gru_engine.api` validate, cast to the
model dtype, make arrays C-contiguous and allocate outputs and scratch. Every kernel has
one compiled signature per dtype (float32, float64) and is cached on disk.

Activation codes are those of :data:`gru_engine.model.RNN_ACTIVATIONS` (GRU gates) and
:data:`gru_engine.model.DENSE_ACTIVATIONS` (Dense / Activation layers).
"""

from __future__ import annotations


import numpy as np
from numba import njit, prange

from . import _cache  # noqa: F401  (numba caches the engine's kernels outside the package; before any @njit)
from . import config
from .activations import clip, dense_act_row, rnn_act, sigmoid, sigmoid32, sigmoid_tanh_array, tanh, tanh32
from .kernels_gemm import matmul_packed

_FM = config.FASTMATH
_EM = config.ERROR_MODEL


# Gate math: every activation comes from gru_engine.activations (one implementation each).
# ``approx`` in the fused loops below means float32 (sigmoid32 / tanh32, vectorised); the
# generic path's rnn_act picks the same functions for float32 arguments.
fast_tanh = tanh32
fast_sigmoid = sigmoid32
_clip = clip


@njit(cache=True, fastmath=_FM, error_model=_EM, nogil=True)
def fast_act_array(x, code, out):
    """Apply sigmoid32 (code 0) or tanh32 (code 1) to float32 ``x`` (N,) into ``out`` (tests)."""
    sigmoid_tanh_array(x, code, out)


@njit(cache=True, fastmath=_FM, error_model=_EM, inline="always")
def _gates_fused(xp, xo, bx, g, Rb_h, hb, H, lbr, approx, yb, yo):
    """Gate math of one step for one row, sigmoid/tanh, no clip (the common case).

    xp[xo:xo+3H] input projection (bias not yet added), bx (3H,) bias folded for the input
    side (Wb + Rb_z, Rb_r; + Rb_h when lbr = 0). g (3H,) recurrent products: R_z h, R_r h,
    and R_h h (lbr = 1) or R_h (r * h) (lbr = 0). hb (H,) state, updated in place; yb[yo:]
    receives the new state. ``approx`` selects the float32 rational activations.
    """
    one = hb.dtype.type(1.0)
    if approx:
        if lbr:
            for j in range(H):
                z = fast_sigmoid(xp[xo + j] + bx[j] + g[j])
                r = fast_sigmoid(xp[xo + H + j] + bx[H + j] + g[H + j])
                n = fast_tanh(xp[xo + 2 * H + j] + bx[2 * H + j] + r * (g[2 * H + j] + Rb_h[j]))
                v = n + z * (hb[j] - n)
                hb[j] = v
                yb[yo + j] = v
        else:
            for j in range(H):
                z = g[j]
                n = fast_tanh(xp[xo + 2 * H + j] + bx[2 * H + j] + g[2 * H + j])
                v = n + z * (hb[j] - n)
                hb[j] = v
                yb[yo + j] = v
    else:
        if lbr:
            for j in range(H):
                z = sigmoid(xp[xo + j] + bx[j] + g[j])
                r = sigmoid(xp[xo + H + j] + bx[H + j] + g[H + j])
                n = tanh(xp[xo + 2 * H + j] + bx[2 * H + j] + r * (g[2 * H + j] + Rb_h[j]))
                v = (one - z) * n + z * hb[j]
                hb[j] = v
                yb[yo + j] = v
        else:
            for j in range(H):
                z = g[j]
                n = tanh(xp[xo + 2 * H + j] + bx[2 * H + j] + g[2 * H + j])
                v = (one - z) * n + z * hb[j]
                hb[j] = v
                yb[yo + j] = v


@njit(cache=True, fastmath=_FM, error_model=_EM, inline="always")
def _zr_gates(xp, xo, bx, g, hb, rh, H, approx, generic, fc, fa, fb, clip):
    """lbr = 0, first half of a step: g[0:H] <- z, rh <- r * h (g[0:2H] held R_zr h)."""
    one = hb.dtype.type(1.0)
    if generic:
        for j in range(H):
            g[j] = rnn_act(fc, _clip(xp[xo + j] + bx[j] + g[j], clip), fa, fb)
            rh[j] = rnn_act(fc, _clip(xp[xo + H + j] + bx[H + j] + g[H + j], clip), fa, fb) * hb[j]
    elif approx:
        for j in range(H):
            g[j] = fast_sigmoid(xp[xo + j] + bx[j] + g[j])
            rh[j] = fast_sigmoid(xp[xo + H + j] + bx[H + j] + g[H + j]) * hb[j]
    else:
        for j in range(H):
            g[j] = sigmoid(xp[xo + j] + bx[j] + g[j])
            rh[j] = sigmoid(xp[xo + H + j] + bx[H + j] + g[H + j]) * hb[j]


@njit(cache=True, fastmath=_FM, error_model=_EM, inline="always")
def _gates_generic(xp, xo, bx, g, Rb_h, hb, H, lbr, fc, fa, fb, gc, ga, gb, clip, yb, yo):
    """Gate math of one step for one row, any ONNX activations and clip (scalar code)."""
    one = hb.dtype.type(1.0)
    for j in range(H):
        if lbr:
            z = rnn_act(fc, _clip(xp[xo + j] + bx[j] + g[j], clip), fa, fb)
            r = rnn_act(fc, _clip(xp[xo + H + j] + bx[H + j] + g[H + j], clip), fa, fb)
            pre = xp[xo + 2 * H + j] + bx[2 * H + j] + r * (g[2 * H + j] + Rb_h[j])
        else:
            z = g[j]
            pre = xp[xo + 2 * H + j] + bx[2 * H + j] + g[2 * H + j]
        n = rnn_act(gc, _clip(pre, clip), ga, gb)
        v = (one - z) * n + z * hb[j]
        hb[j] = v
        yb[yo + j] = v


@njit(cache=True, fastmath=_FM, error_model=_EM, nogil=True)
def matmul_rows(V, nb, RT, G, go):
    """G[i, go:go+N] = V[i] @ RT for batch rows i < nb: the recurrent product of one step.

    V (>=nb, K) states, RT (K, N) transposed weights (row-major), G (>=nb, >=go+N).
    Register-blocked hand kernel for the small products where a BLAS call's overhead
    dominates: blocks of 4 batch rows (then 2, then 1) share every load of RT, and k is
    unrolled by 8, so each vectorised pass over the N outputs does 8 (32 with 4 rows) FMAs
    per load and store of G (unrolled by 4 it was 12-22% slower at 1 row, 4-9% at 4 rows,
    H <= 256, measured interleaved in one process). Accumulation order differs from BLAS
    only by rounding.
    """
    K = RT.shape[0]
    N = RT.shape[1]
    i = 0
    while i + 4 <= nb:
        g0 = G[i, go:go + N]
        g1 = G[i + 1, go:go + N]
        g2 = G[i + 2, go:go + N]
        g3 = G[i + 3, go:go + N]
        v0 = V[i]
        v1 = V[i + 1]
        v2 = V[i + 2]
        v3 = V[i + 3]
        for j in range(N):
            g0[j] = 0.0
            g1[j] = 0.0
            g2[j] = 0.0
            g3[j] = 0.0
        k = 0
        while k + 8 <= K:
            r0, r1, r2, r3 = RT[k], RT[k + 1], RT[k + 2], RT[k + 3]
            r4, r5, r6, r7 = RT[k + 4], RT[k + 5], RT[k + 6], RT[k + 7]
            a0, a1, a2, a3, a4, a5, a6, a7 = v0[k], v0[k + 1], v0[k + 2], v0[k + 3], v0[k + 4], v0[k + 5], v0[k + 6], v0[k + 7]
            b0, b1, b2, b3, b4, b5, b6, b7 = v1[k], v1[k + 1], v1[k + 2], v1[k + 3], v1[k + 4], v1[k + 5], v1[k + 6], v1[k + 7]
            c0, c1, c2, c3, c4, c5, c6, c7 = v2[k], v2[k + 1], v2[k + 2], v2[k + 3], v2[k + 4], v2[k + 5], v2[k + 6], v2[k + 7]
            d0, d1, d2, d3, d4, d5, d6, d7 = v3[k], v3[k + 1], v3[k + 2], v3[k + 3], v3[k + 4], v3[k + 5], v3[k + 6], v3[k + 7]
            for j in range(N):
                w0, w1, w2, w3 = r0[j], r1[j], r2[j], r3[j]
                w4, w5, w6, w7 = r4[j], r5[j], r6[j], r7[j]
                g0[j] += (a0 * w0 + a1 * w1 + a2 * w2 + a3 * w3) + (a4 * w4 + a5 * w5 + a6 * w6 + a7 * w7)
                g1[j] += (b0 * w0 + b1 * w1 + b2 * w2 + b3 * w3) + (b4 * w4 + b5 * w5 + b6 * w6 + b7 * w7)
                g2[j] += (c0 * w0 + c1 * w1 + c2 * w2 + c3 * w3) + (c4 * w4 + c5 * w5 + c6 * w6 + c7 * w7)
                g3[j] += (d0 * w0 + d1 * w1 + d2 * w2 + d3 * w3) + (d4 * w4 + d5 * w5 + d6 * w6 + d7 * w7)
            k += 8
        while k < K:
            r0 = RT[k]
            a0, b0, c0, d0 = v0[k], v1[k], v2[k], v3[k]
            for j in range(N):
                w0 = r0[j]
                g0[j] += a0 * w0
                g1[j] += b0 * w0
                g2[j] += c0 * w0
                g3[j] += d0 * w0
            k += 1
        i += 4
    while i + 2 <= nb:
        g0 = G[i, go:go + N]
        g1 = G[i + 1, go:go + N]
        v0 = V[i]
        v1 = V[i + 1]
        for j in range(N):
            g0[j] = 0.0
            g1[j] = 0.0
        k = 0
        while k + 8 <= K:
            r0, r1, r2, r3 = RT[k], RT[k + 1], RT[k + 2], RT[k + 3]
            r4, r5, r6, r7 = RT[k + 4], RT[k + 5], RT[k + 6], RT[k + 7]
            a0, a1, a2, a3, a4, a5, a6, a7 = v0[k], v0[k + 1], v0[k + 2], v0[k + 3], v0[k + 4], v0[k + 5], v0[k + 6], v0[k + 7]
            b0, b1, b2, b3, b4, b5, b6, b7 = v1[k], v1[k + 1], v1[k + 2], v1[k + 3], v1[k + 4], v1[k + 5], v1[k + 6], v1[k + 7]
            for j in range(N):
                w0, w1, w2, w3 = r0[j], r1[j], r2[j], r3[j]
                w4, w5, w6, w7 = r4[j], r5[j], r6[j], r7[j]
                g0[j] += (a0 * w0 + a1 * w1 + a2 * w2 + a3 * w3) + (a4 * w4 + a5 * w5 + a6 * w6 + a7 * w7)
                g1[j] += (b0 * w0 + b1 * w1 + b2 * w2 + b3 * w3) + (b4 * w4 + b5 * w5 + b6 * w6 + b7 * w7)
            k += 8
        while k < K:
            r0 = RT[k]
            a0, b0 = v0[k], v1[k]
            for j in range(N):
                g0[j] += a0 * r0[j]
                g1[j] += b0 * r0[j]
            k += 1
        i += 2
    while i < nb:
        g0 = G[i, go:go + N]
        v0 = V[i]
        for j in range(N):
            g0[j] = 0.0
        k = 0
        while k + 8 <= K:
            r0, r1, r2, r3 = RT[k], RT[k + 1], RT[k + 2], RT[k + 3]
            r4, r5, r6, r7 = RT[k + 4], RT[k + 5], RT[k + 6], RT[k + 7]
            a0, a1, a2, a3, a4, a5, a6, a7 = v0[k], v0[k + 1], v0[k + 2], v0[k + 3], v0[k + 4], v0[k + 5], v0[k + 6], v0[k + 7]
            for j in range(N):
                g0[j] += (a0 * r0[j] + a1 * r1[j] + a2 * r2[j] + a3 * r3[j]) + (a4 * r4[j] + a5 * r5[j] + a6 * r6[j] + a7 * r7[j])
            k += 8
        while k < K:
            r0 = RT[k]
            a0 = v0[k]
            for j in range(N):
                g0[j] += a0 * r0[j]
            k += 1
        i += 1


@njit(cache=True, fastmath=_FM, error_model=_EM, nogil=True)
def _rows_item(
    w, nblk, rb, bx, RTa, RTb, Rb_h, h, mask, use_mask, rev, lbr, acts, clip, approx,
    zero_invalid, empty_zero, trev, Y, XP, G, RH,
):
    """All steps of one work item of :func:`gru_rows` (direction, block of rb rows)."""
    H = Rb_h.shape[1]
    Bn = h.shape[1]
    T = XP.shape[1]
    d = w // nblk
    b0 = (w - d * nblk) * rb
    nb = min(rb, Bn - b0)
    g = G[w]
    rh = RH[w]
    hd = h[d, b0:b0 + nb]
    bxd = bx[d]
    RTad = RTa[d]
    RTbd = RTb[d]
    Rbd = Rb_h[d]
    fc = int(acts[d, 0])
    gc = int(acts[d, 3])
    fa = acts[d, 1]
    fb = acts[d, 2]
    ga = acts[d, 4]
    gb = acts[d, 5]
    generic = not (fc == 0 and gc == 1 and clip <= 0.0)
    reverse = rev[d] != 0
    yo = d * H
    xo = d * (XP.shape[2] // RTa.shape[0])  # 3H, or padded for the packed projection
    nvalid = 0
    for s in range(T):
        t = T - 1 - s if reverse else s
        to = T - 1 - t if trev[d] != 0 else t
        if use_mask:
            nvalid = 0
            for i in range(nb):
                if mask[b0 + i, t] != 0:
                    nvalid += 1
                elif zero_invalid:
                    for j in range(H):
                        Y[b0 + i, to, yo + j] = 0.0
                else:
                    for j in range(H):
                        Y[b0 + i, to, yo + j] = hd[i, j]
            if nvalid == 0:
                continue
        if RTa.ndim == 4:  # packed panels (a compile-time branch: one specialisation each)
            matmul_packed(hd, nb, RTad, g, 0)
        else:
            matmul_rows(hd, nb, RTad, g, 0)
        if not lbr:
            for i in range(nb):
                _zr_gates(XP[b0 + i, t], xo, bxd, g[i], hd[i], rh[i], H, approx, generic, fc, fa, fb, clip)
            if RTa.ndim == 4:
                matmul_packed(rh, nb, RTbd, g, 2 * H)
            else:
                matmul_rows(rh, nb, RTbd, g, 2 * H)
        for i in range(nb):
            if use_mask and mask[b0 + i, t] == 0:
                continue
            xp = XP[b0 + i, t]
            yb = Y[b0 + i, to]
            if generic:
                _gates_generic(xp, xo, bxd, g[i], Rbd, hd[i], H, lbr, fc, fa, fb, gc, ga, gb, clip, yb, yo)
            else:
                _gates_fused(xp, xo, bxd, g[i], Rbd, hd[i], H, lbr, approx, yb, yo)
    if empty_zero:
        for i in range(nb):
            valid = False
            for t in range(T):
                if mask[b0 + i, t] != 0:
                    valid = True
                    break
            if not valid:
                for j in range(H):
                    hd[i, j] = 0.0


@njit(cache=True, fastmath=_FM, error_model=_EM, parallel=True, nogil=True)
def gru_rows(
    x, WTd, bx, RTa, RTb, Rb_h, h, mask, use_mask, rev, lbr, acts, clip, approx,
    zero_invalid, empty_zero, trev, Y, XP, G, RH, nchunks, rb, project,
):
    """Whole sequences, one work item per (direction, block of ``rb`` batch rows), items
    spread over threads; each item runs all its steps with no synchronisation.

    ONNX GRU equations, gates z, r, h (f = acts code 0, g = acts code 3):
      z = f(x W_z' + Wb_z + R_z h + Rb_z),  r = f(x W_r' + Wb_r + R_r h + Rb_r)
      h~ = g(x W_h' + Wb_h + r * (R_h h + Rb_h))       lbr = 1
      h~ = g(x W_h' + Wb_h + R_h (r * h) + Rb_h)       lbr = 0
      h  = (1 - z) * h~ + z * h

    x (B, T, I). WTd (D, I, 3H): input weights per direction, transposed. bx (D, 3H): Wb +
    Rb_z, Rb_r (+ Rb_h when lbr = 0). Recurrent weights transposed, per direction: RTa
    (D, H, 3H) when lbr = 1 (RTb unused); RTa (D, H, 2H) = R_zr' and RTb (D, H, H) = R_h'
    when lbr = 0. Rb_h (D, H). h (D, B, H): initial state in, final state out.
    mask (B, T) uint8 (read only if use_mask). rev (D,) uint8: direction runs backwards.
    acts (D, 6): f code, alpha, beta, g code, alpha, beta. clip: 0 for none. approx: use
    the float32 rational activations. zero_invalid: masked steps output 0 (else the
    previous output). empty_zero: a row without a valid step ends with h = 0. trev (D,)
    uint8: write step t's output at T-1-t. Y (B, T, D*H) output.
    XP (B, T, D*C): input projections x W' (no bias), direction d at column d*C (C = 3H,
    or the padded width when the packed product projects), computed here when ``project``
    (else given). Scratch, one slice per work item (no sharing between threads): G
    (D*nblk, rb, >=3H) recurrent products; RH (D*nblk, rb, H) r * h, where nblk = ceil(B /
    rb). nchunks: time chunks per row for the input projection (> 1 lets batch-1 runs
    project on all threads).
    Packed products (:func:`kernels_gemm.matmul_packed`, float32 register tiles) when the
    weights come as 4-D panels (a separate compiled specialisation, so each path loads only
    its own code): WTd (D, P, I, NR), RTa (D, P, H, NR) for all 3H columns (lbr = 1) or R_zr,
    RTb (D, P, H, NR) for R_h (lbr = 0); G then needs the padded width.
    """
    D = RTa.shape[0]
    H = Rb_h.shape[1]
    Bn = x.shape[0]
    T = x.shape[1]
    # input projections of all steps: the hand product with the steps as its rows, one
    # item per (direction, row, time chunk), in parallel (no BLAS call inside numba: SciPy's
    # BLAS would cost startup time and a second thread pool to coordinate)
    nw = D * Bn
    tc = (T + nchunks - 1) // nchunks if nchunks > 0 else T
    I = x.shape[2]
    Cx = XP.shape[2] // D
    if not project:
        pass
    elif nw * nchunks == 1:
        if T > 0:
            if WTd.ndim == 4:
                matmul_packed(x[0], T, WTd[0], XP[0], 0)
            else:
                matmul_rows(x[0], T, WTd[0], XP[0], 0)
    else:
        for c in prange(nw * nchunks):
            w = c // nchunks
            t0 = (c - w * nchunks) * tc
            t1 = min(t0 + tc, T)
            if t1 > t0:
                d = w // Bn
                b = w - d * Bn
                if WTd.ndim == 4:
                    matmul_packed(x[b, t0:t1], t1 - t0, WTd[d], XP[b, t0:t1], d * Cx)
                else:
                    matmul_rows(x[b, t0:t1], t1 - t0, WTd[d], XP[b, t0:t1], d * Cx)
    nblk = (Bn + rb - 1) // rb
    nitems = D * nblk
    if nitems == 1:  # no parallel region: its barrier would only wait for idle threads
        _rows_item(0, nblk, rb, bx, RTa, RTb, Rb_h, h, mask, use_mask, rev, lbr, acts, clip, approx,
                   zero_invalid, empty_zero, trev, Y, XP, G, RH)
    else:
        for w in prange(nitems):
            _rows_item(w, nblk, rb, bx, RTa, RTb, Rb_h, h, mask, use_mask, rev, lbr, acts, clip, approx,
                       zero_invalid, empty_zero, trev, Y, XP, G, RH)


@njit(cache=True, fastmath=_FM, error_model=_EM, nogil=True)
def _tile_gates(phase, xp, xo, bx, gt, Rb_h, hb, rh, hout, j0, w, H, lbr, approx, generic, acts, clip):
    """Gates of hidden units [j0, j0+w) for :func:`gru_tiles`; gt (3, >=w) tile products.

    phase 0 (lbr = 0 only): rh[j] = r_j * h_j and gt[0] <- z. phase 1: hout[j] = new h_j.
    """
    one = hb.dtype.type(1.0)
    fc = int(acts[0])
    gc = int(acts[3])
    for jj in range(w):
        j = j0 + jj
        if phase == 0 or lbr:
            pz = xp[xo + j] + bx[j] + gt[0, jj]
            pr = xp[xo + H + j] + bx[H + j] + gt[1, jj]
            if generic:
                z = rnn_act(fc, _clip(pz, clip), acts[1], acts[2])
                r = rnn_act(fc, _clip(pr, clip), acts[1], acts[2])
            elif approx:
                z = fast_sigmoid(pz)
                r = fast_sigmoid(pr)
            else:
                z = sigmoid(pz)
                r = sigmoid(pr)
            if phase == 0:
                gt[0, jj] = z
                rh[j] = r * hb[j]
                continue
            pre = xp[xo + 2 * H + j] + bx[2 * H + j] + r * (gt[2, jj] + Rb_h[j])
        else:
            z = gt[0, jj]
            pre = xp[xo + 2 * H + j] + bx[2 * H + j] + gt[2, jj]
        if generic:
            n = rnn_act(gc, _clip(pre, clip), acts[4], acts[5])
        elif approx:
            n = fast_tanh(pre)
        else:
            n = tanh(pre)
        hout[j] = (one - z) * n + z * hb[j]


@njit(cache=True, fastmath=_FM, error_model=_EM, parallel=True, nogil=True)
def gru_tiles(XP, xo, bx, RTt, Rb_h, h, mask, use_mask, reverse, lbr, acts, clip, approx,
              zero_invalid, empty_zero, time_rev_out, Y, yo, Gt, hn, rh):
    """One direction of one batch row, hidden units split in tiles across threads.

    For batch 1 with a large H, where one work item per row would leave threads idle:
    every step runs one parallel loop over tiles (two when lbr = 0, since R_h (r * h)
    needs all of r * h), each tile computing its slice of the gates from the whole state.

    XP (1, T, C) input projections (no bias), this direction at column xo; bx (3H,);
    RTt (ntiles, 3, H, w): R' packed per tile, gate g's columns [j0, j0+w) of the tile
    (zero-padded past H); Rb_h (H,); h (1, H) state in/out; mask (1, T) uint8;
    acts (6,); Y (1, T, CY) outputs at column yo. Scratch: Gt (ntiles, 3, w), hn (H,),
    rh (1, H). Other arguments as in :func:`gru_rows` (scalars for this direction).
    """
    ntiles = RTt.shape[0]
    H = RTt.shape[2]
    w = RTt.shape[3]
    T = XP.shape[1]
    hb = h[0]
    generic = not (int(acts[0]) == 0 and int(acts[3]) == 1 and clip <= 0.0)
    any_valid = False
    for s in range(T):
        t = T - 1 - s if reverse else s
        to = T - 1 - t if time_rev_out else t
        yb = Y[0, to]
        if use_mask and mask[0, t] == 0:
            for j in range(H):
                yb[yo + j] = 0.0 if zero_invalid else hb[j]
            continue
        any_valid = True
        xp = XP[0, t]
        if lbr:
            for c in prange(ntiles):
                j0 = c * w
                wc = min(w, H - j0)
                for g in range(3):
                    matmul_rows(h, 1, RTt[c, g], Gt[c, g:g + 1], 0)
                _tile_gates(1, xp, xo, bx, Gt[c], Rb_h, hb, rh[0], hn, j0, wc, H, lbr, approx, generic, acts, clip)
        else:
            for c in prange(ntiles):
                j0 = c * w
                wc = min(w, H - j0)
                matmul_rows(h, 1, RTt[c, 0], Gt[c, 0:1], 0)
                matmul_rows(h, 1, RTt[c, 1], Gt[c, 1:2], 0)
                _tile_gates(0, xp, xo, bx, Gt[c], Rb_h, hb, rh[0], hn, j0, wc, H, lbr, approx, generic, acts, clip)
            for c in prange(ntiles):
                j0 = c * w
                wc = min(w, H - j0)
                matmul_rows(rh, 1, RTt[c, 2], Gt[c, 2:3], 0)
                _tile_gates(1, xp, xo, bx, Gt[c], Rb_h, hb, rh[0], hn, j0, wc, H, lbr, approx, generic, acts, clip)
        for j in range(H):
            hb[j] = hn[j]
            yb[yo + j] = hn[j]
    if empty_zero and not any_valid:
        for j in range(H):
            hb[j] = 0.0


@njit(cache=True, fastmath=_FM, error_model=_EM, nogil=True)
def gru_gates_step(
    XP, s, bx, G, Rb_h, h, mask, use_mask, rev, lbr, phase, acts, clip, approx,
    zero_invalid, trev, Y, RH,
):
    """Gate math of step ``s`` of all rows and directions after the BLAS products.

    Used by the BLAS path of :func:`gru_engine.api._run_gru`, which computes per step
    G[d] = h[d] @ R[d]' (all 3H columns when lbr = 1; the z, r columns then, after
    phase 0, R_h (r * h) into the h columns when lbr = 0). Direction d handles time
    t = T-1-s when rev[d] else s.

    XP (B, T, D*3H) input projections without bias; bx (D, 3H); G (D, B, 3H);
    Rb_h (D, H); h (D, B, H) state, updated in place (rows masked at t keep theirs);
    phase: 0 = z, r and RH = r * h (lbr = 0 only); 1 = finish the step.
    Y (B, T, D*H); RH (D, B, H). Other arguments as in :func:`gru_rows`.
    """
    D = G.shape[0]
    Bn = G.shape[1]
    H = h.shape[2]
    T = XP.shape[1]
    for d in range(D):
        t = T - 1 - s if rev[d] != 0 else s
        to = T - 1 - t if trev[d] != 0 else t
        fc = int(acts[d, 0])
        gc = int(acts[d, 3])
        generic = not (fc == 0 and gc == 1 and clip <= 0.0)
        yo = d * H
        xo = d * 3 * H
        for b in range(Bn):
            hb = h[d, b]
            yb = Y[b, to]
            if use_mask and mask[b, t] == 0:
                if phase == 1:
                    if zero_invalid:
                        for j in range(H):
                            yb[yo + j] = 0.0
                    else:
                        for j in range(H):
                            yb[yo + j] = hb[j]
                else:
                    for j in range(H):
                        RH[d, b, j] = 0.0
                continue
            xp = XP[b, t]
            g = G[d, b]
            if phase == 0:
                _zr_gates(xp, xo, bx[d], g, hb, RH[d, b], H, approx, generic, fc, acts[d, 1], acts[d, 2], clip)
            elif generic:
                _gates_generic(xp, xo, bx[d], g, Rb_h[d], hb, H, lbr, fc, acts[d, 1], acts[d, 2],
                               gc, acts[d, 4], acts[d, 5], clip, yb, yo)
            else:
                _gates_fused(xp, xo, bx[d], g, Rb_h[d], hb, H, lbr, approx, yb, yo)


@njit(cache=True, fastmath=_FM, error_model=_EM, nogil=True)
def dense_act_inplace(Y, code, alpha):
    """Apply Dense activation ``code`` in place to Y (N, F); softmax over the last axis."""
    if code == 0:
        return
    for n in range(Y.shape[0]):
        dense_act_row(Y[n], code, alpha)

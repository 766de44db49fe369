"""Numba kernels of the streaming step: one call advances a whole layer stack by one step.

A compiled *step program* describes the model (built once by :mod:`gru_engine.stream`):

* ``P`` (n,) float: every weight the step reads, flat, each block at a known offset, and
  the program ``M``, int32 values stored in P's bytes (``P.view(int32)[P.view(int32)[0]:]``):
  a header (:data:`HEADER` slots) then one op per layer, :data:`OP_WIDTH` slots each (op
  code first, then sizes and offsets into ``P`` and into a state row);
* ``S`` (rows, rowlen) float: one row per stream: slot 0 is the pool's "open" flag, then the
  input, each layer's output region (a GRU's output region *is* its hidden state) and its
  scratch. Rows never share memory, so rows may be stepped in parallel.

So a step call has four array arguments whatever the model, ``(P, S, x, out)`` (a numba
call costs ~50 ns per array argument), and the kernels allocate nothing. Kernels trust the program; they check
only what the caller passes per call (shapes, token ids, pool slots) and return an error
code (:data:`OK` = 0) that :mod:`gru_engine.stream` turns into an exception.

Layout of the weights, chosen for batch 1 (matrix-vector products): ``W`` is stored
transposed ``(I, 3H)`` and ``R`` transposed ``(H, 3H)`` so the product is a sum of
contiguous rows scaled by the input ("axpy" form), four rows per pass; LLVM vectorises the
inner loop over the 3H gate columns. Measured on the 2-core EPYC (AVX2) against row
dot-products: 0.16 vs 0.24 us at H=32, 0.57 vs 0.77 us at H=64, equal (L2/L3-bandwidth
bound) from H=128.

Activations come from :mod:`gru_engine.activations` (float32 sigmoid and tanh: branch-free,
vectorised, <= 3 ulps).
"""

from __future__ import annotations


import numpy as np
from numba import njit

from . import _cache  # noqa: F401  (numba caches the engine's kernels outside the package; before any @njit)
from . import config
from .activations import clip, dense_act_row, rnn_act, sigmoid32, tanh32

_FM = config.FASTMATH
_EM = config.ERROR_MODEL

# ----------------------------------------------------------------------------- program layout
HEADER = 16
OP_WIDTH = 16
# header slots
H_NOPS = 0
H_IN_OFF = 1  # row offset of the float input (or of the embedding output)
H_IN_SIZE = 2  # features per step (embedding dim for token models)
H_OUT_OFF = 3
H_OUT_SIZE = 4
H_FAST = 5  # 1: float32 fast gate activations allowed
H_EMB_OFF = 6  # P offset of the embedding table (V, E), token models
H_VOCAB = 7
H_EMB_MASK = 8  # Embedding mask_zero
ROW_FLAG = 0  # S[row, ROW_FLAG]: 1 open (pools), 2 marked during a pool step
ROW_START = 8  # first usable slot of a row

# op codes
OP_MASKING = 1  # [code, F, in, out, P:mask_value]
OP_GRU = 2  # [code, I, H, in, h, P:WT, P:RT, P:bx, P:Rb_h, lbr, P:acts(7), scratch(6H), fast]
OP_DENSE = 3  # [code, In, Out, in, out, P:kernel (In, Out), P:bias, act code, P:alpha]
OP_ACT = 4  # [code, F, in, out, act code, P:alpha]

# error codes (low 4 bits; the offending row index is in the bits above)
OK = 0
ERR_X_SHAPE = 1
ERR_OUT_SHAPE = 2
ERR_TOKEN = 3
ERR_SLOT = 4
ERR_CLOSED = 5
ERR_DUPLICATE = 6
ERR_SLOTS_SHAPE = 7


# ----------------------------------------------------------------------------- activations


# One implementation of each activation: gru_engine.activations (the float32 gate functions
# sigmoid32 / tanh32 are vectorisable; rnn_act / dense_act_row take the same functions for
# float32 arguments, so the fast and the generic paths agree).
_tanh_fast = tanh32
_sigmoid_fast = sigmoid32
_rnn_act = rnn_act
_dense_act = dense_act_row
_clip = clip


# ----------------------------------------------------------------------------- building blocks


@njit(cache=True, fastmath=_FM, error_model=_EM, nogil=True)
def _axpy_rows(P, o, n, C, v, acc, c0, c1):
    """acc[c0:c1] += v @ A[:, c0:c1] for A = P[o : o + n*C] as (n, C) rows, v (n,).

    Rows scaled and summed, four rows per pass so each load/store of ``acc`` carries four
    FMAs. Unsigned indices: numba adds no negative-index wraparound, so LLVM vectorises
    the j loop over the flat buffer (no views, no reshape call).
    """
    n4 = n - n % 4
    Cu = np.uint64(C)
    for k in range(0, n4, 4):
        v0 = v[k]
        v1 = v[k + 1]
        v2 = v[k + 2]
        v3 = v[k + 3]
        r0 = np.uint64(o + k * C)
        r1 = r0 + Cu
        r2 = r1 + Cu
        r3 = r2 + Cu
        for j in range(np.uint64(c0), np.uint64(c1)):
            acc[j] += (v0 * P[r0 + j] + v1 * P[r1 + j]) + (v2 * P[r2 + j] + v3 * P[r3 + j])
    for k in range(n4, n):
        vk = v[k]
        r = np.uint64(o + k * C)
        for j in range(np.uint64(c0), np.uint64(c1)):
            acc[j] += vk * P[r + j]


@njit(cache=True, fastmath=_FM, error_model=_EM, nogil=True)
def _gru_step(P, m, s, fast):
    """One GRU step (forward direction, ONNX equations, gates z, r, h) on state row ``s``.

    m: the op's meta slots. x = s[in:in+I]; h = s[h:h+H] is updated in place (it is also the
    layer's output). P holds WT (I, 3H), RT (H, 3H), bx (3H,) = Wb + Rb_z, Rb_r (+ Rb_h when
    lbr = 0), Rb_h (H,), acts (7,) = f code, f alpha, f beta, g code, g alpha, g beta, clip.
    Scratch: s[sc:sc+6H] = gx (3H) then gh (3H).
    """
    I = np.int64(m[1])
    H = np.int64(m[2])
    C = 3 * H
    x = s[m[3] : m[3] + I]
    h = s[m[4] : m[4] + H]
    WT = np.int64(m[5])  # offset of W' (I, 3H) in P
    RT = np.int64(m[6])  # offset of R' (H, 3H) in P
    bx = P[m[7] : m[7] + C]
    Rb_h = P[m[8] : m[8] + H]
    lbr = m[9]
    acts = P[m[10] : m[10] + 7]
    gx = s[m[11] : m[11] + C]
    gh = s[m[11] + C : m[11] + 2 * C]
    fc = int(acts[0])
    gc = int(acts[3])
    clip = acts[6]
    use_fast = fast != 0 and fc == 0 and gc == 1 and clip <= 0.0
    one = np.float32(1.0)
    zero = np.float32(0.0)

    for j in range(C):
        gx[j] = bx[j]
    _axpy_rows(P, WT, I, C, x, gx, 0, C)
    nr = C if lbr else 2 * H
    for j in range(nr):
        gh[j] = zero
    _axpy_rows(P, RT, H, C, h, gh, 0, nr)
    # z, r into gx[0:2H]
    if use_fast:
        for j in range(2 * H):
            gx[j] = _sigmoid_fast(gx[j] + gh[j])
    else:
        fa = acts[1]
        fb = acts[2]
        for j in range(2 * H):
            v = gx[j] + gh[j]
            if clip > 0.0:
                v = _clip(v, clip)
            gx[j] = _rnn_act(fc, v, fa, fb)
    if lbr:
        # pre_h = gx_h + r * (R_h h + Rb_h), kept in gh[2H:3H]
        for j in range(H):
            gh[2 * H + j] = gx[2 * H + j] + gx[H + j] * (gh[2 * H + j] + Rb_h[j])
    else:
        # pre_h = gx_h + R_h (r * h): r * h in gh[0:H], R_h (r * h) in gh[2H:3H]
        for k in range(H):
            gh[k] = gx[H + k] * h[k]
        for j in range(H):
            gh[2 * H + j] = zero
        _axpy_rows(P, RT, H, C, gh[0:H], gh, 2 * H, C)
        for j in range(H):
            gh[2 * H + j] += gx[2 * H + j]
    if use_fast:
        for j in range(H):
            ht = _tanh_fast(gh[2 * H + j])
            z = gx[j]
            h[j] = ht + z * (h[j] - ht)
    else:
        ga = acts[4]
        gb = acts[5]
        for j in range(H):
            v = gh[2 * H + j]
            if clip > 0.0:
                v = _clip(v, clip)
            ht = _rnn_act(gc, v, ga, gb)
            z = gx[j]
            h[j] = (one - z) * ht + z * h[j]


@njit(cache=True, fastmath=_FM, error_model=_EM, nogil=True)
def _run_row(P, M, s, masked):
    """Run every op of the program on state row ``s`` (input already in place).

    ``masked``: the step is masked (Embedding mask_zero); a masked step leaves every GRU
    state unchanged and the GRU outputs its state (Keras: the last output is repeated).
    """
    nops = M[H_NOPS]
    fast = M[H_FAST]
    for i in range(nops):
        m = M[HEADER + i * OP_WIDTH : HEADER + (i + 1) * OP_WIDTH]
        code = m[0]
        if code == OP_GRU:
            if not masked:
                _gru_step(P, m, s, fast)
        elif code == OP_DENSE:
            n_in = np.int64(m[1])
            n_out = np.int64(m[2])
            x = s[m[3] : m[3] + n_in]
            y = s[m[4] : m[4] + n_out]
            b = P[m[6] : m[6] + n_out]
            for j in range(n_out):
                y[j] = b[j]
            _axpy_rows(P, np.int64(m[5]), n_in, n_out, x, y, 0, n_out)
            _dense_act(y, m[7], P[m[8]])
        elif code == OP_ACT:
            F = m[1]
            x = s[m[2] : m[2] + F]
            y = s[m[3] : m[3] + F]
            for j in range(F):
                y[j] = x[j]
            _dense_act(y, m[4], P[m[5]])
        elif code == OP_MASKING:
            F = m[1]
            x = s[m[2] : m[2] + F]
            y = s[m[3] : m[3] + F]
            mv = P[m[4]]
            keep = False
            for j in range(F):
                if x[j] != mv:
                    keep = True
            if keep:
                for j in range(F):
                    y[j] = x[j]
            else:
                masked = True
                for j in range(F):
                    y[j] = x[j] * np.float32(0.0)


@njit(cache=True, fastmath=_FM, error_model=_EM, nogil=True)
def _step_one(P, M, s, x, out):
    """Copy one float input row in, run the program, copy the output row out."""
    xo = M[H_IN_OFF]
    for k in range(x.shape[0]):
        s[xo + k] = x[k]
    _run_row(P, M, s, False)
    oo = M[H_OUT_OFF]
    for j in range(out.shape[0]):
        out[j] = s[oo + j]


@njit(cache=True, fastmath=_FM, error_model=_EM, nogil=True)
def _step_one_token(P, M, s, tok, out):
    """Embedding lookup of one token id, run the program, copy the output row out."""
    E = M[H_IN_SIZE]
    xo = M[H_IN_OFF]
    to = M[H_EMB_OFF] + tok * E
    for k in range(E):
        s[xo + k] = P[to + k]
    _run_row(P, M, s, M[H_EMB_MASK] != 0 and tok == 0)
    oo = M[H_OUT_OFF]
    for j in range(out.shape[0]):
        out[j] = s[oo + j]


@njit(cache=True, fastmath=_FM, error_model=_EM, nogil=True)
def _check_out(M, n, out):
    if out.shape[0] != n or out.shape[1] != M[H_OUT_SIZE]:
        return ERR_OUT_SHAPE
    return OK


@njit(cache=True, fastmath=_FM, error_model=_EM, nogil=True)
def _check_tokens(M, ids):
    V = M[H_VOCAB]
    for i in range(ids.shape[0]):
        if ids[i] < 0 or ids[i] >= V:
            return ERR_TOKEN + 16 * i
    return OK


# ----------------------------------------------------------------------------- entry points


@njit(cache=True, fastmath=_FM, error_model=_EM, nogil=True)
def program(P):
    """The int32 program stored in P's bytes (see the module docstring)."""
    Pi = P.view(np.int32)
    return Pi[Pi[0] :]


def step_rows(P, S, x, out):
    """Step every row of S: x (B, F) float, out (B, out). Returns an error code (0: ok)."""
    M = program(P)
    B = S.shape[0]
    if x.shape[0] != B or x.shape[1] != M[H_IN_SIZE]:
        return ERR_X_SHAPE
    rc = _check_out(M, B, out)
    if rc != OK:
        return rc
    for b in range(B):
        _step_one(P, M, S[b], x[b], out[b])
    return OK


def step_rows_tokens(P, S, ids, out):
    """Step every row of S on token ids (B,) int64. Returns an error code (0: ok)."""
    M = program(P)
    B = S.shape[0]
    if ids.shape[0] != B:
        return ERR_X_SHAPE
    rc = _check_out(M, B, out)
    if rc != OK:
        return rc
    rc = _check_tokens(M, ids)
    if rc != OK:
        return rc
    for b in range(B):
        _step_one_token(P, M, S[b], ids[b], out[b])
    return OK


@njit(cache=True, fastmath=_FM, error_model=_EM, nogil=True)
def _claim_slots(S, slots):
    """Check pool slots: in range, open, no duplicates. Marks them (flag 2) on success."""
    cap = S.shape[0]
    n = slots.shape[0]
    rc = OK
    for i in range(n):
        sl = slots[i]
        if sl < 0 or sl >= cap:
            rc = ERR_SLOT + 16 * i
        elif S[sl, ROW_FLAG] == 2.0:
            rc = ERR_DUPLICATE + 16 * i
        elif S[sl, ROW_FLAG] != 1.0:
            rc = ERR_CLOSED + 16 * i
        if rc != OK:
            for j in range(i):
                S[slots[j], ROW_FLAG] = 1.0
            return rc
        S[sl, ROW_FLAG] = 2.0
    for i in range(n):
        S[slots[i], ROW_FLAG] = 1.0
    return OK


@njit(cache=True, fastmath=_FM, error_model=_EM, nogil=True)
def _pool_checks(P, M, S, slots, n_x, out):
    if slots.shape[0] != n_x:
        return ERR_SLOTS_SHAPE
    rc = _check_out(M, n_x, out)
    if rc != OK:
        return rc
    return _claim_slots(S, slots)


def step_slots(P, S, slots, x, out):
    """Pool step, serial: row i of x steps state row slots[i] of S into out[i]."""
    M = program(P)
    if x.shape[1] != M[H_IN_SIZE]:
        return ERR_X_SHAPE
    rc = _pool_checks(P, M, S, slots, x.shape[0], out)
    if rc != OK:
        return rc
    for i in range(slots.shape[0]):
        _step_one(P, M, S[slots[i]], x[i], out[i])
    return OK


def step_slots_tokens(P, S, slots, ids, out):
    """Pool step on token ids (n,) int64, serial."""
    M = program(P)
    rc = _pool_checks(P, M, S, slots, ids.shape[0], out)
    if rc != OK:
        return rc
    rc = _check_tokens(M, ids)
    if rc != OK:
        return rc
    for i in range(slots.shape[0]):
        _step_one_token(P, M, S[slots[i]], ids[i], out[i])
    return OK


# ----------------------------------------------------------------------------- batched pool path
# Many streams at once: the products go to BLAS as (n, I) @ (I, 3H) matrices (the weights are
# read once per call instead of once per stream); these kernels gather the states by slot,
# apply the gates row by row and scatter the new states back.


@njit(cache=True, fastmath=_FM, error_model=_EM, nogil=True)
def gather_rows(S, slots, off, n, out):
    """out[i, :n] = S[slots[i], off:off+n]."""
    for i in range(slots.shape[0]):
        r = S[slots[i]]
        o = out[i]
        for j in range(n):
            o[j] = r[off + j]


@njit(cache=True, fastmath=_FM, error_model=_EM, nogil=True)
def gru_rows_zr(P, m, G, Gh, Hs, RH, fast):
    """Batched GRU, stage 1: z, r = f(G + bx + Gh) into G[:, :2H]; lbr = 0: RH = r * h.

    G (n, 3H) = X W'; Gh (n, 3H) = H R'; Hs (n, H) states; m: the GRU op's slots.
    """
    H = np.int64(m[2])
    bx = P[m[7] : m[7] + 3 * H]
    acts = P[m[10] : m[10] + 7]
    fc = int(acts[0])
    clip = acts[6]
    use_fast = fast != 0 and fc == 0 and int(acts[3]) == 1 and clip <= 0.0
    for i in range(G.shape[0]):
        g = G[i]
        gh = Gh[i]
        if use_fast:
            for j in range(2 * H):
                g[j] = _sigmoid_fast(g[j] + bx[j] + gh[j])
        else:
            for j in range(2 * H):
                v = g[j] + bx[j] + gh[j]
                if clip > 0.0:
                    v = _clip(v, clip)
                g[j] = _rnn_act(fc, v, acts[1], acts[2])
        if m[9] == 0:
            h = Hs[i]
            rh = RH[i]
            for k in range(H):
                rh[k] = g[H + k] * h[k]


@njit(cache=True, fastmath=_FM, error_model=_EM, nogil=True)
def gru_rows_out(P, m, S, slots, G, Gh, Ghh, Hs, fast):
    """Batched GRU, stage 2: h~ and the new state, written to Hs (n, H) and S[slots, h]."""
    H = np.int64(m[2])
    ho = np.int64(m[4])
    bx = P[m[7] : m[7] + 3 * H]
    Rb_h = P[m[8] : m[8] + H]
    lbr = m[9]
    acts = P[m[10] : m[10] + 7]
    gc = int(acts[3])
    clip = acts[6]
    use_fast = fast != 0 and int(acts[0]) == 0 and gc == 1 and clip <= 0.0
    one = np.float32(1.0)
    for i in range(G.shape[0]):
        g = G[i]
        gh = Gh[i]
        ghh = Ghh[i]
        h = Hs[i]
        srow = S[slots[i]]
        for j in range(H):
            if lbr:
                pre = g[2 * H + j] + bx[2 * H + j] + g[H + j] * (gh[2 * H + j] + Rb_h[j])
            else:
                pre = g[2 * H + j] + bx[2 * H + j] + ghh[j]
            if use_fast:
                ht = _tanh_fast(pre)
            else:
                if clip > 0.0:
                    pre = _clip(pre, clip)
                ht = _rnn_act(gc, pre, acts[4], acts[5])
            z = g[j]
            hn = (one - z) * ht + z * h[j]
            h[j] = hn
            srow[ho + j] = hn


@njit(cache=True, fastmath=_FM, error_model=_EM, nogil=True)
def bias_act_rows(Y, b, code, alpha):
    """Y[i] = act(Y[i] + b) for each row (Dense / Activation in the batched path)."""
    for i in range(Y.shape[0]):
        y = Y[i]
        for j in range(y.shape[0]):
            y[j] += b[j]
        _dense_act(y, code, alpha)


# Compiled entry points. float32 (the fast path) is compiled for exactly one signature, so a
# wrong dtype or layout raises TypeError at the call instead of compiling a new version (the
# Python wrapper then converts and retries); float64 models use lazily compiled twins.
_J = dict(cache=True, fastmath=_FM, error_model=_EM, nogil=True)
_F32 = "int64(f4[::1], f4[:, ::1], {x}, f4[:, ::1])"
_F32_SLOTS = "int64(f4[::1], f4[:, ::1], i8[::1], {x}, f4[:, ::1])"

KERNELS = {
    np.dtype(np.float32): {
        "rows": njit(_F32.format(x="f4[:, ::1]"), **_J)(step_rows),
        "rows_tokens": njit(_F32.format(x="i8[::1]"), **_J)(step_rows_tokens),
        "slots": njit(_F32_SLOTS.format(x="f4[:, ::1]"), **_J)(step_slots),
        "slots_tokens": njit(_F32_SLOTS.format(x="i8[::1]"), **_J)(step_slots_tokens),
    },
    np.dtype(np.float64): {
        "rows": njit(**_J)(step_rows),
        "rows_tokens": njit(**_J)(step_rows_tokens),
        "slots": njit(**_J)(step_slots),
        "slots_tokens": njit(**_J)(step_slots_tokens),
    },
}

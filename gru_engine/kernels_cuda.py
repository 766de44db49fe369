"""numba.cuda kernels and their host launchers. Imported lazily by :mod:`gru_engine.cuda_backend`.

Nothing outside the CUDA path imports this module: ``import numba.cuda`` happens here, at
module level, so the CPU path never pays for it.

Kernels trust their inputs: the callers in :mod:`gru_engine.cuda_backend` validate, keep
every array C-contiguous on the device in the model dtype and allocate outputs and scratch.
One set of kernels is compiled per dtype (float32, float64) by :func:`kernels`; the dtype
enters the kernels as closure constants (shared-memory dtype, literals such as ``ONE``) so
float32 kernels never promote to float64. Explicit signatures: a kernel launched with a
non-contiguous or wrongly typed array fails at launch instead of compiling a new variant.

Layouts (D directions, H hidden, I input features, B batch rows, T steps)
-------------------------------------------------------------------------
* ``WT (I, D*3H)``: input weights of all directions transposed, gates z, r, h per direction.
* ``bx (D*3H,)``: ``Wb`` plus ``Rb_z, Rb_r`` (and ``Rb_h`` when ``linear_before_reset = 0``).
* ``RT (D, H, 3H)``: recurrent weights transposed (``RT[d, k, j] = R[d, j, k]``) so that the
  threads of a warp, working on consecutive gate rows j, read consecutive addresses.
* ``Rb_h (D, H)``: recurrent bias of the h gate (used when ``linear_before_reset = 1``).
* ``acts (D, 6)``: f code, f alpha, f beta, g code, g alpha, g beta (codes of
  :data:`gru_engine.model.RNN_ACTIVATIONS`).
* ``XP (B*T, D*3H)``: input projections ``x W' + bx``, row ``b*T + t``.
* ``Y (B*T, D*H)``: per-step outputs, row ``b*T + t``; direction d in columns ``[d*H, d*H+H)``.
* ``h (D, B, H)``: initial state in, final state out.
* ``mask (B, T)`` uint8: step valid when nonzero (read only when ``use_mask``).

CUDA's ``fastmath=True`` is all or nothing (it includes no-NaN/no-inf assumptions and
flush-to-zero), unlike :data:`gru_engine.config.FASTMATH`, which deliberately leaves NaN and
inf semantics intact; so the CUDA kernels are compiled without it.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, types

from . import _cache  # noqa: F401  (numba caches the engine's kernels outside the package; before any @njit)
from . import config

#: Threads per block of the 1-D kernels and of the persistent recurrence kernel.
TPB = int(config.THREADS_PER_BLOCK)
#: Side of the square tiles of the matrix-product kernel (TILE x TILE threads per block).
TILE = 16 if TPB >= 128 else 4
#: Most blocks of a 1-D grid-stride launch (each thread then loops over the rest).
MAX_BLOCKS = 4096
#: Largest shared memory (bytes) the persistent kernel may ask for per block (CUDA's
#: static default; 4*H values per row: H <= 3072 in float32, 1536 in float64).
PERSISTENT_MAX_SHARED = 48 * 1024
#: Blocks of the persistent kernel before it packs several rows into a block: each block
#: reads all of R once per step, so beyond RBMAX rows per block one tiled matrix product
#: per step (which reuses each weight tile across 16 rows) takes over. Not tuned on a GPU.
PERSISTENT_MAX_BLOCKS = 128

#: Most batch rows one block of the persistent kernel runs (a compile-time loop bound).
RBMAX = 4

_KERNELS: dict = {}
KERNEL_NAMES = (
    "matmul", "gru_persistent", "step_reset", "step_update", "zero_unseen", "fill", "fill_u8",
    "act_inplace", "softmax_rows", "merge_halves", "merge_states", "embed", "masking", "zero_rows",
)


def kernels(dtype):
    """The kernel set for ``dtype`` (float32 or float64), compiled once per process."""
    dtype = np.dtype(dtype)
    ks = _KERNELS.get(dtype)
    if ks is None:
        ks = _build(dtype)
        _KERNELS[dtype] = ks
    return ks


class _Kernels:
    """Namespace of the compiled kernels of one dtype."""


def _build(np_dtype, record=None):  # noqa: C901 - one closure per dtype, kernels share its constants
    """Compile the kernels of ``np_dtype``; with ``record`` (a list), append ``(name, py_func,
    signature)`` of each kernel instead of compiling it (see :func:`ptx_check`)."""
    t = "float32" if np_dtype == np.float32 else "float64"
    nbdt = types.float32 if np_dtype == np.float32 else types.float64
    ZERO = np_dtype.type(0.0)
    ONE = np_dtype.type(1.0)
    HALF = np_dtype.type(0.5)
    SOFTPLUS_CUT = np_dtype.type(20.0)
    INF = np_dtype.type(np.inf)
    SELU_L = np_dtype.type(1.0507009873554805)
    SELU_A = np_dtype.type(1.6732632423543772)
    INV_SQRT2 = np_dtype.type(0.7071067811865476)
    GELU_C = np_dtype.type(0.7978845608028654)
    GELU_K = np_dtype.type(0.044715)
    SIXTH = np_dtype.type(1.0 / 6.0)
    tile = TILE
    rbmax = RBMAX

    def jit(sig=None, device=False):
        if device:
            return cuda.jit(device=True)

        def deco(fn):
            if record is not None:
                record.append((fn.__name__, fn, sig))
                return fn
            try:
                return cuda.jit(sig, cache=True)(fn)
            except Exception:  # never verified on a GPU: a caching failure must not cost the
                return cuda.jit(sig)(fn)  # GPU path; a real compile error raises here again

        return deco

    # ----------------------------------------------------------------- device functions
    # No min()/max() builtins: numba 0.68's built-in CUDA target fails to compile them
    # (their generic overload takes *args); found with ptx_check, the simulator runs them.
    @jit(device=True)
    def clamp(x, lo, hi):
        if x < lo:
            return lo
        if x > hi:
            return hi
        return x

    @jit(device=True)
    def rnn_act(code, x, alpha, beta, clip):
        """ONNX RNN activation ``code`` of ``x`` clipped to [-clip, clip] (clip 0: none)."""
        if clip > ZERO:
            x = clamp(x, -clip, clip)
        if code == 0:  # Sigmoid
            return ONE / (ONE + math.exp(-x))
        elif code == 1:  # Tanh
            return math.tanh(x)
        elif code == 2:  # Relu
            return ZERO if x < ZERO else x  # NaN stays NaN (activations.py's rule)
        elif code == 3:  # Affine
            return alpha * x + beta
        elif code == 4:  # LeakyRelu
            return alpha * x if x < ZERO else x
        elif code == 5:  # ThresholdedRelu
            return ZERO if x <= alpha else x
        elif code == 6:  # ScaledTanh
            return alpha * math.tanh(beta * x)
        elif code == 7:  # HardSigmoid
            return clamp(alpha * x + beta, ZERO, ONE)
        elif code == 8:  # Elu
            return alpha * math.expm1(x) if x < ZERO else x
        elif code == 9:  # Softsign
            if abs(x) == INF:  # the limits, as activations.py
                return ONE if x > ZERO else -ONE
            return x / (ONE + abs(x))
        else:  # Softplus
            return math.log1p(math.exp(x)) if x < SOFTPLUS_CUT else x + math.log1p(math.exp(-x))

    @jit(device=True)
    def dense_act(code, v, alpha):
        """Element-wise Dense activation ``code`` (not softmax, code 4) of ``v``."""
        if code == 1:
            return ONE / (ONE + math.exp(-v))
        elif code == 2:
            return math.tanh(v)
        elif code == 3:
            return ZERO if v < ZERO else v
        elif code == 5:  # hard_sigmoid (Keras 3: relu6(x + 3) / 6)
            return clamp(v * SIXTH + HALF, ZERO, ONE)
        elif code == 6:  # elu
            a = alpha if alpha != ZERO else ONE
            return a * math.expm1(v) if v < ZERO else v
        elif code == 7:  # selu
            return SELU_L * (SELU_A * math.expm1(v) if v < ZERO else v)
        elif code == 8:  # gelu (erf)
            return ZERO if v == -INF else HALF * v * (ONE + math.erf(v * INV_SQRT2))
        elif code == 9:  # swish / silu
            return ZERO if v == -INF else v / (ONE + math.exp(-v))
        elif code == 10:  # softplus
            return math.log1p(math.exp(v)) if v < SOFTPLUS_CUT else v + math.log1p(math.exp(-v))
        elif code == 11:  # softsign
            if abs(v) == INF:
                return ONE if v > ZERO else -ONE
            return v / (ONE + abs(v))
        elif code == 12:  # leaky_relu
            return alpha * v if v < ZERO else v
        elif code == 13:  # gelu (tanh approximation)
            return ZERO if v == -INF else HALF * v * (ONE + math.tanh(GELU_C * (v + GELU_K * v * v * v)))
        elif code == 14:  # exp
            return math.exp(v)
        return v

    # ----------------------------------------------------------------- matrix product
    @jit(f"void({t}[:, ::1], {t}[:, ::1], {t}[::1], {t}[:, ::1], int64, int64, int64, int64)")
    def matmul(A, Wt, bias, C, wcol0, ccol0, ncols, add_bias):
        """``C[m, ccol0 + n] = sum_k A[m, k] Wt[k, wcol0 + n] (+ bias[wcol0 + n])``, n < ncols.

        A (M, K), Wt (K, Nw), bias (Nw,), C (M, Nc). Shared-memory tiles of TILE x TILE:
        block (bx, by) computes rows ``bx*TILE ..`` and columns ``by*TILE ..``; thread
        (tx, ty) one element, tx along columns (coalesced reads of Wt, writes of C).
        """
        sA = cuda.shared.array((tile, tile), nbdt)
        sW = cuda.shared.array((tile, tile), nbdt)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        row = cuda.blockIdx.x * tile + ty
        col = cuda.blockIdx.y * tile + tx
        M = A.shape[0]
        K = A.shape[1]
        acc = ZERO
        for k0 in range(0, K, tile):
            ka = k0 + tx
            if row < M and ka < K:
                sA[ty, tx] = A[row, ka]
            else:
                sA[ty, tx] = ZERO
            kw = k0 + ty
            if kw < K and col < ncols:
                sW[ty, tx] = Wt[kw, wcol0 + col]
            else:
                sW[ty, tx] = ZERO
            cuda.syncthreads()
            for kk in range(tile):
                acc += sA[ty, kk] * sW[kk, tx]
            cuda.syncthreads()
        if row < M and col < ncols:
            if add_bias != 0:
                acc += bias[wcol0 + col]
            C[row, ccol0 + col] = acc

    # ----------------------------------------------------------------- recurrence
    @jit(
        f"void({t}[:, ::1], {t}[:, :, ::1], {t}[:, ::1], {t}[:, :, ::1], uint8[:, ::1], int64, int64,"
        f" int64, {t}[:, ::1], {t}, int64, int64, int64, {t}[:, ::1], int64, int64)"
    )
    def gru_persistent(XP, RT, Rb_h, h, mask, use_mask, rev0, lbr, acts, clip,
                       zero_invalid, empty_zero, time_rev_out, Y, T, RB):
        """All T steps of a tile of RB (<= RBMAX) batch rows of one direction per block.

        Block (blk, d) runs rows ``blk*RB ..`` of direction d, its states in shared memory
        across all steps; each recurrent weight read from memory serves the RB rows.
        ONNX GRU equations, gates z, r, h:
          z = f(xp_z + R_z h),  r = f(xp_r + R_r h)
          h~ = g(xp_h + r * (R_h h + Rb_h))   when lbr = 1
          h~ = g(xp_h + R_h (r * h))          when lbr = 0 (Rb_h folded into xp_h)
          h  = (1 - z) * h~ + z * h
        Direction d runs backwards in time when d == 1 or rev0 (a "reverse" layer).
        A masked step keeps the row's state and writes 0 (zero_invalid) or the state (Keras
        carry). empty_zero: a row without a valid step ends with h = 0 (onnxruntime,
        length 0). time_rev_out: a backward direction writes step t's output at T-1-t.
        Dynamic shared memory: 4H values per row r at r*4H: [0,H) h, [H,2H) z,
        [2H,3H) r / r*h, [3H,4H) h~. The time step t is the same for every row of a block
        and every thread computes the same row flags, so all threads of a block take the
        same branches around each syncthreads. Loops over rows run to the constant RBMAX
        (guarded) so that the accumulators can live in registers.
        """
        sh = cuda.shared.array(0, nbdt)
        acc = cuda.local.array(rbmax, nbdt)
        valid = cuda.local.array(rbmax, types.uint8)
        seen = cuda.local.array(rbmax, types.uint8)
        d = cuda.blockIdx.y
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        H = RT.shape[1]
        H4 = 4 * H
        b0 = cuda.blockIdx.x * RB
        nr = h.shape[1] - b0
        if nr > RB:
            nr = RB
        xo = d * 3 * H
        yo = d * H
        reverse = d == 1 or rev0 != 0
        tro = reverse and time_rev_out != 0
        fc = int(acts[d, 0])
        fa = acts[d, 1]
        fb = acts[d, 2]
        gc = int(acts[d, 3])
        ga = acts[d, 4]
        gb = acts[d, 5]
        nrows = 3 * H if lbr != 0 else 2 * H
        for r in range(rbmax):
            seen[r] = 0
            if r < nr:
                for j in range(tid, H, nt):
                    sh[r * H4 + j] = h[d, b0 + r, j]
        cuda.syncthreads()
        for s in range(T):
            t = T - 1 - s if reverse else s
            to = T - 1 - t if tro else t
            nvalid = 0
            for r in range(rbmax):
                v = 0
                if r < nr and (use_mask == 0 or mask[b0 + r, t] != 0):
                    v = 1
                valid[r] = v
                nvalid += v
                if v != 0:
                    seen[r] = 1
            # masked rows keep their state: write their output now
            for r in range(rbmax):
                if r < nr and valid[r] == 0:
                    yrow = (b0 + r) * T + to
                    for j in range(tid, H, nt):
                        Y[yrow, yo + j] = ZERO if zero_invalid != 0 else sh[r * H4 + j]
            if nvalid == 0:
                continue
            for j in range(tid, nrows, nt):
                for r in range(rbmax):
                    acc[r] = ZERO
                for k in range(H):
                    w = RT[d, k, j]
                    for r in range(rbmax):
                        if r < nr:
                            acc[r] += w * sh[r * H4 + k]
                for r in range(rbmax):
                    if r < nr:
                        sh[r * H4 + H + j] = acc[r]
            cuda.syncthreads()
            if lbr == 0:
                for k in range(tid, H, nt):
                    for r in range(rbmax):
                        if r < nr:
                            o = r * H4
                            xrow = (b0 + r) * T + t
                            rg = rnn_act(fc, XP[xrow, xo + H + k] + sh[o + 2 * H + k], fa, fb, clip)
                            sh[o + 2 * H + k] = rg * sh[o + k]
                cuda.syncthreads()
                for j in range(tid, H, nt):
                    for r in range(rbmax):
                        acc[r] = ZERO
                    for k in range(H):
                        w = RT[d, k, 2 * H + j]
                        for r in range(rbmax):
                            if r < nr:
                                acc[r] += w * sh[r * H4 + 2 * H + k]
                    for r in range(rbmax):
                        if r < nr:
                            sh[r * H4 + 3 * H + j] = acc[r]
                cuda.syncthreads()
            for j in range(tid, H, nt):
                for r in range(rbmax):
                    if r < nr and valid[r] != 0:
                        o = r * H4
                        xrow = (b0 + r) * T + t
                        z = rnn_act(fc, XP[xrow, xo + j] + sh[o + H + j], fa, fb, clip)
                        if lbr != 0:
                            rg = rnn_act(fc, XP[xrow, xo + H + j] + sh[o + 2 * H + j], fa, fb, clip)
                            pre = XP[xrow, xo + 2 * H + j] + rg * (sh[o + 3 * H + j] + Rb_h[d, j])
                        else:
                            pre = XP[xrow, xo + 2 * H + j] + sh[o + 3 * H + j]
                        ht = rnn_act(gc, pre, ga, gb, clip)
                        hn = (ONE - z) * ht + z * sh[o + j]
                        sh[o + j] = hn
                        Y[(b0 + r) * T + to, yo + j] = hn
            cuda.syncthreads()
        for r in range(rbmax):
            if r < nr:
                for j in range(tid, H, nt):
                    h[d, b0 + r, j] = ZERO if (empty_zero != 0 and seen[r] == 0) else sh[r * H4 + j]

    @jit(f"void({t}[:, ::1], {t}[:, ::1], {t}[:, :, ::1], {t}[:, ::1], {t}[:, ::1], {t}, int64, int64, int64, int64)")
    def step_reset(XP, G, h, RH, acts, clip, d, xo, t, T):
        """Per-step path, lbr = 0: ``RH[b, k] = r * h[d, b, k]``, r = f(xp_r + G[b, H+k])."""
        Bn = RH.shape[0]
        H = RH.shape[1]
        fc = int(acts[d, 0])
        fa = acts[d, 1]
        fb = acts[d, 2]
        for idx in range(cuda.grid(1), Bn * H, cuda.gridsize(1)):
            b = idx // H
            k = idx - b * H
            r = rnn_act(fc, XP[b * T + t, xo + H + k] + G[b, H + k], fa, fb, clip)
            RH[b, k] = r * h[d, b, k]

    @jit(
        f"void({t}[:, ::1], {t}[:, ::1], {t}[:, ::1], {t}[:, :, ::1], uint8[:, ::1], int64, int64,"
        f" {t}[:, ::1], {t}, int64, {t}[:, ::1], uint8[::1], int64, int64, int64, int64, int64, int64)"
    )
    def step_update(XP, G, Rb_h, h, mask, use_mask, lbr, acts, clip, zero_invalid, Y, seen,
                    d, xo, yo, t, to, T):
        """Per-step path: gates and state update of step t for every row, one thread per (b, j).

        G (B, 3H) holds ``R_z h, R_r h`` and ``R_h h`` (lbr = 1) or ``R_h (r*h)`` (lbr = 0).
        seen[b] is set when row b has a valid step (for the empty-row rule).
        """
        Bn = h.shape[1]
        H = h.shape[2]
        fc = int(acts[d, 0])
        fa = acts[d, 1]
        fb = acts[d, 2]
        gc = int(acts[d, 3])
        ga = acts[d, 4]
        gb = acts[d, 5]
        for idx in range(cuda.grid(1), Bn * H, cuda.gridsize(1)):
            b = idx // H
            j = idx - b * H
            yrow = b * T + to
            if use_mask != 0 and mask[b, t] == 0:
                Y[yrow, yo + j] = ZERO if zero_invalid != 0 else h[d, b, j]
                continue
            if j == 0:
                seen[b] = 1
            xrow = b * T + t
            z = rnn_act(fc, XP[xrow, xo + j] + G[b, j], fa, fb, clip)
            if lbr != 0:
                r = rnn_act(fc, XP[xrow, xo + H + j] + G[b, H + j], fa, fb, clip)
                ht = rnn_act(gc, XP[xrow, xo + 2 * H + j] + r * (G[b, 2 * H + j] + Rb_h[d, j]), ga, gb, clip)
            else:
                ht = rnn_act(gc, XP[xrow, xo + 2 * H + j] + G[b, 2 * H + j], ga, gb, clip)
            hn = (ONE - z) * ht + z * h[d, b, j]
            h[d, b, j] = hn
            Y[yrow, yo + j] = hn

    @jit(f"void({t}[:, :, ::1], uint8[::1], int64)")
    def zero_unseen(h, seen, d):
        """``h[d, b] = 0`` for every row b without a valid step (seen[b] == 0)."""
        Bn = h.shape[1]
        H = h.shape[2]
        for idx in range(cuda.grid(1), Bn * H, cuda.gridsize(1)):
            b = idx // H
            if seen[b] == 0:
                h[d, b, idx - b * H] = ZERO

    # ----------------------------------------------------------------- element-wise
    @jit(f"void({t}[::1], {t})")
    def fill(a, value):
        for i in range(cuda.grid(1), a.shape[0], cuda.gridsize(1)):
            a[i] = value

    @jit("void(uint8[::1], uint8)")
    def fill_u8(a, value):
        for i in range(cuda.grid(1), a.shape[0], cuda.gridsize(1)):
            a[i] = value

    @jit(f"void({t}[::1], int64, {t})")
    def act_inplace(a, code, alpha):
        """Element-wise Dense activation of every element of ``a`` (code != softmax)."""
        for i in range(cuda.grid(1), a.shape[0], cuda.gridsize(1)):
            a[i] = dense_act(code, a[i], alpha)

    @jit(f"void({t}[:, ::1])")
    def softmax_rows(a):
        """Softmax over the last axis, one thread per row."""
        F = a.shape[1]
        for n in range(cuda.grid(1), a.shape[0], cuda.gridsize(1)):
            m = a[n, 0]
            for j in range(1, F):
                if a[n, j] > m:
                    m = a[n, j]
            s = ZERO
            for j in range(F):
                e = math.exp(a[n, j] - m)
                a[n, j] = e
                s += e
            inv = ONE / s
            for j in range(F):
                a[n, j] *= inv

    @jit(f"void({t}[:, ::1], {t}[:, ::1], int64)")
    def merge_halves(Y, out, mode):
        """``out (N, H)`` = merge of ``Y[:, :H]`` and ``Y[:, H:]``; mode 0 sum, 1 mul, 2 ave."""
        H = out.shape[1]
        N = out.shape[0]
        for idx in range(cuda.grid(1), N * H, cuda.gridsize(1)):
            n = idx // H
            j = idx - n * H
            a = Y[n, j]
            c = Y[n, H + j]
            if mode == 0:
                out[n, j] = a + c
            elif mode == 1:
                out[n, j] = a * c
            else:
                out[n, j] = (a + c) * HALF

    @jit(f"void({t}[:, :, ::1], {t}[:, ::1], int64)")
    def merge_states(h, out, mode):
        """Last-step output of a GRU from its state ``h (D, B, H)`` into ``out (B, F)``.

        D == 1 or mode 3 (concat): ``out[b, d*H + j] = h[d, b, j]``; else sum/mul/ave (0/1/2).
        """
        D = h.shape[0]
        Bn = h.shape[1]
        H = h.shape[2]
        for idx in range(cuda.grid(1), Bn * H, cuda.gridsize(1)):
            b = idx // H
            j = idx - b * H
            if D == 1 or mode == 3:
                for dd in range(D):
                    out[b, dd * H + j] = h[dd, b, j]
            elif mode == 0:
                out[b, j] = h[0, b, j] + h[1, b, j]
            elif mode == 1:
                out[b, j] = h[0, b, j] * h[1, b, j]
            else:
                out[b, j] = (h[0, b, j] + h[1, b, j]) * HALF

    @jit(f"void(int64[::1], {t}[:, ::1], {t}[:, ::1], uint8[::1], int64, int64, int32[::1])")
    def embed(tokens, table, out, mask, mask_zero, combine, bad):
        """``out[i] = table[tokens[i]]``; mask_zero: ``mask[i] = tokens[i] != 0`` (and-ed
        with the old mask when combine). An id outside the table sets ``bad[0] = 1`` and
        writes zeros (the caller raises)."""
        V = table.shape[0]
        E = table.shape[1]
        N = tokens.shape[0]
        for idx in range(cuda.grid(1), N * E, cuda.gridsize(1)):
            i = idx // E
            e = idx - i * E
            tok = tokens[i]
            if tok < 0 or tok >= V:
                bad[0] = 1
                out[i, e] = ZERO
            else:
                out[i, e] = table[tok, e]
            if mask_zero != 0 and e == 0:
                keep = 1 if tok != 0 else 0
                if combine != 0 and mask[i] == 0:
                    keep = 0
                mask[i] = keep

    @jit(f"void({t}[:, ::1], {t}, {t}[:, ::1], uint8[::1], int64)")
    def masking(X, value, out, mask, combine):
        """Keras Masking: a row whose features all equal ``value`` is masked and zeroed."""
        N = X.shape[0]
        F = X.shape[1]
        for n in range(cuda.grid(1), N, cuda.gridsize(1)):
            keep = 0
            for j in range(F):
                if X[n, j] != value:
                    keep = 1
            if combine != 0 and mask[n] == 0:
                m = 0
            else:
                m = keep
            mask[n] = m
            for j in range(F):
                out[n, j] = X[n, j] if keep != 0 else ZERO

    @jit(f"void({t}[:, :, ::1], int64[::1])")
    def zero_rows(h, rows):
        """``h[:, rows[i], :] = 0`` (stream reset of some rows)."""
        D = h.shape[0]
        H = h.shape[2]
        R = rows.shape[0]
        for idx in range(cuda.grid(1), R * H, cuda.gridsize(1)):
            i = idx // H
            j = idx - i * H
            for d in range(D):
                h[d, rows[i], j] = ZERO

    ks = _Kernels()
    ks.dtype = np_dtype
    found = locals()
    for name in KERNEL_NAMES:
        setattr(ks, name, found[name])
    return ks


# --------------------------------------------------------------------------- launchers


def _blocks(n: int) -> int:
    return max(1, min(MAX_BLOCKS, (n + TPB - 1) // TPB))


def matmul(ks, A, Wt, bias, C, wcol0: int = 0, ccol0: int = 0, ncols: int | None = None, add_bias: bool = True):
    """``C[:, ccol0:ccol0+ncols] = A @ Wt[:, wcol0:wcol0+ncols] (+ bias[wcol0:...])`` on the device."""
    M = A.shape[0]
    if ncols is None:
        ncols = Wt.shape[1] - wcol0
    if M == 0 or ncols == 0:
        return
    grid = ((M + TILE - 1) // TILE, (ncols + TILE - 1) // TILE)
    ks.matmul[grid, (TILE, TILE)](A, Wt, bias, C, wcol0, ccol0, ncols, 1 if add_bias else 0)


def launch_1d(kernel, n: int, *args):
    """Launch a grid-stride kernel over ``n`` items (nothing when n == 0)."""
    if n > 0:
        kernel[_blocks(n), TPB](*args)


def fill(ks, a, value=0.0):
    flat = a.reshape(a.size)
    launch_1d(ks.fill, a.size, flat, ks.dtype.type(value))


def plan_recurrence(dtype, B: int, D: int, H: int, recurrence: str = "auto") -> int:
    """Rows per block of the persistent kernel for B rows x D directions of hidden size H, or 0
    for per-step launches.

    "auto": one row per block while ``B * D <= PERSISTENT_MAX_BLOCKS``, then up to RBMAX rows
    per block (each weight read serves them all), as long as the blocks' states fit in
    shared memory; beyond that, per-step launches. "persistent" forces the kernel (rows
    per block as "auto" would pick, at most what fits), "stepwise" the per-step path.
    """
    per_row = 4 * H * np.dtype(dtype).itemsize
    fit = min(RBMAX, PERSISTENT_MAX_SHARED // per_row)
    if recurrence == "stepwise" or fit < 1:
        return 0
    rb = max(1, -(-(B * D) // PERSISTENT_MAX_BLOCKS))
    if rb > fit:
        return min(fit, RBMAX) if recurrence == "persistent" else 0
    return rb


def gru_recurrence(ks, XP, RT, Rb_h, h, mask, use_mask, rev0, lbr, acts, clip, zero_invalid,
                   empty_zero, time_rev_out, Y, T, *, rows_per_block, G=None, RH=None, seen=None):
    """Run the recurrence of one GRU layer (all directions) over T steps.

    rows_per_block > 0: one launch of the persistent kernel, block (blk, d) keeps the states
    of rows_per_block rows in shared memory across steps (see :func:`plan_recurrence`).
    Otherwise per-step launches: ``G = h @ RT`` as one tiled matrix product over all rows
    (weights reused across rows), then the gates (lbr = 0: r*h, a second product, then
    the update). The per-step path needs scratch G (B, 3H), RH (B, H), seen (B,) uint8.
    """
    D, B, H = h.shape
    if B == 0:
        return
    dt = ks.dtype.type
    if T == 0:
        if empty_zero:
            fill(ks, h, 0.0)
        return
    flags = (int(use_mask), int(rev0), int(lbr))
    if rows_per_block > 0:
        rb = int(rows_per_block)
        shared = rb * 4 * H * ks.dtype.itemsize
        threads = min(1024, TPB * max(1, -(-H // TPB)))  # >= H threads when possible: one per unit
        ks.gru_persistent[((B + rb - 1) // rb, D), threads, 0, shared](
            XP, RT, Rb_h, h, mask, *flags, acts, dt(clip), int(zero_invalid), int(empty_zero),
            int(time_rev_out), Y, T, rb,
        )
        return
    launch_1d(ks.fill_u8, B, seen, np.uint8(0))
    nrows = 3 * H if lbr else 2 * H
    for d in range(D):
        reverse = d == 1 or rev0
        tro = reverse and time_rev_out
        xo, yo = d * 3 * H, d * H
        hd = h[d]
        RTd = RT[d]
        for s in range(T):
            t = T - 1 - s if reverse else s
            to = T - 1 - t if tro else t
            matmul(ks, hd, RTd, Rb_h[d], G, 0, 0, nrows, add_bias=False)
            if not lbr:
                launch_1d(ks.step_reset, B * H, XP, G, h, RH, acts, dt(clip), d, xo, t, T)
                matmul(ks, RH, RTd, Rb_h[d], G, 2 * H, 2 * H, H, add_bias=False)
            launch_1d(
                ks.step_update, B * H, XP, G, Rb_h, h, mask, int(use_mask), int(lbr), acts, dt(clip),
                int(zero_invalid), Y, seen, d, xo, yo, t, to, T,
            )
        if empty_zero:
            launch_1d(ks.zero_unseen, B * H, h, seen, d)


def ptx_check(dtype=np.float32, cc=(8, 0)) -> list[str]:
    """Compile every kernel of ``dtype`` to PTX for compute capability ``cc``.

    Needs NVVM (the CUDA toolkit, e.g. ``CUDA_HOME`` pointing at the ``nvidia-cuda-nvcc``
    wheel's ``cuda_nvcc`` folder), not a GPU: it type-checks the kernels, which the CUDA
    simulator cannot do. Returns the names of the kernels compiled.
    """
    from types import SimpleNamespace

    from numba.cuda import dispatcher

    record: list = []
    _build(np.dtype(dtype), record)
    # Device functions are compiled for "the current device"; without a GPU, name one.
    saved = dispatcher.get_current_device
    dispatcher.get_current_device = lambda: SimpleNamespace(compute_capability=cc)
    try:
        for _name, fn, sig in record:
            cuda.compile_ptx(fn, sig, cc=cc)
    finally:
        dispatcher.get_current_device = saved
    return [name for name, _, _ in record]

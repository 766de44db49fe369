"""Whole-sequence runs: validate, allocate outputs, dispatch to kernels. No math here
beyond BLAS matrix products of whole sequences.

Layer runners are registered in :data:`RUNNERS` by layer type, so new layer kinds plug in
without touching :func:`run`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

import numba
import numpy as np

from . import config
from . import kernels_cpu as K
from . import kernels_gemm as KG
from . import threads
from . import validate as V
from .model import DENSE_ACTIVATIONS, Activation, Dense, Embedding, GRU, Masking, Model


# --------------------------------------------------------------------------- prepared weights


@dataclass
class PreparedGRU:
    """Weights of one GRU layer packed once for the CPU kernels (in the layouts they read).

    WT (I, D*3H): input weights of all directions, transposed, for one BLAS product.
    WTd (D, I, 3H): the same per direction (the row kernel projects per direction).
    bx (D, 3H): Wb + Rb_z, Rb_r (+ Rb_h when lbr = 0), added inside the gate math.
    R (D, 3H, H): recurrent weights as in the model.
    RT (D, H, 3H) when lbr = 1, or RTzr (D, H, 2H) and RTh (D, H, H) when lbr = 0:
        transposed recurrent weights, the layout both the hand kernel and the per-step
        GEMM read (:meth:`gemm_weights`, built on first use).
    Rb_h (D, H); acts (D, 6): f code, alpha, beta, g code, alpha, beta; clip (0: none);
    rev (D,) uint8: direction runs backwards; trev (D,) uint8: its outputs are written in
    reversed time order (Keras go_backwards).
    """

    WT: np.ndarray
    bx: np.ndarray
    R: np.ndarray
    Rb_h: np.ndarray
    acts: np.ndarray
    clip: float
    lbr: int
    rev: np.ndarray
    trev: np.ndarray
    _packed: dict = field(default_factory=dict, repr=False)

    @property
    def WTd(self) -> np.ndarray:
        a = self._packed.get("WTd")
        if a is None:
            D, H3 = self.R.shape[0], self.R.shape[1]
            I = self.WT.shape[0]
            a = self.WT.reshape(I, D, H3).transpose(1, 0, 2)
            a = self.WT.reshape(1, I, H3) if D == 1 else np.ascontiguousarray(a)
            self._packed["WTd"] = a
        return a

    def tile_weights(self, ntiles: int) -> np.ndarray:
        """(D, n, 3, H, w): R' per hidden-unit tile for :func:`kernels_cpu.gru_tiles`."""
        key = ("tiles", ntiles)
        a = self._packed.get(key)
        if a is None:
            D, H = self.R.shape[0], self.R.shape[2]
            w = -(-H // ntiles)
            w = -(-w // 16) * 16
            n = -(-H // w)
            a = np.zeros((D, n, 3, H, w), self.R.dtype)
            gw = self.gemm_weights()
            for d in range(D):
                blocks = [gw[0][d][:, g * H:(g + 1) * H] for g in range(3)] if self.lbr else \
                    [gw[0][d][:, :H], gw[0][d][:, H:], gw[1][d]]
                for c in range(n):
                    j0, j1 = c * w, min((c + 1) * w, H)
                    for g in range(3):
                        a[d, c, g, :, : j1 - j0] = blocks[g][:, j0:j1]
            self._packed[key] = a
        return a

    @property
    def no_weights(self) -> np.ndarray:
        """(D, 1, 1) zeros: the unused second weight argument of the row kernel when lbr = 1."""
        a = self._packed.get("none")
        if a is None:
            a = self._packed["none"] = np.zeros((self.R.shape[0], 1, 1), self.R.dtype)
        return a

    def packed_weights(self):
        """(RP, unused) for lbr = 1 or (RPzr, RPh) for lbr = 0, each (D, P, H, NR): ``R[d]'``
        in the column panels of :func:`kernels_gemm.pack_panels` (the packed product's layout)."""
        w = self._packed.get("panels")
        if w is None:
            w = tuple(np.stack([KG.pack_panels(m[d]) for d in range(m.shape[0])]) for m in self.gemm_weights())
            if len(w) == 1:  # the row kernel's second weight argument, never read
                w += (np.zeros((w[0].shape[0], 1, 1, KG.NR), w[0].dtype),)
            self._packed["panels"] = w
        return w

    @property
    def WTd_packed(self) -> np.ndarray:
        """(D, P, I, NR): the input weights per direction in panels (the packed projection)."""
        a = self._packed.get("WTd_panels")
        if a is None:
            WTd = self.WTd
            a = self._packed["WTd_panels"] = np.stack([KG.pack_panels(WTd[d]) for d in range(WTd.shape[0])])
        return a

    @property
    def g_width(self) -> int:
        """Columns of a row's gate products G for the packed product (padded past 3H)."""
        H = self.R.shape[2]
        if self.lbr:
            return KG.padded_width(3 * H)
        return max(KG.padded_width(2 * H), 2 * H + KG.padded_width(H))

    def gemm_weights(self):
        """(RT,) for lbr = 1 or (RTzr, RTh) for lbr = 0: ``R[d]'`` split as the GEMM path needs."""
        w = self._packed.get("gemm")
        if w is None:
            H = self.R.shape[2]
            RT = self.R.transpose(0, 2, 1)
            if self.lbr:
                w = (np.ascontiguousarray(RT),)
            else:
                w = (np.ascontiguousarray(RT[:, :, : 2 * H]), np.ascontiguousarray(RT[:, :, 2 * H :]))
            self._packed["gemm"] = w
        return w


def prepare_gru(layer: GRU, dtype) -> PreparedGRU:
    D, H = layer.num_directions, layer.hidden_size
    W = layer.W.astype(dtype)
    Bias = layer.B.astype(dtype)
    WT = np.ascontiguousarray(W.reshape(D * 3 * H, -1).T)
    bx = np.empty((D, 3 * H), dtype)
    Rb_h = np.empty((D, H), dtype)
    acts = np.empty((D, 6), dtype)
    params = layer.activation_params()
    rev = np.zeros(D, np.uint8)
    trev = np.zeros(D, np.uint8)
    for d in range(D):
        Wb, Rb = Bias[d, : 3 * H], Bias[d, 3 * H :]
        b = Wb.copy()
        b[: 2 * H] += Rb[: 2 * H]
        if not layer.linear_before_reset:
            b[2 * H :] += Rb[2 * H :]
        bx[d] = b
        Rb_h[d] = Rb[2 * H :]
        (fc, fa, fb), (gc, ga, gb) = params[2 * d], params[2 * d + 1]
        acts[d] = [fc, fa, fb, gc, ga, gb]
        rev[d] = layer.direction == "reverse" or d == 1
        trev[d] = rev[d] and layer.time_reversed_output
    R = np.ascontiguousarray(layer.R, dtype=dtype)
    return PreparedGRU(WT, bx, R, Rb_h, acts, float(layer.clip or 0.0), int(layer.linear_before_reset), rev, trev)


def prepared(model: Model, layer_index: int):
    """Cached packed weights of ``model.layers[layer_index]`` (computed once per model)."""
    cache = model.__dict__.setdefault("_prepared_cpu", {})
    p = cache.get(layer_index)
    if p is None:
        layer = model.layers[layer_index]
        p = prepare_gru(layer, model.dtype) if isinstance(layer, GRU) else None
        cache[layer_index] = p
    return p


# --------------------------------------------------------------------------- run


@dataclass
class RunContext:
    """What flows between layers besides the activations."""

    model: Model
    mask: np.ndarray | None = None  # (B, T) uint8, Keras masks and lengths
    from_lengths: bool = False  # mask came from `lengths` (onnxruntime semantics)
    states: list = field(default_factory=list)  # initial states per GRU layer, or None
    final_states: list = field(default_factory=list)
    gru_index: int = 0


RUNNERS: dict[type, Callable] = {}


def register(layer_type):
    def deco(fn):
        RUNNERS[layer_type] = fn
        return fn

    return deco


def run(model: Model, x, lengths=None, initial_state=None):
    """Run whole sequences through ``model``.

    Parameters
    ----------
    x : ``(B, T, F)`` floats (converted to the model dtype), or ``(B, T)`` token ids for a
        model that starts with an Embedding.
    lengths : optional ``(B,)`` valid lengths in [0, T]. GRU outputs past a row's length are
        zero and its final state is that of its last valid step (0 for length 0), exactly
        as ONNX ``sequence_lens`` in onnxruntime.
    initial_state : optional ``(num_layers*num_directions, B, H)`` (PyTorch's ``h0``), or a
        list with one ``(D, B, H)`` array per GRU layer. Default zeros.

    Returns
    -------
    y : ``(B, T, out)`` or ``(B, out)`` when the model ends on a last-step GRU.
    h_n : final states, ``(num_layers*num_directions, B, H)`` ordered as PyTorch orders them
        (layer by layer, forward then reverse); a list of ``(D, B, H_l)`` arrays when the
        GRU layers have different hidden sizes; None for a model without GRU.
    """
    dtype = model.dtype
    if model.takes_tokens:
        emb = model.layers[0]
        h = V.as_tokens("x", x, emb.num_embeddings)
        V.check_ndim("x", h, "(batch, seq_len) of token ids", 2)
    else:
        h = V.as_float("x", x, dtype)
        doc = f"(batch, seq_len, {model.input_size})"
        V.check_ndim("x", h, doc, 3)
        V.check_last("x", h, doc, model.input_size)
    B, T = h.shape[0], h.shape[1]
    ctx = RunContext(model)
    if lengths is not None:
        lens = V.as_lengths(lengths, B, T)
        ctx.mask = (np.arange(T)[None, :] < lens[:, None]).astype(np.uint8)
        ctx.from_lengths = True
    shapes = model.state_shapes
    if initial_state is not None:
        if not shapes:
            raise V.InputShapeError("initial_state was given, but the model has no GRU layer")
        ctx.states = V.as_state(initial_state, shapes, B, dtype)
    else:
        ctx.states = [None] * len(shapes)
    return _run_layers(model, h, ctx)


def run_with_states(model: Model, x: np.ndarray, states: list):
    """:func:`run` for callers that checked ``x`` themselves (:meth:`Stream.run`): ``x`` is
    ``(B, T, F)`` in the model's dtype (or checked token ids), ``states`` one ``(D, B, H)``
    array per GRU layer in the model's dtype, which the run may overwrite. No lengths."""
    ctx = RunContext(model)
    ctx.states = states
    return _run_layers(model, x, ctx)


def _run_layers(model: Model, h, ctx: RunContext):
    for i, layer in enumerate(model.layers):
        fn = RUNNERS.get(type(layer))
        if fn is None:
            from .errors import UnsupportedError

            raise UnsupportedError(f"layer {i} ({layer.describe()}) has no CPU implementation")
        h = fn(layer, i, h, ctx)
    return h, _stack_states(ctx.final_states)


def _stack_states(states: list):
    if not states:
        return None
    if len(states) == 1:  # the runner's own fresh array: no copy needed
        return states[0]
    if len({s.shape[2] for s in states}) == 1:
        return np.concatenate(states, axis=0)
    return states


def _combine_mask(ctx: RunContext, new: np.ndarray) -> None:
    ctx.mask = new if ctx.mask is None else (ctx.mask & new)


@register(Embedding)
def _run_embedding(layer: Embedding, i: int, tokens: np.ndarray, ctx: RunContext):
    if layer.mask_zero:
        _combine_mask(ctx, (tokens != 0).astype(np.uint8))
    return np.ascontiguousarray(layer.table.astype(ctx.model.dtype, copy=False)[tokens])


@register(Masking)
def _run_masking(layer: Masking, i: int, x: np.ndarray, ctx: RunContext):
    keep = np.any(x != x.dtype.type(layer.mask_value), axis=-1)
    _combine_mask(ctx, keep.astype(np.uint8))
    return x * keep[..., None].astype(x.dtype)


@register(Dense)
def _run_dense(layer: Dense, i: int, x: np.ndarray, ctx: RunContext):
    dtype = ctx.model.dtype
    lead = x.shape[:-1]
    y = np.asarray(x.reshape(-1, x.shape[-1]) @ layer.kernel.astype(dtype, copy=False), dtype=dtype)
    y += layer.bias.astype(dtype, copy=False)
    y = np.ascontiguousarray(y)
    K.dense_act_inplace(y, DENSE_ACTIVATIONS[layer.activation], dtype.type(layer.alpha))
    return y.reshape(*lead, layer.out_features)


@register(Activation)
def _run_activation(layer: Activation, i: int, x: np.ndarray, ctx: RunContext):
    y = np.ascontiguousarray(x.reshape(-1, x.shape[-1]), dtype=ctx.model.dtype).copy()
    K.dense_act_inplace(y, DENSE_ACTIVATIONS[layer.activation], y.dtype.type(layer.alpha))
    return y.reshape(x.shape)


def merge_directions(merge: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if merge == "sum":
        return a + b
    if merge == "mul":
        return a * b
    if merge == "ave":
        return (a + b) * a.dtype.type(0.5)
    return np.concatenate([a, b], axis=-1)


def choose_gru_path(B: int, H: int, D: int, threads: int, dtype=np.float32) -> str:
    """The GRU kernel path for this run (config.Settings.gru_path and its thresholds)."""
    cfg = config.get()
    if cfg.gru_path != "auto":
        return cfg.gru_path
    if np.dtype(dtype) == np.float32 and (B >= cfg.packed_min_rows or threads > 1):
        return "packed"
    macs = B * H * 3 * H
    if B >= cfg.gemm_min_rows and (macs >= cfg.gemm_min_macs or (B >= cfg.gemm_wide_rows and macs >= cfg.gemm_wide_macs)):
        return "gemm"
    return "rows"


_scratch = threading.local()
_NO_MASK = np.ones((1, 1), np.uint8)  # placeholder when there is no mask (never read)


def scratch(name: str, shape: tuple, dtype) -> np.ndarray:
    """A work array kept per thread and reused while the shape stays the same: fresh
    multi-megabyte arrays cost page faults on every call (~5-10% of a B=16 run)."""
    cache = _scratch.__dict__
    a = cache.get(name)
    if a is None or a.shape != shape or a.dtype != dtype:
        a = np.empty(shape, dtype)
        cache[name] = a if a.nbytes <= config.get().scratch_keep_bytes else None
    return a


@register(GRU)
def _run_gru(layer: GRU, i: int, x: np.ndarray, ctx: RunContext):
    p = prepared(ctx.model, i)
    dtype = ctx.model.dtype
    x = np.ascontiguousarray(x, dtype=dtype)
    B, T, I = x.shape
    D, H = layer.num_directions, layer.hidden_size
    h0 = ctx.states[ctx.gru_index]
    hs = np.zeros((D, B, H), dtype) if h0 is None else np.ascontiguousarray(h0, dtype=dtype)
    Y = np.empty((B, T, D * H), dtype)
    use_mask = ctx.mask is not None
    mask = ctx.mask if use_mask else _NO_MASK
    zero_invalid = ctx.from_lengths or layer.masked_output == "zero"
    approx = dtype == np.float32
    nthreads = threads.get_num_threads()  # (applies GRU_ENGINE_NUM_THREADS on the first run)
    path = choose_gru_path(B, H, D, nthreads, dtype)
    cfg = config.get()
    if cfg.tiles_auto and path == "rows" and D * B == 1 and nthreads > 1 and H >= cfg.tile_min_h and cfg.gru_path == "auto":
        path = "tiles"
    if path == "tiles" and B != 1:
        path = "rows"
    if path == "tiles":
        XP = scratch("XP", (B, T, D * 3 * H), dtype)
        np.matmul(x.reshape(B * T, I), p.WT, out=XP.reshape(B * T, D * 3 * H))
        RTt = p.tile_weights(nthreads)
        Gt = np.empty(RTt.shape[1:3] + RTt.shape[4:], dtype)
        hn = np.empty(H, dtype)
        rhs = np.empty((1, H), dtype)
        for d in range(D):
            K.gru_tiles(
                XP, d * 3 * H, p.bx[d], RTt[d], p.Rb_h[d], hs[d], mask, use_mask, bool(p.rev[d]), p.lbr,
                p.acts[d], p.clip, approx, zero_invalid, ctx.from_lengths and use_mask, bool(p.trev[d]),
                Y, d * H, Gt, hn, rhs,
            )
    elif path in ("rows", "packed"):
        call = rows_call(p, B, T, I, nthreads, path == "packed", scratch)
        call(x, hs, mask, use_mask, zero_invalid, ctx.from_lengths and use_mask, Y)
    else:
        _gru_gemm_path(p, x, hs, mask, use_mask, zero_invalid, approx, Y)
        if ctx.from_lengths and T > 0:
            empty = ~mask.any(axis=1)
            if empty.any():
                hs[:, empty] = 0
        elif ctx.from_lengths:
            hs[:] = 0
    ctx.final_states.append(hs)
    ctx.gru_index += 1
    concat = D == 1 or layer.merge == "concat"
    if layer.return_sequences:
        if concat:
            return Y
        return merge_directions(layer.merge, Y[..., :H], Y[..., H:])
    last = [hs[d] for d in range(D)]
    if D == 1:
        return last[0].copy()
    return merge_directions(layer.merge, last[0], last[1])


class RowsCall:
    """One prepared :func:`kernels_cpu.gru_rows` call for a shape (B, T, I) and thread
    count: work split, projection choice, packed weights and work arrays decided once.
    ``call(x, hs, mask, use_mask, zero_invalid, empty_zero, Y)`` runs it (x, hs, Y as in
    :func:`_run_gru`). Streams keep one per chunk shape (:meth:`Stream.run`)."""

    __slots__ = ("p", "nt", "nthreads", "project", "XP", "G", "RH", "nchunks", "rb", "WTd", "w0", "w1", "approx")

    def __call__(self, x, hs, mask, use_mask, zero_invalid, empty_zero, Y):
        p = self.p
        B, T, I = x.shape
        if not self.project:  # one GEMM on NumPy's BLAS for all rows, steps and directions
            np.matmul(x.reshape(B * T, I), p.WT, out=self.XP.reshape(B * T, -1))
        nt, nthreads = self.nt, self.nthreads
        if nt != nthreads:
            numba.set_num_threads(nt)
        # items are handed out one at a time (dynamic), not in fixed halves: on a shared
        # machine one slowed thread must not hold up the whole run
        chunk = numba.set_parallel_chunksize(1) if nt > 1 else None
        try:
            K.gru_rows(
                x, self.WTd, p.bx, self.w0, self.w1, p.Rb_h, hs, mask, use_mask, p.rev, p.lbr, p.acts, p.clip,
                self.approx, zero_invalid, empty_zero, p.trev, Y, self.XP, self.G, self.RH, self.nchunks, self.rb,
                self.project,
            )
        finally:
            if chunk is not None:
                numba.set_parallel_chunksize(chunk)
            if nt != nthreads:
                numba.set_num_threads(nthreads)


def _new_array(name, shape, dtype):
    return np.empty(shape, dtype)


def rows_call(p: PreparedGRU, B: int, T: int, I: int, nthreads: int, packed: bool, alloc=_new_array) -> RowsCall:
    """Prepare the row kernel (``packed``: with the register-tile products) for (B, T, I);
    ``alloc(name, shape, dtype)`` gives the work arrays (:func:`scratch`, or fresh ones)."""
    D, H = p.R.shape[0], p.R.shape[2]
    dtype = p.R.dtype
    c = RowsCall()
    c.p, c.nthreads, c.approx = p, nthreads, dtype == np.float32
    cfg = config.get()
    # small runs stay on the calling thread: waking the pool costs more than it saves
    nt = nthreads if D * B * T * 3 * H * (I + H) >= cfg.parallel_min_macs else 1
    if packed:  # one item per thread and direction: each reads R once per step for its rows
        rb = -(-B // max(1, nt // D))
    else:
        rb = max(1, min(cfg.row_block, B * D // nt))
    nblk = -(-B // rb)
    if D * nblk == 1 and nthreads > 1 and not cfg.split_single_item:
        nt = 1  # one recurrence item: the whole run on the calling thread (see below)
    project = cfg.project_in_kernel
    if project is None:
        # one thread: NumPy's GEMM is faster except on small products, where its call costs
        # more than the hand product. Several: keep the run off BLAS's threads (spinning
        # OpenBLAS workers slowed a following numba loop up to 2x, and a 2-thread OpenBLAS
        # call on a small product took 8 ms instead of 0.1 ms)
        project = nthreads > 1 or B * T * I * 3 * H * D < cfg.project_blas_min_macs
    # the packed projection writes whole panels: each direction's columns padded
    C = KG.padded_width(3 * H) if packed and project else 3 * H
    c.XP = alloc("XP", (B, T, D * C), dtype)
    c.G = alloc("G", (D * nblk, rb, p.g_width if packed else 3 * H), dtype)
    c.RH = alloc("RH", (D * nblk, rb, H), dtype)
    # one recurrence item (batch 1, one direction): the projection alone could be split
    # over time chunks (Settings.split_single_item), when large enough to repay a parallel launch
    split = D * B < nt and T >= 32 * nt and T * I * 3 * H * D * B >= cfg.parallel_split_macs
    c.nchunks = -(-nt // (D * B)) if split else 1
    w = p.packed_weights() if packed else p.gemm_weights()
    c.w0, c.w1 = w[0], (w[1] if len(w) > 1 else p.no_weights)
    # 4-D panels select the kernel's packed specialisation (input weights too, even when
    # NumPy projects: one compiled variant per path)
    c.WTd = p.WTd_packed if packed else p.WTd
    c.nt, c.rb, c.project = nt, rb, project
    return c


def _gru_gemm_path(p: PreparedGRU, x, hs, mask, use_mask, zero_invalid, approx, Y) -> None:
    """Input projection of all steps in one GEMM, then per step one GEMM (two when lbr = 0)
    for all rows and directions on NumPy's BLAS, and the fused gate kernel."""
    dtype = x.dtype
    B, T, I = x.shape
    D, H = p.R.shape[0], p.R.shape[2]
    XP = scratch("XP", (B, T, D * 3 * H), dtype)
    np.matmul(x.reshape(B * T, I), p.WT, out=XP.reshape(B * T, D * 3 * H))
    G = scratch("G", (D, B, 3 * H), dtype)
    RH = scratch("RH", (D, B, H), dtype)
    w = p.gemm_weights()
    gates = K.gru_gates_step
    matmul = np.matmul
    args = (p.bx, G, p.Rb_h, hs, mask, use_mask, p.rev, p.lbr)
    tail = (p.acts, p.clip, approx, zero_invalid, p.trev, Y, RH)
    if p.lbr:
        RT = w[0]
        for s in range(T):
            matmul(hs, RT, out=G)
            gates(XP, s, *args, 1, *tail)
    else:
        RTzr, RTh = w
        Gzr = G[:, :, : 2 * H]
        Gh = G[:, :, 2 * H :]
        for s in range(T):
            matmul(hs, RTzr, out=Gzr)
            gates(XP, s, *args, 0, *tail)
            matmul(RH, RTh, out=Gh)
            gates(XP, s, *args, 1, *tail)

"""Whole-sequence runs: validate, allocate outputs, dispatch to kernels. No math here
beyond BLAS matrix products of whole sequences.

Layer runners are registered in :data:`RUNNERS` by layer type, so new layer kinds plug in
without touching :func:`run`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import kernels_cpu as K
from . import validate as V
from .model import DENSE_ACTIVATIONS, Activation, Dense, Embedding, GRU, Masking, Model


# --------------------------------------------------------------------------- prepared weights


@dataclass
class PreparedGRU:
    """Weights of one GRU layer packed once for the CPU kernels.

    WT (I, D*3H): input weights of all directions, transposed, for one BLAS product.
    bx (D*3H,): Wb plus Rb_z, Rb_r (and Rb_h when lbr = 0), added to the projection.
    R[d] (3H, H) C-contiguous; Rb_h[d] (H,); acts[d] (6,) f/g codes and alpha/beta.
    """

    WT: np.ndarray
    bx: np.ndarray
    R: list
    Rb_h: list
    acts: list
    clip: float


def prepare_gru(layer: GRU, dtype) -> PreparedGRU:
    D, H = layer.num_directions, layer.hidden_size
    W = layer.W.astype(dtype)
    Bias = layer.B.astype(dtype)
    WT = np.ascontiguousarray(W.reshape(D * 3 * H, -1).T)
    bx = np.empty(D * 3 * H, dtype)
    Rs, Rbs, acts = [], [], []
    params = layer.activation_params()
    for d in range(D):
        Wb, Rb = Bias[d, : 3 * H], Bias[d, 3 * H :]
        b = Wb.copy()
        b[: 2 * H] += Rb[: 2 * H]
        if not layer.linear_before_reset:
            b[2 * H :] += Rb[2 * H :]
        bx[d * 3 * H : (d + 1) * 3 * H] = b
        Rs.append(np.ascontiguousarray(layer.R[d], dtype=dtype))
        Rbs.append(np.ascontiguousarray(Rb[2 * H :], dtype=dtype))
        (fc, fa, fb), (gc, ga, gb) = params[2 * d], params[2 * d + 1]
        acts.append(np.array([fc, fa, fb, gc, ga, gb], dtype=dtype))
    return PreparedGRU(WT, bx, Rs, Rbs, acts, float(layer.clip or 0.0))


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


@register(GRU)
def _run_gru(layer: GRU, i: int, x: np.ndarray, ctx: RunContext):
    p = prepared(ctx.model, i)
    dtype = ctx.model.dtype
    B, T, I = x.shape
    D, H = layer.num_directions, layer.hidden_size
    # Input projection of all steps and directions: one BLAS product.
    XP = np.empty((B, T, D * 3 * H), dtype)
    np.matmul(x.reshape(B * T, I), p.WT, out=XP.reshape(B * T, D * 3 * H))
    XP += p.bx
    h0 = ctx.states[ctx.gru_index]
    hs = np.zeros((D, B, H), dtype) if h0 is None else h0
    concat = D == 1 or layer.merge == "concat"
    Y = np.empty((B, T, D * H), dtype)
    mask = ctx.mask if ctx.mask is not None else np.ones((B, T), np.uint8)
    use_mask = ctx.mask is not None
    zero_invalid = ctx.from_lengths or layer.masked_output == "zero"
    gh = np.empty((B, 3 * H), dtype)
    rh = np.empty((B, H), dtype)
    for d in range(D):
        reverse = layer.direction == "reverse" or d == 1
        K.gru_direction(
            XP, d * 3 * H, p.R[d], p.Rb_h[d], hs[d], mask, use_mask, reverse,
            layer.linear_before_reset, p.acts[d], p.clip, zero_invalid, ctx.from_lengths,
            reverse and layer.time_reversed_output, Y, d * H, gh, rh,
        )
    ctx.final_states.append(hs)
    ctx.gru_index += 1
    if layer.return_sequences:
        if concat:
            return Y
        return merge_directions(layer.merge, Y[..., :H], Y[..., H:])
    last = [hs[d] for d in range(D)]
    if D == 1:
        return last[0].copy()
    return merge_directions(layer.merge, last[0], last[1])

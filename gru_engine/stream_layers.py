"""Streaming for models that contain the layers of :mod:`gru_engine.layers`.

:class:`LayerStream` pushes chunks of steps through the model layer by layer, each layer
keeping what it needs of the past:

* ``Conv1D`` keeps its receptive field (the last ``(K-1)*dilation`` inputs, left padding
  included): the first outputs equal the whole-sequence run with its left padding;
* pooling and strided convolutions run at their own rate: a chunk of ``n`` steps yields the
  outputs whose windows it completes, possibly none;
* ``ZeroPadding1D((left, 0))`` emits its ``left`` zeros with the first step;
* GRUs carry their state (forward direction only), run through the whole-sequence kernel;
  a last-step GRU outputs, at every step, its current state (so the per-step output is what
  ``model.run`` returns for the sequence seen so far, as :class:`gru_engine.stream.Stream`);
* everything else (normalizations, Dense, activations, flatten / reshape) acts per step.

Layers that look ahead are refused with :class:`~gru_engine.errors.StreamingError` naming
the layer: ``same`` padding, right padding, global pooling, reverse / bidirectional GRUs.

``run(x_chunk)`` returns ``(B, m, out)`` with every output the chunk produced (m may be 0).
``step(x_t)`` returns ``(B, out)``, or **None when the step produced no output** (a
pooling or stride layer waiting for the rest of its window); on the one step that can produce
several outputs (the first, when a left ``ZeroPadding1D``'s zeros reach the output) it
returns them all as ``(B, m, out)``. Concatenating the outputs of all steps (or chunks of any
sizes) equals ``model.run`` on the whole sequence.

Per step this allocates small temporaries (the layer kernels are the whole-sequence ones);
models made only of GRU / Dense / Activation / Embedding / Masking layers use the
allocation-free :class:`gru_engine.stream.Stream`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from . import config
from . import kernels_cpu as KC
from . import kernels_layers as KL
from . import validate as V
from .errors import InputShapeError, StreamingError
from .layers import (
    BatchNormalization,
    Conv1D,
    Flatten,
    LayerNormalization,
    Reshape,
    UnitNormalization,
    ZeroPadding1D,
    _GlobalPooling1D,
    _Pooling1D,
    _Windowed,
)
from .model import DENSE_ACTIVATIONS, GRU, Activation, Embedding, Masking, Model


def _where(layer, i: int) -> str:
    return f"layer {i} ({layer.describe()}{', ' + repr(layer.name) if layer.name else ''})"


def stream_refusal(model: Model) -> str | None:
    """Why ``model`` cannot stream (naming the first layer that looks ahead), or None."""
    for i, layer in enumerate(model.layers):
        if isinstance(layer, GRU) and layer.direction != "forward":
            return f"{_where(layer, i)} cannot stream: a {layer.direction} GRU needs the future of the sequence"
        why = layer.stream_refusal() if hasattr(layer, "stream_refusal") else None
        if why:
            return f"{_where(layer, i)} cannot stream: {why}"
    return None


class _Window:
    """Per-stream past of a convolution / pooling layer (its receptive field)."""

    def __init__(self, layer: _Windowed, B: int, F: int, dtype):
        self.layer = layer
        self.span = layer._span()
        left = layer.pad_amounts(0)[0] if layer.padding != "valid" else 0
        self.left = left
        self.B, self.F, self.dtype = B, F, dtype
        self.is_conv = isinstance(layer, Conv1D)
        if self.is_conv:
            self._conv_args = (layer.packed(dtype), layer.bias_as(dtype), layer.dilation, layer.groups,
                               DENSE_ACTIVATIONS[layer.activation], dtype.type(layer.alpha))
        self.reset()

    def reset(self):
        self.P = self.left  # padded positions seen so far (left padding counts)
        self.ring = np.zeros((self.B, self.span, self.F), self.dtype)  # position p at [:, p % span]
        self.next_o = 0

    def _tail(self) -> np.ndarray:
        """The last ``min(P, span - 1)`` padded inputs, oldest first."""
        L = min(self.P, self.span - 1)
        idx = [(p % self.span) for p in range(self.P - L, self.P)]
        return self.ring[:, idx]

    def push(self, x: np.ndarray, compute) -> np.ndarray:
        """A chunk ``(B, n, F)`` in, the outputs whose windows it completes ``(B, m, F')`` out."""
        span, s = self.span, self.layer.stride
        n = x.shape[1]
        tail = self._tail()
        ext = np.concatenate([tail, x], axis=1) if tail.shape[1] else np.ascontiguousarray(x)
        base = self.P - tail.shape[1]  # padded position of ext[:, 0]
        last = (self.P + n - span) // s if self.P + n >= span else -1
        m = max(0, last - self.next_o + 1)
        y = compute(ext, self.next_o * s - base, m)
        P_new = self.P + n
        for p in range(max(P_new - span, self.P), P_new):
            self.ring[:, p % span] = ext[:, p - base]
        self.P = P_new
        self.next_o += m
        return y

    def push_one(self, x_t: np.ndarray, out: np.ndarray):
        """One step ``(B, F)`` without allocating: True (``out`` written), False (no output this
        step), or None when this step is not the simple case (then nothing changed: use push)."""
        span, s = self.span, self.layer.stride
        P_new = self.P + 1
        due = (P_new - span) // s - self.next_o + 1 if P_new >= span else 0
        if due > 1 or (due == 1 and self.next_o * s + span != P_new):
            return None
        last = self.P % span
        self.P = P_new
        if due == 0:
            KL.ring_put(self.ring, last, x_t)
            return False
        self.next_o += 1
        if self.is_conv:
            W, b, d, g, act, alpha = self._conv_args
            KL.conv1d_ring(self.ring, last, x_t, W, b, d, g, out)
            if act:
                KC.dense_act_inplace(out, act, alpha)
        else:
            KL.ring_put(self.ring, last, x_t)
            KL.pool1d_ring(self.ring, last, self.layer.pool_size, self.layer.is_max, out)
        return True


class LayerStream:
    """Stateful chunked / step-by-step inference over a model with conv / pooling layers.

    Parameters
    ----------
    model : the model; every layer must be causal (see the module docstring).
    batch_size : independent rows (B).
    """

    def __init__(self, model: Model, batch_size: int = 1):
        if not isinstance(model, Model):
            raise StreamingError(f"model must be a gru_engine.Model, got {type(model).__name__}")
        if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
            raise InputShapeError(f"batch_size must be a positive integer, got {batch_size!r}")
        why = stream_refusal(model)
        if why:
            raise StreamingError(why)
        from . import api

        self.model = model
        self.batch_size = B = int(batch_size)
        self.dtype = model.dtype
        self._api = api
        self._layers = []  # (index, layer, window) or (index, None, Stream of a GRU segment)
        segments = _gru_segments(model)
        size = model.input_size
        runner_grus = []
        i = 0
        while i < len(model.layers):
            layer = model.layers[i]
            seg = segments.get(i)
            if seg is not None:  # GRU / Dense / Activation run: the fused step kernel of Stream
                from .stream import Stream

                sub = Model(model.layers[i:seg], None if isinstance(layer, Embedding) else size, model.name)
                self._layers.append((i, None, Stream(sub, B)))
                size = sub.output_size
                i = seg
                continue
            if type(layer) not in api.RUNNERS:
                raise StreamingError(f"{_where(layer, i)} cannot stream: no CPU implementation")
            if isinstance(layer, GRU):
                runner_grus.append(layer)
                if not layer.return_sequences:
                    layer = dataclasses.replace(layer, return_sequences=True)
            win = _Window(layer, B, size, self.dtype) if isinstance(layer, (Conv1D, _Pooling1D)) else None
            self._layers.append((i, layer, win))
            size = layer.output_size(size) if not isinstance(layer, Embedding) else layer.output_size(None)
            i += 1
        self.output_size = model.output_size
        self._states = [np.zeros((1, B, g.hidden_size), self.dtype) for g in runner_grus]
        self._padded: set = set()  # ZeroPadding1D layers that emitted their left zeros
        self._ctx = api.RunContext(model)
        self._fast = self._plan_fast()

    def reset(self) -> None:
        """Back to the start: zero GRU states, empty receptive fields, padding re-armed."""
        for s in self._states:
            s[...] = 0
        for _, _, win in self._layers:
            if win is not None:
                win.reset()
        self._padded.clear()

    @property
    def state(self) -> list[np.ndarray]:
        """Copies of the GRU states, one ``(1, B, H)`` array per GRU layer, in layer order."""
        out, k = [], 0
        for _, layer, win in self._layers:
            if layer is None:
                st = win.state
                if st is not None:
                    out.extend(st if isinstance(st, list) else [st[j : j + 1] for j in range(st.shape[0])])
            elif isinstance(layer, GRU):
                out.append(self._states[k].copy())
                k += 1
        return out

    def run(self, x_chunk) -> np.ndarray:
        """Push a chunk ``(B, n, F)`` (``(B, n)`` token ids); return its outputs ``(B, m, out)``."""
        model, B = self.model, self.batch_size
        if model.takes_tokens:
            h = V.as_tokens("x_chunk", x_chunk, model.layers[0].num_embeddings)
            V.check_ndim("x_chunk", h, f"({B}, n) token ids", 2)
        else:
            h = V.as_float("x_chunk", x_chunk, self.dtype)
            doc = f"({B}, n, {model.input_size})"
            V.check_ndim("x_chunk", h, doc, 3)
            V.check_last("x_chunk", h, doc, model.input_size)
        if h.shape[0] != B:
            raise InputShapeError(f"x_chunk must have {B} rows (the batch size), got shape {h.shape}")
        ctx = self._api.RunContext(model)
        ctx.states = list(self._states)
        try:
            h = self._push(h, ctx)
        finally:  # keep the GRU states whether or not the kernels updated them in place
            for k, s in enumerate(ctx.final_states):
                if s is not self._states[k]:
                    self._states[k][...] = s
        return np.ascontiguousarray(h, dtype=self.dtype)

    def _push(self, h, ctx, start: int = 0):
        api, B = self._api, self.batch_size
        for i, layer, win in self._layers[start:]:
            if h.shape[1] == 0:
                return np.zeros((B, 0, self.output_size), self.dtype)
            if layer is None:  # a Stream over a GRU segment
                h = win.step(np.ascontiguousarray(h[:, 0]))[:, None] if h.shape[1] == 1 else win.run(h)
            elif win is not None:
                if ctx.mask is not None and layer.changes_time:
                    api.RUNNERS[type(layer)](layer, i, h[:, :0], ctx)  # raises the runner's mask error
                h = win.push(np.ascontiguousarray(h), _compute(layer, self.dtype))
            elif isinstance(layer, ZeroPadding1D):
                if layer.padding[0] and i not in self._padded:
                    self._padded.add(i)
                    z = np.zeros((B, layer.padding[0], h.shape[2]), h.dtype)
                    h = np.concatenate([z, h], axis=1)
            elif isinstance(layer, _GlobalPooling1D):  # pragma: no cover - refused in __init__
                raise StreamingError(f"{_where(layer, i)} cannot stream")
            else:
                h = api.RUNNERS[type(layer)](layer, i, h, ctx)
        return h

    def step(self, x_t, out=None):
        """One step ``(B, F)`` (``(B,)`` token ids): ``(B, out)``, or None when this step
        produced no output (``(B, m, out)`` when it produced several).

        out : optional ``(B, out)`` array; a single output is written there and returned.
        """
        x = np.asarray(x_t)
        B, model = self.batch_size, self.model
        if x.ndim != (1 if model.takes_tokens else 2) or x.shape[0] != B or (
            not model.takes_tokens and x.shape[1] != model.input_size
        ):
            doc = f"({B},) token ids" if model.takes_tokens else f"({B}, {model.input_size})"
            raise InputShapeError(f"x_t must have shape {doc}, got {x.shape}")
        if out is not None and (not isinstance(out, np.ndarray) or out.shape != (B, self.output_size)):
            raise InputShapeError(f"out must have shape ({B}, {self.output_size}), got {np.shape(out)}")
        y = self._step_fast(x) if self._fast is not None else self.run(x[:, None])
        if y is None:
            return None
        if y.ndim == 3:
            if y.shape[1] == 0:
                return None
            if y.shape[1] > 1:
                return y
            y = y[:, 0]
        if out is None:
            return y.copy()
        out[...] = y
        return out

    def _plan_fast(self):
        """Per-layer step ops over preallocated buffers, or None (masks / runner GRUs)."""
        if self._states or any(isinstance(la, Masking) for la in self.model.layers) or self.model.takes_tokens:
            return None
        B, dt = self.batch_size, self.dtype
        plan, size = [], self.model.input_size
        for i, layer, win in self._layers:
            if layer is None:
                size = win.output_size
                plan.append(("stream", win, np.zeros((B, size), dt)))
            elif win is not None:
                size = layer.output_size(size)
                plan.append(("win", win, np.zeros((B, size), dt)))
            elif isinstance(layer, ZeroPadding1D):
                plan.append(("pad", (i, layer.padding[0]), None))
            elif isinstance(layer, BatchNormalization):
                plan.append(("bn", layer.scale_shift(dt), np.zeros((B, size), dt)))
            elif isinstance(layer, LayerNormalization):
                plan.append(("ln", (layer.gamma.astype(dt), layer.beta.astype(dt), layer.epsilon), np.zeros((B, size), dt)))
            elif isinstance(layer, UnitNormalization):
                plan.append(("unit", layer.epsilon, np.zeros((B, size), dt)))
            elif isinstance(layer, Activation):
                plan.append(("act", (DENSE_ACTIVATIONS[layer.activation], dt.type(layer.alpha)), np.zeros((B, size), dt)))
            elif isinstance(layer, (Flatten, Reshape)):
                plan.append(("id", None, None))
            else:
                size = layer.output_size(size)
                plan.append(("runner", (i, layer), None))
        return plan

    def _step_fast(self, x):
        """One step through the plan; allocation-free for conv / pooling / normalization /
        activation layers and fused Stream segments. Returns (B, out), None, or a chunk."""
        h = np.ascontiguousarray(x, dtype=self.dtype)
        for k, (kind, obj, buf) in enumerate(self._fast):
            if kind == "stream":
                h = obj.step(h, out=buf)
            elif kind == "win":
                done = obj.push_one(h, buf)
                if done is None:  # not the simple one-in-one-out case: the chunk path from here
                    return self._chunk_from(k, h)
                if not done:
                    return None
                h = buf
            elif kind == "pad":
                if obj[1] and obj[0] not in self._padded:
                    return self._chunk_from(k, h)
            elif kind == "bn":
                KL.affine_channels(h, obj[0], obj[1], buf)
                h = buf
            elif kind == "ln":
                KL.layer_norm(h, obj[0], obj[1], obj[2], buf)
                h = buf
            elif kind == "unit":
                KL.unit_norm(h, obj, buf)
                h = buf
            elif kind == "act":
                buf[...] = h
                KC.dense_act_inplace(buf, obj[0], obj[1])
                h = buf
            elif kind == "runner":
                i, layer = obj
                h = np.ascontiguousarray(self._api.RUNNERS[type(layer)](layer, i, h, self._ctx))
        return h

    def _chunk_from(self, k: int, h):
        ctx = self._api.RunContext(self.model)
        return self._push(np.ascontiguousarray(h)[:, None], ctx, start=k)

    @property
    def input_size(self) -> int | None:
        return None if self.model.takes_tokens else self.model.input_size

    def copy(self) -> LayerStream:
        """An independent stream with a copy of the current state (receptive fields included)."""
        other = LayerStream(self.model, self.batch_size)
        for k, ((i, layer, mine), (_, _, theirs)) in enumerate(zip(self._layers, other._layers)):
            if isinstance(mine, _Window):
                theirs.P, theirs.next_o, theirs.ring = mine.P, mine.next_o, mine.ring.copy()
            elif layer is None:  # a fused Stream segment
                other._layers[k] = (i, None, mine.copy())
        for a, b in zip(self._states, other._states):
            b[...] = a
        other._padded = set(self._padded)
        other._fast = other._plan_fast()  # over the copied segments
        return other

    def __repr__(self) -> str:
        return f"LayerStream(batch_size={self.batch_size}, output_size={self.output_size}, model={self.model.name!r})"


def _gru_segments(model: Model) -> dict:
    """Start index -> end index of each run of layers the fused :class:`gru_engine.stream.Stream`
    steps (GRU / Dense / Activation / Embedding) that holds a GRU. None when the model has a
    Keras mask (it must reach the GRUs through the layers of this module)."""
    from .stream import STEP_BUILDERS

    if any(isinstance(la, Masking) or (isinstance(la, Embedding) and la.mask_zero) for la in model.layers):
        return {}
    out, i, L = {}, 0, model.layers
    while i < len(L):
        j = i
        while j < len(L) and type(L[j]) in STEP_BUILDERS and not isinstance(L[j], Masking):
            j += 1
        if any(isinstance(la, GRU) for la in L[i:j]):
            out[i] = j
        i = max(j, i + 1)
    return out


def _compute(layer, dtype):
    def conv(ext, start, m):
        y = np.empty((ext.shape[0], m, layer.out_channels), dtype)
        if m:
            kern = KL.conv1d if ext.shape[0] * m >= config.get().parallel_min_steps else KL.conv1d_serial
            kern(ext, layer.packed(dtype), layer.bias.astype(dtype, copy=False), layer.stride, layer.dilation,
                 layer.groups, start, y)
            if layer.activation != "linear":
                KC.dense_act_inplace(y.reshape(-1, y.shape[-1]), DENSE_ACTIVATIONS[layer.activation],
                                     dtype.type(layer.alpha))
        return y

    def pool(ext, start, m):
        y = np.empty((ext.shape[0], m, ext.shape[2]), dtype)
        if m:
            kern = KL.pool1d if ext.shape[0] * m >= config.get().parallel_min_steps else KL.pool1d_serial
            kern(ext, layer.pool_size, layer.stride, start, layer.is_max, False, y)
        return y

    return conv if isinstance(layer, Conv1D) else pool

"""Streaming inference: stateful step-by-step and chunked runs, one stream or many.

:class:`Stream` owns the hidden state of every GRU layer and every scratch buffer, allocated
once; ``step(x_t, out=buf)`` advances all layers (and the Dense head) by one step in ONE
kernel call and allocates nothing. :class:`StreamPool` holds many independent streams
(users, channels) in one state array and steps any subset of them in one batched call.

Semantics
---------
* State starts at zero (PyTorch ``h0=None``); ``Stream.state`` uses PyTorch's ``h_n``
  layout ``(num_layers, B, H)`` (a list of ``(1, B, H_l)`` arrays when hidden sizes differ).
* Stepping, chunks of any sizes (``run``) and ``model.run`` on the whole sequence give the
  same outputs (the step kernel's float32 sigmoid/tanh differ from ``math``'s by <= 3.4e-7).
* A model whose last GRU has ``return_sequences=False`` (Keras default, ONNX ``Y_h``): each
  step outputs the head (the layers after that GRU) applied to the current state, i.e.
  what ``model.run`` would return for the sequence seen so far.
* Keras masks (``Masking``, ``Embedding(mask_zero=True)``): a masked step keeps every GRU
  state and the GRU repeats its last output (Keras semantics).
* Only forward-in-time GRUs stream: a reverse or bidirectional GRU needs future inputs,
  so building a stream over one raises :class:`~gru_engine.errors.StreamingError`.

Adding a streamable layer
-------------------------
The step program is built by the functions in :data:`STEP_BUILDERS` (one per layer type,
like :data:`gru_engine.api.RUNNERS`). A builder receives the layer, its index and the
:class:`ProgramBuilder`; it stores its weights with ``pb.param(array)``, reserves per-stream
memory (state, ring buffers, scratch) with ``pb.row(n)`` and emits one op with
``pb.op(code, *slots)`` that :func:`gru_engine.kernels_step._run_row` executes. A causal
Conv1D, for example, would reserve a ``(kernel_size - 1) * C`` ring buffer with ``pb.row``,
register ``pb.add_state(...)`` so reset/copy see it, and add an ``OP_CONV1D`` branch to
``_run_row``. ``Stream.run`` then steps through chunks (api.run cannot carry such state) and
``StreamPool`` uses its row kernel for the model (the batched path knows GRU, Dense and
Activation ops only). Until then, models with layers that have no builder (conv, pooling)
are streamed layer by layer by :class:`gru_engine.stream_layers.LayerStream`, which
``Stream(model)`` / ``model.stream()`` return for them.
"""

from __future__ import annotations

import dataclasses
from operator import itemgetter
from typing import Callable, Hashable, Iterable

import numpy as np

from . import api, config, threads
from . import kernels_step as KS
from . import validate as V
from .errors import InputShapeError, InputTypeError, StreamingError
from .model import DENSE_ACTIVATIONS, Activation, Dense, Embedding, GRU, Masking, Model

# ----------------------------------------------------------------------------- program


@dataclasses.dataclass
class StepProgram:
    """A model compiled for streaming: shared, read-only weights and the row layout.

    P (n,) float weights with the program in its bytes; M (n,) int64: the same program, for
    Python-side reads; rowlen: floats per stream row;
    states: (row offset, hidden size) of each GRU layer's state, in layer order;
    extra_state: (row offset, size) of other per-stream state (ring buffers...).
    """

    P: np.ndarray
    M: np.ndarray
    rowlen: int
    in_size: int
    out_size: int
    takes_tokens: bool
    vocab: int
    states: list
    extra_state: list
    dtype: np.dtype


class ProgramBuilder:
    """Accumulates weights, row memory and ops while the layers are visited in order.

    ``off``/``size``: row offset and width of the current activation (the last layer's output).
    """

    def __init__(self, model: Model):
        self.model = model
        self.dtype = np.dtype(model.dtype)
        self._params: list[np.ndarray] = []
        self._offsets: list[int] = []
        self._poff = 16  # P[0] holds the program's position (see finish)
        self._ops: list[list[int]] = []
        self._rowlen = KS.ROW_START
        self.header = np.zeros(KS.HEADER, np.int64)
        self.header[KS.H_FAST] = 1 if self.dtype == np.float32 else 0
        self.states: list[tuple[int, int]] = []
        self.extra_state: list[tuple[int, int]] = []
        self.takes_tokens = model.takes_tokens
        self.vocab = 0
        self.size = model.input_size
        self.off = None
        if not self.takes_tokens:
            self.off = self.row(self.size)
            self.header[KS.H_IN_OFF] = self.off
            self.header[KS.H_IN_SIZE] = self.size

    def param(self, a) -> int:
        """Append ``a`` (any shape, C order) to the weight buffer; returns its offset."""
        a = np.ascontiguousarray(a, dtype=self.dtype).ravel()
        self._poff += (-self._poff) % 16  # 64-byte aligned blocks
        off = self._poff
        self._params.append(a)
        self._offsets.append(off)
        self._poff += a.size
        return off

    def row(self, n: int) -> int:
        """Reserve ``n`` floats in every stream's state row; returns the offset."""
        off = self._rowlen
        self._rowlen += -(-int(n) // 8) * 8
        return off

    def op(self, code: int, *slots: int) -> None:
        if len(slots) >= KS.OP_WIDTH:
            raise ValueError(f"an op has at most {KS.OP_WIDTH - 1} slots, got {len(slots)}")
        self._ops.append([code, *[int(s) for s in slots]])

    def add_state(self, off: int, size: int) -> None:
        """Declare per-stream state other than GRU hidden states (reset zeroes it, copy copies it)."""
        self.extra_state.append((off, size))

    def finish(self) -> StepProgram:
        M = np.zeros(KS.HEADER + KS.OP_WIDTH * len(self._ops), np.int64)
        M[: KS.HEADER] = self.header
        M[KS.H_NOPS] = len(self._ops)
        M[KS.H_OUT_OFF] = self.off
        M[KS.H_OUT_SIZE] = self.size
        for i, op in enumerate(self._ops):
            M[KS.HEADER + i * KS.OP_WIDTH : KS.HEADER + i * KS.OP_WIDTH + len(op)] = op
        # The program goes into P's bytes after the weights (int32 values; P.view(int32)[0]
        # holds where it starts), so a step call passes one array for both.
        if M.min() < np.iinfo(np.int32).min or M.max() > np.iinfo(np.int32).max:
            raise StreamingError("the model is too large to stream: offsets must fit in int32")
        per = self.dtype.itemsize // 4  # int32 slots per element of P
        start = self._poff + (-self._poff) % 16
        P = np.zeros(start + -(-M.size // per) + 16, self.dtype)
        for off, a in zip(self._offsets, self._params):
            P[off : off + a.size] = a
        Pi = P.view(np.int32)
        Pi[0] = start * per
        Pi[start * per : start * per + M.size] = M
        rowlen = -(-self._rowlen // 16) * 16  # rows on separate cache lines
        return StepProgram(
            P, M, rowlen, int(M[KS.H_IN_SIZE]), int(self.size), self.takes_tokens, self.vocab,
            list(self.states), list(self.extra_state), self.dtype,
        )


#: layer type -> builder(layer, index, ProgramBuilder). See the module docstring.
STEP_BUILDERS: dict[type, Callable] = {}


def register_step(layer_type):
    def deco(fn):
        STEP_BUILDERS[layer_type] = fn
        return fn

    return deco


def _where(layer, i: int) -> str:
    return f"layer {i} ({layer.describe()}{', ' + repr(layer.name) if layer.name else ''})"


@register_step(Embedding)
def _build_embedding(layer: Embedding, i: int, pb: ProgramBuilder):
    E = layer.table.shape[1]
    pb.header[KS.H_EMB_OFF] = pb.param(layer.table)
    pb.header[KS.H_VOCAB] = layer.num_embeddings
    pb.header[KS.H_EMB_MASK] = int(layer.mask_zero)
    pb.header[KS.H_IN_SIZE] = E
    pb.vocab = layer.num_embeddings
    pb.off = pb.row(E)
    pb.header[KS.H_IN_OFF] = pb.off
    pb.size = E


@register_step(Masking)
def _build_masking(layer: Masking, i: int, pb: ProgramBuilder):
    out = pb.row(pb.size)
    pb.op(KS.OP_MASKING, pb.size, pb.off, out, pb.param([layer.mask_value]))
    pb.off = out


@register_step(GRU)
def _build_gru(layer: GRU, i: int, pb: ProgramBuilder):
    if layer.direction != "forward":
        raise StreamingError(
            f"{_where(layer, i)} must run forward in time to stream, got direction={layer.direction!r}: "
            "its output at step t depends on later inputs, which a stream has not seen yet; "
            "use model.run on whole sequences"
        )
    H, I = layer.hidden_size, layer.input_size
    W = layer.W[0].astype(pb.dtype)  # (3H, I)
    R = layer.R[0].astype(pb.dtype)  # (3H, H)
    Wb, Rb = layer.B[0, : 3 * H], layer.B[0, 3 * H :]
    bx = Wb.astype(np.float64).copy()
    bx[: 2 * H] += Rb[: 2 * H]
    if not layer.linear_before_reset:
        bx[2 * H :] += Rb[2 * H :]
    (fc, fa, fb), (gc, ga, gb) = layer.activation_params()
    acts = [fc, fa, fb, gc, ga, gb, float(layer.clip or 0.0)]
    h = pb.row(H)
    scratch = pb.row(6 * H)
    pb.op(
        KS.OP_GRU, I, H, pb.off, h,
        pb.param(W.T), pb.param(R.T), pb.param(bx), pb.param(Rb[2 * H :]),
        layer.linear_before_reset, pb.param(acts), scratch,
    )
    pb.states.append((h, H))
    pb.off, pb.size = h, H


@register_step(Dense)
def _build_dense(layer: Dense, i: int, pb: ProgramBuilder):
    out = pb.row(layer.out_features)
    pb.op(
        KS.OP_DENSE, layer.in_features, layer.out_features, pb.off, out,
        pb.param(layer.kernel), pb.param(layer.bias), DENSE_ACTIVATIONS[layer.activation],
        pb.param([layer.alpha]),
    )
    pb.off, pb.size = out, layer.out_features


@register_step(Activation)
def _build_activation(layer: Activation, i: int, pb: ProgramBuilder):
    out = pb.row(pb.size)
    pb.op(KS.OP_ACT, pb.size, pb.off, out, DENSE_ACTIVATIONS[layer.activation], pb.param([layer.alpha]))
    pb.off = out


def compile_program(model: Model) -> StepProgram:
    """The step program of ``model`` (cached on the model: built once, shared by its streams)."""
    prog = model.__dict__.get("_step_program")
    if prog is not None:
        return prog
    if not isinstance(model, Model):
        raise StreamingError(f"model must be a gru_engine.Model, got {type(model).__name__}")
    pb = ProgramBuilder(model)
    for i, layer in enumerate(model.layers):
        build = STEP_BUILDERS.get(type(layer))
        if build is None:
            raise StreamingError(
                f"{_where(layer, i)} cannot stream: no step implementation for {type(layer).__name__} "
                f"(streamable layers: {', '.join(t.__name__ for t in STEP_BUILDERS)})"
            )
        build(layer, i, pb)
    prog = pb.finish()
    model.__dict__["_step_program"] = prog
    return prog


def _sequence_model(model: Model) -> Model | None:
    """``model`` with its last-step GRU returning sequences (per-step head outputs), for
    chunked runs through :func:`gru_engine.api.run`; None when api cannot run a layer."""
    cached = model.__dict__.get("_stream_seq_model")
    if cached is not None:
        return cached[0]
    if not all(type(layer) in api.RUNNERS for layer in model.layers):
        seq = None
    elif model.output_is_sequence:
        seq = model
    else:
        layers = [
            dataclasses.replace(layer, return_sequences=True)
            if isinstance(layer, GRU) and not layer.return_sequences
            else layer
            for layer in model.layers
        ]
        seq = Model(tuple(layers), model.input_size, model.name)
    model.__dict__["_stream_seq_model"] = (seq,)
    return seq


def _error(rc: int, what: str, x, out, prog: StepProgram, rows: int, ids=None) -> Exception:
    code, i = rc & 15, rc >> 4
    xdoc = f"({rows},) token ids" if prog.takes_tokens else f"({rows}, {prog.in_size})"
    if code == KS.ERR_X_SHAPE:
        return InputShapeError(f"{what} x must have shape {xdoc}, got {np.shape(x)}")
    if code == KS.ERR_OUT_SHAPE:
        return InputShapeError(f"{what} out must have shape ({rows}, {prog.out_size}), got {np.shape(out)}")
    if code == KS.ERR_TOKEN:
        return InputShapeError(
            f"{what} x[{i}] = {int(np.asarray(x).reshape(-1)[i])} must be a token id in [0, {prog.vocab - 1}]"
        )
    label = f"stream id {ids[i]!r}" if ids is not None else f"slot {i}"
    if code == KS.ERR_SLOT:
        return StreamingError(f"{what} {label} must be an open slot of the pool, got an out-of-range slot")
    if code == KS.ERR_CLOSED:
        return StreamingError(f"{what} {label} must be open, got a closed or never opened stream")
    if code == KS.ERR_DUPLICATE:
        return StreamingError(f"{what} {label} must appear once per call, got it twice")
    if code == KS.ERR_SLOTS_SHAPE:
        return InputShapeError(f"{what} ids and x must have the same number of rows, got x {np.shape(x)}")
    return StreamingError(f"{what} failed with kernel error code {rc}")


# ----------------------------------------------------------------------------- Stream


class Stream:
    """Stateful step-by-step inference over a :class:`~gru_engine.model.Model`.

    Parameters
    ----------
    model : the model (forward GRUs; Dense / Activation / Embedding / Masking layers).
    batch_size : independent rows stepped together (B).

    Example
    -------
    >>> stream = model.stream()                      # doctest: +SKIP
    >>> y = np.empty((1, model.output_size), np.float32)
    >>> for x_t in frames:                           # x_t: (1, F) float32
    ...     stream.step(x_t, out=y)                  # no allocation
    """

    def __new__(cls, model: Model, batch_size: int = 1):
        # Models with conv / pooling layers (gru_engine.layers) stream layer by layer.
        if cls is Stream and isinstance(model, Model) and any(type(la) not in STEP_BUILDERS for la in model.layers):
            from .stream_layers import LayerStream, stream_refusal

            why = stream_refusal(model)
            if why:
                raise StreamingError(why)
            return LayerStream(model, batch_size)
        return super().__new__(cls)

    def __init__(self, model: Model, batch_size: int = 1):
        if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
            raise InputShapeError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.model = model
        self._prog = prog = compile_program(model)
        self.batch_size = B = int(batch_size)
        self._S = np.zeros((B, prog.rowlen), prog.dtype)
        self._S[:, KS.ROW_FLAG] = 1.0
        kernels = KS.KERNELS[prog.dtype]
        self._kernel = kernels["rows_tokens" if prog.takes_tokens else "rows"]
        self._out_shape = (B, prog.out_size)
        self._P, self._M = prog.P, prog.M
        self._bind_step()

    # ----------------------------------------------------------------- properties
    @property
    def output_size(self) -> int:
        return self._prog.out_size

    @property
    def input_size(self) -> int | None:
        return None if self._prog.takes_tokens else self._prog.in_size

    @property
    def dtype(self) -> np.dtype:
        return self._prog.dtype

    # ----------------------------------------------------------------- stepping
    def step(self, x_t, out=None):
        """Advance every row by one step.

        x_t : ``(B, F)`` floats (float32 C-contiguous is the no-copy fast path) or ``(B,)``
            token ids for a model that starts with an Embedding.
        out : optional ``(B, out)`` array of the model dtype, C-contiguous; written in place
            and returned (nothing is allocated).

        Returns the model output for this step, ``(B, out)``.
        """
        # The per-instance closure made by _bind_step (same code) is what normally runs.
        return self._step_impl(x_t, out)

    def _bind_step(self) -> None:
        """Bind ``self.step`` to a closure over the kernel and the arrays: the fast path is
        one kernel call plus a return-code test (no attribute lookups)."""
        kernel, P, S = self._kernel, self._P, self._S
        shape, dtype, empty = self._out_shape, self._prog.dtype, np.empty
        slow = self._step_slow

        def step(x_t, out=None):
            if out is None:
                out = empty(shape, dtype)
            try:
                rc = kernel(P, S, x_t, out)
            except TypeError:  # dtype / layout / type other than the compiled signature
                return slow(x_t, out)
            if rc:
                raise _error(rc, "Stream.step:", x_t, out, self._prog, self.batch_size)
            return out

        step.__doc__ = Stream.step.__doc__
        self._step_impl = step
        self.step = step

    def _step_slow(self, x_t, out):
        x_t, out2 = self._coerce(x_t, out)
        rc = self._kernel(self._P, self._S, x_t, out2)
        if rc:
            raise _error(rc, "Stream.step:", x_t, out, self._prog, self.batch_size)
        if out2 is not out:
            out[...] = out2
        return out

    def _coerce(self, x, out, rows=None):
        prog = self._prog
        rows = self.batch_size if rows is None else rows
        if prog.takes_tokens:
            x = V.as_tokens("x", x, prog.vocab)
            V.check_ndim("x", x, f"({rows},) token ids", 1)
        else:
            x = V.as_float("x", x, prog.dtype)
            V.check_ndim("x", x, f"({rows}, {prog.in_size})", 2)
        if not isinstance(out, np.ndarray):
            raise InputTypeError(f"out must be a numpy array, got {type(out).__name__}")
        if out.dtype != prog.dtype:
            raise InputTypeError(f"out must have dtype {prog.dtype}, got {out.dtype}")
        if not out.flags.writeable:
            raise InputTypeError("out must be writable, got a read-only array")
        o = out if out.flags.c_contiguous else np.empty(out.shape, prog.dtype)
        return x, o

    def run(self, x_chunk):
        """Run a chunk ``(B, T, F)`` (or ``(B, T)`` token ids), continuing from the state.

        The input projection of the whole chunk is one BLAS product per GRU layer (through
        :func:`gru_engine.api.run`); the state afterwards equals that after T ``step`` calls.
        Returns ``(B, T, out)``.
        """
        prog = self._prog
        seq = _sequence_model(self.model)
        if prog.takes_tokens:
            x = V.as_tokens("x_chunk", x_chunk, prog.vocab)
            V.check_ndim("x_chunk", x, f"({self.batch_size}, T) token ids", 2)
        else:
            x = V.as_float("x_chunk", x_chunk, prog.dtype)
            doc = f"({self.batch_size}, T, {prog.in_size})"
            V.check_ndim("x_chunk", x, doc, 3)
            V.check_last("x_chunk", x, doc, prog.in_size)
        if x.shape[0] != self.batch_size:
            raise InputShapeError(f"x_chunk must have {self.batch_size} rows (the batch size), got shape {x.shape}")
        B, T = x.shape[0], x.shape[1]
        if T == 0:
            return np.empty((B, 0, prog.out_size), prog.dtype)
        if seq is None or prog.extra_state:
            y = np.empty((B, T, prog.out_size), prog.dtype)
            for t in range(T):
                self.step(np.ascontiguousarray(x[:, t]), out=y[:, t])
            return y
        plan = self._chunk_plan(seq, T)
        if plan is not None:
            return plan(x, self._S)
        # the states as run's initial_state (fresh arrays: the run may overwrite them); x is checked
        y, h_n = api.run_with_states(seq, x, [self._S[None, :, off : off + H].copy() for off, H in prog.states])
        if prog.states:
            hs = h_n if isinstance(h_n, list) else [h_n[i : i + 1] for i in range(len(prog.states))]
            for (off, H), h in zip(prog.states, hs):
                self._S[:, off : off + H] = h[0]
        return np.ascontiguousarray(y, dtype=prog.dtype)

    def _chunk_plan(self, seq: Model, T: int):
        """For a model that is one GRU layer returning sequences: ``run(x)`` with the row
        kernel's call prepared once per chunk length (work arrays, weights, path) and the
        state updated in place, which saves ~4 us of per-call overhead; None otherwise."""
        key = (T, threads.get_num_threads(), config.get().gru_path)
        plans = self.__dict__.setdefault("_plans", {})
        plan = plans.get(key, False)
        if plan is not False:
            return plan
        plan = None
        prog = self._prog
        layer = seq.layers[0] if len(seq.layers) == 1 else None
        if (isinstance(layer, GRU) and layer.num_directions == 1 and layer.return_sequences
                and not prog.takes_tokens and len(prog.states) == 1):
            B, H = self.batch_size, layer.hidden_size
            path = api.choose_gru_path(B, H, 1, key[1], prog.dtype)
            if path in ("rows", "packed"):
                call = api.rows_call(api.prepared(seq, 0), B, T, prog.in_size, key[1], path == "packed")
                plan = _ChunkPlan(call, prog.states[0][0], H, B, prog.dtype)
        if len(plans) >= 8:  # a few chunk lengths in use at a time
            plans.clear()
        plans[key] = plan
        return plan

    # ----------------------------------------------------------------- state
    def _rows(self, rows) -> np.ndarray | slice:
        if rows is None:
            return slice(None)
        r = np.asarray(rows)
        if r.dtype.kind not in "iu" or r.ndim > 1:
            raise InputShapeError(f"rows must be a row index or a 1-D sequence of row indices, got {rows!r}")
        r = r.reshape(-1).astype(np.int64)
        if r.size and (r.min() < 0 or r.max() >= self.batch_size):
            raise InputShapeError(f"rows must lie in [0, {self.batch_size - 1}], got {rows!r}")
        return r

    def reset(self, rows=None) -> None:
        """Zero the state of every layer, for all rows or the given row indices."""
        r = self._rows(rows)
        for off, size in self._prog.states + self._prog.extra_state:
            self._S[r, off : off + size] = 0

    @property
    def state(self):
        """A copy of the GRU states, PyTorch ``h_n`` layout ``(num_layers, B, H)``; a list
        of ``(1, B, H_l)`` arrays when hidden sizes differ; None without GRU layers.

        Setting it validates shape and dtype (same forms as ``model.run(initial_state=...)``).
        """
        states = [self._S[None, :, off : off + H].copy() for off, H in self._prog.states]
        if not states:
            return None
        if len({s.shape[2] for s in states}) == 1:
            return np.concatenate(states, axis=0)
        return states

    @state.setter
    def state(self, value) -> None:
        prog = self._prog
        if not prog.states:
            raise StreamingError("state cannot be set: the model has no GRU layer")
        hs = V.as_state(value, [(1, H) for _, H in prog.states], self.batch_size, prog.dtype)
        for (off, H), h in zip(prog.states, hs):
            if not np.all(np.isfinite(h)):
                raise InputShapeError("state must be finite, got NaN or inf values")
            self._S[:, off : off + H] = h[0]

    def copy(self) -> Stream:
        """An independent stream with the same model and a copy of the current state."""
        other = object.__new__(Stream)
        other.__dict__.update(self.__dict__)
        other._S = self._S.copy()
        other._plans = {}  # their work arrays are per stream
        other._bind_step()
        return other

    def __repr__(self) -> str:
        return f"Stream(batch_size={self.batch_size}, output_size={self.output_size}, model={self.model.name!r})"


class _ChunkPlan:
    """``Stream.run`` of one GRU layer: x (B, T, I), checked, in the model dtype, and the
    stream's state rows S (state at columns off:off+H), updated -> Y."""

    __slots__ = ("call", "off", "H", "hs")

    def __init__(self, call, off, H, B, dtype):
        self.call, self.off, self.H = call, off, H
        # batch 1: the state row is contiguous and the kernel updates it in place
        self.hs = None if B == 1 else np.empty((1, B, H), dtype)

    def __call__(self, x, S):
        off, H = self.off, self.H
        x = np.ascontiguousarray(x)
        Y = np.empty((x.shape[0], x.shape[1], H), S.dtype)
        if self.hs is None:
            self.call(x, S[None, :, off:off + H], api._NO_MASK, False, False, False, Y)
        else:
            hs = self.hs
            hs[0] = S[:, off:off + H]
            self.call(x, hs, api._NO_MASK, False, False, False, Y)
            S[:, off:off + H] = hs[0]
        return Y


# ----------------------------------------------------------------------------- StreamPool


class StreamPool:
    """Many independent streams of one model, stepped in batched calls.

    Streams are opened and closed by id (any hashable: a user id, a channel name).
    ``step(ids, x)`` steps the listed streams together: row ``i`` of ``x`` goes to stream
    ``ids[i]``. Each stream's state is a row of one preallocated array; kernels gather and
    scatter the rows by slot index. Small calls run the fused step kernel row by row; calls
    with at least ``batch_threshold`` rows run each layer's products as BLAS matrix
    products over all the rows (weights read once per call, not once per stream) with
    preallocated buffers. With ``out=`` no array is allocated except the id -> slot lookup;
    ``step_slots(pool.slots(ids), x, out)`` skips that too.

    Parameters
    ----------
    model : the model.
    capacity : the most streams open at once (the state array is allocated once).
    batch_threshold : calls with at least this many rows use the batched BLAS path (models
        with Masking layers or token inputs always use the row kernel).
    """

    def __init__(self, model: Model, capacity: int, batch_threshold: int = 32):
        if not isinstance(capacity, (int, np.integer)) or isinstance(capacity, bool) or capacity < 1:
            raise InputShapeError(f"capacity must be a positive integer, got {capacity!r}")
        self.model = model
        self._prog = prog = compile_program(model)
        self.capacity = int(capacity)
        self._S = np.zeros((self.capacity, prog.rowlen), prog.dtype)
        self._slot: dict[Hashable, int] = {}
        self._free = list(range(self.capacity - 1, -1, -1))
        k = KS.KERNELS[prog.dtype]
        self._serial = k["slots_tokens" if prog.takes_tokens else "slots"]
        self.batch_threshold = int(batch_threshold)
        self._slotbuf = np.empty(self.capacity, np.int64)
        self._plan = self._batched_plan()

    def _batched_plan(self):
        """Per-layer matrices (views into the weight buffer) and row buffers for the batched path."""
        prog, cap, dt = self._prog, self.capacity, self._prog.dtype
        if prog.takes_tokens:
            return None
        M, P, W = prog.M, prog.P, KS.OP_WIDTH
        plan = []
        for i in range(int(M[KS.H_NOPS])):
            m = np.ascontiguousarray(M[KS.HEADER + i * W : KS.HEADER + (i + 1) * W])
            code = int(m[0])
            if code == KS.OP_GRU:
                I, H = int(m[1]), int(m[2])
                C = 3 * H
                WT = P[m[5] : m[5] + I * C].reshape(I, C)
                RT = P[m[6] : m[6] + H * C].reshape(H, C)
                bufs = [np.empty((cap, C), dt), np.empty((cap, C), dt), np.empty((cap, H), dt),
                        np.empty((cap, H), dt), np.empty((cap, H), dt)]
                plan.append(("gru", m, WT, RT, RT[:, 2 * H :], bufs))
            elif code == KS.OP_DENSE:
                n_in, n_out = int(m[1]), int(m[2])
                K = P[m[5] : m[5] + n_in * n_out].reshape(n_in, n_out)
                plan.append(("dense", K, P[m[6] : m[6] + n_out], int(m[7]), P[m[8]], np.empty((cap, n_out), dt)))
            elif code == KS.OP_ACT:
                F = int(m[1])
                plan.append(("act", None, np.zeros(F, dt), int(m[4]), P[m[5]], np.empty((cap, F), dt)))
            else:  # Masking (per-row mask semantics): row kernel only
                return None
        return plan

    def __len__(self) -> int:
        return len(self._slot)

    def __contains__(self, stream_id) -> bool:
        return stream_id in self._slot

    @property
    def ids(self) -> list:
        return list(self._slot)

    @property
    def output_size(self) -> int:
        return self._prog.out_size

    def open(self, stream_id: Hashable, state=None) -> int:
        """Open a stream with a zero state (or ``state``, as ``Stream.state``); returns its slot."""
        if stream_id in self._slot:
            raise StreamingError(f"stream id {stream_id!r} must not be open already")
        if not self._free:
            raise StreamingError(f"the pool is full: capacity {self.capacity} streams are open; close one first")
        slot = self._free.pop()
        self._S[slot] = 0
        if state is not None:
            try:
                self._set_state(slot, state)
            except Exception:
                self._free.append(slot)
                raise
        self._S[slot, KS.ROW_FLAG] = 1.0
        self._slot[stream_id] = slot
        return slot

    def close(self, stream_id: Hashable) -> None:
        slot = self._lookup(stream_id)
        del self._slot[stream_id]
        self._S[slot, KS.ROW_FLAG] = 0.0
        self._free.append(slot)

    def _lookup(self, stream_id) -> int:
        try:
            return self._slot[stream_id]
        except (KeyError, TypeError):
            raise StreamingError(f"stream id {stream_id!r} must be open in this pool ({len(self._slot)} open)") from None

    def slots(self, ids: Iterable[Hashable]) -> np.ndarray:
        """Slot indices ``(n,) int64`` of the given ids (for :meth:`step_slots`)."""
        return np.array([self._lookup(i) for i in ids], np.int64)

    def reset(self, stream_id: Hashable) -> None:
        slot = self._lookup(stream_id)
        for off, size in self._prog.states + self._prog.extra_state:
            self._S[slot, off : off + size] = 0

    def state(self, stream_id: Hashable):
        """A copy of one stream's GRU states, ``(num_layers, 1, H)`` (list when H differ)."""
        slot = self._lookup(stream_id)
        states = [self._S[None, slot : slot + 1, off : off + H].copy() for off, H in self._prog.states]
        if not states:
            return None
        return np.concatenate(states, axis=0) if len({s.shape[2] for s in states}) == 1 else states

    def set_state(self, stream_id: Hashable, state) -> None:
        self._set_state(self._lookup(stream_id), state)

    def _set_state(self, slot: int, value) -> None:
        prog = self._prog
        if not prog.states:
            raise StreamingError("state cannot be set: the model has no GRU layer")
        hs = V.as_state(value, [(1, H) for _, H in prog.states], 1, prog.dtype)
        for (off, H), h in zip(prog.states, hs):
            self._S[slot, off : off + H] = h[0, 0]

    def step(self, ids, x, out=None):
        """Step the streams ``ids`` (a sequence of n open ids) on ``x`` ``(n, F)`` (or ``(n,)``
        token ids); returns ``(n, out)`` (written into ``out`` when given)."""
        n = len(ids)
        if n > self.capacity:
            raise InputShapeError(f"ids must list at most {self.capacity} streams (the capacity), got {n}")
        slots = self._slotbuf[:n]
        try:
            if n == 1:
                slots[0] = self._slot[ids[0]]
            elif n:
                slots[:] = itemgetter(*ids)(self._slot)
        except (KeyError, TypeError):
            bad = next((i for i in ids if i not in self._slot), ids)
            raise StreamingError(f"stream id {bad!r} must be open in this pool ({len(self._slot)} open)") from None
        return self._step(slots, x, out, ids)

    def step_slots(self, slots, x, out=None):
        """Like :meth:`step` with slot indices from :meth:`slots` (no id lookup)."""
        return self._step(slots, x, out, None)

    def _step(self, slots, x, out, ids):
        prog = self._prog
        n = len(slots)
        if out is None:
            out = np.empty((n, prog.out_size), prog.dtype)
        if self._plan is not None and n >= self.batch_threshold:
            return self._step_batched(slots, x, out, ids)
        k = self._serial
        try:
            rc = k(prog.P, self._S, slots, x, out)
        except TypeError:
            x, o2 = Stream._coerce(self, x, out, n)
            slots = np.ascontiguousarray(slots, np.int64)
            rc = k(prog.P, self._S, slots, x, o2)
            if rc == 0 and o2 is not out:
                out[...] = o2
        if rc:
            raise _error(rc, "StreamPool.step:", x, out, prog, n, ids)
        return out

    def _step_batched(self, slots, x, out, ids):
        prog, S, P = self._prog, self._S, self._prog.P
        n = len(slots)
        slots = np.ascontiguousarray(slots, np.int64)
        x, o = Stream._coerce(self, x, out, n)
        if x.shape != (n, prog.in_size):
            raise _error(KS.ERR_X_SHAPE if x.shape[0] == n else KS.ERR_SLOTS_SHAPE, "StreamPool.step:", x, out, prog, n, ids)
        if o.shape != (n, prog.out_size):
            raise _error(KS.ERR_OUT_SHAPE, "StreamPool.step:", x, out, prog, n, ids)
        rc = KS._claim_slots(S, slots)
        if rc:
            raise _error(rc, "StreamPool.step:", x, out, prog, n, ids)
        fast = int(prog.M[KS.H_FAST])
        cur = x
        for kind, *item in self._plan:
            if kind == "gru":
                m, WT, RT, RTh, bufs = item
                G, Gh, Hs, RH, Ghh = (a[:n] for a in bufs)
                np.matmul(cur, WT, out=G)
                KS.gather_rows(S, slots, int(m[4]), int(m[2]), Hs)
                np.matmul(Hs, RT, out=Gh)
                KS.gru_rows_zr(P, m, G, Gh, Hs, RH, fast)
                if not m[9]:
                    np.matmul(RH, RTh, out=Ghh)
                KS.gru_rows_out(P, m, S, slots, G, Gh, Ghh, Hs, fast)
                cur = Hs
            else:  # dense / act
                K, bias, code, alpha, buf = item
                Y = buf[:n]
                if K is not None:
                    np.matmul(cur, K, out=Y)
                else:
                    Y[...] = cur
                KS.bias_act_rows(Y, bias, code, alpha)
                cur = Y
        o[...] = cur
        if o is not out:
            out[...] = o
        return out

    def __repr__(self) -> str:
        return f"StreamPool({len(self)}/{self.capacity} open, output_size={self.output_size}, model={self.model.name!r})"

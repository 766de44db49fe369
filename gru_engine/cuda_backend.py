"""The GPU path: a device-bound model, whole-sequence runs and batched streams on numba.cuda.

Reached only through ``Model.to("cuda")``, ``Model.run(..., device="cuda")`` or
``Model.stream(..., device="cuda")``; ``numba.cuda`` is imported the first time one of them
is called, never by the CPU path.

* :class:`DeviceModel` copies the weights to the device once (packed for the kernels of
  :mod:`gru_engine.kernels_cuda`) and runs every layer of the model there: GRU (all ONNX
  features of the CPU engine plus the Keras masks, merge modes and ``go_backwards``),
  Dense, Activation, Embedding, Masking.
* Inputs may be NumPy arrays or device arrays: numba device arrays, or any object with
  ``__cuda_array_interface__`` (CuPy arrays, PyTorch CUDA tensors), used without a copy.
  Results stay on the device (numba device arrays, which CuPy and PyTorch accept through
  the same interface) when the input was there, and come back as NumPy arrays otherwise.
* :class:`CudaStream` steps many streams at once (one batch row each); the states and all
  scratch buffers stay on the device, allocated on the first step and reused.
"""

from __future__ import annotations

import numpy as np

from . import validate as V
from .errors import DeviceError, InputShapeError, InputTypeError, StreamingError, UnsupportedError
from .model import DENSE_ACTIVATIONS, Activation, Dense, Embedding, GRU, Masking, Model

FIX_HINT = (
    "install the cuda extra (pip install 'gru-engine[cuda]', which brings numba-cuda), check the "
    "NVIDIA driver (nvidia-smi), or set NUMBA_ENABLE_CUDASIM=1 to test on numba's CUDA simulator"
)
_MERGE_CODES = {"sum": 0, "mul": 1, "ave": 2, "concat": 3}
_HOST = object()  # marks a layer run on the host by DeviceModel (no GPU kernel for it)


def get_cuda():
    """``numba.cuda``, after checking that a GPU (or the simulator) is usable.

    Raises :class:`DeviceError` with the fix when it is not.
    """
    try:
        from numba import cuda
    except Exception as e:  # a broken numba-cuda install raises more than ImportError
        raise DeviceError(
            f"device='cuda' must have numba.cuda importable, got {type(e).__name__}: {e}; fix: {FIX_HINT}"
        ) from None
    try:
        ok = bool(cuda.is_available())
    except Exception:  # is_available() itself should not raise; be safe on odd drivers
        ok = False
    if not ok:
        reason = "no CUDA driver or GPU found"
        try:
            err = cuda.cuda_error()
        except Exception as e:
            err = e
        if err is not None:
            first = " ".join(str(err).split())[:200]
            reason = f"{reason}: {first}" if first else reason
        raise DeviceError(f"device='cuda' must find a usable CUDA GPU, got {reason}; fix: {FIX_HINT}")
    return cuda


def check_device(device) -> str:
    """Normalise a device name: "cpu" or "cuda" ("cuda:0" is "cuda")."""
    name = "cpu" if device is None else str(device).lower()
    if name in ("cpu", "cuda"):
        return name
    if name == "cuda:0":
        return "cuda"
    raise DeviceError(f"device must be 'cpu' or 'cuda' (or 'cuda:0'), got {device!r}")


def to_device(model: Model, device="cuda") -> DeviceModel:
    """The :class:`DeviceModel` of ``model``, made (weights copied) once per model."""
    check_device(device)
    dm = model.__dict__.get("_cuda_model")
    if dm is None:
        dm = DeviceModel(model)
        model.__dict__["_cuda_model"] = dm
    return dm


def is_device_array(x) -> bool:
    return bool(getattr(x, "__cuda_ndarray__", False)) or (
        hasattr(x, "__cuda_array_interface__") and not isinstance(x, np.ndarray)
    )


# --------------------------------------------------------------------------- packed weights


class _DeviceGRU:
    """One GRU layer's weights on the device, packed as :mod:`kernels_cuda` documents."""

    def __init__(self, cuda, layer: GRU, dtype):
        D, H, I = layer.num_directions, layer.hidden_size, layer.input_size
        W = layer.W.astype(dtype)
        R = layer.R.astype(dtype)
        Bias = layer.B.astype(dtype)
        lbr = layer.linear_before_reset
        bx = np.empty((D, 3 * H), dtype)
        for d in range(D):
            b = Bias[d, : 3 * H].copy()
            b[: 2 * H] += Bias[d, 3 * H : 5 * H]
            if not lbr:
                b[2 * H :] += Bias[d, 5 * H :]
            bx[d] = b
        acts = np.array(
            [[c for triple in layer.activation_params()[2 * d : 2 * d + 2] for c in triple] for d in range(D)],
            dtype,
        )
        self.D, self.H, self.I, self.lbr = D, H, I, lbr
        self.rev0 = layer.direction == "reverse"
        self.clip = float(layer.clip or 0.0)
        self.WT = cuda.to_device(np.ascontiguousarray(W.reshape(D * 3 * H, I).T))
        self.bx = cuda.to_device(bx.reshape(-1))
        self.RT = cuda.to_device(np.ascontiguousarray(R.transpose(0, 2, 1)))
        self.Rb_h = cuda.to_device(np.ascontiguousarray(Bias[:, 5 * H :]))
        self.acts = cuda.to_device(acts)


class _DeviceDense:
    def __init__(self, cuda, layer: Dense, dtype):
        self.kernel = cuda.to_device(np.ascontiguousarray(layer.kernel, dtype=dtype))
        self.bias = cuda.to_device(np.ascontiguousarray(layer.bias, dtype=dtype))


class _DeviceEmbedding:
    def __init__(self, cuda, layer: Embedding, dtype):
        self.table = cuda.to_device(np.ascontiguousarray(layer.table, dtype=dtype))


class _Workspace:
    """Device buffers by name, allocated when first asked for (or when the shape changes)."""

    def __init__(self, cuda):
        self.cuda = cuda
        self.arrays: dict = {}

    def get(self, key, shape, dtype):
        shape = tuple(int(s) for s in shape)
        a = self.arrays.get(key)
        if a is None or tuple(a.shape) != shape or a.dtype != np.dtype(dtype):
            a = self.cuda.device_array(shape, dtype)
            self.arrays[key] = a
        return a


# --------------------------------------------------------------------------- the model


class DeviceModel:
    """A :class:`~gru_engine.model.Model` bound to the GPU: weights on the device, copied once.

    ``run`` and ``stream`` take the same arguments as the model's own and compute on the
    GPU. Make one with ``model.to("cuda")``.
    """

    device = "cuda"

    def __init__(self, model: Model):
        cuda = get_cuda()
        from . import kernels_cuda

        self._K = kernels_cuda
        self.model = model
        self.dtype = model.dtype
        self._cuda = cuda
        try:
            self._ks = kernels_cuda.kernels(self.dtype)
        except Exception as e:  # e.g. numba-cuda without NVVM/NVRTC (the [cu12] extra brings them)
            raise DeviceError(
                f"the CUDA kernels must compile on this machine, got {type(e).__name__}: "
                f"{' '.join(str(e).split())[:300]}; fix: {FIX_HINT}"
            ) from e
        packed = []
        for i, layer in enumerate(model.layers):
            if isinstance(layer, GRU):
                packed.append(_DeviceGRU(cuda, layer, self.dtype))
            elif isinstance(layer, Dense):
                packed.append(_DeviceDense(cuda, layer, self.dtype))
            elif isinstance(layer, Embedding):
                packed.append(_DeviceEmbedding(cuda, layer, self.dtype))
            elif isinstance(layer, (Activation, Masking)):
                packed.append(None)
            else:
                from . import api

                if type(layer) not in api.RUNNERS:
                    raise UnsupportedError(
                        f"layer {i} ({layer.describe()}) has neither a GPU nor a CPU implementation"
                    )
                packed.append(_HOST)  # host fallback: see _host_layer
        self._packed = packed
        #: indices of the layers that run on the host (copied there and back)
        self.host_layers = tuple(i for i, p in enumerate(packed) if p is _HOST)
        self._no_mask = cuda.to_device(np.ones((1, 1), np.uint8))
        self._no_bias = cuda.to_device(np.zeros(1, self.dtype))

    def __repr__(self) -> str:
        return f"DeviceModel({self.model.name!r}, device='cuda', dtype={self.dtype})"

    def to(self, device="cuda"):
        """``"cpu"`` gives back the host :class:`Model`; ``"cuda"`` this object."""
        return self.model if check_device(device) == "cpu" else self

    def __call__(self, x, lengths=None, initial_state=None):
        return self.run(x, lengths=lengths, initial_state=initial_state)[0]

    def stream(self, batch_size: int = 1, device="cuda", **kwargs) -> CudaStream:
        """A :class:`CudaStream` of ``batch_size`` independent streams, state on the device."""
        check_device(device)
        if kwargs:
            raise UnsupportedError(f"stream(device='cuda') takes no options {sorted(kwargs)}")
        return CudaStream(self, batch_size)

    # ----------------------------------------------------------------- inputs
    def _device_input(self, x, name="x"):
        """A device view of ``x`` when it lives on the device (checked), else None."""
        if not is_device_array(x):
            return None
        d = self._as_numba(x)
        want = np.dtype(np.int64) if self.model.takes_tokens else self.dtype
        if d.dtype != want:
            what = "token ids" if self.model.takes_tokens else "inputs"
            raise InputTypeError(
                f"{name} on the device must have dtype {want} ({what} of this model), got {d.dtype}; "
                "convert it on the device first (e.g. tensor.float() / tensor.long())"
            )
        if not d.is_c_contiguous():
            raise InputTypeError(f"{name} on the device must be C-contiguous, got strides {d.strides}")
        return d

    def _input(self, x):
        """``(device array (B, T, F) or (B, T) ids, was_on_device, check_ids)``."""
        m = self.model
        d = self._device_input(x)
        if d is not None:
            shape = tuple(d.shape)  # device shapes refuse negative indices
            if m.takes_tokens:
                if len(shape) != 2:
                    raise InputShapeError(f"x must have shape (batch, seq_len) of token ids, got {shape}")
            elif len(shape) != 3 or shape[2] != m.input_size:
                raise InputShapeError(f"x must have shape (batch, seq_len, {m.input_size}), got {shape}")
            return d, True, m.takes_tokens
        if m.takes_tokens:
            h = V.as_tokens("x", x, m.layers[0].num_embeddings)
            V.check_ndim("x", h, "(batch, seq_len) of token ids", 2)
        else:
            h = V.as_float("x", x, self.dtype)
            doc = f"(batch, seq_len, {m.input_size})"
            V.check_ndim("x", h, doc, 3)
            V.check_last("x", h, doc, m.input_size)
        return self._cuda.to_device(h), False, False

    def _new_states(self, B: int):
        """``(h_n, per-layer (D, B, H) views)``: one (sum D, B, H) array when the H agree."""
        shapes = self.model.state_shapes
        if not shapes:
            return None, []
        cuda, dtype = self._cuda, self.dtype
        if len({H for _, H in shapes}) == 1:
            total = sum(D for D, _ in shapes)
            allh = cuda.device_array((total, B, shapes[0][1]), dtype)
            views, i = [], 0
            for D, _ in shapes:
                views.append(allh[i : i + D])
                i += D
            return allh, views
        views = [cuda.device_array((D, B, H), dtype) for D, H in shapes]
        return views, views

    def _set_states(self, views, initial_state, B: int):
        """Fill the state views from ``initial_state`` (host or device; None: zeros)."""
        shapes = self.model.state_shapes
        if initial_state is None:
            for v in views:
                self._K.fill(self._ks, v, 0.0)
            return
        if not shapes:
            raise InputShapeError("initial_state was given, but the model has no GRU layer")
        items = initial_state if isinstance(initial_state, (list, tuple)) else None
        if items is not None and all(is_device_array(s) for s in items) and len(items) == len(shapes):
            for k, (s, v, (D, H)) in enumerate(zip(items, views, shapes)):
                d = self._device_input_state(s, f"initial_state[{k}]")
                if tuple(d.shape) != (D, B, H):
                    raise InputShapeError(f"initial_state[{k}] must have shape ({D}, {B}, {H}), got {tuple(d.shape)}")
                v.copy_to_device(d)
            return
        if items is None and is_device_array(initial_state):
            d = self._device_input_state(initial_state, "initial_state")
            Hs = {H for _, H in shapes}
            total = sum(D for D, _ in shapes)
            if len(Hs) != 1:
                raise InputShapeError(
                    "initial_state must be a list with one (D, B, H) array per GRU layer: "
                    "the layers have different hidden sizes"
                )
            H = Hs.pop()
            if tuple(d.shape) != (total, B, H):
                raise InputShapeError(
                    f"initial_state must have shape (num_layers*num_directions={total}, batch={B}, hidden={H}), "
                    f"got {tuple(d.shape)}"
                )
            i = 0
            for v, (D, _) in zip(views, shapes):
                v.copy_to_device(d[i : i + D])
                i += D
            return
        if items is not None:
            items = [self._as_numba(s).copy_to_host() if is_device_array(s) else s for s in items]
        host = V.as_state(items if items is not None else initial_state, shapes, B, self.dtype)
        for v, a in zip(views, host):
            v.copy_to_device(a)

    def _as_numba(self, x):
        """A numba view of a device array (numba's own, or any ``__cuda_array_interface__``)."""
        if getattr(x, "__cuda_ndarray__", False):
            return x
        as_cuda_array = getattr(self._cuda, "as_cuda_array", None)
        if as_cuda_array is None:  # numba's CUDA simulator has no __cuda_array_interface__ import
            raise InputTypeError(
                f"a {type(x).__name__} device array cannot be used on numba's CUDA simulator; "
                "pass a NumPy array or a numba device array (cuda.to_device)"
            )
        return as_cuda_array(x)

    def _device_input_state(self, s, name):
        d = self._as_numba(s)
        if d.dtype != self.dtype:
            raise InputTypeError(f"{name} on the device must have dtype {self.dtype}, got {d.dtype}")
        if not d.is_c_contiguous():
            raise InputTypeError(f"{name} on the device must be C-contiguous, got strides {d.strides}")
        return d

    # ----------------------------------------------------------------- running
    def run(self, x, lengths=None, initial_state=None, *, recurrence: str = "auto"):
        """Run whole sequences on the GPU; same contract as :func:`gru_engine.api.run`.

        Returns ``(y, h_n)`` as NumPy arrays, or as numba device arrays when ``x`` was a
        device array. ``recurrence``: "auto", "persistent" (one launch per layer, states in
        shared memory, 1 to RBMAX rows per block) or "stepwise" (launches per step, one
        tiled product over all rows); see :func:`gru_engine.kernels_cuda.plan_recurrence`.
        """
        if recurrence not in ("auto", "persistent", "stepwise"):
            raise ValueError(f"recurrence must be 'auto', 'persistent' or 'stepwise', got {recurrence!r}")
        cuda = self._cuda
        xd, on_device, check_ids = self._input(x)
        B, T = int(xd.shape[0]), int(xd.shape[1])
        mask = None
        if lengths is not None:
            if is_device_array(lengths):
                lengths = self._as_numba(lengths).copy_to_host()
            lens = V.as_lengths(lengths, B, T)
            mask = cuda.to_device((np.arange(T)[None, :] < lens[:, None]).astype(np.uint8))
        h_n, views = self._new_states(B)
        self._set_states(views, initial_state, B)
        ws = _Workspace(cuda)
        y = self._forward(xd, B, T, mask, lengths is not None, views, ws, recurrence, check_ids)
        if on_device:
            return y, h_n
        if isinstance(h_n, list):
            return y.copy_to_host(), [s.copy_to_host() for s in h_n]
        return y.copy_to_host(), (None if h_n is None else h_n.copy_to_host())

    def _forward(self, h, B, T, mask, from_lengths, states, ws, recurrence, check_ids=False):
        """Every layer on the device. h: (B, T, F) floats or (B, T) int64 ids; states: the
        per-GRU-layer (D, B, H) arrays, updated in place. Returns the output device array."""
        K, ks, dtype = self._K, self._ks, self.dtype
        gi = 0
        for i, layer in enumerate(self.model.layers):
            p = self._packed[i]
            if p is _HOST:
                h, mask, from_lengths = self._host_layer(i, layer, h, mask, from_lengths)
                if len(tuple(h.shape)) == 3:
                    T = int(h.shape[1])
            elif isinstance(layer, Embedding):
                N = B * T
                E = layer.table.shape[1]
                out = ws.get(("emb", i), (N, E), dtype)
                combine = mask is not None
                if layer.mask_zero and mask is None:
                    mask = ws.get(("mask", i), (B, T), np.uint8)
                bad = ws.get(("bad", i), (1,), np.int32)
                if check_ids:
                    bad.copy_to_device(np.zeros(1, np.int32))
                mflat = (mask if mask is not None else self._no_mask).reshape(-1)
                K.launch_1d(ks.embed, N * E, h.reshape(N), p.table, out, mflat, int(layer.mask_zero), int(combine), bad)
                if check_ids and N and int(bad.copy_to_host()[0]):
                    raise InputShapeError(
                        f"x holds token ids outside the embedding's range [0, {layer.num_embeddings - 1}]"
                    )
                h = out.reshape(B, T, E)
            elif isinstance(layer, Masking):
                F = tuple(h.shape)[-1]
                N = B * T
                out = ws.get(("masked", i), (N, F), dtype)
                combine = mask is not None
                if mask is None:
                    mask = ws.get(("mask", i), (B, T), np.uint8)
                K.launch_1d(ks.masking, N, h.reshape(N, F), dtype.type(layer.mask_value), out, mask.reshape(-1), int(combine))
                h = out.reshape(B, T, F)
            elif isinstance(layer, Dense):
                lead = tuple(h.shape)[:-1]
                N = int(np.prod(lead))
                out = ws.get(("dense", i), (N, layer.out_features), dtype)
                K.matmul(ks, h.reshape(N, tuple(h.shape)[-1]), p.kernel, p.bias, out)
                self._activate(out, layer)
                h = out.reshape(*lead, layer.out_features)
            elif isinstance(layer, Activation):
                lead = tuple(h.shape)[:-1]
                F = tuple(h.shape)[-1]
                N = int(np.prod(lead))
                out = ws.get(("act", i), (N, F), dtype)
                out.copy_to_device(h.reshape(N, F))
                self._activate(out, layer)
                h = out.reshape(*lead, F)
            elif isinstance(layer, GRU):
                h = self._gru(i, layer, p, h, B, T, mask, from_lengths, states[gi], ws, recurrence)
                gi += 1
        return h

    def _host_layer(self, i, layer, h, mask, from_lengths):
        """Run a layer without a GPU kernel (Conv1D, normalization, pooling, ...) through the
        CPU engine's runner: activations and mask go to the host and back."""
        from . import api

        cuda = self._cuda
        ctx = api.RunContext(self.model)
        ctx.mask = None if mask is None else np.ascontiguousarray(mask.copy_to_host())
        ctx.from_lengths = from_lengths
        out = np.ascontiguousarray(api.RUNNERS[type(layer)](layer, i, h.copy_to_host(), ctx), dtype=self.dtype)
        new_mask = None if ctx.mask is None else cuda.to_device(np.ascontiguousarray(ctx.mask, dtype=np.uint8))
        return cuda.to_device(out), new_mask, bool(ctx.from_lengths)

    def _activate(self, out, layer):
        code = DENSE_ACTIVATIONS[layer.activation]
        if code == 0:
            return
        if code == 4:
            self._K.launch_1d(self._ks.softmax_rows, out.shape[0], out)
        else:
            self._K.launch_1d(self._ks.act_inplace, out.size, out.reshape(out.size), code, self.dtype.type(layer.alpha))

    def _gru(self, i, layer: GRU, p: _DeviceGRU, x, B, T, mask, from_lengths, state, ws, recurrence):
        K, ks, dtype = self._K, self._ks, self.dtype
        D, H, I = p.D, p.H, p.I
        XP = ws.get(("xp", i), (B * T, D * 3 * H), dtype)
        K.matmul(ks, x.reshape(B * T, I), p.WT, p.bx, XP)
        Y = ws.get(("y", i), (B * T, D * H), dtype)
        rb = K.plan_recurrence(dtype, B, D, H, recurrence)
        if rb == 0 and recurrence == "persistent":
            raise UnsupportedError(
                f"GRU layer {i}: recurrence='persistent' needs hidden_size <= "
                f"{K.PERSISTENT_MAX_SHARED // (4 * dtype.itemsize)} in {dtype}, got {H}; use 'stepwise'"
            )
        scratch = {}
        if rb == 0:
            scratch = dict(
                G=ws.get(("g", i), (B, 3 * H), dtype),
                RH=ws.get(("rh", i), (B, H), dtype),
                seen=ws.get(("seen", i), (B,), np.uint8),
            )
        K.gru_recurrence(
            ks, XP, p.RT, p.Rb_h, state, mask if mask is not None else self._no_mask, mask is not None,
            p.rev0, p.lbr, p.acts, p.clip, from_lengths or layer.masked_output == "zero", from_lengths,
            layer.time_reversed_output, Y, T, rows_per_block=rb, **scratch,
        )
        if layer.return_sequences:
            if D == 1 or layer.merge == "concat":
                return Y.reshape(B, T, D * H)
            out = ws.get(("merge", i), (B * T, H), dtype)
            K.launch_1d(ks.merge_halves, B * T * H, Y, out, _MERGE_CODES[layer.merge])
            return out.reshape(B, T, H)
        F = layer.output_size(I)
        out = ws.get(("last", i), (B, F), dtype)
        K.launch_1d(ks.merge_states, B * H, state, out, _MERGE_CODES[layer.merge if D == 2 else "concat"])
        return out


# --------------------------------------------------------------------------- streaming


class CudaStream:
    """``batch_size`` independent streams stepped together on the GPU.

    The hidden state of every GRU layer (``(D, batch_size, H)`` each) and every scratch
    buffer live on the device; they are allocated on the first step (or chunk length) and
    reused, so a step copies no weights and allocates nothing on the device. A step's
    input may be a NumPy array (copied into a device buffer made once) or a device array.

    ``step`` returns a NumPy array for a NumPy input, or, for a device input, a device
    array that the next step overwrites (pass ``out=`` to keep results).
    """

    def __init__(self, dm: DeviceModel, batch_size: int = 1):
        model = dm.model
        for i, layer in enumerate(model.layers):
            if isinstance(layer, GRU) and (layer.num_directions == 2 or layer.direction == "reverse"):
                raise StreamingError(
                    f"layer {i} ({layer.describe()}{', ' + repr(layer.name) if layer.name else ''}) runs backward "
                    "in time and cannot stream: each step would need inputs that have not arrived yet"
                )
        if dm.host_layers:
            i = dm.host_layers[0]
            raise StreamingError(
                f"layer {i} ({model.layers[i].describe()}) has no GPU kernel, so a GPU stream cannot "
                "keep its state on the device; stream this model on the CPU (device='cpu')"
            )
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise InputShapeError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.dm = dm
        self.model = model
        self.batch_size = int(batch_size)
        self._cuda = dm._cuda
        self._h_n, self._states = dm._new_states(self.batch_size)
        # one workspace for single steps, one for chunks, so alternating does not reallocate
        self._ws = {True: _Workspace(dm._cuda), False: _Workspace(dm._cuda)}
        self.reset()

    # ----------------------------------------------------------------- state
    def reset(self, rows=None) -> None:
        """Zero the state of all streams, or of the given batch rows."""
        K, ks = self.dm._K, self.dm._ks
        if rows is None:
            for v in self._states:
                K.fill(ks, v, 0.0)
            return
        idx = np.unique(np.asarray(rows, dtype=np.int64).reshape(-1))
        if idx.size and (idx.min() < 0 or idx.max() >= self.batch_size):
            raise InputShapeError(f"rows must lie in [0, {self.batch_size - 1}], got {idx.min()}..{idx.max()}")
        if idx.size == 0:
            return
        d_idx = self._cuda.to_device(idx)
        for v in self._states:
            K.launch_1d(ks.zero_rows, idx.size * v.shape[2], v, d_idx)

    @property
    def state(self):
        """A host copy of the states: ``(sum D, B, H)``, or a list when the H differ; None without GRU."""
        if self._h_n is None:
            return None
        if isinstance(self._h_n, list):
            return [s.copy_to_host() for s in self._h_n]
        return self._h_n.copy_to_host()

    @state.setter
    def state(self, value) -> None:
        """Validated like ``model.run(initial_state=...)`` (host or device arrays), as the CPU Stream."""
        if not self._states:
            raise StreamingError("state cannot be set: the model has no GRU layer")
        if not is_device_array(value) and not (
            isinstance(value, (list, tuple)) and any(is_device_array(v) for v in value)
        ):
            parts = value if isinstance(value, (list, tuple)) else [value]
            if not all(np.all(np.isfinite(np.asarray(v, dtype=np.float64))) for v in parts):
                raise InputShapeError("state must be finite, got NaN or inf values")
        self.dm._set_states(self._states, value, self.batch_size)

    def copy(self) -> CudaStream:
        """An independent stream with the same state (device-to-device copy)."""
        other = CudaStream(self.dm, self.batch_size)
        for dst, src in zip(other._states, self._states):
            dst.copy_to_device(src)
        return other

    # ----------------------------------------------------------------- stepping
    def _x_in(self, x, T: int | None):
        """Device input of shape (B, T, F) / (B, T) ids; T None means one step (B, F) / (B,)."""
        dm, m, B = self.dm, self.model, self.batch_size
        d = dm._device_input(x, "x_t" if T is None else "x")
        tokens = m.takes_tokens
        if T is None:
            doc = f"({B},) token ids" if tokens else f"({B}, {m.input_size})"
            shape = (B,) if tokens else (B, m.input_size)
        else:
            doc = f"({B}, seq_len) token ids" if tokens else f"({B}, seq_len, {m.input_size})"
        name = "x_t" if T is None else "x"
        if d is None:
            a = V.as_tokens(name, x, m.layers[0].num_embeddings) if tokens else V.as_float(name, x, dm.dtype)
        else:
            a = d
        if T is None:
            if tuple(a.shape) != shape:
                raise InputShapeError(f"{name} must have shape {doc}, got {tuple(a.shape)}")
            steps = 1
        else:
            if a.ndim != (2 if tokens else 3) or a.shape[0] != B or (not tokens and a.shape[2] != m.input_size):
                raise InputShapeError(f"{name} must have shape {doc}, got {tuple(a.shape)}")
            steps = int(a.shape[1])
        on_device = d is not None
        if not on_device:
            buf = self._ws[T is None].get("x_in", a.shape, a.dtype)
            buf.copy_to_device(a)
            d = buf
        full = (B, steps) if tokens else (B, steps, m.input_size)
        return d.reshape(*full), not on_device, steps, bool(tokens and on_device)

    def _finish(self, y, host: bool, out, step: bool):
        if step and self.model.output_is_sequence:
            y = y.reshape(self.batch_size, tuple(y.shape)[-1])
        if out is not None:
            if is_device_array(out):
                o = self.dm._as_numba(out)
                if tuple(o.shape) != tuple(y.shape) or o.dtype != y.dtype:
                    raise InputShapeError(f"out must have shape {tuple(y.shape)} and dtype {y.dtype}, got {tuple(o.shape)} {o.dtype}")
                o.copy_to_device(y)
                return out
            if not isinstance(out, np.ndarray) or out.shape != tuple(y.shape) or out.dtype != y.dtype or not out.flags.c_contiguous:
                raise InputShapeError(
                    f"out must be a C-contiguous array of shape {tuple(y.shape)} and dtype {y.dtype}, got "
                    f"{getattr(out, 'shape', None)} {getattr(out, 'dtype', type(out).__name__)}"
                )
            y.copy_to_host(out)
            return out
        return y.copy_to_host() if host else y

    def step(self, x_t, out=None):
        """One time step of every stream: ``x_t (B, F)`` (or ``(B,)`` ids) -> ``(B, out)``."""
        xd, host, steps, check_ids = self._x_in(x_t, None)
        y = self.dm._forward(xd, self.batch_size, 1, None, False, self._states, self._ws[True], "auto", check_ids)
        return self._finish(y, host, out, True)

    def run(self, x_chunk, out=None):
        """A chunk ``(B, T, F)`` of steps, continuing from the state; returns ``(B, T, out)``
        (``(B, out)`` of the last step for a model that ends on a last-step GRU)."""
        xd, host, steps, check_ids = self._x_in(x_chunk, -1)
        y = self.dm._forward(xd, self.batch_size, steps, None, False, self._states, self._ws[False], "auto", check_ids)
        return self._finish(y, host, out, False)

"""The canonical, immutable model: layer specs plus :class:`Model`.

Every importer (ONNX, PyTorch, Keras, raw arrays) produces a :class:`Model`; every exporter
consumes one. Conventions are ONNX's:

* ``GRU.W`` ``(D, 3H, I)``, ``GRU.R`` ``(D, 3H, H)``, ``GRU.B`` ``(D, 6H)`` =
  ``[Wb_z, Wb_r, Wb_h, Rb_z, Rb_r, Rb_h]`` per direction; gates stacked z, r, h; the reverse
  direction at index 1 of axis 0 when bidirectional.
* ``H_t = (1 - z) * h~ + z * H_{t-1}``.
* ``Dense.kernel`` is ``(in, out)`` (``y = x @ kernel + bias``, like ONNX MatMul and Keras).

Sequences flow between layers batch-first, ``(B, T, F)``. A GRU with
``return_sequences=False`` turns a sequence into one vector per row ``(B, F)``; layers that
follow it (Dense, Activation) act on vectors.

The model holds no state: per-stream state lives in :class:`gru_engine.stream.Stream`.
Prepared (packed) weights are cached on the instance the first time a backend needs them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import config
from .errors import ModelDefinitionError

# --------------------------------------------------------------------------- activations

#: ONNX RNN activation names (canonical spelling) -> kernel code. Codes are what kernels switch on.
RNN_ACTIVATIONS = {
    "Sigmoid": 0,
    "Tanh": 1,
    "Relu": 2,
    "Affine": 3,
    "LeakyRelu": 4,
    "ThresholdedRelu": 5,
    "ScaledTanh": 6,
    "HardSigmoid": 7,
    "Elu": 8,
    "Softsign": 9,
    "Softplus": 10,
}
_RNN_ACT_BY_LOWER = {k.lower(): k for k in RNN_ACTIVATIONS}
# onnxruntime (rnn_helpers.cc): which activations consume alpha / beta, and its defaults.
_TAKES_ALPHA = {"Affine", "LeakyRelu", "ThresholdedRelu", "ScaledTanh", "HardSigmoid", "Elu"}
_TAKES_BETA = {"Affine", "ScaledTanh", "HardSigmoid"}
_DEFAULT_ALPHA = {"LeakyRelu": 0.01, "HardSigmoid": 0.2, "Elu": 1.0}
_DEFAULT_BETA = {"HardSigmoid": 0.5}

#: Element-wise activations of Dense / Activation layers -> kernel code.
DENSE_ACTIVATIONS = {
    "linear": 0,
    "sigmoid": 1,
    "tanh": 2,
    "relu": 3,
    "softmax": 4,
    "hard_sigmoid": 5,
    "elu": 6,
    "selu": 7,
    "gelu": 8,
    "swish": 9,
    "softplus": 10,
    "softsign": 11,
    "leaky_relu": 12,
    "gelu_tanh": 13,
    "exp": 14,
}
DENSE_ACTIVATION_ALIASES = {"silu": "swish", "identity": "linear", "none": "linear", None: "linear"}

DIRECTIONS = {"forward": 1, "reverse": 1, "bidirectional": 2}
MERGE_MODES = ("concat", "sum", "mul", "ave")


def canonical_rnn_activation(name: str, where: str = "") -> str:
    """Return the canonical ONNX spelling of an RNN activation name (case-insensitive)."""
    canon = _RNN_ACT_BY_LOWER.get(str(name).lower())
    if canon is None:
        from .errors import UnsupportedError

        raise UnsupportedError(
            f"{where}activation {name!r} is not an ONNX RNN activation; supported: {', '.join(RNN_ACTIVATIONS)}"
        )
    return canon


def resolve_rnn_activations(
    names: tuple[str, ...], alphas: tuple[float, ...], betas: tuple[float, ...]
) -> list[tuple[int, float, float]]:
    """Map activation names plus the ONNX alpha/beta lists to ``(code, alpha, beta)`` triples.

    onnxruntime's rule: the lists are consumed in order, alpha only by the activations that
    take an alpha and beta only by those that take a beta; a missing value takes
    onnxruntime's default (LeakyRelu 0.01, HardSigmoid 0.2/0.5, Elu 1.0, otherwise 0).
    """
    out = []
    ai = iter(alphas)
    bi = iter(betas)
    for name in names:
        alpha = beta = 0.0
        if name in _TAKES_ALPHA:
            alpha = float(next(ai, _DEFAULT_ALPHA.get(name, 0.0)))
        if name in _TAKES_BETA:
            beta = float(next(bi, _DEFAULT_BETA.get(name, 0.0)))
        out.append((RNN_ACTIVATIONS[name], alpha, beta))
    return out


def canonical_dense_activation(name: str | None, where: str = "") -> str:
    key = DENSE_ACTIVATION_ALIASES.get(name, name)
    if isinstance(key, str):
        key = DENSE_ACTIVATION_ALIASES.get(key.lower(), key.lower())
    if key not in DENSE_ACTIVATIONS:
        from .errors import UnsupportedError

        raise UnsupportedError(
            f"{where}activation {name!r} is not supported; supported: {', '.join(DENSE_ACTIVATIONS)}"
        )
    return key


# --------------------------------------------------------------------------- helpers


def _as_array(name: str, a: Any, dtype) -> np.ndarray:
    try:
        arr = np.array(a, dtype=dtype, copy=True, order="C")
    except (TypeError, ValueError) as e:
        raise ModelDefinitionError(f"{name} must be a numeric array, got {type(a).__name__}: {e}") from None
    arr.setflags(write=False)
    return arr


def _check_shape(name: str, arr: np.ndarray, expected: tuple) -> None:
    if arr.shape != tuple(expected):
        raise ModelDefinitionError(f"{name} must have shape {tuple(expected)}, got {arr.shape}")


def _check_finite(name: str, arr: np.ndarray) -> None:
    if arr.size and not np.all(np.isfinite(arr)):
        raise ModelDefinitionError(f"{name} contains NaN or inf values")


# --------------------------------------------------------------------------- layers


@dataclass(frozen=True, eq=False)
class Layer:
    """Base of all layer specs. ``name`` is the source framework's layer/node name."""

    name: str = field(default="", kw_only=True)

    @property
    def kind(self) -> str:
        return type(self).__name__

    def output_size(self, input_size: int) -> int:
        return input_size

    def param_count(self) -> int:
        return sum(
            getattr(self, f.name).size
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), np.ndarray)
        )

    def astype(self, dtype) -> Layer:
        changes = {
            f.name: getattr(self, f.name).astype(dtype)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), np.ndarray) and getattr(self, f.name).dtype.kind == "f"
        }
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        return self.kind


@dataclass(frozen=True, eq=False)
class GRU(Layer):
    """One ONNX GRU operator (one layer, one or two directions).

    Attributes
    ----------
    W : (D, 3H, I) input weights, gates z, r, h.
    R : (D, 3H, H) recurrent weights, gates z, r, h.
    B : (D, 6H) biases ``[Wb_z, Wb_r, Wb_h, Rb_z, Rb_r, Rb_h]`` (zeros when the source has none).
    direction : "forward" | "reverse" | "bidirectional".
    linear_before_reset : 0 or 1 (PyTorch and Keras ``reset_after=True`` are 1).
    activations : 2 * D ONNX activation names ``(f, g)`` per direction; default Sigmoid, Tanh.
    activation_alpha, activation_beta : the ONNX attribute lists, consumed as onnxruntime does.
    clip : pre-activation clip (> 0) or None.
    return_sequences : True -> per-step output ``(B, T, D*H)`` (or merged); False -> last
        step only ``(B, D*H)``: the forward direction's final state and the reverse
        direction's state after x[0] (ONNX ``Y_h``, Keras ``return_sequences=False``).
    merge : how the two directions combine on the feature axis: "concat" (ONNX, PyTorch,
        Keras default), "sum", "mul", "ave" (Keras ``Bidirectional(merge_mode=...)``).
    time_reversed_output : reverse-direction outputs written in reversed time order (Keras
        ``go_backwards=True``); ONNX and PyTorch write them in the input's time order.
    masked_output : at a step masked by a Keras mask: "carry" repeats the previous output
        (Keras GRU), "zero" writes zeros (Keras Bidirectional with return_sequences).
        Steps past ``lengths`` given to ``run`` are always zero (ONNX ``sequence_lens``).
    """

    W: np.ndarray = None
    R: np.ndarray = None
    B: np.ndarray = None
    direction: str = "forward"
    linear_before_reset: int = 0
    activations: tuple = ()
    activation_alpha: tuple = ()
    activation_beta: tuple = ()
    clip: float | None = None
    return_sequences: bool = True
    merge: str = "concat"
    time_reversed_output: bool = False
    masked_output: str = "carry"

    def __post_init__(self):
        where = f"GRU layer {self.name!r}: " if self.name else "GRU layer: "
        if self.direction not in DIRECTIONS:
            raise ModelDefinitionError(
                f"{where}direction must be one of {list(DIRECTIONS)}, got {self.direction!r}"
            )
        D = DIRECTIONS[self.direction]
        if self.W is None or self.R is None:
            raise ModelDefinitionError(f"{where}W and R are required")
        dtype = np.asarray(self.W).dtype if np.asarray(self.W).dtype in (np.float32, np.float64) else config.DTYPE
        W = _as_array(f"{where}W", self.W, dtype)
        R = _as_array(f"{where}R", self.R, dtype)
        if R.ndim != 3 or R.shape[0] != D or R.shape[1] != 3 * R.shape[2] or R.shape[2] == 0:
            raise ModelDefinitionError(
                f"{where}R must have shape (num_directions={D}, 3*hidden_size, hidden_size), got {R.shape}"
            )
        H = R.shape[2]
        if W.ndim != 3 or W.shape[:2] != (D, 3 * H):
            raise ModelDefinitionError(
                f"{where}W must have shape ({D}, {3 * H}, input_size), got {W.shape}"
            )
        Bv = np.zeros((D, 6 * H), dtype) if self.B is None else self.B
        Bv = _as_array(f"{where}B", Bv, dtype)
        _check_shape(f"{where}B", Bv, (D, 6 * H))
        for n, a in (("W", W), ("R", R), ("B", Bv)):
            _check_finite(f"{where}{n}", a)
        object.__setattr__(self, "W", W)
        object.__setattr__(self, "R", R)
        object.__setattr__(self, "B", Bv)
        lbr = int(self.linear_before_reset)
        if lbr not in (0, 1):
            raise ModelDefinitionError(f"{where}linear_before_reset must be 0 or 1, got {self.linear_before_reset!r}")
        object.__setattr__(self, "linear_before_reset", lbr)
        acts = tuple(self.activations) or ("Sigmoid", "Tanh") * D
        acts = tuple(canonical_rnn_activation(a, where) for a in acts)
        if len(acts) != 2 * D:
            raise ModelDefinitionError(
                f"{where}activations must list 2 names per direction ({2 * D}), got {len(acts)}: {list(acts)}"
            )
        object.__setattr__(self, "activations", acts)
        object.__setattr__(self, "activation_alpha", tuple(float(a) for a in self.activation_alpha))
        object.__setattr__(self, "activation_beta", tuple(float(b) for b in self.activation_beta))
        if self.clip is not None:
            c = float(self.clip)
            if not c > 0 or not np.isfinite(c):
                raise ModelDefinitionError(f"{where}clip must be a positive finite number, got {self.clip!r}")
            object.__setattr__(self, "clip", c)
        if self.merge not in MERGE_MODES:
            raise ModelDefinitionError(f"{where}merge must be one of {MERGE_MODES}, got {self.merge!r}")
        if self.masked_output not in ("carry", "zero"):
            raise ModelDefinitionError(f"{where}masked_output must be 'carry' or 'zero', got {self.masked_output!r}")

    @property
    def hidden_size(self) -> int:
        return self.R.shape[2]

    @property
    def input_size(self) -> int:
        return self.W.shape[2]

    @property
    def num_directions(self) -> int:
        return self.R.shape[0]

    def output_size(self, input_size: int) -> int:
        if self.num_directions == 2 and self.merge == "concat":
            return 2 * self.hidden_size
        return self.hidden_size

    def activation_params(self) -> list[tuple[int, float, float]]:
        """``(code, alpha, beta)`` for f and g of each direction, onnxruntime's rules applied."""
        return resolve_rnn_activations(self.activations, self.activation_alpha, self.activation_beta)

    def describe(self) -> str:
        extra = [self.direction, f"lbr={self.linear_before_reset}"]
        if self.activations != ("Sigmoid", "Tanh") * self.num_directions:
            extra.append("act=" + ",".join(self.activations))
        if self.clip is not None:
            extra.append(f"clip={self.clip}")
        if not self.return_sequences:
            extra.append("last step")
        if self.num_directions == 2 and self.merge != "concat":
            extra.append(f"merge={self.merge}")
        return f"GRU({self.input_size}->{self.hidden_size}, {', '.join(extra)})"


@dataclass(frozen=True, eq=False)
class Dense(Layer):
    """``y = activation(x @ kernel + bias)`` on the last axis.

    kernel : (in, out); bias : (out,) (zeros when absent).
    activation : one of :data:`DENSE_ACTIVATIONS`; softmax is over the last axis.
    alpha : parameter of leaky_relu (negative slope) / elu.
    """

    kernel: np.ndarray = None
    bias: np.ndarray | None = None
    activation: str = "linear"
    alpha: float = 0.0

    def __post_init__(self):
        where = f"Dense layer {self.name!r}: " if self.name else "Dense layer: "
        if self.kernel is None:
            raise ModelDefinitionError(f"{where}kernel is required")
        k = np.asarray(self.kernel)
        dtype = k.dtype if k.dtype in (np.float32, np.float64) else config.DTYPE
        k = _as_array(f"{where}kernel", k, dtype)
        if k.ndim != 2 or 0 in k.shape:
            raise ModelDefinitionError(f"{where}kernel must have shape (in_features, out_features), got {k.shape}")
        b = np.zeros(k.shape[1], dtype) if self.bias is None else self.bias
        b = _as_array(f"{where}bias", b, dtype)
        _check_shape(f"{where}bias", b, (k.shape[1],))
        _check_finite(f"{where}kernel", k)
        _check_finite(f"{where}bias", b)
        object.__setattr__(self, "kernel", k)
        object.__setattr__(self, "bias", b)
        object.__setattr__(self, "activation", canonical_dense_activation(self.activation, where))
        object.__setattr__(self, "alpha", float(self.alpha))

    @property
    def in_features(self) -> int:
        return self.kernel.shape[0]

    @property
    def out_features(self) -> int:
        return self.kernel.shape[1]

    def output_size(self, input_size: int) -> int:
        return self.out_features

    def describe(self) -> str:
        return f"Dense({self.in_features}->{self.out_features}, {self.activation})"


@dataclass(frozen=True, eq=False)
class Activation(Layer):
    """Element-wise activation (softmax over the last axis)."""

    activation: str = "linear"
    alpha: float = 0.0

    def __post_init__(self):
        where = f"Activation layer {self.name!r}: " if self.name else "Activation layer: "
        object.__setattr__(self, "activation", canonical_dense_activation(self.activation, where))
        object.__setattr__(self, "alpha", float(self.alpha))

    def describe(self) -> str:
        return f"Activation({self.activation})"


@dataclass(frozen=True, eq=False)
class Embedding(Layer):
    """Token ids ``(B, T)`` -> vectors ``(B, T, E)``; table ``(V, E)``.

    mask_zero : id 0 is padding; the mask it makes is consumed by the GRU layers (Keras).
    """

    table: np.ndarray = None
    mask_zero: bool = False

    def __post_init__(self):
        where = f"Embedding layer {self.name!r}: " if self.name else "Embedding layer: "
        if self.table is None:
            raise ModelDefinitionError(f"{where}table is required")
        t = np.asarray(self.table)
        dtype = t.dtype if t.dtype in (np.float32, np.float64) else config.DTYPE
        t = _as_array(f"{where}table", t, dtype)
        if t.ndim != 2 or 0 in t.shape:
            raise ModelDefinitionError(f"{where}table must have shape (num_embeddings, embedding_dim), got {t.shape}")
        _check_finite(f"{where}table", t)
        object.__setattr__(self, "table", t)
        object.__setattr__(self, "mask_zero", bool(self.mask_zero))

    @property
    def num_embeddings(self) -> int:
        return self.table.shape[0]

    def output_size(self, input_size: int) -> int:
        return self.table.shape[1]

    def describe(self) -> str:
        return f"Embedding({self.table.shape[0]}x{self.table.shape[1]}{', mask_zero' if self.mask_zero else ''})"


@dataclass(frozen=True, eq=False)
class Masking(Layer):
    """Keras ``Masking``: a step whose features all equal ``mask_value`` is masked (and zeroed)."""

    mask_value: float = 0.0

    def describe(self) -> str:
        return f"Masking({self.mask_value})"


# --------------------------------------------------------------------------- outputs


@dataclass(frozen=True)
class Output:
    """One output of a model with several (Keras ``return_state``, ``Bidirectional(merge_mode=None)``),
    read from what :meth:`Model.run` computes, so no layer runs twice.

    kind : ``"y"``: features ``[start, stop)`` of ``run``'s ``y`` on its last axis (``stop``
        None: to the end); ``"state"``: the final state ``(B, H)`` of GRU layer ``gru`` (its
        index in :attr:`Model.gru_layers`), direction ``direction`` (0 forward, 1 reverse).
    name : the source framework's name for the output (a Keras output dict key, or a label).
    """

    kind: str = "y"
    start: int = 0
    stop: int | None = None
    gru: int = 0
    direction: int = 0
    name: str = ""

    def describe(self) -> str:
        if self.kind == "state":
            return f"state of GRU {self.gru}{' reverse' if self.direction else ''}"
        return "y" if self.start == 0 and self.stop is None else f"y[..., {self.start}:{'' if self.stop is None else self.stop}]"


def _check_outputs(outputs, model) -> tuple:
    outs = tuple(outputs)
    grus = model.gru_layers
    for i, o in enumerate(outs):
        if not isinstance(o, Output):
            raise ModelDefinitionError(f"output {i} must be a gru_engine.model.Output, got {type(o).__name__}")
        where = f"output {i}{' ' + repr(o.name) if o.name else ''}"
        if o.kind == "y":
            stop = model.output_size if o.stop is None else o.stop
            if not 0 <= o.start < stop <= model.output_size:
                raise ModelDefinitionError(
                    f"{where}: features [{o.start}, {o.stop}) must lie within the model output's {model.output_size}"
                )
        elif o.kind == "state":
            if not 0 <= o.gru < len(grus):
                raise ModelDefinitionError(f"{where}: GRU index {o.gru} must be in [0, {len(grus)}) (the model's GRU layers)")
            if not 0 <= o.direction < grus[o.gru].num_directions:
                raise ModelDefinitionError(
                    f"{where}: direction {o.direction} must be < {grus[o.gru].num_directions} (GRU layer {o.gru})"
                )
        else:
            raise ModelDefinitionError(f"{where}: kind must be 'y' or 'state', got {o.kind!r}")
    return outs


# --------------------------------------------------------------------------- model


@dataclass(frozen=True, eq=False)
class Model:
    """An immutable chain of layers.

    Parameters
    ----------
    layers : the layers in order.
    input_size : features per step of the float input ``(B, T, input_size)``; for a model
        that starts with an :class:`Embedding` it is None and the input is ``(B, T)`` token ids.
    name : a label (file name, source class).
    outputs : for a source model with several outputs (Keras ``return_state``,
        ``Bidirectional(merge_mode=None)``): what each one is, as :class:`Output` specs over
        ``run``'s ``(y, h_n)``; :meth:`predict` returns them as a list. Empty: one output, ``y``.
    """

    layers: tuple = ()
    input_size: int | None = None
    name: str = ""
    outputs: tuple = ()

    def __post_init__(self):
        layers = tuple(self.layers)
        object.__setattr__(self, "layers", layers)
        if not layers:
            raise ModelDefinitionError("a model needs at least one layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise ModelDefinitionError(f"layer {i} must be a gru_engine layer spec, got {type(layer).__name__}")
            if isinstance(layer, Embedding) and i != 0:
                raise ModelDefinitionError(f"Embedding layer {layer.name!r} must be the first layer, found at {i}")
        if isinstance(layers[0], Embedding):
            if self.input_size is not None:
                raise ModelDefinitionError("a model that starts with an Embedding takes token ids: input_size must be None")
        elif self.input_size is None:
            first = layers[0]
            inferred = _input_size_of(first)
            if inferred is None:
                raise ModelDefinitionError(f"input_size is required: the first layer {first.describe()} does not fix it")
            object.__setattr__(self, "input_size", inferred)
        dtypes = {a.dtype for layer in layers for a in _arrays(layer)}
        if len(dtypes) > 1:
            raise ModelDefinitionError(f"all layer weights must share one dtype, got {sorted(str(d) for d in dtypes)}")
        object.__setattr__(self, "_dtype", dtypes.pop() if dtypes else np.dtype(config.DTYPE))
        # shape chain
        size = self.input_size
        seq = True
        for i, layer in enumerate(layers):
            where = f"layer {i} ({layer.describe()}{', ' + repr(layer.name) if layer.name else ''})"
            if isinstance(layer, Embedding):
                size = layer.output_size(None)
                continue
            if isinstance(layer, GRU):
                if not seq:
                    raise ModelDefinitionError(f"{where} needs a sequence input, but the previous layer returns the last step only")
                if layer.input_size != size:
                    raise ModelDefinitionError(f"{where} expects {layer.input_size} input features, the previous layer gives {size}")
                seq = layer.return_sequences
            elif isinstance(layer, Dense):
                if layer.in_features != size:
                    raise ModelDefinitionError(f"{where} expects {layer.in_features} input features, the previous layer gives {size}")
            else:
                check = getattr(layer, "check_input", None)
                if check is not None:
                    check(size, seq, where)
            seq = getattr(layer, "keeps_sequence", lambda s: s)(seq) if not isinstance(layer, GRU) else seq
            size = layer.output_size(size)
        object.__setattr__(self, "_output_size", size)
        object.__setattr__(self, "_output_is_sequence", seq)
        object.__setattr__(self, "outputs", _check_outputs(self.outputs, self))

    # ----------------------------------------------------------------- properties
    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    @property
    def takes_tokens(self) -> bool:
        return isinstance(self.layers[0], Embedding)

    @property
    def output_size(self) -> int:
        return self._output_size

    @property
    def output_is_sequence(self) -> bool:
        """True when ``run`` returns one output per step ``(B, T, out)``, False for ``(B, out)``."""
        return self._output_is_sequence

    @property
    def gru_layers(self) -> list[GRU]:
        return [layer for layer in self.layers if isinstance(layer, GRU)]

    @property
    def state_shapes(self) -> list[tuple[int, int]]:
        """``(num_directions, hidden_size)`` of each GRU layer, in order."""
        shapes = self.__dict__.get("_state_shapes")
        if shapes is None:  # read on every run: computed once (the model is immutable)
            shapes = self.__dict__["_state_shapes"] = tuple((g.num_directions, g.hidden_size) for g in self.gru_layers)
        return list(shapes)

    def param_count(self) -> int:
        return sum(layer.param_count() for layer in self.layers)

    def astype(self, dtype) -> Model:
        """The same model computing in ``dtype`` (float32 or float64)."""
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise ModelDefinitionError(f"dtype must be float32 or float64, got {dtype}")
        if dtype == self.dtype:
            return self
        return dataclasses.replace(self, layers=tuple(layer.astype(dtype) for layer in self.layers))

    def summary(self) -> str:
        lines = [f"Model {self.name!r}: input {'token ids (B, T)' if self.takes_tokens else f'(B, T, {self.input_size})'}, dtype {self.dtype}"]
        size = self.input_size
        for i, layer in enumerate(self.layers):
            size = layer.output_size(size)
            lines.append(f"  [{i}] {layer.describe():<60s} -> {size:>6d} features   {layer.param_count():>10,d} params  {layer.name}")
        out = f"(B, T, {self.output_size})" if self.output_is_sequence else f"(B, {self.output_size})"
        lines.append(f"  output {out}; {self.param_count():,d} parameters")
        for i, o in enumerate(self.outputs):
            lines.append(f"  predict() output {i}{' ' + repr(o.name) if o.name else ''}: {o.describe()}")
        return "\n".join(lines)

    # ----------------------------------------------------------------- running
    def run(self, x, lengths=None, initial_state=None, device=None):
        """Run whole sequences. Returns ``(y, h_n)``; see :func:`gru_engine.api.run`.

        ``device="cuda"`` runs on the GPU (see :meth:`to`); None or "cpu" on the CPU.
        """
        if device is not None and device != "cpu":
            return self.to(device).run(x, lengths=lengths, initial_state=initial_state)
        from . import api

        return api.run(self, x, lengths=lengths, initial_state=initial_state)

    def predict(self, x, lengths=None, initial_state=None):
        """The source model's outputs, as its framework returns them: one array for a model
        with one output, a list (one array per :attr:`outputs` entry, in the source's order,
        like Keras ``model.predict``) for a model with several."""
        y, h_n = self.run(x, lengths=lengths, initial_state=initial_state)
        if not self.outputs:
            return y
        out = self.select_outputs(y, h_n)
        return out[0] if len(out) == 1 else out

    __call__ = predict

    def select_outputs(self, y, h_n) -> list:
        """:attr:`outputs` taken from ``run``'s ``(y, h_n)`` (NumPy arrays, or the same
        structure from :func:`converters.to_torch`'s module: only indexing is used)."""
        return select_outputs(self.outputs, [g.num_directions for g in self.gru_layers], y, h_n)

    def stream(self, batch_size: int = 1, device=None, **kwargs):
        """A stateful :class:`gru_engine.stream.Stream` over this model.

        ``device="cuda"``: a :class:`gru_engine.cuda_backend.CudaStream` (state on the GPU).
        """
        if device is not None and device != "cpu":
            return self.to(device).stream(batch_size, **kwargs)
        from .stream import Stream

        return Stream(self, batch_size=batch_size, **kwargs)

    def to(self, device):
        """``"cpu"``: this model; ``"cuda"``: a :class:`gru_engine.cuda_backend.DeviceModel`
        with the weights copied to the GPU once (cached on this model), whose ``run`` and
        ``stream`` compute there. No GPU: :class:`gru_engine.errors.DeviceError`."""
        if device is None or device == "cpu":
            return self
        from .cuda_backend import check_device, to_device

        if check_device(device) == "cpu":
            return self
        return to_device(self, device)


def _arrays(layer: Layer):
    for f in dataclasses.fields(layer):
        v = getattr(layer, f.name)
        if isinstance(v, np.ndarray) and v.dtype.kind == "f":
            yield v


def _input_size_of(layer: Layer) -> int | None:
    if isinstance(layer, GRU):
        return layer.input_size
    if isinstance(layer, Dense):
        return layer.in_features
    f = getattr(layer, "input_features", None)
    return f() if callable(f) else None


def select_outputs(outputs, directions, y, h_n) -> list:
    """``outputs`` (:class:`Output` specs) from ``(y, h_n)``; ``directions``: D of each GRU
    layer, to find a layer's rows in an ``h_n`` array ``(sum(D), B, H)`` (a list is per layer)."""
    offsets = np.cumsum([0, *directions])
    out = []
    for o in outputs:
        if o.kind == "y":
            out.append(y[..., o.start:o.stop])
        elif isinstance(h_n, (list, tuple)):
            out.append(h_n[o.gru][o.direction])
        else:
            out.append(h_n[int(offsets[o.gru]) + o.direction])
    return out

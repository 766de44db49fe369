"""Layers that surround GRUs in real models: 1-D convolution, normalizations, pooling,
padding, flatten / reshape.

Each is an immutable spec deriving from :class:`gru_engine.model.Layer` and plugs into
:class:`gru_engine.model.Model`'s shape chain through ``check_input`` / ``keeps_sequence`` /
``output_size`` / ``input_features``, into :func:`gru_engine.api.run` through runners
registered at the bottom of this module, and into streaming through :meth:`make_stepper`
(see :class:`LayerStepper`). Element-wise activations are :class:`gru_engine.model.Activation`.

Conventions
-----------
* Sequences are batch-first, channels-last ``(B, T, F)`` (Keras' ``channels_last``); ONNX and
  torch are ``(B, C, T)``: the converters transpose.
* ``Conv1D.kernel`` is ``(out_channels, in_channels / groups, kernel_size)`` (ONNX ``Conv``
  and ``torch.nn.Conv1d``; Keras' ``(kernel_size, in / groups, out)`` is transposed on import).
  It computes a cross-correlation, like all three frameworks.
* Padding modes: ``"valid"`` (none), ``"causal"`` (``(K-1)*dilation`` zeros on the left: output
  ``t`` sees inputs up to ``t``), ``"same"`` (TensorFlow / ONNX ``SAME_UPPER``: output length
  ``ceil(T / stride)``, total padding ``max((To-1)*stride + (K-1)*dilation + 1 - T, 0)``, the odd
  one on the right), ``"explicit"`` (``pads=(left, right)``, torch / ONNX ``pads``).

Lengths and masks
-----------------
``lengths`` (and Keras masks) mark the valid steps of each row. Layers that keep the time
axis aligned (normalizations, activations, stride-1 convolutions whose padding keeps the
length) pass the mask through unchanged, as the ONNX graph would (the convolution then
also sees the padded steps, exactly as the source framework does). Layers that change the
time axis (strides, pooling, ``valid`` convolutions, zero padding) refuse a mask: with
``lengths`` given, ``run`` raises :class:`~gru_engine.errors.InputShapeError` naming the
layer (run rows of different lengths separately, or pad them yourself). Global average
pooling averages over the valid steps only (Keras' masked ``GlobalAveragePooling1D``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from . import config
from .errors import InputShapeError, ModelDefinitionError, UnsupportedError
from .model import (
    DENSE_ACTIVATIONS,
    Dense,
    Layer,
    _as_array,
    _check_finite,
    _check_shape,
    canonical_dense_activation,
)

CONV_PADDINGS = ("valid", "same", "causal", "explicit")
POOL_PADDINGS = ("valid", "same", "explicit")


def _where(layer: Layer) -> str:
    return f"{layer.kind} layer {layer.name!r}: " if layer.name else f"{layer.kind} layer: "


def _float_dtype(*arrays):
    for a in arrays:
        if a is not None:
            d = np.asarray(a).dtype
            if d in (np.float32, np.float64):
                return d
    return np.dtype(config.DTYPE)


def _pos_int(where: str, name: str, v, minimum: int = 1) -> int:
    try:
        iv = int(v)
    except (TypeError, ValueError):
        raise ModelDefinitionError(f"{where}{name} must be an integer >= {minimum}, got {v!r}") from None
    if iv != v or iv < minimum or iv > config.MAX_DIM:
        raise ModelDefinitionError(f"{where}{name} must be an integer in [{minimum}, {config.MAX_DIM}], got {v!r}")
    return iv


def _pads(where: str, pads) -> tuple[int, int]:
    try:
        left, right = (int(p) for p in pads)
    except (TypeError, ValueError):
        raise ModelDefinitionError(f"{where}pads must be two integers (left, right), got {pads!r}") from None
    if left < 0 or right < 0 or left > config.MAX_DIM or right > config.MAX_DIM:
        raise ModelDefinitionError(f"{where}pads must be non-negative integers, got {pads!r}")
    return left, right


def _same_pads(T: int, span: int, stride: int) -> tuple[int, int]:
    """TensorFlow / ONNX SAME_UPPER padding of a window of ``span`` steps."""
    out = -(-T // stride)
    total = max((out - 1) * stride + span - T, 0)
    return total // 2, total - total // 2


def _sequence_required(layer: Layer, seq: bool, where: str) -> None:
    if not seq:
        raise ModelDefinitionError(
            f"{where} needs a sequence input (B, T, F), but the previous layer returns the last step only"
        )


def _features_must_match(expected: int, size: int, where: str) -> None:
    if expected != size:
        raise ModelDefinitionError(f"{where} expects {expected} input features, the previous layer gives {size}")


# --------------------------------------------------------------------------- windowed layers


class _Windowed:
    """Shared time arithmetic of convolution and pooling: a window of ``span`` steps moved by
    ``stride`` over the padded input."""

    def _span(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    def pad_amounts(self, T: int) -> tuple[int, int]:
        """``(left, right)`` padding applied to a sequence of ``T`` steps."""
        if self.padding == "valid":
            return 0, 0
        if self.padding == "causal":
            return self._span() - 1, 0
        if self.padding == "same":
            return _same_pads(T, self._span(), self.stride)
        return self.pads

    def output_length(self, T: int) -> int:
        left, right = self.pad_amounts(T)
        n = T + left + right - self._span()
        return n // self.stride + 1 if n >= 0 else 0

    @property
    def changes_time(self) -> bool:
        """True unless every input step maps to one output step at the same index."""
        if self.stride != 1:
            return True
        if self.padding in ("same", "causal"):
            return False
        left, right = self.pad_amounts(0)
        return left + right != self._span() - 1

    def stream_refusal(self) -> str | None:
        """Why this layer cannot stream (it would need future inputs), or None."""
        if self.padding == "same" and self._span() > 1:
            return "its 'same' padding looks ahead of the current step (pads on the right); use 'causal' padding to stream"
        if self.padding == "explicit" and self.pads[1] > 0:
            return f"its padding {self.pads} pads on the right, which needs the end of the sequence"
        return None


@dataclass(frozen=True, eq=False)
class Conv1D(_Windowed, Layer):
    """1-D convolution over time, ``y = activation(conv(x, kernel) + bias)``.

    kernel : (out_channels, in_channels / groups, kernel_size).
    bias : (out_channels,) (zeros when absent).
    stride, dilation, groups : as in ONNX ``Conv`` / ``torch.nn.Conv1d`` / Keras ``Conv1D``.
    padding : "valid" | "same" | "causal" | "explicit" (then ``pads=(left, right)``).
    activation, alpha : as :class:`gru_engine.model.Dense`.
    """

    kernel: np.ndarray = None
    bias: np.ndarray | None = None
    stride: int = 1
    dilation: int = 1
    groups: int = 1
    padding: str = "valid"
    pads: tuple = (0, 0)
    activation: str = "linear"
    alpha: float = 0.0

    def __post_init__(self):
        where = _where(self)
        if self.kernel is None:
            raise ModelDefinitionError(f"{where}kernel is required")
        dtype = _float_dtype(self.kernel)
        k = _as_array(f"{where}kernel", self.kernel, dtype)
        if k.ndim != 3 or 0 in k.shape:
            raise ModelDefinitionError(
                f"{where}kernel must have shape (out_channels, in_channels/groups, kernel_size), got {k.shape}"
            )
        groups = _pos_int(where, "groups", self.groups)
        if k.shape[0] % groups:
            raise ModelDefinitionError(
                f"{where}out_channels ({k.shape[0]}) must be divisible by groups ({groups})"
            )
        b = np.zeros(k.shape[0], dtype) if self.bias is None else self.bias
        b = _as_array(f"{where}bias", b, dtype)
        _check_shape(f"{where}bias", b, (k.shape[0],))
        _check_finite(f"{where}kernel", k)
        _check_finite(f"{where}bias", b)
        if self.padding not in CONV_PADDINGS:
            raise ModelDefinitionError(f"{where}padding must be one of {list(CONV_PADDINGS)}, got {self.padding!r}")
        object.__setattr__(self, "kernel", k)
        object.__setattr__(self, "bias", b)
        object.__setattr__(self, "groups", groups)
        object.__setattr__(self, "stride", _pos_int(where, "stride", self.stride))
        object.__setattr__(self, "dilation", _pos_int(where, "dilation", self.dilation))
        object.__setattr__(self, "pads", _pads(where, self.pads) if self.padding == "explicit" else (0, 0))
        object.__setattr__(self, "activation", canonical_dense_activation(self.activation, where))
        object.__setattr__(self, "alpha", float(self.alpha))

    @property
    def in_channels(self) -> int:
        return self.kernel.shape[1] * self.groups

    @property
    def out_channels(self) -> int:
        return self.kernel.shape[0]

    @property
    def kernel_size(self) -> int:
        return self.kernel.shape[2]

    def _span(self) -> int:
        return (self.kernel_size - 1) * self.dilation + 1

    def input_features(self) -> int:
        return self.in_channels

    def check_input(self, size: int, seq: bool, where: str) -> None:
        _sequence_required(self, seq, where)
        _features_must_match(self.in_channels, size, where)

    def output_size(self, input_size: int) -> int:
        return self.out_channels

    def packed(self, dtype) -> np.ndarray:
        """The kernel as ``(K, in/groups, out)``, the layout :func:`kernels_layers.conv1d` reads."""
        cache = self.__dict__.setdefault("_packed", {})
        key = np.dtype(dtype).str
        if key not in cache:
            cache[key] = np.ascontiguousarray(self.kernel.transpose(2, 1, 0), dtype=dtype)
        return cache[key]

    def bias_as(self, dtype) -> np.ndarray:
        """The bias in ``dtype`` (cached)."""
        cache = self.__dict__.setdefault("_bias_as", {})
        key = np.dtype(dtype).str
        if key not in cache:
            cache[key] = np.ascontiguousarray(self.bias, dtype=dtype)
        return cache[key]

    def describe(self) -> str:
        extra = [f"k={self.kernel_size}", self.padding if self.padding != "explicit" else f"pads={self.pads}"]
        if self.stride != 1:
            extra.append(f"stride={self.stride}")
        if self.dilation != 1:
            extra.append(f"dilation={self.dilation}")
        if self.groups != 1:
            extra.append(f"groups={self.groups}")
        if self.activation != "linear":
            extra.append(self.activation)
        return f"Conv1D({self.in_channels}->{self.out_channels}, {', '.join(extra)})"


@dataclass(frozen=True, eq=False)
class _Pooling1D(_Windowed, Layer):
    """Pooling over time windows of ``pool_size`` steps moved by ``stride`` (default pool_size).

    padding : "valid" | "same" (TensorFlow's: padded steps are left out of the max and of the
        average's count) | "explicit" (``pads=(left, right)``, torch / ONNX).
    count_include_pad : average only: padded steps count as zeros (torch's default for
        explicit padding, ONNX ``count_include_pad=1``).
    """

    pool_size: int = 2
    stride: int | None = None
    padding: str = "valid"
    pads: tuple = (0, 0)
    count_include_pad: bool = False

    def __post_init__(self):
        where = _where(self)
        object.__setattr__(self, "pool_size", _pos_int(where, "pool_size", self.pool_size))
        stride = self.pool_size if self.stride is None else self.stride
        object.__setattr__(self, "stride", _pos_int(where, "stride", stride))
        if self.padding not in POOL_PADDINGS:
            raise ModelDefinitionError(f"{where}padding must be one of {list(POOL_PADDINGS)}, got {self.padding!r}")
        pads = _pads(where, self.pads) if self.padding == "explicit" else (0, 0)
        if max(pads) >= self.pool_size:
            raise ModelDefinitionError(f"{where}pads must be smaller than pool_size ({self.pool_size}), got {pads}")
        object.__setattr__(self, "pads", pads)
        object.__setattr__(self, "count_include_pad", bool(self.count_include_pad))

    is_max = False

    def _span(self) -> int:
        return self.pool_size

    def stream_refusal(self) -> str | None:
        if self.padding == "same" and self.pool_size > 1:
            return "its 'same' padding looks ahead of the current step; use 'valid' padding to stream"
        if self.padding == "explicit" and self.pads != (0, 0):
            return f"its padding {self.pads} depends on the sequence's ends; use no padding to stream"
        return None

    def check_input(self, size: int, seq: bool, where: str) -> None:
        _sequence_required(self, seq, where)

    def describe(self) -> str:
        pad = self.padding if self.padding != "explicit" else f"pads={self.pads}"
        return f"{self.kind}(pool={self.pool_size}, stride={self.stride}, {pad})"


@dataclass(frozen=True, eq=False)
class AveragePooling1D(_Pooling1D):
    __doc__ = _Pooling1D.__doc__


@dataclass(frozen=True, eq=False)
class MaxPooling1D(_Pooling1D):
    __doc__ = _Pooling1D.__doc__
    is_max = True


@dataclass(frozen=True, eq=False)
class _GlobalPooling1D(Layer):
    """Average / max over all steps: ``(B, T, F) -> (B, F)`` (``(B, 1, F)`` with keepdims)."""

    keepdims: bool = False
    is_max = False

    def __post_init__(self):
        object.__setattr__(self, "keepdims", bool(self.keepdims))

    def check_input(self, size: int, seq: bool, where: str) -> None:
        _sequence_required(self, seq, where)

    def keeps_sequence(self, seq: bool) -> bool:
        return self.keepdims

    changes_time = True

    def stream_refusal(self) -> str | None:
        return "global pooling needs the whole sequence"

    def describe(self) -> str:
        return f"{self.kind}({'keepdims' if self.keepdims else ''})"


@dataclass(frozen=True, eq=False)
class GlobalAveragePooling1D(_GlobalPooling1D):
    __doc__ = _GlobalPooling1D.__doc__


@dataclass(frozen=True, eq=False)
class GlobalMaxPooling1D(_GlobalPooling1D):
    __doc__ = _GlobalPooling1D.__doc__
    is_max = True


# --------------------------------------------------------------------------- normalizations


@dataclass(frozen=True, eq=False)
class BatchNormalization(Layer):
    """Inference batch normalization over the feature axis:
    ``y = (x - mean) / sqrt(var + epsilon) * gamma + beta``.

    gamma, beta, mean, var : (F,); gamma None -> ones, beta None -> zeros (Keras
    ``scale=False`` / ``center=False``). Works on sequences and on vectors.
    """

    gamma: np.ndarray | None = None
    beta: np.ndarray | None = None
    mean: np.ndarray = None
    var: np.ndarray = None
    epsilon: float = 1e-3

    def __post_init__(self):
        where = _where(self)
        if self.mean is None or self.var is None:
            raise ModelDefinitionError(f"{where}mean and var (moving statistics) are required")
        dtype = _float_dtype(self.mean, self.var, self.gamma, self.beta)
        mean = _as_array(f"{where}mean", self.mean, dtype)
        if mean.ndim != 1 or mean.size == 0:
            raise ModelDefinitionError(f"{where}mean must have shape (features,), got {mean.shape}")
        F = mean.size
        arrays = {"mean": mean}
        for n, default in (("var", None), ("gamma", 1.0), ("beta", 0.0)):
            v = getattr(self, n)
            v = np.full(F, default, dtype) if v is None else v
            arrays[n] = _as_array(f"{where}{n}", v, dtype)
            _check_shape(f"{where}{n}", arrays[n], (F,))
        for n, a in arrays.items():
            _check_finite(f"{where}{n}", a)
            object.__setattr__(self, n, a)
        eps = float(self.epsilon)
        if not eps >= 0 or not np.isfinite(eps):
            raise ModelDefinitionError(f"{where}epsilon must be a finite number >= 0, got {self.epsilon!r}")
        if np.any(arrays["var"].astype(np.float64) + eps <= 0):
            raise ModelDefinitionError(f"{where}var + epsilon must be > 0 for every feature")
        object.__setattr__(self, "epsilon", eps)

    def scale_shift(self, dtype=None) -> tuple[np.ndarray, np.ndarray]:
        """``(scale, shift)`` with ``y = x * scale + shift``, computed in float64."""
        s = self.gamma.astype(np.float64) / np.sqrt(self.var.astype(np.float64) + self.epsilon)
        o = self.beta.astype(np.float64) - self.mean.astype(np.float64) * s
        dtype = dtype or self.mean.dtype
        return s.astype(dtype), o.astype(dtype)

    @property
    def features(self) -> int:
        return self.mean.size

    def input_features(self) -> int:
        return self.features

    def check_input(self, size: int, seq: bool, where: str) -> None:
        _features_must_match(self.features, size, where)

    def describe(self) -> str:
        return f"BatchNormalization({self.features}, eps={self.epsilon:g})"


@dataclass(frozen=True, eq=False)
class LayerNormalization(Layer):
    """``y = (x - mean(x)) / sqrt(var(x) + epsilon) * gamma + beta`` over the feature axis
    (biased variance, as Keras, torch and ONNX). gamma None -> ones, beta None -> zeros."""

    gamma: np.ndarray | None = None
    beta: np.ndarray | None = None
    epsilon: float = 1e-3
    features: int | None = None

    def __post_init__(self):
        where = _where(self)
        dtype = _float_dtype(self.gamma, self.beta)
        F = self.features
        for v in (self.gamma, self.beta):
            if v is not None:
                F = np.asarray(v).size if F is None else F
        if F is None:
            raise ModelDefinitionError(f"{where}features is required when neither gamma nor beta is given")
        F = _pos_int(where, "features", F)
        for n, default in (("gamma", 1.0), ("beta", 0.0)):
            v = getattr(self, n)
            v = np.full(F, default, dtype) if v is None else v
            a = _as_array(f"{where}{n}", v, dtype)
            _check_shape(f"{where}{n}", a, (F,))
            _check_finite(f"{where}{n}", a)
            object.__setattr__(self, n, a)
        object.__setattr__(self, "features", F)
        eps = float(self.epsilon)
        if not eps > 0 or not np.isfinite(eps):
            raise ModelDefinitionError(f"{where}epsilon must be a positive finite number, got {self.epsilon!r}")
        object.__setattr__(self, "epsilon", eps)

    def input_features(self) -> int:
        return self.features

    def check_input(self, size: int, seq: bool, where: str) -> None:
        _features_must_match(self.features, size, where)

    def describe(self) -> str:
        return f"LayerNormalization({self.features}, eps={self.epsilon:g})"


@dataclass(frozen=True, eq=False)
class UnitNormalization(Layer):
    """L2 normalization over the feature axis: ``y = x / max(||x||_2, epsilon)`` (Keras 3
    ``UnitNormalization``, torch ``F.normalize``)."""

    epsilon: float = 1e-12

    def __post_init__(self):
        eps = float(self.epsilon)
        if not eps > 0 or not np.isfinite(eps):
            raise ModelDefinitionError(f"{_where(self)}epsilon must be a positive finite number, got {self.epsilon!r}")
        object.__setattr__(self, "epsilon", eps)

    def describe(self) -> str:
        return "UnitNormalization(L2)"


# --------------------------------------------------------------------------- shape layers


@dataclass(frozen=True, eq=False)
class ZeroPadding1D(Layer):
    """``padding=(left, right)`` zero steps around each sequence."""

    padding: tuple = (1, 1)

    def __post_init__(self):
        p = self.padding
        if isinstance(p, (int, np.integer)):
            p = (p, p)
        object.__setattr__(self, "padding", _pads(_where(self), p))

    def check_input(self, size: int, seq: bool, where: str) -> None:
        _sequence_required(self, seq, where)

    @property
    def changes_time(self) -> bool:
        return self.padding != (0, 0)

    def stream_refusal(self) -> str | None:
        if self.padding[1]:
            return f"it pads {self.padding[1]} steps after the end of the sequence"
        return None

    def describe(self) -> str:
        return f"ZeroPadding1D{self.padding}"


@dataclass(frozen=True, eq=False)
class Flatten(Layer):
    """Flatten of a ``(B, F)`` vector (after a last-step GRU or global pooling): identity.

    Flattening a whole sequence would make the feature count depend on T, which a model
    does not fix; it is refused."""

    def check_input(self, size: int, seq: bool, where: str) -> None:
        if seq:
            raise UnsupportedError(
                f"{where}: Flatten of a sequence (B, T, F) is not supported (its size depends on T); "
                "only Flatten after a last-step layer (return_sequences=False, global pooling) is"
            )

    def describe(self) -> str:
        return "Flatten"


@dataclass(frozen=True, eq=False)
class Reshape(Layer):
    """Keras ``Reshape`` that keeps the data as it is: ``target_shape`` (without the batch
    axis) is ``(F,)`` on vectors or ``(T or -1, F)`` on sequences. Other regroupings change
    what the following layers see as steps and features and are refused."""

    target_shape: tuple = ()

    def __post_init__(self):
        try:
            ts = tuple(-1 if v is None else int(v) for v in self.target_shape)
        except (TypeError, ValueError):
            raise ModelDefinitionError(f"{_where(self)}target_shape must be a tuple of integers, got {self.target_shape!r}") from None
        object.__setattr__(self, "target_shape", ts)

    def check_input(self, size: int, seq: bool, where: str) -> None:
        ts = self.target_shape
        ok = (len(ts) == 2 and ts[1] == size and (ts[0] == -1 or ts[0] > 0)) if seq else (len(ts) == 1 and ts[0] in (size, -1))
        if not ok:
            shape = "(B, T, %d)" % size if seq else "(B, %d)" % size
            raise UnsupportedError(
                f"{where}: Reshape to {ts} of an input {shape} regroups steps or features; only a "
                f"reshape that keeps the layout ({'(-1, %d)' % size if seq else '(%d,)' % size}) is supported"
            )

    def describe(self) -> str:
        return f"Reshape{self.target_shape}"


LAYER_TYPES = (
    Conv1D, BatchNormalization, LayerNormalization, UnitNormalization, AveragePooling1D, MaxPooling1D,
    GlobalAveragePooling1D, GlobalMaxPooling1D, ZeroPadding1D, Flatten, Reshape,
)


# --------------------------------------------------------------------------- load-time folding


def fold_batchnorm(layers) -> list[Layer]:
    """Fold each :class:`BatchNormalization` into the layer before it where that is exact.

    A BN right after a :class:`Conv1D` or :class:`gru_engine.model.Dense` whose activation is
    linear becomes part of its kernel and bias (``W' = W * scale``, ``b' = b * scale + shift``
    per output channel, computed in float64). Other BN layers are kept.
    """
    out: list[Layer] = []
    for layer in layers:
        prev = out[-1] if out else None
        if isinstance(layer, BatchNormalization) and isinstance(prev, (Conv1D, Dense)) and prev.activation == "linear":
            s, o = layer.scale_shift(np.float64)
            dtype = prev.bias.dtype
            if isinstance(prev, Conv1D):
                if prev.out_channels != layer.features:
                    out.append(layer)
                    continue
                k = prev.kernel.astype(np.float64) * s[:, None, None]
                out[-1] = dataclasses.replace(prev, kernel=k.astype(dtype), bias=(prev.bias * s + o).astype(dtype))
            else:
                if prev.out_features != layer.features:
                    out.append(layer)
                    continue
                k = prev.kernel.astype(np.float64) * s[None, :]
                out[-1] = dataclasses.replace(prev, kernel=k.astype(dtype), bias=(prev.bias * s + o).astype(dtype))
            continue
        out.append(layer)
    return out


# --------------------------------------------------------------------------- whole-sequence runners


def _flat(x: np.ndarray) -> np.ndarray:
    return x.reshape(-1, x.shape[-1])


def _refuse_mask(layer: Layer, i: int, ctx) -> None:
    if ctx.mask is None:
        return
    where = f"layer {i} ({layer.describe()}{', ' + repr(layer.name) if layer.name else ''})"
    if ctx.from_lengths:
        raise InputShapeError(
            f"lengths must be None for this model: {where} changes the time axis, so per-row lengths "
            "no longer line up with its output; run rows of different lengths separately"
        )
    raise UnsupportedError(f"{where} changes the time axis and cannot follow a mask (Embedding mask_zero / Masking)")


def _check_length(layer: Layer, i: int, To: int, T: int) -> None:
    if To < 1:
        raise InputShapeError(
            f"x must have enough steps for layer {i} ({layer.describe()}): {T} steps give no output"
        )


def run_conv1d(layer: Conv1D, i: int, x: np.ndarray, ctx) -> np.ndarray:
    from . import kernels_cpu as KC
    from . import kernels_layers as KL

    dtype = ctx.model.dtype
    B, T, _ = x.shape
    if layer.changes_time:
        _refuse_mask(layer, i, ctx)
    left, _ = layer.pad_amounts(T)
    To = layer.output_length(T)
    _check_length(layer, i, To, T)
    x = np.ascontiguousarray(x, dtype=dtype)
    y = np.empty((B, To, layer.out_channels), dtype)
    macs = B * To * layer.in_channels * layer.out_channels * layer.kernel_size // layer.groups
    if layer.groups == 1 and macs >= config.get().conv_gemm_min_macs:
        _conv1d_gemm(layer, x, left, To, y)
    else:
        conv = KL.conv1d if B * To >= config.get().parallel_min_steps else KL.conv1d_serial
        conv(x, layer.packed(dtype), layer.bias.astype(dtype, copy=False), layer.stride, layer.dilation,
             layer.groups, -left, y)
    if layer.activation != "linear":
        KC.dense_act_inplace(_flat(y), DENSE_ACTIVATIONS[layer.activation], dtype.type(layer.alpha))
    return y


def _conv1d_gemm(layer: Conv1D, x: np.ndarray, left: int, To: int, y: np.ndarray) -> None:
    """``y = im2col(x) @ W + bias``: cols ``(B*To, K*Cin)`` gathered once, one BLAS product."""
    B, T, C = x.shape
    K, d, s = layer.kernel_size, layer.dilation, layer.stride
    right = max((To - 1) * s + (K - 1) * d + 1 - left - T, 0)
    xp = x
    if left or right:
        xp = np.zeros((B, left + T + right, C), x.dtype)
        xp[:, left : left + T] = x
    cols = np.empty((B, To, K, C), x.dtype)
    for k in range(K):
        cols[:, :, k] = xp[:, k * d : k * d + (To - 1) * s + 1 : s]
    W = layer.packed(x.dtype).reshape(K * C, layer.out_channels)
    y2 = y.reshape(B * To, layer.out_channels)
    np.matmul(cols.reshape(B * To, K * C), W, out=y2)
    y2 += layer.bias.astype(x.dtype, copy=False)


def run_pooling(layer: _Pooling1D, i: int, x: np.ndarray, ctx) -> np.ndarray:
    from . import kernels_layers as KL

    _refuse_mask(layer, i, ctx)
    B, T, F = x.shape
    left, _ = layer.pad_amounts(T)
    To = layer.output_length(T)
    _check_length(layer, i, To, T)
    y = np.empty((B, To, F), x.dtype)
    pool = KL.pool1d if B * To >= config.get().parallel_min_steps else KL.pool1d_serial
    pool(np.ascontiguousarray(x), layer.pool_size, layer.stride, -left, layer.is_max,
              layer.count_include_pad and layer.padding == "explicit", y)
    return y


def run_global_pooling(layer: _GlobalPooling1D, i: int, x: np.ndarray, ctx) -> np.ndarray:
    from . import kernels_layers as KL

    B, T, F = x.shape
    if T < 1:
        raise InputShapeError(f"x must have at least one step for layer {i} ({layer.describe()}), got 0")
    y = np.empty((B, F), x.dtype)
    use_mask = ctx.mask is not None and not layer.is_max
    mask = ctx.mask if use_mask else np.ones((1, 1), np.uint8)
    KL.global_pool(np.ascontiguousarray(x), mask, use_mask, layer.is_max, y)
    ctx.mask = None
    ctx.from_lengths = False
    return y[:, None, :] if layer.keepdims else y


def run_batchnorm(layer: BatchNormalization, i: int, x: np.ndarray, ctx) -> np.ndarray:
    from . import kernels_layers as KL

    dtype = ctx.model.dtype
    cache = layer.__dict__.setdefault("_scale_shift", {})
    key = np.dtype(dtype).str
    if key not in cache:
        cache[key] = layer.scale_shift(dtype)
    s, o = cache[key]
    x = np.ascontiguousarray(x, dtype=dtype)
    y = np.empty_like(x)
    KL.affine_channels(_flat(x), s, o, _flat(y))
    return y


def run_layernorm(layer: LayerNormalization, i: int, x: np.ndarray, ctx) -> np.ndarray:
    from . import kernels_layers as KL

    dtype = ctx.model.dtype
    x = np.ascontiguousarray(x, dtype=dtype)
    y = np.empty_like(x)
    KL.layer_norm(_flat(x), layer.gamma.astype(dtype, copy=False), layer.beta.astype(dtype, copy=False),
                  layer.epsilon, _flat(y))
    return y


def run_unitnorm(layer: UnitNormalization, i: int, x: np.ndarray, ctx) -> np.ndarray:
    from . import kernels_layers as KL

    x = np.ascontiguousarray(x)
    y = np.empty_like(x)
    KL.unit_norm(_flat(x), layer.epsilon, _flat(y))
    return y


def run_zeropad(layer: ZeroPadding1D, i: int, x: np.ndarray, ctx) -> np.ndarray:
    if layer.changes_time:
        _refuse_mask(layer, i, ctx)
    left, right = layer.padding
    B, T, F = x.shape
    y = np.zeros((B, left + T + right, F), x.dtype)
    y[:, left : left + T] = x
    return y


def run_identity(layer: Layer, i: int, x: np.ndarray, ctx) -> np.ndarray:
    ts = getattr(layer, "target_shape", ())
    if isinstance(layer, Reshape) and x.ndim == 3 and len(ts) == 2 and ts[0] not in (-1, x.shape[1]):
        raise InputShapeError(
            f"x must have {layer.target_shape[0]} steps for layer {i} ({layer.describe()}), got {x.shape[1]}"
        )
    return x


def _register() -> None:
    from . import api

    for t, fn in (
        (Conv1D, run_conv1d), (AveragePooling1D, run_pooling), (MaxPooling1D, run_pooling),
        (GlobalAveragePooling1D, run_global_pooling), (GlobalMaxPooling1D, run_global_pooling),
        (BatchNormalization, run_batchnorm), (LayerNormalization, run_layernorm),
        (UnitNormalization, run_unitnorm), (ZeroPadding1D, run_zeropad),
        (Flatten, run_identity), (Reshape, run_identity),
    ):
        api.register(t)(fn)


_register()


def warmup() -> str:
    """Compile (or load from numba's cache) every kernel of these layers, float32 and float64:
    whole-sequence runs (serial and parallel kernels, the GEMM path) and streaming steps."""
    from .model import GRU, Model

    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        f = lambda *s: rng.standard_normal(s).astype(dtype)  # noqa: E731
        conv = Conv1D(kernel=f(4, 2, 3), bias=f(4), padding="causal", groups=2, activation="relu")
        layers = (conv, BatchNormalization(mean=f(4), var=np.ones(4, dtype)), LayerNormalization(gamma=f(4)),
                  UnitNormalization(), MaxPooling1D(pool_size=2), AveragePooling1D(pool_size=2),
                  GRU(W=f(1, 6, 4), R=f(1, 6, 2), linear_before_reset=1))
        model = Model(layers)
        for B, T in ((1, 8), (2, 300)):  # serial and parallel kernels
            model.run(f(B, T, 4))
        Model((GlobalAveragePooling1D(),), input_size=4).run(f(1, 3, 4))
        Model((Conv1D(kernel=f(64, 64, 3)),)).run(f(2, 600, 64))  # GEMM path
        s = model.stream()
        for t in range(4):
            s.step(f(1, 4))
        s.run(f(1, 3, 4))
    return "conv / norm / pooling layers"

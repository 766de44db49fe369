"""Keras 3 layers around the GRUs -> :mod:`gru_engine.layers` specs.

Called by :mod:`converters.keras_io` for the classes it does not handle itself: only the
layer config (JSON) and its weight arrays are read; nothing is deserialised as code.

Keras -> engine (``channels_last`` only, the Keras default):

==========================  =====================================================================
Keras class                 engine layer (options honoured)
==========================  =====================================================================
Conv1D                      Conv1D: filters, kernel_size, strides, padding valid/same/causal,
                            dilation_rate, groups, use_bias, activation. Kernel ``(K, in/g, out)``
                            -> ``(out, in/g, K)``
DepthwiseConv1D             Conv1D with groups = in_channels (depth_multiplier; channel c*dm+m)
SeparableConv1D             depthwise Conv1D (no bias) then a 1x1 Conv1D (bias, activation)
BatchNormalization          BatchNormalization: axis -1, epsilon, center, scale (inference stats);
                            folded into a preceding linear Conv1D / Dense (fold_batchnorm)
LayerNormalization          LayerNormalization: axis -1, epsilon, center, scale (not rms_scaling)
UnitNormalization           UnitNormalization: axis -1 (L2, epsilon 1e-12 as Keras)
MaxPooling1D / AveragePooling1D   pool_size, strides, padding valid/same
GlobalMax/AveragePooling1D  keepdims
ZeroPadding1D               padding (int or (left, right))
Flatten / Reshape           after a last-step layer / layout-preserving target shapes
ReLU / LeakyReLU / ELU / Softmax   Activation relu, leaky_relu (negative_slope), elu (alpha), softmax (axis -1)
==========================  =====================================================================
"""

from __future__ import annotations

import numpy as np

from gru_engine.errors import ModelFileError, UnsupportedError
from gru_engine.layers import (
    AveragePooling1D,
    BatchNormalization,
    Conv1D,
    Flatten,
    GlobalAveragePooling1D,
    GlobalMaxPooling1D,
    LayerNormalization,
    MaxPooling1D,
    Reshape,
    UnitNormalization,
    ZeroPadding1D,
    fold_batchnorm,
)
from gru_engine.model import Activation, Layer

__all__ = ["convert_keras_layer", "keras_weight_count", "add_keras_layer", "KERAS_LAYER_CLASSES"]

# Keras activation name -> (engine activation, alpha); Keras 3 defaults for the parameters.
_ACT = {
    "linear": ("linear", 0.0), "relu": ("relu", 0.0), "tanh": ("tanh", 0.0), "sigmoid": ("sigmoid", 0.0),
    "hard_sigmoid": ("hard_sigmoid", 0.0),  # Keras 3: relu6(x + 3) / 6
    "softmax": ("softmax", 0.0), "elu": ("elu", 1.0), "selu": ("selu", 0.0),
    "gelu": ("gelu", 0.0),  # Keras default approximate=False (erf)
    "swish": ("swish", 0.0), "silu": ("swish", 0.0), "softplus": ("softplus", 0.0),
    "softsign": ("softsign", 0.0), "leaky_relu": ("leaky_relu", 0.2),  # keras.activations.leaky_relu default
    "exponential": ("exp", 0.0),
}

#: Keras classes this module converts.
KERAS_LAYER_CLASSES = (
    "Conv1D", "DepthwiseConv1D", "SeparableConv1D", "BatchNormalization", "LayerNormalization", "UnitNormalization",
    "MaxPooling1D", "AveragePooling1D", "MaxPool1D", "AvgPool1D", "GlobalAveragePooling1D", "GlobalMaxPooling1D",
    "GlobalAvgPool1D", "GlobalMaxPool1D", "ZeroPadding1D", "Flatten", "Reshape", "ReLU", "LeakyReLU",
    "ELU", "Softmax",
)


def _where(cls: str, name: str) -> str:
    return f"layer {name!r} ({cls})"


def _act(v, where: str) -> tuple[str, float]:
    if v is None:
        n = "linear"
    elif isinstance(v, str):
        n = v.lower()
    elif isinstance(v, dict) and str(v.get("module", "")).startswith("keras") and isinstance(v.get("config"), str):
        n = v["config"].lower()
    else:
        raise UnsupportedError(f"{where}: activation={v!r} is a custom activation; supported: Keras built-ins by name")
    if n not in _ACT:
        raise UnsupportedError(f"{where}: activation={n!r} is not supported; supported: {', '.join(sorted(_ACT))}")
    return _ACT[n]


def _one(v, where: str, attr: str) -> int:
    if isinstance(v, (list, tuple)):
        if len(v) != 1:
            raise UnsupportedError(f"{where}: {attr}={v!r} must have one value (1-D layer)")
        v = v[0]
    if not isinstance(v, int) or isinstance(v, bool):
        raise ModelFileError(f"{where}: {attr} must be an integer, got {v!r}")
    return v


def _channels_last(c: dict, where: str) -> None:
    df = c.get("data_format") or "channels_last"
    if df != "channels_last":
        raise UnsupportedError(f"{where}: data_format={df!r} is not supported; supported: 'channels_last'")


def _last_axis(c: dict, where: str, rank: int) -> None:
    axis = c.get("axis", -1)
    axes = list(axis) if isinstance(axis, (list, tuple)) else [axis]
    if len(axes) != 1 or axes[0] not in (-1, rank - 1):
        raise UnsupportedError(f"{where}: axis={axis!r} is not supported; supported: the feature axis (-1)")


def keras_weight_count(class_name: str, config: dict) -> int | None:
    """How many weight tensors a Keras layer of this class stores (None: not converted here)."""
    c = config or {}
    if class_name in ("Conv1D", "DepthwiseConv1D"):
        return 2 if c.get("use_bias", True) else 1
    if class_name == "SeparableConv1D":
        return 3 if c.get("use_bias", True) else 2
    if class_name == "BatchNormalization":
        return 2 + bool(c.get("center", True)) + bool(c.get("scale", True))
    if class_name == "LayerNormalization":
        return bool(c.get("center", True)) + bool(c.get("scale", True))
    if class_name in KERAS_LAYER_CLASSES:
        return 0
    return None


def convert_keras_layer(
    class_name: str, config: dict, weights: list, name: str, *, seq: bool = True, dtype=np.float32,
    size: int | None = None,
) -> list[Layer] | None:
    """One Keras layer -> engine layers, or None when ``class_name`` is not one of
    :data:`KERAS_LAYER_CLASSES`.

    config : the layer's ``config`` dict; weights : its arrays in Keras order; seq : whether the
    layer's input is a sequence ``(B, T, F)`` (False after a last-step layer); size : its feature
    count when known (needed only by a LayerNormalization without gamma and beta).
    """
    n_exp = keras_weight_count(class_name, config)
    if n_exp is None:
        return None
    c = config or {}
    where = _where(class_name, name)
    if class_name == "LayerNormalization" and c.get("rms_scaling"):
        raise UnsupportedError(f"{where}: rms_scaling=True is not supported; supported: standard layer normalization")
    if len(weights) != n_exp:
        raise ModelFileError(f"{where} must have {n_exp} weight tensors, got {len(weights)}")
    w = [np.asarray(a, dtype=dtype) for a in weights]
    rank = 3 if seq else 2

    if class_name == "Conv1D":
        _channels_last(c, where)
        if c.get("lora_rank") or c.get("quantization_config"):
            raise UnsupportedError(f"{where}: LoRA / quantized convolutions are not supported")
        padding = str(c.get("padding", "valid")).lower()
        if padding not in ("valid", "same", "causal"):
            raise UnsupportedError(f"{where}: padding={padding!r} is not supported; supported: valid, same, causal")
        k = w[0]
        filters = c.get("filters")
        K = _one(c.get("kernel_size"), where, "kernel_size")
        groups = int(c.get("groups", 1) or 1)
        if k.ndim != 3 or k.shape[0] != K or k.shape[2] != filters:
            raise ModelFileError(
                f"{where} tensor 'kernel' must have shape ({K}, in_channels/{groups}, {filters}), got {k.shape}"
            )
        if n_exp == 2 and w[1].shape != (filters,):
            raise ModelFileError(f"{where} tensor 'bias' must have shape ({filters},), got {w[1].shape}")
        act, alpha = _act(c.get("activation"), where)
        return [Conv1D(
            kernel=np.ascontiguousarray(k.transpose(2, 1, 0)), bias=w[1] if n_exp == 2 else None,
            stride=_one(c.get("strides", 1), where, "strides"), dilation=_one(c.get("dilation_rate", 1), where, "dilation_rate"),
            groups=groups, padding=padding, activation=act, alpha=alpha, name=name,
        )]

    if class_name in ("DepthwiseConv1D", "SeparableConv1D"):
        # depthwise kernel (K, in, depth_multiplier): output channel c * dm + m reads input c only
        _channels_last(c, where)
        padding = str(c.get("padding", "valid")).lower()
        if padding not in ("valid", "same", "causal"):
            raise UnsupportedError(f"{where}: padding={padding!r} is not supported; supported: valid, same, causal")
        dk = w[0]
        K = _one(c.get("kernel_size"), where, "kernel_size")
        dm = int(c.get("depth_multiplier", 1) or 1)
        if dk.ndim != 3 or dk.shape[0] != K or dk.shape[2] != dm:
            raise ModelFileError(f"{where} tensor 'depthwise_kernel' must have shape ({K}, in_channels, {dm}), got {dk.shape}")
        cin = dk.shape[1]
        kernel = np.ascontiguousarray(dk.transpose(1, 2, 0).reshape(cin * dm, 1, K))
        act, alpha = _act(c.get("activation"), where)
        conv = dict(stride=_one(c.get("strides", 1), where, "strides"),
                    dilation=_one(c.get("dilation_rate", 1), where, "dilation_rate"), groups=cin, padding=padding)
        if class_name == "DepthwiseConv1D":
            return [Conv1D(kernel=kernel, bias=w[1] if n_exp == 2 else None, activation=act, alpha=alpha, name=name, **conv)]
        pk = w[1]
        filters = c.get("filters")
        if pk.shape != (1, cin * dm, filters):
            raise ModelFileError(f"{where} tensor 'pointwise_kernel' must have shape (1, {cin * dm}, {filters}), got {pk.shape}")
        return [Conv1D(kernel=kernel, name=f"{name}/depthwise", **conv),
                Conv1D(kernel=np.ascontiguousarray(pk.transpose(2, 1, 0)), bias=w[2] if n_exp == 3 else None,
                       activation=act, alpha=alpha, name=name)]

    if class_name == "BatchNormalization":
        _last_axis(c, where, rank)
        i = 0
        gamma = beta = None
        if c.get("scale", True):
            gamma, i = w[i], i + 1
        if c.get("center", True):
            beta, i = w[i], i + 1
        mean, var = w[i], w[i + 1]
        return [BatchNormalization(gamma=gamma, beta=beta, mean=mean, var=var,
                                   epsilon=float(c.get("epsilon", 1e-3)), name=name)]

    if class_name == "LayerNormalization":
        _last_axis(c, where, rank)
        if c.get("rms_scaling"):
            raise UnsupportedError(f"{where}: rms_scaling=True is not supported; supported: standard layer normalization")
        i = 0
        gamma = beta = None
        if c.get("scale", True):
            gamma, i = w[i], i + 1
        if c.get("center", True):
            beta = w[i]
        if gamma is None and beta is None and size is None:
            raise UnsupportedError(f"{where}: center=False and scale=False leaves the feature size unknown here")
        return [LayerNormalization(gamma=gamma, beta=beta, features=None if gamma is not None or beta is not None else size,
                                   epsilon=float(c.get("epsilon", 1e-3)), name=name)]

    if class_name == "UnitNormalization":
        _last_axis(c, where, rank)
        return [UnitNormalization(epsilon=1e-12, name=name)]

    if class_name in ("MaxPooling1D", "AveragePooling1D", "MaxPool1D", "AvgPool1D"):
        _channels_last(c, where)
        padding = str(c.get("padding", "valid")).lower()
        if padding not in ("valid", "same"):
            raise UnsupportedError(f"{where}: padding={padding!r} is not supported; supported: valid, same")
        pool = _one(c.get("pool_size", 2), where, "pool_size")
        strides = c.get("strides")
        stride = pool if strides is None else _one(strides, where, "strides")
        cls = MaxPooling1D if class_name.startswith("Max") else AveragePooling1D
        return [cls(pool_size=pool, stride=stride, padding=padding, name=name)]

    if class_name in ("GlobalAveragePooling1D", "GlobalMaxPooling1D", "GlobalAvgPool1D", "GlobalMaxPool1D"):
        _channels_last(c, where)
        cls = GlobalMaxPooling1D if "Max" in class_name else GlobalAveragePooling1D
        return [cls(keepdims=bool(c.get("keepdims", False)), name=name)]

    if class_name == "ZeroPadding1D":
        _channels_last(c, where)
        p = c.get("padding", 1)
        p = (p, p) if isinstance(p, int) else tuple(p)
        if len(p) != 2:
            raise ModelFileError(f"{where}: padding must be an integer or (left, right), got {c.get('padding')!r}")
        return [ZeroPadding1D(padding=p, name=name)]

    if class_name == "Flatten":
        return [Flatten(name=name)]

    if class_name == "Reshape":
        ts = c.get("target_shape")
        if not isinstance(ts, (list, tuple)):
            raise ModelFileError(f"{where}: target_shape must be a list, got {ts!r}")
        return [Reshape(target_shape=tuple(ts), name=name)]

    if class_name == "ReLU":
        if c.get("max_value") is not None or float(c.get("threshold", 0.0) or 0.0) != 0.0:
            raise UnsupportedError(
                f"{where}: max_value={c.get('max_value')!r}, threshold={c.get('threshold')!r} are not supported; "
                "supported: ReLU with max_value=None and threshold=0 (negative_slope any)"
            )
        slope = float(c.get("negative_slope", 0.0) or 0.0)
        if slope:
            return [Activation(activation="leaky_relu", alpha=slope, name=name)]
        return [Activation(activation="relu", name=name)]
    if class_name == "LeakyReLU":
        slope = c.get("negative_slope", c.get("alpha", 0.3))
        return [Activation(activation="leaky_relu", alpha=float(slope), name=name)]
    if class_name == "ELU":
        alpha = float(c.get("alpha", 1.0))
        if alpha == 0.0:
            return [Activation(activation="relu", name=name)]
        return [Activation(activation="elu", alpha=alpha, name=name)]
    if class_name == "Softmax":
        _last_axis(c, where, rank)
        return [Activation(activation="softmax", name=name)]
    return None  # pragma: no cover - every class of KERAS_LAYER_CLASSES is handled above


#: Keras classes that pass a mask (Embedding mask_zero / Masking) through unchanged.
MASK_PASSING = {"BatchNormalization", "LayerNormalization", "UnitNormalization", "ReLU", "LeakyReLU", "ELU"}
#: Keras classes that consume a mask and return none (the average then skips masked steps).
MASK_CONSUMING = {"GlobalAveragePooling1D", "GlobalAvgPool1D", "GlobalMaxPooling1D", "GlobalMaxPool1D"}


def add_keras_layer(builder, node, where: str) -> bool:
    """Hook for :class:`converters.keras_io._Builder`: convert ``node`` if it is one of ours,
    append the layers, update the builder's feature size / sequence / mask flags. False when
    not ours.

    A Keras mask reaching a layer that does not support masks (``Conv1D``, pooling, padding,
    ``Flatten``, ``Reshape``, ``Softmax``) is refused: Keras would silently drop it there.
    """
    n = keras_weight_count(node.cls, node.cfg)
    if n is None:
        return False
    masked = getattr(builder, "masked", False) and builder.seq
    if masked and node.cls not in MASK_PASSING | MASK_CONSUMING:
        raise UnsupportedError(
            f"{where}: a mask (Embedding mask_zero / Masking) reaches this layer, which Keras runs without it; "
            f"supported after a mask: {', '.join(sorted(MASK_PASSING | MASK_CONSUMING))}"
        )
    if node.cls in MASK_CONSUMING and hasattr(builder, "masked"):
        builder.masked = False
    arrays = builder.weights(node, ("",))[""] if n else []
    layers = convert_keras_layer(node.cls, node.cfg, arrays, node.lname, seq=builder.seq, dtype=builder.dtype,
                                 size=builder.size)
    for layer in layers:
        prev = builder.layers[-1] if builder.layers else None
        if isinstance(layer, BatchNormalization) and prev is not None:
            folded = fold_batchnorm([prev, layer])  # exact into a linear Conv1D / Dense before it
            if len(folded) == 1:
                builder.layers[-1] = folded[0]
                continue
        size = builder.size
        if size is not None:
            check = getattr(layer, "check_input", None)
            if check is not None:
                check(size, builder.seq, where)
            builder.size = layer.output_size(size)
        elif hasattr(layer, "input_features"):
            builder.size = layer.output_size(layer.input_features())
        keeps = getattr(layer, "keeps_sequence", None)
        if keeps is not None:
            builder.seq = keeps(builder.seq)
        builder.layers.append(layer)
    return True

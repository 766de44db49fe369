"""ONNX export and import of the layers around the GRUs (:mod:`gru_engine.layers`).

Export (:func:`export_layer`, called by :func:`converters.onnx_io.to_onnx`): the engine's
sequences are ``[B, T, F]``; convolution, batch normalization and pooling run in ONNX's
``[B, C, T]`` layout between two ``Transpose`` nodes, as exporters write them:

=====================  ============================================================================
engine layer           ONNX nodes
=====================  ============================================================================
Conv1D                 Transpose, Conv (pads / auto_pad SAME_UPPER, strides, dilations, group), Transpose, activation
BatchNormalization     Transpose, BatchNormalization, Transpose (directly on ``[B, F]`` vectors)
LayerNormalization     LayerNormalization(axis=-1) (opset >= 17; ReduceMean / Sqrt / Div before)
UnitNormalization      ReduceL2(axis -1), Max(epsilon), Div
Average/MaxPooling1D   Transpose, AveragePool / MaxPool, Transpose
GlobalAverage/Max...   ReduceMean / ReduceMax over the time axis
ZeroPadding1D          Pad (constant 0 on the time axis)
Flatten / Reshape      nothing (identity)
=====================  ============================================================================

Import (:func:`import_node`): one ONNX node whose data input has a known layout (the order of
the batch ``b``, time ``t`` and feature ``f`` axes, e.g. ``"bft"`` after torch's
``x.transpose(1, 2)``) -> engine layers and the output's layout. Handles ``Conv``,
``BatchNormalization``, ``LayerNormalization``, ``AveragePool``, ``MaxPool``,
``GlobalAveragePool``, ``GlobalMaxPool``, ``ReduceMean`` / ``ReduceMax`` over time,
``LpNormalization`` (p = 2) and ``Pad`` (zeros on the time axis), in the forms
``torch.onnx.export`` emits for ``nn.Conv1d``, ``nn.BatchNorm1d``, ``nn.LayerNorm``,
``nn.AvgPool1d``, ``nn.MaxPool1d``.
"""

from __future__ import annotations

import numpy as np

from gru_engine.errors import UnsupportedError
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
    _GlobalPooling1D,
    _Pooling1D,
    fold_batchnorm,
)
from gru_engine.model import Layer, Model

__all__ = ["export_layer", "import_node", "IMPORT_OPS", "LAYER_KINDS"]

#: engine layer kind name -> class, for reading the engine's own files back.
LAYER_KINDS = {t.__name__: t for t in (
    Conv1D, BatchNormalization, LayerNormalization, UnitNormalization, AveragePooling1D, MaxPooling1D,
    GlobalAveragePooling1D, GlobalMaxPooling1D, ZeroPadding1D, Flatten, Reshape,
)}

#: ONNX ops :func:`import_node` understands.
IMPORT_OPS = (
    "Conv", "BatchNormalization", "LayerNormalization", "AveragePool", "MaxPool", "GlobalAveragePool",
    "GlobalMaxPool", "ReduceMean", "ReduceMax", "LpNormalization", "Pad",
)


# =========================================================================== export


def _is_sequence_at(model: Model, index: int) -> bool:
    """Whether the input of ``model.layers[index]`` is a sequence ``(B, T, F)``."""
    from gru_engine.model import GRU

    seq = True
    for layer in model.layers[:index]:
        if isinstance(layer, GRU):
            seq = layer.return_sequences
        elif hasattr(layer, "keeps_sequence"):
            seq = layer.keeps_sequence(seq)
    return seq


def _to_bct(b, x: str, pre: str) -> str:
    return b.op("Transpose", [x], name=f"{pre}/to_BCT", perm=[0, 2, 1])


def _to_btc(b, x: str, pre: str) -> str:
    return b.op("Transpose", [x], name=f"{pre}/to_BTC", perm=[0, 2, 1])


def export_layer(b, model: Model, index: int, pre: str, cur: str) -> tuple[str, dict] | None:
    """Append the ONNX nodes of ``model.layers[index]`` to builder ``b``
    (:class:`converters.onnx_io._Builder`).

    cur : the name of the layer's input tensor (``[B, T, F]`` or ``[B, F]``).
    Returns ``(output tensor name, {array field: initializer name})`` (the second for the
    engine's own metadata), or None when the layer is not one of :data:`LAYER_KINDS`.
    """
    layer = model.layers[index]
    if type(layer).__name__ not in LAYER_KINDS or not isinstance(layer, Layer):
        return None
    seq = _is_sequence_at(model, index)
    if isinstance(layer, Conv1D):
        W = b.const(layer.kernel, f"{pre}/kernel")
        bias = b.const(layer.bias, f"{pre}/bias")
        attrs = dict(kernel_shape=[layer.kernel_size], strides=[layer.stride], dilations=[layer.dilation],
                     group=layer.groups)
        if layer.padding == "same" and layer.stride == 1:
            attrs["pads"] = list(layer.pad_amounts(layer.kernel_size))  # stride 1: independent of T
        elif layer.padding == "same":
            if layer.dilation != 1:  # onnxruntime refuses auto_pad with dilations; Keras refuses both too
                raise UnsupportedError(
                    f"{layer.describe()} {layer.name!r}: 'same' padding with stride > 1 and dilation > 1 has no ONNX export"
                )
            attrs["auto_pad"] = "SAME_UPPER"
        else:
            attrs["pads"] = list(layer.pad_amounts(0))
        y = b.op("Conv", [_to_bct(b, cur, pre), W, bias], name=f"{pre}/Conv", **attrs)
        y = _to_btc(b, y, pre)
        return _activation(b, y, layer.activation, layer.alpha, pre), {"kernel": W, "bias": bias}
    if isinstance(layer, BatchNormalization):
        names = {n: b.const(getattr(layer, n), f"{pre}/{n}") for n in ("gamma", "beta", "mean", "var")}
        ins = [names["gamma"], names["beta"], names["mean"], names["var"]]
        if seq:
            y = b.op("BatchNormalization", [_to_bct(b, cur, pre), *ins], name=f"{pre}/BatchNormalization",
                     epsilon=layer.epsilon)
            return _to_btc(b, y, pre), names
        return b.op("BatchNormalization", [cur, *ins], name=f"{pre}/BatchNormalization", epsilon=layer.epsilon), names
    if isinstance(layer, LayerNormalization):
        g = b.const(layer.gamma, f"{pre}/gamma")
        be = b.const(layer.beta, f"{pre}/beta")
        if b.opset >= 17:
            y = b.op("LayerNormalization", [cur, g, be], name=f"{pre}/LayerNormalization", axis=-1,
                     epsilon=layer.epsilon)
        else:
            mean = b.reduce("ReduceMean", cur, [-1], 1, name=f"{pre}/mean")
            d = b.op("Sub", [cur, mean], name=f"{pre}/center")
            var = b.reduce("ReduceMean", b.op("Mul", [d, d]), [-1], 1, name=f"{pre}/var")
            std = b.op("Sqrt", [b.op("Add", [var, b.fconst(layer.epsilon, f"{pre}/eps")])])
            y = b.op("Add", [b.op("Mul", [b.op("Div", [d, std]), g]), be], name=f"{pre}/affine")
        return y, {"gamma": g, "beta": be}
    if isinstance(layer, UnitNormalization):
        n = b.reduce("ReduceL2", cur, [-1], 1, name=f"{pre}/ReduceL2")
        n = b.op("Max", [n, b.fconst(layer.epsilon, f"{pre}/eps")], name=f"{pre}/Max")
        return b.op("Div", [cur, n], name=f"{pre}/Div"), {}
    if isinstance(layer, _Pooling1D):
        op = "MaxPool" if layer.is_max else "AveragePool"
        attrs = dict(kernel_shape=[layer.pool_size], strides=[layer.stride])
        if layer.padding == "same":
            attrs["auto_pad"] = "SAME_UPPER"
        else:
            attrs["pads"] = list(layer.pad_amounts(0))
        if not layer.is_max:
            attrs["count_include_pad"] = int(layer.count_include_pad and layer.padding == "explicit")
        y = b.op(op, [_to_bct(b, cur, pre)], name=f"{pre}/{op}", **attrs)
        return _to_btc(b, y, pre), {}
    if isinstance(layer, _GlobalPooling1D):
        op = "ReduceMax" if layer.is_max else "ReduceMean"
        return b.reduce(op, cur, [1], int(layer.keepdims), name=f"{pre}/{op}"), {}
    if isinstance(layer, ZeroPadding1D):
        left, right = layer.padding
        pads = b.i64([0, left, 0, 0, right, 0], f"{pre}/pads")
        return b.op("Pad", [cur, pads, b.fconst(0.0, f"{pre}/zero")], name=f"{pre}/Pad", mode="constant"), {}
    return cur, {}  # Flatten / Reshape: the data is unchanged


def _activation(b, x: str, act: str, alpha: float, pre: str) -> str:
    if act == "linear":
        return x
    from .onnx_io import _dense_activation_nodes

    return _dense_activation_nodes(b, x, act, alpha, pre)


# =========================================================================== import


def _ints(attrs: dict, key: str, default):
    v = attrs.get(key, default)
    return [int(a) for a in v] if isinstance(v, (list, tuple, np.ndarray)) else v


def _auto_pad(attrs: dict, where: str) -> str:
    ap = attrs.get("auto_pad", "NOTSET")
    ap = ap.decode() if isinstance(ap, bytes) else str(ap)
    if ap not in ("NOTSET", "VALID", "SAME_UPPER"):
        raise UnsupportedError(f"{where}: auto_pad={ap!r} is not supported; supported: NOTSET (pads), VALID, SAME_UPPER")
    return ap


def _padding(attrs: dict, where: str) -> dict:
    ap = _auto_pad(attrs, where)
    if ap == "SAME_UPPER":
        return {"padding": "same"}
    if ap == "VALID":
        return {"padding": "valid"}
    pads = _ints(attrs, "pads", [0, 0])
    if len(pads) != 2:
        raise UnsupportedError(f"{where}: pads={pads} must have 2 values (1-D)")
    if pads == [0, 0]:
        return {"padding": "valid"}
    return {"padding": "explicit", "pads": (pads[0], pads[1])}


def _one(attrs: dict, key: str, where: str, default: int = 1) -> int:
    v = _ints(attrs, key, [default])
    if not isinstance(v, list) or len(v) != 1:
        raise UnsupportedError(f"{where}: {key}={v} must have one value (1-D op)")
    return v[0]


def _need(consts, i: int, what: str, where: str) -> np.ndarray:
    if i >= len(consts) or consts[i] is None:
        raise UnsupportedError(f"{where}: input {i} ({what}) must be a constant initializer")
    return np.asarray(consts[i])


def import_node(op_type: str, attrs: dict, consts: list, layout: str, size: int, name: str = "",
                dtype=np.float32) -> tuple[list[Layer], str] | None:
    """Map one ONNX node onto engine layers.

    op_type, attrs : the node (attribute values as Python lists / numbers / strings).
    consts : the node's inputs after the data input, as arrays (None where absent or not constant).
    layout : the data input's axes, a permutation of ``"btf"`` (or ``"bf"`` for vectors).
    size : the data input's feature count.
    Returns ``(layers, output layout)``; None when ``op_type`` is not in :data:`IMPORT_OPS`.
    Raises :class:`~gru_engine.errors.UnsupportedError` (naming the node) for an option or
    layout it cannot map.
    """
    if op_type not in IMPORT_OPS:
        return None
    where = f"node {name!r} ({op_type})"

    def require(*layouts):
        if layout not in layouts:
            raise UnsupportedError(
                f"{where}: input layout {layout!r} is not supported; supported: {', '.join(map(repr, layouts))} "
                "(b = batch, t = time, f = features)"
            )

    if op_type == "Conv":
        require("bft")
        W = _need(consts, 0, "W", where).astype(dtype)
        B = consts[1] if len(consts) > 1 and consts[1] is not None else None
        if W.ndim != 3:
            raise UnsupportedError(f"{where}: W must be 3-D (a 1-D convolution), got shape {W.shape}")
        group = int(attrs.get("group", 1))
        if W.shape[1] * group != size:
            raise UnsupportedError(f"{where}: W {W.shape} with group={group} must take {size} input channels")
        ks = _ints(attrs, "kernel_shape", [W.shape[2]])
        if ks != [W.shape[2]]:
            raise UnsupportedError(f"{where}: kernel_shape={ks} must match W's kernel size {W.shape[2]}")
        layer = Conv1D(kernel=W, bias=None if B is None else np.asarray(B, dtype), stride=_one(attrs, "strides", where),
                       dilation=_one(attrs, "dilations", where), groups=group, name=name, **_padding(attrs, where))
        return [layer], layout
    if op_type == "BatchNormalization":
        require("bft", "bf")
        if int(attrs.get("training_mode", 0)):
            raise UnsupportedError(f"{where}: training_mode=1 is not supported; supported: inference statistics")
        scale, bias, mean, var = (_need(consts, i, n, where).astype(dtype) for i, n in enumerate(("scale", "B", "mean", "var")))
        return [BatchNormalization(gamma=scale, beta=bias, mean=mean, var=var,
                                   epsilon=float(attrs.get("epsilon", 1e-5)), name=name)], layout
    if op_type == "LayerNormalization":
        axis = int(attrs.get("axis", -1))
        if layout[-1] != "f" or axis not in (-1, len(layout) - 1):
            raise UnsupportedError(f"{where}: axis={axis} on layout {layout!r} must normalize the feature axis only")
        scale = _need(consts, 0, "Scale", where).astype(dtype)
        bias = consts[1] if len(consts) > 1 and consts[1] is not None else None
        return [LayerNormalization(gamma=scale.reshape(-1), beta=None if bias is None else np.asarray(bias, dtype).reshape(-1),
                                   epsilon=float(attrs.get("epsilon", 1e-5)), name=name)], layout
    if op_type in ("AveragePool", "MaxPool"):
        require("bft")
        if int(attrs.get("ceil_mode", 0)):
            raise UnsupportedError(f"{where}: ceil_mode=1 is not supported; supported: ceil_mode=0 (torch default)")
        if op_type == "MaxPool" and _ints(attrs, "dilations", [1]) != [1]:
            raise UnsupportedError(f"{where}: dilations are not supported for MaxPool")
        if op_type == "MaxPool" and int(attrs.get("storage_order", 0)):
            raise UnsupportedError(f"{where}: storage_order=1 is not supported")
        k = _one(attrs, "kernel_shape", where)
        pad = _padding(attrs, where)
        cls = MaxPooling1D if op_type == "MaxPool" else AveragePooling1D
        cip = bool(int(attrs.get("count_include_pad", 0))) if op_type == "AveragePool" else False
        return [cls(pool_size=k, stride=_one(attrs, "strides", where), count_include_pad=cip, name=name, **pad)], layout
    if op_type in ("GlobalAveragePool", "GlobalMaxPool"):
        require("bft")
        cls = GlobalMaxPooling1D if op_type == "GlobalMaxPool" else GlobalAveragePooling1D
        return [cls(keepdims=True, name=name)], "bft"  # [B, C, 1]: a one-step sequence
    if op_type in ("ReduceMean", "ReduceMax"):
        axes = _ints(attrs, "axes", None)
        if axes is None and consts and consts[0] is not None:
            axes = [int(a) for a in np.asarray(consts[0]).reshape(-1)]
        keep = int(attrs.get("keepdims", 1))
        tpos = layout.find("t")
        fpos = layout.find("f")
        if axes is None or [a % len(layout) for a in axes] != [tpos] or tpos < 0:
            if axes is not None and [a % len(layout) for a in axes] == [fpos]:
                return None  # a reduction over features (e.g. a hand-written normalization): not a layer of ours
            raise UnsupportedError(f"{where}: axes={axes} on layout {layout!r}; supported: a reduction over time")
        cls = GlobalMaxPooling1D if op_type == "ReduceMax" else GlobalAveragePooling1D
        out = layout if keep else layout.replace("t", "")
        layer = cls(keepdims=bool(keep), name=name)
        if keep and out != "btf":
            raise UnsupportedError(f"{where}: keepdims=1 on layout {layout!r}; supported: 'btf'")
        return [layer], out
    if op_type == "LpNormalization":
        axis = int(attrs.get("axis", -1))
        if int(attrs.get("p", 2)) != 2 or layout.find("f") != axis % len(layout):
            raise UnsupportedError(f"{where}: p={attrs.get('p', 2)}, axis={axis}; supported: p=2 over the features")
        # ONNX LpNormalization has no epsilon: the engine's 1e-12 floor differs only for zero vectors.
        return [UnitNormalization(name=name)], layout
    if op_type == "Pad":
        mode = attrs.get("mode", "constant")
        mode = mode.decode() if isinstance(mode, bytes) else str(mode)
        pads = _ints(attrs, "pads", None)
        if pads is None:
            pads = [int(p) for p in _need(consts, 0, "pads", where).reshape(-1)]
        value = consts[1] if len(consts) > 1 and consts[1] is not None else attrs.get("value", 0.0)
        if len(consts) > 2 and consts[2] is not None:
            axes = [int(a) % len(layout) for a in np.asarray(consts[2]).reshape(-1)]
            full = [0] * (2 * len(layout))
            for j, a in enumerate(axes):
                full[a], full[a + len(layout)] = pads[j], pads[j + len(axes)]
            pads = full
        tpos = layout.find("t")
        if mode != "constant" or float(np.asarray(value).reshape(-1)[0] if np.size(value) else 0.0) != 0.0:
            raise UnsupportedError(f"{where}: mode={mode!r}, value={value!r}; supported: constant zero padding")
        if len(pads) != 2 * len(layout) or tpos < 0:
            raise UnsupportedError(f"{where}: pads={pads} must have 2 values per axis of layout {layout!r}")
        other = [p for j, p in enumerate(pads) if j % len(layout) != tpos]
        if any(other) or min(pads) < 0:
            raise UnsupportedError(f"{where}: pads={pads} pads axes other than time (or crops); supported: zeros on time")
        return [ZeroPadding1D(padding=(pads[tpos], pads[tpos + len(layout)]), name=name)], layout
    return None  # pragma: no cover


# =========================================================================== graph interpreter hook


def interp_handler(interp, op_type: str):
    """A handler ``fn(node, ins) -> value`` for :class:`converters.onnx_io._Interp` when
    ``op_type`` is one of :data:`IMPORT_OPS`, else None.

    The data input's axis labels give the layout: ``B``/``T``/``F`` as the interpreter bound
    them; the graph input's still-unbound axes (``x0``/``x1``) are bound here when the op fixes
    them (``Conv`` & co. read ``[batch, channels, time]``), as the GRU op binds them.
    """
    if op_type not in IMPORT_OPS:
        return None

    def handle(node, ins):
        return _interp_node(interp, node, ins)

    return handle


def _bind(interp, lab, want: str) -> None:
    n = interp.norm_label(lab)
    if n in ("x0", "x1"):
        interp.bind[n] = want
        other = "x1" if n == "x0" else "x0"
        interp.bind[other] = "B" if want == "T" else "T"
        for src in ("x0", "x1"):
            if src in interp.static:
                interp.static[interp.bind[src]] = interp.static[src]


def _interp_node(interp, node, ins):
    from .onnx_io import _Seq

    op = node.op_type
    if not ins or ins[0] is None:
        interp.unsupported(node, f"{op} needs a data input")
    v = interp.plain(interp.mat(ins[0], node), node)
    if v.tokens:
        interp.unsupported(node, f"{op} on token ids is not supported")
    if op in ("Conv", "AveragePool", "MaxPool", "GlobalAveragePool", "GlobalMaxPool") or (
        op in ("BatchNormalization", "Pad") and len(v.axes) == 3
    ):
        if len(v.axes) != 3 or interp.norm_label(v.axes[1]) != "F":
            interp.unsupported(node, f"{op} must read [batch, channels, time] with the features on axis 1, got axes "
                                     f"{[interp.norm_label(a) for a in v.axes]}")
        _bind(interp, v.axes[0], "B")
        _bind(interp, v.axes[2], "T")
    letters = {"B": "b", "T": "t", "F": "f"}
    layout = "".join(letters.get(interp.norm_label(a), "?") for a in v.axes)
    if "?" in layout:
        if layout.count("?") == 2 and layout.endswith("f") and op in ("LayerNormalization", "LpNormalization"):
            layout = "btf"  # which of the two is time does not matter to a per-step op
        else:
            interp.unsupported(node, f"{op}: the batch and time axes of its input are not known yet "
                                     f"(axes {[interp.norm_label(a) for a in v.axes]})")
    consts = []
    for name in node.input[1:]:
        c = interp.const(name) if name else None
        consts.append(c)
    F = v.sizes.get("F")
    dtype = np.float64 if getattr(interp, "x_dtype", "") == "float64" else np.float32
    done = import_node(op, interp.attrs(node), consts, layout, F, name=node.name, dtype=dtype)
    if done is None:
        interp.unsupported(node, f"{op} on axes {[interp.norm_label(a) for a in v.axes]} is not supported")
    layers, out_layout = done
    label = {}
    for a in v.axes:
        label[letters.get(interp.norm_label(a), "?")] = a
    chain = v.chain
    size = F
    for layer in layers:
        if isinstance(layer, _GlobalPooling1D) and layer.keepdims:
            # the engine drops the time axis; the graph keeps a unit axis, labelled "1"
            import dataclasses

            layer = dataclasses.replace(layer, keepdims=False)
            label["t"] = "1"
        prev = chain[-1] if chain else None
        if isinstance(layer, BatchNormalization) and isinstance(prev, Layer):
            folded = fold_batchnorm([prev, layer])  # exact into a linear Conv1D / Dense before it
            if len(folded) == 1:
                chain = chain[:-1] + (folded[0],)
                continue
        chain = chain + (layer,)
        size = layer.output_size(size)
    axes = tuple("F" if c == "f" else label[c] for c in out_layout)
    # A layer that changes the number of steps: graphs exported with static shapes (dynamo)
    # spell the new length in later reshapes, so the interpreter's static time size follows.
    tlab = label.get("t")
    if tlab not in (None, "1") and any(getattr(la, "changes_time", False) for la in layers):
        T = interp.static.get(interp.norm_label(tlab))
        if isinstance(T, int):
            for la in layers:
                T = la.output_length(T) if hasattr(la, "output_length") else (
                    T + sum(la.padding) if isinstance(la, ZeroPadding1D) else T)
            for lab in {tlab, interp.norm_label(tlab)}:
                interp.static[lab] = T
    return _Seq(axes, chain, {"F": size})

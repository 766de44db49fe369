"""ONNX in and out: :func:`to_onnx` writes a :class:`gru_engine.Model` as a graph of real ONNX
``GRU`` nodes (no loops) that onnxruntime runs with the engine's outputs; :func:`from_onnx`
reads the engine's own files, bare ``GRU`` graphs and the graphs ``torch.onnx.export`` emits
(legacy and dynamo) back into a :class:`~gru_engine.Model`.

Graph convention of the engine's own files (``to_onnx``):

* inputs ``x`` batch-first ``[batch, time, F]`` float (``[batch, time]`` int64 token ids
  for a model that starts with an Embedding); optional ``lengths`` ``[batch]`` int64 and
  ``initial_state`` ``[L*D, batch, H]`` (one ``initial_state_<i>`` ``[D, batch, H_i]`` per
  GRU layer when the hidden sizes differ);
* outputs ``y`` and ``h_n`` (``h_n_<i>`` per layer when the hidden sizes differ), the same
  arrays as ``Model.run``.

Keras masks (``Masking``, ``Embedding(mask_zero=True)``) are written as per-row lengths
(the number of unmasked steps), which is exact when the mask is a prefix (padding at the
end of each row, the usual case); the masked steps then repeat the last valid output (or
are zero with ``masked_output="zero"``) as in the engine.

The importer is an abstract interpreter over the graph: every value is a folded constant,
a shape-derived symbol, a (symbolic) zeros tensor, or a *sequence* value with labelled axes
(time, batch, direction, feature) attached to the chain of canonical layers built so far.
Glue is recognised by what it computes, not by node names.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from gru_engine import config
from gru_engine.errors import GRUEngineError, ModelDefinitionError, ModelFileError, UnsupportedError
from gru_engine.model import (
    DIRECTIONS,
    GRU,
    Activation,
    Dense,
    Embedding,
    Layer,
    Masking,
    Model,
)

PRODUCER = "gru-engine"
FORMAT_KEY = "gru_engine.format"
LAYERS_KEY = "gru_engine.layers"
MODEL_KEY = "gru_engine.model"
FORMAT_VERSION = "1"
DEFAULT_OPSET = 17

_NP_TO_ONNX = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE}


# =========================================================================== export


class _Builder:
    """Collects nodes and initializers with unique names."""

    def __init__(self, dtype, opset=DEFAULT_OPSET):
        self.dtype = np.dtype(dtype)
        self.opset = int(opset)
        self.nodes: list = []
        self.inits: list = []
        self._names: set = set()
        self._n = 0

    def fresh(self, base: str) -> str:
        base = base or "t"
        name = base
        while name in self._names:
            self._n += 1
            name = f"{base}_{self._n}"
        self._names.add(name)
        return name

    def const(self, value, name: str = "c", dtype=None) -> str:
        arr = np.asarray(value, dtype=dtype if dtype is not None else None)
        name = self.fresh(name)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def fconst(self, value, name: str = "c") -> str:
        return self.const(np.asarray(value, self.dtype), name)

    def i64(self, values, name: str = "i") -> str:
        return self.const(np.asarray(values, np.int64), name)

    def reduce(self, op_type: str, x: str, axes, keepdims: int, name: str | None = None) -> str:
        """ReduceX over ``axes`` (an attribute before opset 18, an input from 18; ReduceSum from 13)."""
        if op_type == "ReduceSum" or self.opset >= 18:
            return self.op(op_type, [x, self.i64(list(axes))], name=name, keepdims=keepdims)
        return self.op(op_type, [x], name=name, axes=list(axes), keepdims=keepdims)

    def op(self, op_type: str, inputs, n_out: int = 1, name: str | None = None, **attrs):
        outs = [self.fresh(f"{name or op_type.lower()}_out{i if n_out > 1 else ''}") for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=self.fresh(name or op_type), **attrs))
        return outs if n_out > 1 else outs[0]


def _dense_activation_nodes(b: _Builder, x: str, act: str, alpha: float, name: str) -> str:
    """ONNX ops computing the engine's Dense/Activation ``act`` (kernels_cpu.dense_act_inplace)."""
    if act == "linear":
        return x
    simple = {"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu", "softplus": "Softplus",
              "softsign": "Softsign", "exp": "Exp"}
    if act in simple:
        return b.op(simple[act], [x], name=f"{name}/{simple[act]}")
    if act == "softmax":
        return b.op("Softmax", [x], name=f"{name}/Softmax", axis=-1)
    if act == "hard_sigmoid":
        return b.op("HardSigmoid", [x], name=f"{name}/HardSigmoid", alpha=1.0 / 6.0, beta=0.5)
    if act == "elu":
        return b.op("Elu", [x], name=f"{name}/Elu", alpha=alpha if alpha != 0.0 else 1.0)
    if act == "selu":
        return b.op("Selu", [x], name=f"{name}/Selu", alpha=1.6732632423543772, gamma=1.0507009873554805)
    if act == "leaky_relu":
        return b.op("LeakyRelu", [x], name=f"{name}/LeakyRelu", alpha=alpha)
    if act == "swish":
        s = b.op("Sigmoid", [x], name=f"{name}/Sigmoid")
        return b.op("Mul", [x, s], name=f"{name}/Swish")
    if act == "gelu":  # 0.5 x (1 + erf(x / sqrt 2)); the Gelu op needs opset 20
        e = b.op("Erf", [b.op("Mul", [x, b.fconst(0.7071067811865476, "inv_sqrt2")])], name=f"{name}/Erf")
        return b.op("Mul", [b.op("Mul", [x, b.fconst(0.5, "half")]), b.op("Add", [e, b.fconst(1.0, "one")])],
                    name=f"{name}/Gelu")
    if act == "gelu_tanh":
        x3 = b.op("Mul", [b.op("Mul", [x, x]), x])
        inner = b.op("Mul", [b.op("Add", [x, b.op("Mul", [x3, b.fconst(0.044715, "k")])]),
                             b.fconst(0.7978845608028654, "sqrt_2_pi")])
        t = b.op("Tanh", [inner], name=f"{name}/Tanh")
        return b.op("Mul", [b.op("Mul", [x, b.fconst(0.5, "half")]), b.op("Add", [t, b.fconst(1.0, "one")])],
                    name=f"{name}/GeluTanh")
    raise UnsupportedError(f"{name}: activation {act!r} has no ONNX export")  # pragma: no cover


def _layer_meta(layer: Layer, arrays: dict) -> dict:
    meta = {"kind": layer.kind, "name": layer.name, "arrays": arrays}
    for f in dataclasses.fields(layer):
        v = getattr(layer, f.name)
        if isinstance(v, np.ndarray) or f.name == "name":
            continue
        meta[f.name] = list(v) if isinstance(v, tuple) else v
    return meta


def to_onnx(
    model: Model,
    path=None,
    *,
    opset: int = DEFAULT_OPSET,
    with_lengths: bool = False,
    with_initial_state: bool = False,
    check: bool = True,
) -> onnx.ModelProto:
    """Write ``model`` as an ONNX graph of real ``GRU`` nodes; return the ``ModelProto``.

    Parameters
    ----------
    model : the model.
    path : where to write the file (optional).
    opset : ONNX opset (>= 14, for GRU-14 and the ``Shape`` start/end attributes >= 15).
    with_lengths : add the graph input ``lengths`` ``[batch]`` (int64), ``Model.run(lengths=)``.
    with_initial_state : add the graph input ``initial_state`` ``[L*D, batch, H]``
        (``Model.run(initial_state=)``).
    check : run ``onnx.checker`` on the result.

    Float64 models write double tensors: the engine loads them, onnxruntime refuses a double GRU.
    """
    if not isinstance(model, Model):
        raise TypeError(f"model must be a gru_engine.Model, got {type(model).__name__}")
    if int(opset) < 15:
        raise UnsupportedError(f"opset must be >= 15 (GRU-14, Shape-15), got {opset}")
    dtype = model.dtype
    elem = _NP_TO_ONNX[np.dtype(dtype)]
    b = _Builder(dtype, opset)
    b.fresh("x")
    inputs, outputs = [], []
    grus = model.gru_layers
    Hs = [g.hidden_size for g in grus]
    same_H = len(set(Hs)) <= 1
    if with_initial_state and not grus:
        raise ModelDefinitionError("with_initial_state=True needs a model with a GRU layer")

    if model.takes_tokens:
        inputs.append(helper.make_tensor_value_info("x", TensorProto.INT64, ["batch", "time"]))
    else:
        inputs.append(helper.make_tensor_value_info("x", elem, ["batch", "time", model.input_size]))
    lengths = None
    if with_lengths:
        lengths = b.fresh("lengths")
        inputs.append(helper.make_tensor_value_info("lengths", TensorProto.INT64, ["batch"]))
    states = []  # per GRU layer: name of a (D, B, H) tensor, or None
    if with_initial_state:
        if same_H:
            b.fresh("initial_state")
            total = sum(g.num_directions for g in grus)
            inputs.append(helper.make_tensor_value_info("initial_state", elem, [total, "batch", Hs[0]]))
            off = 0
            for g in grus:
                D = g.num_directions
                states.append(b.op("Slice", ["initial_state", b.i64([off]), b.i64([off + D]), b.i64([0])],
                                   name=f"initial_state/slice{off}"))
                off += D
        else:
            for i, g in enumerate(grus):
                nm = b.fresh(f"initial_state_{i}")
                inputs.append(helper.make_tensor_value_info(nm, elem, [g.num_directions, "batch", g.hidden_size]))
                states.append(nm)
    else:
        states = [None] * len(grus)

    metas = []
    cur = "x"
    seq = True
    kmask = None  # bool (B, T): the Keras mask so far
    batch_dim = None
    final_states = []
    gi = 0

    def get_batch_dim():
        nonlocal batch_dim
        if batch_dim is None:
            batch_dim = b.op("Shape", ["x"], name="x/batch", start=0, end=1)
        return batch_dim

    for li, layer in enumerate(model.layers):
        pre = layer.name or f"layer{li}"
        pre = f"{li}_{pre}"
        if isinstance(layer, Embedding):
            t = b.const(layer.table, f"{pre}/table")
            cur = b.op("Gather", [t, cur], name=f"{pre}/Gather", axis=0)
            if layer.mask_zero:
                m = b.op("Not", [b.op("Equal", ["x", b.i64(0, "zero")])], name=f"{pre}/mask")
                kmask = m if kmask is None else b.op("And", [kmask, m])
            metas.append(_layer_meta(layer, {"table": t}))
        elif isinstance(layer, Masking):
            ne = b.op("Not", [b.op("Equal", [cur, b.fconst(layer.mask_value, "mask_value")])])
            keep = b.reduce("ReduceMax", b.op("Cast", [ne], to=elem), [-1], 1, name=f"{pre}/keep")
            cur = b.op("Mul", [cur, keep], name=f"{pre}/Mul")
            m = b.op("Cast", [b.op("Squeeze", [keep, b.i64([-1])])], to=TensorProto.BOOL)
            kmask = m if kmask is None else b.op("And", [kmask, m], name=f"{pre}/mask")
            metas.append(_layer_meta(layer, {}))
        elif isinstance(layer, Dense):
            k = b.const(layer.kernel, f"{pre}/kernel")
            bias = b.const(layer.bias, f"{pre}/bias")
            cur = b.op("Add", [b.op("MatMul", [cur, k], name=f"{pre}/MatMul"), bias], name=f"{pre}/Add")
            cur = _dense_activation_nodes(b, cur, layer.activation, layer.alpha, pre)
            metas.append(_layer_meta(layer, {"kernel": k, "bias": bias}))
        elif isinstance(layer, Activation):
            cur = _dense_activation_nodes(b, cur, layer.activation, layer.alpha, pre)
            metas.append(_layer_meta(layer, {}))
        elif isinstance(layer, GRU):
            cur, hN, arrays = _export_gru(b, layer, pre, cur, kmask, lengths, states[gi], get_batch_dim)
            final_states.append(hN)
            seq = layer.return_sequences
            metas.append(_layer_meta(layer, arrays))
            gi += 1
        else:
            raise UnsupportedError(
                f"layer {li} ({layer.describe()}) has no ONNX export; supported: GRU, Dense, Activation, Embedding, Masking"
            )

    out_size = model.output_size
    y = b.op("Identity", [cur], name="y")
    b.nodes[-1].output[0] = "y"
    outputs.append(helper.make_tensor_value_info(
        "y", elem, ["batch", "time", out_size] if model.output_is_sequence else ["batch", out_size]))
    del y
    if final_states:
        if same_H:
            total = sum(g.num_directions for g in grus)
            src = final_states[0] if len(final_states) == 1 else b.op("Concat", final_states, name="h_n/Concat", axis=0)
            b.nodes.append(helper.make_node("Identity", [src], ["h_n"], name=b.fresh("h_n")))
            outputs.append(helper.make_tensor_value_info("h_n", elem, [total, "batch", Hs[0]]))
        else:
            for i, (g, s) in enumerate(zip(grus, final_states)):
                nm = f"h_n_{i}"
                b.nodes.append(helper.make_node("Identity", [s], [nm], name=b.fresh(nm)))
                outputs.append(helper.make_tensor_value_info(nm, elem, [g.num_directions, "batch", g.hidden_size]))

    graph = helper.make_graph(b.nodes, model.name or "gru_engine_model", inputs, outputs, b.inits)
    proto = helper.make_model(
        graph,
        producer_name=PRODUCER,
        producer_version=_engine_version(),
        opset_imports=[helper.make_opsetid("", int(opset))],
        doc_string=model.summary(),
    )
    proto.ir_version = min(proto.ir_version, 10)
    helper.set_model_props(proto, {
        FORMAT_KEY: FORMAT_VERSION,
        MODEL_KEY: json.dumps({"input_size": model.input_size, "name": model.name}),
        LAYERS_KEY: json.dumps(metas),
    })
    if check:
        onnx.checker.check_model(proto)
    if path is not None:
        onnx.save_model(proto, os.fspath(path))
    return proto


def _engine_version() -> str:
    import gru_engine

    return gru_engine.__version__


def _export_gru(b: _Builder, layer: GRU, pre: str, cur: str, kmask, lengths, h0, get_batch_dim):
    """Emit one GRU layer. Returns (output name, final state name (D, B, H), arrays meta)."""
    D, H = layer.num_directions, layer.hidden_size
    elem = _NP_TO_ONNX[b.dtype]
    Wn = b.const(layer.W, f"{pre}/W")
    Rn = b.const(layer.R, f"{pre}/R")
    Bn = b.const(layer.B, f"{pre}/B")
    X = b.op("Transpose", [cur], name=f"{pre}/to_time_major", perm=[1, 0, 2])
    L = None  # int64 (B,)
    if kmask is not None:
        L = b.reduce("ReduceSum", b.op("Cast", [kmask], to=TensorProto.INT64), [1], 0, name=f"{pre}/mask_lengths")
        if lengths is not None:
            L = b.op("Min", [L, lengths], name=f"{pre}/lengths")
    elif lengths is not None:
        L = lengths
    seq_lens = "" if L is None else b.op("Cast", [L], name=f"{pre}/seq_lens", to=TensorProto.INT32)
    attrs = dict(hidden_size=H, direction=layer.direction, linear_before_reset=layer.linear_before_reset,
                 activations=list(layer.activations))
    if layer.activation_alpha:
        attrs["activation_alpha"] = list(layer.activation_alpha)
    if layer.activation_beta:
        attrs["activation_beta"] = list(layer.activation_beta)
    if layer.clip is not None:
        attrs["clip"] = float(layer.clip)
    ins = [X, Wn, Rn, Bn, seq_lens, h0 or ""]
    while ins and ins[-1] == "":
        ins.pop()
    Y, Y_h = b.op("GRU", ins, n_out=2, name=f"{pre}/GRU", **attrs)
    Yb = b.op("Transpose", [Y], name=f"{pre}/to_batch_major", perm=[2, 0, 1, 3])  # (B, T, D, H)
    keras_mask_only = kmask is not None and lengths is None
    if keras_mask_only:
        # The engine keeps h0 for a row with no valid step (onnxruntime gives 0 there).
        if h0 is None:
            shape = b.op("Concat", [b.i64([D]), get_batch_dim(), b.i64([H])], axis=0)
            h0 = b.op("ConstantOfShape", [shape], name=f"{pre}/zero_state",
                      value=numpy_helper.from_array(np.zeros(1, b.dtype)))
        nonempty = b.op("Greater", [b.op("Unsqueeze", [L, b.i64([0, 2])]), b.i64(0, "zero")])
        Y_h = b.op("Where", [nonempty, Y_h, h0], name=f"{pre}/final_state")
        T = b.op("Shape", [cur], start=1, end=2)
        steps = b.op("Range", [b.i64(0, "zero"), b.op("Squeeze", [T, b.i64([0])]), b.i64(1, "one")])
        valid = b.op("Less", [b.op("Unsqueeze", [steps, b.i64([0])]), b.op("Unsqueeze", [L, b.i64([1])])])
        valid = b.op("Unsqueeze", [valid, b.i64([2, 3])], name=f"{pre}/valid")  # (B, T, 1, 1)
        if layer.masked_output == "carry":
            # masked steps repeat the state: the last valid one going forward, h0 going back
            Yh_t = b.op("Transpose", [Y_h], perm=[1, 0, 2])
            h0_t = b.op("Transpose", [h0], perm=[1, 0, 2])
            if layer.direction == "forward":
                fill = Yh_t
            elif layer.direction == "reverse":
                fill = h0_t
            else:
                fill = b.op("Concat", [
                    b.op("Slice", [Yh_t, b.i64([0]), b.i64([1]), b.i64([1])]),
                    b.op("Slice", [h0_t, b.i64([1]), b.i64([2]), b.i64([1])]),
                ], axis=1)
            fill = b.op("Unsqueeze", [fill, b.i64([1])])  # (B, 1, D, H)
            Yb = b.op("Where", [valid, Yb, fill], name=f"{pre}/carry")
    if layer.time_reversed_output and layer.direction != "forward":
        def flip(t):
            return b.op("Slice", [t, b.i64([-1]), b.i64([-(2**63)]), b.i64([1]), b.i64([-1])],
                        name=f"{pre}/time_reverse")
        if D == 1:
            Yb = flip(Yb)
        else:
            fw = b.op("Slice", [Yb, b.i64([0]), b.i64([1]), b.i64([2])])
            bw = flip(b.op("Slice", [Yb, b.i64([1]), b.i64([2]), b.i64([2])]))
            Yb = b.op("Concat", [fw, bw], axis=2)
    if layer.return_sequences:
        out, axis = Yb, 2
    else:
        out, axis = b.op("Transpose", [Y_h], name=f"{pre}/last_step", perm=[1, 0, 2]), 1
    if D == 1 or layer.merge == "concat":
        shape = [0, 0, -1] if layer.return_sequences else [0, -1]
        out = b.op("Reshape", [out, b.i64(shape)], name=f"{pre}/merge")
    elif layer.merge in ("sum", "ave"):
        out = b.reduce("ReduceSum", out, [axis], 0, name=f"{pre}/merge_sum")
        if layer.merge == "ave":
            out = b.op("Mul", [out, b.fconst(0.5, "half")], name=f"{pre}/merge_ave")
    else:  # mul
        out = b.reduce("ReduceProd", out, [axis], 0, name=f"{pre}/merge_mul")
    del elem
    return out, Y_h, {"W": Wn, "R": Rn, "B": Bn}


# =========================================================================== import


@dataclass
class Signature:
    """How a graph's inputs and outputs map onto ``Model.run``.

    x, lengths, initial_state : graph input names (None when absent).
    x_layout : "btf" (batch-first) or "tbf" (time-major) for the graph's ``x``.
    state_layout : "dbh" (``[L*D, B, H]``) or "bdh" (layout=1 ``[B, D, H]``).
    outputs : graph output name -> (kind, layout): kind "y" (per-step or last-step model
        output), "Y" (a bare GRU node's 4-D Y) or "h_n"; layout names the graph's axes
        order, e.g. "btf", "tdbh", "btdh", "dbh", "bdh".
    constants : graph input name -> value for inputs that take a fixed value (initializers
        that shadow an input).
    """

    x: str | None = None
    x_layout: str = "btf"
    x_dtype: str = "float32"
    lengths: str | None = None
    initial_state: str | None = None
    state_layout: str = "dbh"
    outputs: list = field(default_factory=list)  # [(name, kind, layout)]
    inputs: list = field(default_factory=list)  # graph inputs in order (not initializers)

    def to_model_args(self, feeds: dict) -> dict:
        """Turn the graph's named inputs into ``Model.run`` keyword arguments."""
        x = np.asarray(feeds[self.x])
        if self.x_layout == "tbf":
            x = np.swapaxes(x, 0, 1)
        kw = {"x": x}
        if self.lengths is not None and self.lengths in feeds and feeds[self.lengths] is not None:
            kw["lengths"] = np.asarray(feeds[self.lengths])
        if self.initial_state is not None and self.initial_state in feeds and feeds[self.initial_state] is not None:
            s = np.asarray(feeds[self.initial_state])
            if self.state_layout == "bdh":
                s = np.swapaxes(s, 0, 1)
            kw["initial_state"] = s
        return kw

    def from_model_outputs(self, y, h_n, model: Model) -> list:
        """``Model.run``'s ``(y, h_n)`` in the graph's own output layouts, in graph order."""
        out = []
        for name, kind, layout in self.outputs:
            if kind == "h_n":
                a = h_n
                if layout == "bdh":
                    a = np.swapaxes(a, 0, 1)
            elif kind == "Y":
                g = model.gru_layers[-1]
                D, H = g.num_directions, g.hidden_size
                a = y.reshape(y.shape[0], y.shape[1], D, H)  # (B, T, D, H)
                if layout == "tdbh":
                    a = a.transpose(1, 2, 0, 3)
            else:
                a = y
                if layout == "tbf":
                    a = np.swapaxes(a, 0, 1)
            out.append(np.ascontiguousarray(a))
        return out


def _load_proto(source) -> tuple[onnx.ModelProto, str]:
    """``source`` (path, bytes or ModelProto) -> (ModelProto, label for messages)."""
    if isinstance(source, onnx.ModelProto):
        return source, "<ModelProto>"
    if isinstance(source, (bytes, bytearray, memoryview)):
        label = "<bytes>"
        data = bytes(source)
        base = None
    elif isinstance(source, (str, os.PathLike)):
        label = os.fspath(source)
        if not os.path.isfile(label):
            raise ModelFileError(f"model file {label!r} must exist, got no such file")
        with open(label, "rb") as fh:
            data = fh.read()
        base = os.path.dirname(os.path.abspath(label))
    else:
        raise TypeError(f"source must be a path, bytes or onnx.ModelProto, got {type(source).__name__}")
    if not data:
        raise ModelFileError(f"{label} must be an ONNX model, got an empty file")
    try:
        proto = onnx.load_model_from_string(data, load_external_data=False)
    except Exception as e:  # protobuf DecodeError and friends
        raise ModelFileError(f"{label} must be an ONNX model file, got undecodable data ({type(e).__name__}: {e})") from None
    if not proto.HasField("graph") or (not proto.graph.node and not proto.graph.output):
        raise ModelFileError(f"{label} must be an ONNX model with a graph, got none (truncated or not an ONNX file?)")
    if base is not None and _uses_external_data(proto):
        try:
            from onnx.external_data_helper import load_external_data_for_model

            _check_external_sizes(proto, base, label)
            load_external_data_for_model(proto, base)
        except GRUEngineError:
            raise
        except Exception as e:
            raise ModelFileError(f"{label}: external data must be readable next to the file, got {type(e).__name__}: {e}") from None
    elif _uses_external_data(proto):
        raise ModelFileError(f"{label} stores tensors in external data files: load it from its path, not from bytes")
    return proto, label


def _uses_external_data(proto) -> bool:
    from onnx.external_data_helper import uses_external_data

    return any(uses_external_data(t) for t in proto.graph.initializer)


def _check_external_sizes(proto, base, label):
    for t in proto.graph.initializer:
        info = {e.key: e.value for e in t.external_data}
        if not info:
            continue
        loc = os.path.join(base, info.get("location", ""))
        n = _num_elements(t, label)
        itemsize = _ITEMSIZE.get(t.data_type, 8)
        length = int(info.get("length", n * itemsize))
        if not os.path.isfile(loc):
            raise ModelFileError(f"{label}: initializer {t.name!r} must be stored in {loc!r}, got no such file")
        size = os.path.getsize(loc)
        if int(info.get("offset", 0)) + length > size or length < n * itemsize:
            raise ModelFileError(
                f"{label}: initializer {t.name!r} must have {n * itemsize} bytes in {loc!r}, "
                f"got a file of {size} bytes (truncated?)")


_ITEMSIZE = {TensorProto.FLOAT: 4, TensorProto.DOUBLE: 8, TensorProto.INT64: 8, TensorProto.INT32: 4,
             TensorProto.FLOAT16: 2, TensorProto.BFLOAT16: 2, TensorProto.INT8: 1, TensorProto.UINT8: 1,
             TensorProto.BOOL: 1, TensorProto.INT16: 2, TensorProto.UINT16: 2, TensorProto.UINT32: 4,
             TensorProto.UINT64: 8}


def _num_elements(t, label) -> int:
    n = 1
    for d in t.dims:
        if d < 0:
            raise ModelFileError(f"{label}: tensor {t.name!r} must have non-negative dims, got {list(t.dims)}")
        n *= int(d)
        if n > config.MAX_TENSOR_ELEMENTS:
            raise ModelFileError(
                f"{label}: tensor {t.name!r} must have at most {config.MAX_TENSOR_ELEMENTS} elements "
                f"(config.MAX_TENSOR_ELEMENTS), got dims {list(t.dims)}")
    return n


def tensor_to_array(t, label: str = "model") -> np.ndarray:
    """A TensorProto as a numpy array, after checking its declared size against its data."""
    n = _num_elements(t, label)
    if t.data_type == TensorProto.STRING:
        raise UnsupportedError(f"{label}: tensor {t.name!r} must be numeric, got a string tensor")
    if t.data_type not in _ITEMSIZE:
        raise UnsupportedError(f"{label}: tensor {t.name!r} has unsupported data type "
                               f"{TensorProto.DataType.Name(t.data_type)}")
    if t.HasField("raw_data"):
        need = n * _ITEMSIZE[t.data_type]
        if len(t.raw_data) != need:
            raise ModelFileError(
                f"{label}: tensor {t.name!r} must hold {need} bytes for dims {list(t.dims)}, got {len(t.raw_data)}")
    elif t.data_location == TensorProto.EXTERNAL:
        raise ModelFileError(f"{label}: tensor {t.name!r} is stored externally and was not loaded")
    else:
        have = max(len(t.float_data), len(t.double_data), len(t.int32_data), len(t.int64_data), len(t.uint64_data))
        if have != n and not (n == 0 and have == 0):
            raise ModelFileError(f"{label}: tensor {t.name!r} must hold {n} values for dims {list(t.dims)}, got {have}")
    try:
        return numpy_helper.to_array(t)
    except Exception as e:
        raise ModelFileError(f"{label}: tensor {t.name!r} could not be decoded: {e}") from None


def from_onnx(source, *, return_signature: bool = False, dtype=None):
    """Read an ONNX model (path, bytes or ``onnx.ModelProto``) as a :class:`gru_engine.Model`.

    With ``return_signature=True`` return ``(model, signature)``: the :class:`Signature`
    mapping the graph's inputs and outputs onto ``Model.run``.
    """
    proto, label = _load_proto(source)
    props = {p.key: p.value for p in proto.metadata_props}
    if proto.producer_name == PRODUCER and LAYERS_KEY in props:
        model, sig = _from_own(proto, props, label)
    else:
        from ._onnx_graph import interpret

        model, sig = interpret(proto, label)
    if dtype is not None:
        model = model.astype(dtype)
    return (model, sig) if return_signature else model


def _from_own(proto, props, label):
    try:
        metas = json.loads(props[LAYERS_KEY])
        mmeta = json.loads(props.get(MODEL_KEY, "{}"))
    except ValueError as e:
        raise ModelFileError(f"{label}: metadata {LAYERS_KEY!r} must be JSON, got {e}") from None
    inits = {t.name: t for t in proto.graph.initializer}
    kinds = {"GRU": GRU, "Dense": Dense, "Embedding": Embedding, "Masking": Masking, "Activation": Activation}
    layers = []
    try:
        for i, m in enumerate(metas):
            cls = kinds.get(m.get("kind"))
            if cls is None:
                raise UnsupportedError(f"{label}: layer {i} kind {m.get('kind')!r} is not supported; supported: {list(kinds)}")
            kw = {k: v for k, v in m.items() if k not in ("kind", "arrays")}
            for fname, init in m.get("arrays", {}).items():
                if init not in inits:
                    raise ModelFileError(f"{label}: initializer {init!r} (layer {i} {fname}) must exist, got none")
                kw[fname] = tensor_to_array(inits[init], label)
            for k, v in list(kw.items()):
                if isinstance(v, list):
                    kw[k] = tuple(v)
            if cls is GRU:
                _check_gru_sizes(kw, f"{label}: layer {i}")
            layers.append(cls(**kw))
        model = Model(tuple(layers), mmeta.get("input_size"), mmeta.get("name", ""))
    except GRUEngineError:
        raise
    except (TypeError, ValueError, KeyError) as e:
        raise ModelFileError(f"{label}: engine metadata must describe valid layers, got {type(e).__name__}: {e}") from None
    names = [i.name for i in proto.graph.input if i.name not in inits]
    sig = Signature(x="x", x_layout="btf", inputs=names,
                    lengths="lengths" if "lengths" in names else None,
                    initial_state="initial_state" if "initial_state" in names else None)
    for o in proto.graph.output:
        if o.name == "y":
            sig.outputs.append(("y", "y", "btf"))
        elif o.name.startswith("h_n"):
            sig.outputs.append((o.name, "h_n", "dbh"))
    sig.x_dtype = "int64" if model.takes_tokens else str(model.dtype)
    return model, sig


def _check_gru_sizes(kw, where):
    for n in ("W", "R"):
        a = kw.get(n)
        if a is not None and any(d > max(config.MAX_DIM * 3, config.MAX_DIM) for d in a.shape[1:]):
            raise ModelFileError(f"{where}: {n} must have dims at most {config.MAX_DIM} per gate, got {a.shape}")

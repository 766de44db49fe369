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
from gru_engine.errors import GRUEngineError, InputShapeError, ModelDefinitionError, ModelFileError, UnsupportedError
from gru_engine.model import (
    DIRECTIONS,
    GRU,
    Activation,
    Dense,
    Embedding,
    Layer,
    Masking,
    Model,
    Output,
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
        self.inits.append(numpy_helper.from_array(np.array(arr, order="C"), name))  # keeps 0-d scalars 0-d
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
    b._names.update({"y", "h_n"} | {f"h_n_{i}" for i in range(len(model.layers))}  # graph output names
                    | {f"output_{i}" for i in range(len(model.outputs))})
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
            done = _extra_layers_export(b, model, li, pre, cur)
            if done is None:
                raise UnsupportedError(
                    f"layer {li} ({layer.describe()}) has no ONNX export; supported: GRU, Dense, Activation, "
                    f"Embedding, Masking{_extra_kinds_text()}"
                )
            cur, arrays = done
            metas.append(_layer_meta(layer, arrays))

    out_size = model.output_size
    b.nodes.append(helper.make_node("Identity", [cur], ["y"], name=b.fresh("y")))
    outputs.append(helper.make_tensor_value_info(
        "y", elem, ["batch", "time", out_size] if model.output_is_sequence else ["batch", out_size]))
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

    # A model with several outputs (Keras return_state / merge_mode=None): each one as well, so
    # onnxruntime returns what the source framework returns.
    for i, o in enumerate(model.outputs):
        nm = f"output_{i}"
        if o.kind == "y":
            stop = out_size if o.stop is None else o.stop
            src = b.op("Slice", [cur, b.i64([o.start]), b.i64([stop]), b.i64([-1])], name=f"{nm}/slice")
            shape = ["batch", "time", stop - o.start] if model.output_is_sequence else ["batch", stop - o.start]
        else:
            d = o.direction
            hd = b.op("Slice", [final_states[o.gru], b.i64([d]), b.i64([d + 1]), b.i64([0])], name=f"{nm}/slice")
            src = b.op("Squeeze", [hd, b.i64([0])], name=f"{nm}/squeeze")
            shape = ["batch", grus[o.gru].hidden_size]
        b.nodes.append(helper.make_node("Identity", [src], [nm], name=b.fresh(nm)))
        outputs.append(helper.make_tensor_value_info(nm, elem, shape))

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
        MODEL_KEY: json.dumps({"input_size": model.input_size, "name": model.name,
                               "outputs": [dataclasses.asdict(o) for o in model.outputs]}),
        LAYERS_KEY: json.dumps(metas, default=_json_default),
    })
    if check:
        onnx.checker.check_model(proto)
    if path is not None:
        onnx.save_model(proto, os.fspath(path))
    return proto


def _extra_layers():
    """converters.onnx_layers (Conv1D, normalization, pooling, ...), or None when unavailable."""
    try:
        from . import onnx_layers
    except ImportError:  # pragma: no cover - the layers module is optional to this one
        return None
    return onnx_layers


def _extra_layers_export(b, model, index, pre, cur):
    mod = _extra_layers()
    return None if mod is None else mod.export_layer(b, model, index, pre, cur)


def _extra_kinds_text() -> str:
    mod = _extra_layers()
    return "" if mod is None else ", " + ", ".join(mod.LAYER_KINDS)


def _json_default(v):
    """numpy scalars and small arrays in layer fields (other layer kinds) as JSON values."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray) and v.size <= 64:
        return v.tolist()
    raise TypeError(f"layer field of type {type(v).__name__} cannot be written to the engine's metadata")


def _engine_version() -> str:
    import gru_engine

    return gru_engine.__version__


def _export_gru(b: _Builder, layer: GRU, pre: str, cur: str, kmask, lengths, h0, get_batch_dim):
    """Emit one GRU layer. Returns (output name, final state name (D, B, H), arrays meta)."""
    D, H = layer.num_directions, layer.hidden_size
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
    return out, Y_h, {"W": Wn, "R": Rn, "B": Bn}


# =========================================================================== import


@dataclass
class Signature:
    """How a graph's inputs and outputs map onto ``Model.run``.

    x, lengths, initial_state : graph input names (None when absent).
    x_layout : "btf" (batch-first) or "tbf" (time-major) for the graph's ``x``.
    state_layout : "dbh" (``[L*D, B, H]``) or "bdh" (layout=1 ``[B, D, H]``).
    outputs : ``(graph output name, kind, layout)``: kind "y" (per-step or last-step model
        output), "Y" (a bare GRU node's 4-D Y), "h_n", or ``("output", i)`` (entry ``i`` of
        ``Model.outputs``, as ``Model.select_outputs`` gives it); layout names the graph's axes
        order, e.g. "btf", "tdbh", "btdh", "dbh", "bdh" ("1": a unit axis).
    default_lengths, default_state : ``lengths`` / ``initial_state`` (one ``(D, B, H)``
        array per GRU layer) that the graph fixes in initializers; ``to_model_args`` passes
        them, since a :class:`Model` holds no inputs.
    """

    x: str | None = None
    x_layout: str = "btf"
    x_dtype: str = "float32"
    lengths: str | None = None
    initial_state: str | None = None
    state_layout: str = "dbh"
    outputs: list = field(default_factory=list)  # [(name, kind, layout)]
    inputs: list = field(default_factory=list)  # graph inputs in order (not initializers)
    default_lengths: np.ndarray | None = None
    default_state: list | None = None
    output_elem_types: dict = field(default_factory=dict)  # graph output name -> TensorProto elem type
    # graph input name -> declared dims (int, or None for a symbolic / absent dim), or None when
    # the input's type has no shape (rank unknown); inputs not listed are not checked
    input_shapes: dict = field(default_factory=dict)
    x_features: int | None = None  # the model's input size (float x): checked on x's last axis

    def check_inputs(self, feeds: dict) -> None:
        """Each fed graph input against its declared rank and last (feature / hidden) size, and
        ``x`` against the rank the engine runs (3; 2 for token ids) when the graph leaves it
        open (the last size: features or hidden units, for inputs of rank 3 and more): InputShapeError naming the input, before anything runs. Declared batch and time
        sizes are not enforced: exporters fix them to the example's (torch's dynamo exporter,
        exports without dynamic axes) while the graph's computation holds for any size."""
        for name, a in feeds.items():
            if a is None:
                continue
            shape = tuple(np.shape(a))
            want = self.input_shapes.get(name)
            if name == self.x and want is None:
                want = (None,) * (2 if self.x_dtype.startswith("int") else 3)
            if name == self.x and len(want) == 3 and self.x_features is not None:
                want = want[:2] + (self.x_features,)
            if want is None:
                continue
            # rank >= 3: the last axis is features / hidden units (rank 1-2: batch / time)
            want = tuple(None if i < len(want) - 1 or len(want) < 3 else w for i, w in enumerate(want))
            if len(shape) != len(want) or (want and want[-1] is not None and shape[-1] != want[-1]):
                spec = "(" + ", ".join("?" if w is None else str(w) for w in want) + ("," if len(want) == 1 else "") + ")"
                raise InputShapeError(f"graph input {name!r} must have shape {spec} (? = any size), got {shape}")

    def to_model_args(self, feeds: dict) -> dict:
        """Turn the graph's named inputs into ``Model.run`` keyword arguments (shapes checked)."""
        self.check_inputs(feeds)
        x = np.asarray(feeds[self.x])
        if self.x_layout == "tbf":
            x = np.swapaxes(x, 0, 1)
        kw = {"x": x}
        if self.default_lengths is not None:
            kw["lengths"] = self.default_lengths
        if self.default_state is not None:
            kw["initial_state"] = self.default_state
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
        selected = model.select_outputs(y, h_n) if model.outputs else []  # views, taken once
        for name, kind, layout in self.outputs:
            if isinstance(kind, tuple):  # ("output", i): one of Model.outputs
                out.append(np.ascontiguousarray(selected[kind[1]]))
                continue
            if kind == "h_n":
                a, src = h_n, "dbh"
            elif kind == "Y":
                g = model.gru_layers[-1]
                a, src = y.reshape(y.shape[0], y.shape[1], g.num_directions, g.hidden_size), "btdh"
            else:
                a, src = y, ("btf" if y.ndim == 3 else "bf")
            out.append(np.ascontiguousarray(_to_layout(a, src, layout)))
        return out


def _to_layout(a: np.ndarray, src: str, dst: str) -> np.ndarray:
    """Permute axes labelled ``src`` into the order ``dst``; a "1" in ``dst`` inserts a unit axis."""
    core = dst.replace("1", "")
    a = a.transpose([src.index(c) for c in core])
    for i, c in enumerate(dst):
        if c == "1":
            a = np.expand_dims(a, i)
    return a


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
        proto = onnx.ModelProto()
        proto.ParseFromString(data)
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
        rel = info.get("location", "")
        loc = os.path.join(base, rel)
        real_base = os.path.realpath(base)
        if os.path.isabs(rel) or not os.path.realpath(loc).startswith(real_base + os.sep):
            # checked before any stat: a hostile file must not probe (or read) paths outside its folder
            raise ModelFileError(f"{label}: initializer {t.name!r} external data location {rel!r} must be a "
                                 f"file inside the model's folder {base!r} (no absolute paths, '..' or links out)")
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
    mapping the graph's inputs and outputs onto ``Model.run``. ``dtype`` (float32 / float64)
    converts the loaded model.

    Files written by :func:`to_onnx` are rebuilt from the engine's metadata (exactly, every
    layer field); other graphs, and the engine's graphs whose metadata a tool dropped, go
    through the graph interpreter (which also recognises the Keras-mask glue ``to_onnx`` writes).
    Errors: :class:`UnsupportedError` naming the node and op (and what is supported),
    :class:`ModelFileError` for truncated / corrupt / inconsistent files and absurd sizes.
    """
    proto, label = _load_proto(source)
    props = {p.key: p.value for p in proto.metadata_props}
    if proto.producer_name == PRODUCER and LAYERS_KEY in props:
        model, sig = _from_own(proto, props, label)
    else:
        interp = _Interp(proto, label)
        try:
            model, sig = interp.run()
        except GRUEngineError:
            raise
        except (ValueError, TypeError, IndexError, KeyError, AttributeError, ArithmeticError, RecursionError) as e:
            # a graph the interpreter could not make sense of: report it as a bad file, never crash
            where = interp.where(interp.cur_node) if interp.cur_node is not None else label
            raise ModelFileError(f"{where}: the graph must be consistent, got {type(e).__name__}: {e}") from None
    sig.output_elem_types = {o.name: o.type.tensor_type.elem_type for o in proto.graph.output}
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
    extra = _extra_layers()
    if extra is not None:
        kinds.update(extra.LAYER_KINDS)
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
        outs = mmeta.get("outputs") or []
        if not isinstance(outs, list) or not all(isinstance(o, dict) for o in outs):
            raise ModelFileError(f"{label}: metadata outputs must be a list of objects, got {outs!r}")
        model = Model(tuple(layers), mmeta.get("input_size"), mmeta.get("name", ""),
                      outputs=tuple(Output(**o) for o in outs))
    except ModelDefinitionError as e:
        raise ModelFileError(f"{label}: {e}") from None
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
        elif o.name.startswith("output_") and o.name[7:].isdigit() and int(o.name[7:]) < len(model.outputs):
            sig.outputs.append((o.name, ("output", int(o.name[7:])), ""))
    sig.x_dtype = "int64" if model.takes_tokens else str(model.dtype)
    return model, sig


def _check_gru_sizes(kw, where):
    for n in ("W", "R"):
        a = kw.get(n)
        if a is not None and any(d > max(config.MAX_DIM * 3, config.MAX_DIM) for d in a.shape[1:]):
            raise ModelFileError(f"{where}: {n} must have dims at most {config.MAX_DIM} per gate, got {a.shape}")


# =========================================================================== graph interpreter
#
# Abstract values:
#   numpy array             a folded constant
#   _Shp                    a 0-/1-D int tensor derived from shapes; elements int or _Sym
#   _Filled                 a tensor filled with one value (ConstantOfShape / Expand), shape symbolic
#   _Seq                    the data flowing through the model: labelled axes, the chain of layers
#   _Expr                   element-wise arithmetic over one _Seq (activations written out by hand)
#   _StateIn                rows [start, stop) of a graph input used as GRU initial_h
#   _LenIn                  a graph input used as GRU sequence_lens
#   _HN                     Y_h of several GRU layers concatenated on axis 0 (PyTorch h_n)


@dataclass(frozen=True)
class _Sym:
    """A symbolic dimension: ``coef * prod(factors)`` (factors: axis labels such as "T", "B", "x0")."""

    coef: int
    factors: tuple

    def __mul__(self, other):
        if isinstance(other, _Sym):
            return _sym(self.coef * other.coef, self.factors + other.factors)
        return _sym(self.coef * int(other), self.factors)

    __rmul__ = __mul__

    def __repr__(self):
        return "*".join(([str(self.coef)] if self.coef != 1 else []) + list(self.factors))


def _sym(coef, factors):
    if not factors or coef == 0:
        return int(coef)
    return _Sym(int(coef), tuple(sorted(factors)))


@dataclass
class _Shp:
    elems: tuple  # int or _Sym
    scalar: bool = False


@dataclass
class _Filled:
    shape: tuple  # int or _Sym; None when unknown
    value: float
    dtype: np.dtype


@dataclass
class _Seq:
    axes: tuple  # labels: "x0", "x1" (graph input dims, bound later), "T", "B", "F", "D", "H", "1"
    chain: tuple  # layers / ("gru", index, return_sequences, merge, time_reversed_output)
    sizes: dict  # label -> int for "F", "D", "H"
    tokens: bool = False
    gru: int | None = None  # for Y (has "D") / Y_h (no "T"): the GRU's index
    dsel: tuple | None = None  # Y_h directions selected and concatenated on "H"; Y: the direction sliced
    tflip: bool = False  # a Y direction with its time axis reversed (Keras go_backwards)


@dataclass
class _Expr:
    base: _Seq
    tree: tuple


@dataclass
class _StateIn:
    name: str
    start: int
    stop: int | None  # None: to the end
    layout: str = "dbh"


@dataclass
class _LenIn:
    name: str


@dataclass
class _HN:
    grus: tuple  # GRU indices in order


# Keras masks as to_onnx writes them (prefix masks -> per-row lengths):
@dataclass
class _Cmp:  # Equal(data or token ids, scalar)
    seq: _Seq
    value: float


@dataclass
class _NE:  # Not(Equal(x, value)) element-wise on float data
    seq: _Seq
    value: float


@dataclass
class _Keep:  # ReduceMax over features of _NE: 1 where a step is kept (Keras Masking)
    seq: _Seq
    value: float


@dataclass
class _KMask:  # a (B, T) Keras mask; kinds: ("emb",) / ("masking", value)
    kinds: tuple


@dataclass
class _MLen:  # per-row count of unmasked steps (min with a lengths input)
    kinds: tuple
    lengths: str | None = None


@dataclass
class _NonEmpty:  # _MLen > 0
    mlen: _MLen


@dataclass
class _Steps:  # Range(0, T, 1)
    pass


@dataclass
class _Valid:  # step index < _MLen: the unmasked steps of a prefix mask
    mlen: _MLen


@dataclass
class _Opaque:
    """A value the interpreter could not map, derived from GRU states (the fill of masked
    steps); it is an error only if something other than a masked-step Where consumes it."""

    error: Exception


_INT_MAX = 2**62

# Ops the interpreter understands (for the "supported" list of errors).
_GLUE_OPS = (
    "Constant", "Identity", "Dropout", "Cast", "CastLike", "Shape", "Size", "Gather", "Squeeze", "Unsqueeze",
    "Concat", "Slice", "Reshape", "Flatten", "Transpose", "ConstantOfShape", "Expand", "Mul", "Add", "Sub",
    "Div", "Neg", "Range", "Equal", "Where", "Not", "Less", "Greater", "Max", "Min", "Abs", "ReduceProd",
    "ReduceSum",
)
_LAYER_OPS = ("GRU", "MatMul", "Gemm", "Softmax")
_UNARY = {
    "Sigmoid": "sigmoid", "Tanh": "tanh", "Relu": "relu", "Softplus": "softplus", "Softsign": "softsign",
    "Exp": "exp", "Erf": "erf", "Neg": "neg", "Abs": "abs", "Sqrt": "sqrt", "Log": "log",
    "Reciprocal": "recip", "Elu": "elu", "LeakyRelu": "leaky", "HardSigmoid": "hsig", "Selu": "selu",
    "Gelu": "gelu", "HardSwish": "hswish", "Identity": None,
}
_BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Pow": "pow"}


def _supported_ops() -> str:
    """Ops the interpreter maps when their input is the model's data (others fold on constants)."""
    extra = _extra_layers()
    more = set(extra.IMPORT_OPS) if extra is not None else set()
    handled = {n[3:] for n in dir(_Interp) if n.startswith("op_")}
    return ", ".join(sorted(handled | set(_LAYER_OPS) | set(_UNARY) | set(_BINARY) | more | {"Constant"}))


def _eval_tree(tree, x):
    op = tree[0]
    if op == "x":
        return x
    if op == "c":
        return np.full_like(x, tree[1])
    a = [_eval_tree(t, x) for t in tree[1:] if isinstance(t, tuple)]
    p = [t for t in tree[1:] if not isinstance(t, tuple)]
    with np.errstate(all="ignore"):
        if op == "add":
            return a[0] + a[1]
        if op == "sub":
            return a[0] - a[1]
        if op == "mul":
            return a[0] * a[1]
        if op == "div":
            return a[0] / a[1]
        if op == "pow":
            return np.power(a[0], a[1])
        v = a[0]
        if op == "sigmoid":
            return 1 / (1 + np.exp(-v))
        if op == "tanh":
            return np.tanh(v)
        if op == "relu":
            return np.maximum(v, 0)
        if op == "softplus":
            return np.logaddexp(0, v)
        if op == "softsign":
            return v / (1 + np.abs(v))
        if op == "exp":
            return np.exp(v)
        if op == "erf":
            from scipy.special import erf

            return erf(v)
        if op == "neg":
            return -v
        if op == "abs":
            return np.abs(v)
        if op == "sqrt":
            return np.sqrt(v)
        if op == "log":
            return np.log(v)
        if op == "recip":
            return 1 / v
        if op == "elu":
            return np.where(v > 0, v, p[0] * (np.exp(np.minimum(v, 0)) - 1))
        if op == "leaky":
            return np.where(v >= 0, v, p[0] * v)
        if op == "hsig":
            return np.clip(p[0] * v + p[1], 0, 1)
        if op == "selu":
            return p[1] * np.where(v > 0, v, p[0] * (np.exp(np.minimum(v, 0)) - 1))
        if op == "gelu":
            from scipy.special import erf

            if p[0] == "tanh":
                return 0.5 * v * (1 + np.tanh(0.7978845608028654 * (v + 0.044715 * v**3)))
            return 0.5 * v * (1 + erf(v / np.sqrt(2)))
        if op == "hswish":
            return v * np.clip(v / 6 + 0.5, 0, 1)
    raise AssertionError(op)  # pragma: no cover


_PROBE = np.concatenate([np.linspace(-8, 8, 641), [-1.0, -0.3, 0.0, 0.3, 1.0]])


def _dense_act_ref(act: str, alpha: float, v):
    """float64 reference of the engine's Dense activations (as kernels_cpu.dense_act_inplace)."""
    from scipy.special import erf

    with np.errstate(all="ignore"):
        return {
            "linear": lambda: v,
            "sigmoid": lambda: 1 / (1 + np.exp(-v)),
            "tanh": lambda: np.tanh(v),
            "relu": lambda: np.maximum(v, 0),
            "hard_sigmoid": lambda: np.clip(v / 6 + 0.5, 0, 1),
            "elu": lambda: np.where(v > 0, v, (alpha or 1.0) * (np.exp(np.minimum(v, 0)) - 1)),
            "selu": lambda: 1.0507009873554805 * np.where(v > 0, v, 1.6732632423543772 * (np.exp(np.minimum(v, 0)) - 1)),
            "gelu": lambda: 0.5 * v * (1 + erf(v / np.sqrt(2))),
            "swish": lambda: v / (1 + np.exp(-v)),
            "softplus": lambda: np.logaddexp(0, v),
            "softsign": lambda: v / (1 + np.abs(v)),
            "leaky_relu": lambda: np.where(v >= 0, v, alpha * v),
            "gelu_tanh": lambda: 0.5 * v * (1 + np.tanh(0.7978845608028654 * (v + 0.044715 * v**3))),
            "exp": lambda: np.exp(v),
        }[act]()


def _identify_activation(tree):
    """The engine activation ``(name, alpha)`` that the element-wise ``tree`` computes, or
    ("affine", (a, b)), or None. Found numerically on probe points (float64)."""
    f = _eval_tree(tree, _PROBE.copy())
    if not np.all(np.isfinite(f)):
        fin = np.isfinite(f)
        if not fin.any():
            return None
    else:
        fin = np.ones_like(f, bool)

    def close(g):
        g = np.asarray(g)
        ok = np.isfinite(g) == np.isfinite(f)
        if not ok.all():
            return False
        return bool(np.all(np.abs(f[fin] - g[fin]) <= 1e-6 * (1 + np.abs(g[fin]))))

    i_m1 = 641  # index of -1.0
    for act in ("linear", "sigmoid", "tanh", "relu", "hard_sigmoid", "selu", "gelu", "gelu_tanh", "swish",
                "softplus", "softsign", "exp"):
        if close(_dense_act_ref(act, 0.0, _PROBE)):
            return act, 0.0
    a_leaky = -float(f[i_m1])
    if np.isfinite(a_leaky) and close(_dense_act_ref("leaky_relu", a_leaky, _PROBE)):
        return "leaky_relu", a_leaky
    a_elu = float(f[i_m1]) / (np.exp(-1.0) - 1)
    if np.isfinite(a_elu) and a_elu != 0 and close(_dense_act_ref("elu", a_elu, _PROBE)):
        return "elu", a_elu
    b0 = float(_eval_tree(tree, np.zeros(1))[0])
    a1 = float(_eval_tree(tree, np.ones(1))[0]) - b0
    if np.isfinite(a1) and np.isfinite(b0) and close(a1 * _PROBE + b0):
        return "affine", (a1, b0)
    return None


class _Interp:
    def __init__(self, proto: onnx.ModelProto, label: str):
        self.proto = proto
        self.g = proto.graph
        self.label = label
        self.opset = 1
        for o in proto.opset_import:
            if o.domain in ("", "ai.onnx"):
                self.opset = o.version
        self.env: dict = {}
        self.bind: dict = {}  # "x0"/"x1" -> "T"/"B"
        self.grus: list = []  # dicts: layer, chain_before, state, lengths, node
        self.x_name = None
        self.x_seq = None
        self.cur_node = None
        self.has_mask_glue = any(n.op_type == "Where" for n in proto.graph.node)

    # ----------------------------------------------------------------- helpers
    def where(self, node) -> str:
        if node is None:
            return f"{self.label}: graph output"
        return f"{self.label}: node {node.name or '(unnamed)'!r} ({node.op_type})"

    def unsupported(self, node, what: str):
        raise UnsupportedError(f"{self.where(node)}: {what}")

    def norm_label(self, lab):
        return self.bind.get(lab, lab)

    def norm_dim(self, d):
        if isinstance(d, _Sym):
            return _sym(d.coef, tuple(self.norm_label(f) for f in d.factors))
        return int(d)

    def dim_eq(self, a, b) -> bool:
        return self.norm_dim(a) == self.norm_dim(b)

    def axis_size(self, v: _Seq, lab):
        if lab in v.sizes:
            return v.sizes[lab]
        if lab == "1":
            return 1
        static = self.static.get(self.norm_label(lab))
        if static is not None:
            return static
        return _sym(1, (lab,))

    def const(self, name, node=None, what="input"):
        v = self.env.get(name)
        if isinstance(v, _Shp) and all(isinstance(e, int) for e in v.elems):
            v = np.array(v.elems[0] if v.scalar else list(v.elems), np.int64)
        if not isinstance(v, np.ndarray):
            if node is not None:
                self.unsupported(node, f"{what} {name!r} must be a constant, got a value computed from the model input")
            return None
        return v

    def attrs(self, node) -> dict:
        return {a.name: helper.get_attribute_value(a) for a in node.attribute}

    def check_size(self, node, shape):
        n = 1
        for d in shape:
            if isinstance(d, _Sym):
                continue
            if int(d) < 0:
                raise ModelFileError(f"{self.where(node)}: shape must be non-negative, got {list(shape)}")
            n *= int(d)
            if n > config.MAX_TENSOR_ELEMENTS:
                raise ModelFileError(
                    f"{self.where(node)}: tensor must have at most {config.MAX_TENSOR_ELEMENTS} elements "
                    f"(config.MAX_TENSOR_ELEMENTS), got shape {list(shape)}")

    # ----------------------------------------------------------------- entry
    def run(self):
        g = self.g
        inits = {}
        for t in g.initializer:
            inits[t.name] = t
        for t in g.sparse_initializer:
            raise UnsupportedError(f"{self.label}: sparse initializer {t.values.name!r} is not supported")
        for name, t in inits.items():
            self.env[name] = tensor_to_array(t, self.label)
        self.static = {}
        self.input_shapes = {}
        self.graph_inputs = [i for i in g.input if i.name not in inits]
        roles = self.input_roles()
        for inp in self.graph_inputs:
            role = roles.get(inp.name, "x")
            tt = inp.type.tensor_type
            # no shape field: the rank is unknown (ONNX allows it); symbolic or absent dims are
            # unknown sizes. Both are taken from the data and checked at run time (Signature).
            dims = ([d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim]
                    if tt.HasField("shape") else None)
            self.input_shapes[inp.name] = None if dims is None else tuple(dims)
            if role == "state":
                self.env[inp.name] = _StateIn(inp.name, 0, None)
            elif role == "lengths":
                self.env[inp.name] = _LenIn(inp.name)
            else:
                if self.x_name is not None:
                    raise UnsupportedError(
                        f"{self.label}: the graph must have one data input, got {self.x_name!r} and {inp.name!r} "
                        f"(besides initial_h / sequence_lens inputs)")
                self.x_name = inp.name
                elem = tt.elem_type
                if dims is None:  # rank not declared: the one rank the engine runs, checked at run time
                    dims = [None, None] if elem in (TensorProto.INT64, TensorProto.INT32) else [None, None, None]
                if elem in (TensorProto.INT64, TensorProto.INT32):
                    if len(dims) != 2:
                        raise UnsupportedError(f"{self.label}: token input {inp.name!r} must have rank 2, got {len(dims)}")
                    v = _Seq(("x0", "x1"), (), {}, tokens=True)
                elif elem in (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16):
                    if len(dims) != 3:
                        raise UnsupportedError(
                            f"{self.label}: input {inp.name!r} must have rank 3 (batch, time, features), got "
                            f"shape {[d if d is not None else '?' for d in dims]}")
                    # a symbolic feature size is fixed by the first layer's weights (the dict is shared
                    # by the values derived from the input until a layer changes the features)
                    v = _Seq(("x0", "x1", "F"), (), {"F": None if dims[2] is None else int(dims[2])})
                    if dims[2] is not None and dims[2] > config.MAX_DIM:
                        raise ModelFileError(f"{self.label}: input {inp.name!r} feature size must be at most "
                                             f"{config.MAX_DIM}, got {dims[2]}")
                else:
                    raise UnsupportedError(f"{self.label}: input {inp.name!r} has unsupported element type "
                                           f"{TensorProto.DataType.Name(elem)}")
                for i, lab in enumerate(("x0", "x1")):
                    if dims[i] is not None and dims[i] > 0:
                        self.static[lab] = int(dims[i])
                self.x_seq = v
                self.x_dtype = {TensorProto.INT64: "int64", TensorProto.INT32: "int32",
                                TensorProto.DOUBLE: "float64"}.get(elem, "float32")
                self.env[inp.name] = v
        if self.x_name is None:
            raise UnsupportedError(f"{self.label}: the graph must have a data input, got none")
        for node in g.node:
            self.eval_node(node)
        return self.finish()

    def input_roles(self) -> dict:
        """Graph inputs that feed GRU initial_h (through slicing glue) or sequence_lens."""
        producer = {o: n for n in self.g.node for o in n.output}
        names = {i.name for i in self.graph_inputs}
        roles = {}
        passthrough = {"Identity", "Cast", "Slice", "Gather", "Squeeze", "Unsqueeze", "Transpose", "Reshape", "Split"}

        def trace(name):
            seen = 0
            while name not in names and seen < 64:
                n = producer.get(name)
                if n is None or n.op_type not in passthrough or not n.input:
                    return None
                name = n.input[0]
                seen += 1
            return name if name in names else None

        def lengths_sources(name):
            """Graph inputs that reach sequence_lens through casts and Min (mask lengths)."""
            out, todo, seen = [], [name], set()
            while todo:
                nm = todo.pop()
                if nm in seen:
                    continue
                seen.add(nm)
                if nm in names:
                    out.append(nm)
                    continue
                n = producer.get(nm)
                if n is not None and n.op_type in ("Identity", "Cast", "Min", "Squeeze", "Unsqueeze", "Reshape"):
                    todo.extend(i for i in (n.input if n.op_type == "Min" else n.input[:1]) if i)
            return out

        for n in self.g.node:
            if n.op_type != "GRU":
                continue
            if len(n.input) > 4 and n.input[4]:
                for src in lengths_sources(n.input[4]):
                    roles[src] = "lengths"
            if len(n.input) > 5 and n.input[5]:
                src = trace(n.input[5])
                if src:
                    roles[src] = "state"
        return roles

    # ----------------------------------------------------------------- node dispatch
    def eval_node(self, node):
        self.cur_node = node
        if node.domain not in ("", "ai.onnx"):
            self.unsupported(node, f"domain {node.domain!r} is not supported; supported: the default ONNX domain, ops "
                                   f"{_supported_ops()}")
        ins = []
        for n in node.input:
            if not n:
                ins.append(None)
            elif n not in self.env:
                raise ModelFileError(f"{self.where(node)}: input {n!r} must be a graph input, an initializer or the "
                                     f"output of an earlier node, got none (missing initializer?)")
            else:
                ins.append(self.env[n])
        op = node.op_type
        if op == "Constant":
            outs = [self.constant_node(node)]
        elif self.all_const(ins) and op in _FOLDABLE:
            outs = self.fold(node, ins)
        else:
            fn = getattr(self, f"op_{op}", None)
            if fn is None and op in _UNARY:
                fn = self.op_unary
            if fn is None and op in _BINARY:
                fn = self.op_binary
            if fn is None:
                extra = _extra_layers()
                fn = None if extra is None else extra.interp_handler(self, op)
            if fn is None and op in _FOLDABLE:
                self.unsupported(node, f"op {op!r} is supported only on constants, not on values computed from the "
                                       f"graph inputs; ops supported on the data: {_supported_ops()}")
            if fn is None:
                self.unsupported(node, f"op {op!r} is not supported; supported ops: {_supported_ops()}")
            try:
                outs = fn(node, ins)
            except UnsupportedError as e:
                stateish = [v for v in ins if isinstance(v, (_Opaque, _StateIn, _Filled))
                            or (isinstance(v, _Seq) and v.gru is not None and "T" not in v.axes)]
                if not stateish or not self.has_mask_glue:
                    raise
                first = next((v.error for v in ins if isinstance(v, _Opaque)), e)
                outs = [_Opaque(first)] * len(node.output)
            if not isinstance(outs, list):
                outs = [outs]
        for name, v in zip(node.output, outs):
            if name:
                self.env[name] = v

    def all_const(self, ins) -> bool:
        return all(
            v is None or isinstance(v, np.ndarray) or (isinstance(v, _Shp) and all(isinstance(e, int) for e in v.elems))
            for v in ins
        )

    def as_np(self, v):
        if isinstance(v, _Shp):
            return np.array(v.elems[0] if v.scalar else list(v.elems), np.int64)
        return v

    def constant_node(self, node):
        a = node.attribute[0] if len(node.attribute) == 1 else None
        if a is None:
            self.unsupported(node, "a Constant must have exactly one value attribute")
        if a.name == "value":
            return tensor_to_array(a.t, self.label)
        if a.name == "value_float":
            return np.array(a.f, np.float32)
        if a.name == "value_floats":
            return np.array(list(a.floats), np.float32)
        if a.name == "value_int":
            return np.array(a.i, np.int64)
        if a.name == "value_ints":
            return np.array(list(a.ints), np.int64)
        self.unsupported(node, f"attribute {a.name!r} is not supported; supported: value, value_float(s), value_int(s)")

    def fold(self, node, ins):
        """Evaluate a node whose inputs are all constants (after size checks)."""
        arrs = [None if v is None else self.as_np(v) for v in ins]
        op = node.op_type
        if op == "ConstantOfShape":
            self.check_size(node, [int(d) for d in arrs[0].reshape(-1)])
        elif op == "Expand":
            target = [max(int(a), 1) for a in arrs[1].reshape(-1)]
            self.check_size(node, target + list(arrs[0].shape))
        elif op == "Range":
            start, limit, delta = (float(a) for a in arrs[:3])
            if delta == 0 or not np.isfinite([start, limit, delta]).all():
                raise ModelFileError(f"{self.where(node)}: Range delta must be nonzero and finite, got {delta}")
            self.check_size(node, [max(int(np.ceil((limit - start) / delta)), 0)])
        elif op == "Tile":
            self.check_size(node, list(np.asarray(arrs[0].shape) * np.maximum(arrs[1].reshape(-1), 1)))
        from onnx.reference import ReferenceEvaluator

        feeds, names = {}, []
        for i, (n, a) in enumerate(zip(node.input, arrs)):
            if a is None:
                names.append("")
                continue
            nm = f"i{i}"
            names.append(nm)
            feeds[nm] = np.asarray(a)
        outs = [f"o{i}" if o else "" for i, o in enumerate(node.output)]
        n2 = helper.make_node(op, names, outs, **self.attrs(node))
        g = helper.make_graph(
            [n2], "fold",
            [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for k, v in feeds.items()],
            [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in outs if o],
        )
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", self.opset)])
        try:
            res = ReferenceEvaluator(m).run(None, feeds)
        except Exception as e:
            raise ModelFileError(f"{self.where(node)}: constant inputs must be consistent, got {type(e).__name__}: {e}") from None
        out, it = [], iter(res)
        for o in outs:
            out.append(np.asarray(next(it)) if o else None)
        return out

    # ----------------------------------------------------------------- glue
    def op_Identity(self, node, ins):
        return ins[0]

    def op_Dropout(self, node, ins):
        if len(ins) > 2 and ins[2] is not None:
            tm = self.const(node.input[2], node, "training_mode")
            if bool(np.asarray(tm).reshape(-1)[0]):
                self.unsupported(node, "training_mode=True is not supported (inference only)")
        return [ins[0], None]

    def op_Cast(self, node, ins):
        v = ins[0]
        to = self.attrs(node).get("to")
        if isinstance(v, _Seq) and v.tokens and to in (TensorProto.FLOAT, TensorProto.DOUBLE):
            self.unsupported(node, "token ids cast to floats are not supported")
        if isinstance(v, _Filled):
            return _Filled(v.shape, v.value, v.dtype)
        return v

    def op_CastLike(self, node, ins):
        return ins[0]

    def shape_of(self, node, v):
        if isinstance(v, _Expr):
            v = v.base
        if isinstance(v, _Seq):
            return [self.axis_size(v, lab) for lab in v.axes]
        if isinstance(v, _Filled) and v.shape is not None:
            return list(v.shape)
        if isinstance(v, np.ndarray):
            return list(v.shape)
        self.unsupported(node, f"the shape of {type(v).__name__.strip('_')} values is not supported")

    def op_Shape(self, node, ins):
        dims = self.shape_of(node, ins[0])
        a = self.attrs(node)
        start, end = a.get("start", 0), a.get("end", None)
        dims = dims[slice(start, end)]
        return self.shp(dims)

    def op_Size(self, node, ins):
        n = 1
        for d in self.shape_of(node, ins[0]):
            n = d * n if isinstance(d, _Sym) else (n * d if isinstance(n, _Sym) else n * d)
        return self.shp([n], scalar=True)

    def shp(self, elems, scalar=False):
        elems = [self.norm_dim(e) if isinstance(e, _Sym) else int(e) for e in elems]
        if all(isinstance(e, int) for e in elems):
            return np.array(elems[0] if scalar else elems, np.int64)
        return _Shp(tuple(elems), scalar)

    def shp_elems(self, v):
        if isinstance(v, _Shp):
            return list(v.elems), v.scalar
        a = np.asarray(v)
        return [int(x) for x in a.reshape(-1)], a.ndim == 0

    def op_Gather(self, node, ins):
        data, idx = ins[0], ins[1]
        axis = self.attrs(node).get("axis", 0)
        if isinstance(data, np.ndarray) and isinstance(idx, _Seq) and idx.tokens:
            if data.ndim != 2 or axis != 0 or idx.chain:
                self.unsupported(node, "only an embedding lookup Gather(table (V, E), token ids) is supported")
            emb = Embedding(table=data, name=node.name)
            return _Seq(idx.axes + ("F",), (emb,), {"F": int(data.shape[1])})
        if isinstance(data, _Shp):
            i = self.const(node.input[1], node, "indices")
            el = list(data.elems)
            picked = [el[int(k)] for k in np.asarray(i).reshape(-1)]
            return self.shp(picked, scalar=np.asarray(i).ndim == 0)
        i = self.const(node.input[1], node, "indices")
        if isinstance(data, _HN):
            if axis != 0 or np.asarray(i).ndim != 0:
                self.unsupported(node, "only h_n[k] (a scalar index on axis 0) is supported on concatenated GRU states")
            rows = [(g, d) for g in data.grus for d in range(self.grus[g]["layer"].num_directions)]
            k = int(i)
            if not -len(rows) <= k < len(rows):
                raise ModelFileError(f"{self.where(node)}: index must lie in [-{len(rows)}, {len(rows)}), got {k}")
            g, d = rows[k]
            return self.yh_select(g, d)
        if isinstance(data, _StateIn):
            if axis != 0:
                self.unsupported(node, "initial state inputs may only be indexed on axis 0")
            k = np.asarray(i)
            if k.size != 1:
                self.unsupported(node, "initial state inputs may only be indexed by one row")
            k = int(k.reshape(-1)[0])
            if k < 0:
                self.unsupported(node, "negative row indices into initial state inputs are not supported")
            return _StateIn(data.name, data.start + k, data.start + k + 1, data.layout + ("s" if np.asarray(i).ndim == 0 else ""))
        if isinstance(data, _Filled):
            return _Filled(None, data.value, data.dtype)
        v = self.mat(data, node)
        ax = axis % len(v.axes)
        lab = self.norm_label(v.axes[ax])
        k = np.asarray(i)
        if k.ndim != 0:
            self.unsupported(node, "Gather on the data path must take one scalar index")
        k = int(k)
        if v.gru is not None and "T" not in v.axes and lab == "D":
            return self.yh_select(v.gru, k % v.sizes["D"], base=v, axis=ax)
        if lab == "T" and k == -1:
            return self.last_step(node, v, ax, keep=False)
        if lab == "1" and k in (0, -1):
            return dataclasses.replace(v, axes=v.axes[:ax] + v.axes[ax + 1:])
        self.unsupported(node, f"Gather index {k} on axis {lab!r} of the data is not supported (supported: the "
                               f"last time step -1, an embedding lookup, a direction of Y_h)")

    def yh_select(self, g, d, base=None, axis=None):
        layer = self.grus[g]["layer"]
        H = layer.hidden_size
        layout = self.grus[g]["layout"]
        axes = ("B", "H") if base is None else base.axes[:axis] + base.axes[axis + 1:]
        if base is None and layout == 1:
            axes = ("B", "H")
        v = _Seq(axes, self.grus[g]["chain_before"] + (_entry(g),), {"H": H}, gru=g, dsel=(d,))
        return self.maybe_yh_data(v)

    def maybe_yh_data(self, v: _Seq):
        """A Y_h value whose directions are all selected, in order, becomes the last-step output."""
        D = self.grus[v.gru]["layer"].num_directions
        if v.dsel is not None and tuple(v.dsel) == tuple(range(D)):
            chain = self.grus[v.gru]["chain_before"] + (_entry(v.gru, False),)
            axes = tuple("F" if a == "H" else a for a in v.axes)
            return _Seq(axes, chain, {"F": D * v.sizes["H"]})
        return v

    def last_step(self, node, v: _Seq, ax: int, keep: bool):
        chain = v.chain
        k = max((i for i, e in enumerate(chain) if isinstance(e, tuple) and e[0] == "gru"), default=None)
        if k is None or "D" in v.axes:
            self.unsupported(node, "selecting one time step is supported only on the output of a GRU")
        for e in chain[k + 1:]:
            if not isinstance(e, (Dense, Activation)):
                self.unsupported(node, f"selecting the last time step after a {e.kind} layer is not supported")
        g = chain[k][1]
        info = self.grus[g]
        if info["layer"].direction != "forward":
            self.unsupported(node, f"out[:, -1] of a {info['layer'].direction} GRU is not the final state of its "
                                   f"reverse direction and has no canonical form; use h_n (Y_h) instead")
        if info["lengths"] is not None:
            self.unsupported(node, "selecting the last time step of a GRU with sequence_lens is not supported")
        new = chain[:k] + (("gru", g, False) + chain[k][3:],) + chain[k + 1:]
        axes = v.axes[:ax] + (("1",) if keep else ()) + v.axes[ax + 1:]
        return _Seq(axes, new, dict(v.sizes))

    def axes_of(self, node, idx_in: int, attr: str = "axes"):
        a = self.attrs(node)
        if attr in a:
            return [int(x) for x in a[attr]]
        if len(node.input) > idx_in and node.input[idx_in]:
            return [int(x) for x in np.asarray(self.const(node.input[idx_in], node, attr)).reshape(-1)]
        return None

    def op_Squeeze(self, node, ins):
        v = ins[0]
        axes = self.axes_of(node, 1)
        if isinstance(v, _Keep):
            return _KMask((("masking", v.value),))
        if isinstance(v, (_MLen, _Steps, _Valid, _NonEmpty, _KMask)):
            return v
        if isinstance(v, _Shp):
            if len(v.elems) == 1:
                return _Shp(v.elems, True)
            self.unsupported(node, "Squeeze of a shape vector with more than one element")
        if isinstance(v, _StateIn):
            self.unsupported(node, "Squeeze of an initial state input is not supported")
        if isinstance(v, _Filled):
            return _Filled(None, v.value, v.dtype)
        v = v if isinstance(v, _Seq) else self.mat(v, node)
        n = len(v.axes)
        if axes is None:
            axes = [i for i, lab in enumerate(v.axes) if lab == "1" or (lab == "D" and v.sizes.get("D") == 1)]
        axes = sorted({a % n for a in axes})
        for a in axes:
            lab = v.axes[a]
            if not (lab == "1" or (lab == "D" and (v.sizes.get("D") == 1 or v.dsel is not None))):
                self.unsupported(node, f"Squeeze of axis {a} ({lab!r}) of the data is not supported")
        keep = tuple(lab for i, lab in enumerate(v.axes) if i not in axes)
        out = dataclasses.replace(v, axes=keep)
        if "D" in v.axes and "D" not in keep:
            if v.gru is not None and "T" not in v.axes:  # Y_h of one direction
                out = dataclasses.replace(out, dsel=(0,), sizes={"H": v.sizes["H"]})
                return self.maybe_yh_data(out)
            out = dataclasses.replace(out, axes=tuple("F" if a == "H" else a for a in keep),
                                      sizes={"F": v.sizes["H"]}, gru=None)
        return out

    def op_Unsqueeze(self, node, ins):
        v = ins[0]
        axes = self.axes_of(node, 1)
        if isinstance(v, (_MLen, _Steps, _Valid, _NonEmpty)):
            return v
        if isinstance(v, _Shp):
            if v.scalar and axes in ([0], [-1]):
                return _Shp(v.elems, False)
            self.unsupported(node, "Unsqueeze of a shape vector")
        if isinstance(v, _StateIn):
            if v.layout.endswith("s") and axes == [0]:
                return _StateIn(v.name, v.start, v.stop, v.layout[:-1])
            self.unsupported(node, "Unsqueeze of an initial state input is supported only on axis 0 after a row Gather")
        if isinstance(v, _Filled):
            return _Filled(None, v.value, v.dtype)
        v = self.mat(v, node)
        n = len(v.axes) + len(axes)
        axes_l = list(v.axes)
        for a in sorted(x % n for x in axes):
            axes_l.insert(a, "1")
        return dataclasses.replace(v, axes=tuple(axes_l))

    def op_Concat(self, node, ins):
        axis = self.attrs(node).get("axis", 0)
        if all(isinstance(v, (_Shp, np.ndarray)) for v in ins):
            el = []
            for v in ins:
                e, _ = self.shp_elems(v)
                el.extend(e)
            return self.shp(el)
        if all(isinstance(v, (_HN, _Seq)) for v in ins) and all(
            isinstance(v, _HN) or (v.gru is not None and "T" not in v.axes and v.dsel is None and v.axes[0] == "D")
            for v in ins
        ) and axis == 0:
            grus = []
            for v in ins:
                grus.extend(v.grus if isinstance(v, _HN) else [v.gru])
            return _HN(tuple(grus))
        if all(isinstance(v, _Seq) and v.dsel is not None for v in ins):
            g = {v.gru for v in ins}
            n = len(ins[0].axes)
            if len(g) == 1 and axis % n == n - 1:
                d = tuple(x for v in ins for x in v.dsel)
                out = dataclasses.replace(ins[0], dsel=d)
                return self.maybe_yh_data(out)
        if len(ins) == 2 and all(isinstance(v, _Seq) and v.gru is not None and "T" in v.axes and "D" in v.axes
                                 and v.dsel is not None for v in ins):
            a, b = ins
            n = len(a.axes)
            if a.gru == b.gru and a.axes == b.axes and a.axes[axis % n] == "D" and (a.dsel, b.dsel) == ((0,), (1,)) \
                    and not a.tflip:
                full = dataclasses.replace(a, dsel=None, tflip=False, sizes={**a.sizes, "D": 2})
                return self.with_entry(node, full, trev=b.tflip)
        if all(isinstance(v, _Filled) for v in ins) and len({v.value for v in ins}) == 1:
            return _Filled(None, ins[0].value, ins[0].dtype)
        self.unsupported(node, "Concat is supported on shapes, on GRU final states (h_n) and on the two "
                               "directions of a final state")

    def slice_params(self, node, ins):
        a = self.attrs(node)
        if self.opset < 10 or "starts" in a:
            starts, ends = a.get("starts"), a.get("ends")
            axes, steps = a.get("axes"), None
        else:
            starts = self.const(node.input[1], node, "starts")
            ends = self.const(node.input[2], node, "ends")
            axes = self.const(node.input[3], node, "axes") if len(node.input) > 3 and node.input[3] else None
            steps = self.const(node.input[4], node, "steps") if len(node.input) > 4 and node.input[4] else None
        starts = [int(x) for x in np.asarray(starts).reshape(-1)]
        ends = [int(x) for x in np.asarray(ends).reshape(-1)]
        axes = list(range(len(starts))) if axes is None else [int(x) for x in np.asarray(axes).reshape(-1)]
        steps = [1] * len(starts) if steps is None else [int(x) for x in np.asarray(steps).reshape(-1)]
        return starts, ends, axes, steps

    def op_Slice(self, node, ins):
        v = ins[0]
        starts, ends, axes, steps = self.slice_params(node, ins)
        if isinstance(v, _Shp):
            el = list(v.elems)
            for s, e, ax, st in zip(starts, ends, axes, steps):
                el = el[slice(s, min(e, _INT_MAX), st)]
            return self.shp(el)
        if isinstance(v, _Filled):
            return _Filled(None, v.value, v.dtype)
        if isinstance(v, _StateIn):
            if axes != [0] or steps != [1] or v.layout.endswith("s"):
                self.unsupported(node, "initial state inputs may only be sliced on axis 0 with step 1")
            s, e = starts[0], ends[0]
            if s < 0 or e < 0:
                self.unsupported(node, "negative bounds when slicing an initial state input are not supported")
            base = v.start
            stop = None if e >= _INT_MAX // 2 else base + e
            if v.stop is not None:
                stop = v.stop if stop is None else min(stop, v.stop)
            return _StateIn(v.name, base + s, stop, v.layout)
        v = self.mat(v, node)
        out = v
        for s, e, ax, st in zip(starts, ends, axes, steps):
            ax %= len(v.axes)
            lab = self.norm_label(v.axes[ax])
            size = self.axis_size(v, v.axes[ax])
            if st == 1 and s == 0 and (e >= _INT_MAX // 2 or (isinstance(size, int) and e >= size)):
                continue
            if lab == "T" and st == 1 and s == -1 and e >= _INT_MAX // 2:
                out = self.last_step(node, out, ax, keep=True)
                continue
            if lab == "D" and st == 1 and out.gru is not None and "T" in out.axes and out.dsel is None \
                    and e == s + 1 and 0 <= s < out.sizes["D"]:
                out = dataclasses.replace(out, dsel=(s,), sizes={**out.sizes, "D": 1})
                continue
            if lab == "T" and st == -1 and s == -1 and e <= -(_INT_MAX // 2) and out.gru is not None and "D" in out.axes:
                layer = self.grus[out.gru]["layer"]
                if out.dsel == (1,) or (out.dsel is None and layer.direction == "reverse"):
                    out = dataclasses.replace(out, tflip=not out.tflip)
                    if out.dsel is None:
                        out = self.with_entry(node, out, trev=out.tflip)
                        out = dataclasses.replace(out, tflip=False)
                    continue
            self.unsupported(node, f"Slice [{s}:{e}:{st}] on axis {lab!r} of the data is not supported "
                                   f"(supported: the last time step [-1:], whole axes)")
        return out

    def op_Transpose(self, node, ins):
        v = ins[0]
        perm = self.attrs(node).get("perm")
        if isinstance(v, _Filled):
            return _Filled(None if v.shape is None or perm is None else tuple(v.shape[p] for p in perm), v.value, v.dtype)
        if isinstance(v, _StateIn):
            if perm in ([1, 0, 2],) and not v.layout.endswith("s"):
                return _StateIn(v.name, v.start, v.stop, "bdh" if v.layout == "dbh" else "dbh")
            self.unsupported(node, "initial state inputs may only be transposed with perm [1, 0, 2]")
        v = self.mat(v, node)
        perm = list(range(len(v.axes)))[::-1] if perm is None else perm
        return dataclasses.replace(v, axes=tuple(v.axes[p] for p in perm))

    def target_shape(self, node, v, shape_v, allowzero):
        el, _ = self.shp_elems(shape_v) if not isinstance(shape_v, _Shp) else (list(shape_v.elems), False)
        src = self.shape_of(node, v)
        out = []
        for i, d in enumerate(el):
            if isinstance(d, int) and d == 0 and not allowzero:
                if i >= len(src):
                    raise ModelFileError(f"{self.where(node)}: shape must copy an existing axis, got {el} for {src}")
                out.append(src[i])
            else:
                out.append(d)
        neg = [i for i, d in enumerate(out) if isinstance(d, int) and d == -1]
        if len(neg) > 1:
            raise ModelFileError(f"{self.where(node)}: shape must have at most one -1, got {el}")
        if neg:
            total = _prod(src)
            rest = _prod([d for i, d in enumerate(out) if i != neg[0]])
            q = _div(total, rest, self)
            if q is None:
                raise ModelFileError(f"{self.where(node)}: shape {el} must be compatible with {src}")
            out[neg[0]] = q
        return out, src

    def op_Reshape(self, node, ins):
        v, shape_v = ins[0], ins[1]
        allowzero = self.attrs(node).get("allowzero", 0)
        if isinstance(v, _Shp):
            el, _ = self.shp_elems(self.as_np(shape_v)) if not isinstance(shape_v, _Shp) else (None, None)
            if el is not None and len(v.elems) == 1 and el in ([], [1], [-1]):
                return _Shp(v.elems, el == [])
            self.unsupported(node, "Reshape of a shape vector")
        if isinstance(v, _Filled):
            return _Filled(None, v.value, v.dtype)
        if isinstance(v, _StateIn):
            self.unsupported(node, "Reshape of an initial state input is not supported")
        v = self.mat(v, node)
        if not isinstance(shape_v, (np.ndarray, _Shp)):
            self.unsupported(node, "the target shape must be a constant or computed from shapes")
        target, src = self.target_shape(node, v, shape_v, allowzero)
        return self.regroup(node, v, src, target)

    def regroup(self, node, v: _Seq, src, target):
        """Map source axes onto target dims: keep, merge (D, H) -> F, drop/insert unit axes."""
        axes = list(v.axes)
        out_axes, sizes = [], dict(v.sizes)
        i = 0

        def fail():
            self.unsupported(node, f"Reshape {[str(s) for s in src]} -> {[str(s) for s in target]} of the data "
                                   f"is not supported (only merging the direction and hidden axes, or unit axes)")

        for t in target:
            if self.dim_eq(t, 1) and (i >= len(axes) or not self.dim_eq(src[i], 1)):
                out_axes.append("1")
                continue
            group, prod = [], 1
            while i < len(axes):
                group.append(axes[i])
                prod = _mul(prod, src[i])
                i += 1
                if self.dim_eq(prod, t):
                    break
                if len(group) == 1 and isinstance(self.norm_dim(src[i - 1]), _Sym) and isinstance(t, int) and t > 1 \
                        and self.norm_label(axes[i - 1]) in ("T", "B", "x0", "x1"):
                    # the exporter wrote the example's batch / time size as a constant (the graph only
                    # runs at that size); the engine keeps the axis dynamic
                    prod = t
                    break
            if not self.dim_eq(prod, t):
                fail()
            real = [a for a, d in zip(group, src[i - len(group): i]) if not (a in ("1", "D") and self.dim_eq(d, 1))]
            if real == ["D", "H"] or (real == ["H"] and "D" in group):
                out_axes.append("DH")
            elif group == ["D"]:
                out_axes.append("D")
            elif len(real) == 1:
                out_axes.append(real[0])
            elif not real:
                out_axes.append("1")
            else:
                fail()
        while i < len(axes):  # trailing unit axes
            if not self.dim_eq(src[i], 1) or axes[i] not in ("1", "D"):
                fail()
            i += 1
        if "DH" in out_axes:
            if v.gru is not None and "T" not in v.axes:  # Y_h (B, D, H) -> (B, D*H)
                D = sizes["D"]
                out = _Seq(tuple("H" if a == "DH" else a for a in out_axes), v.chain, {"H": v.sizes["H"]},
                           gru=v.gru, dsel=tuple(range(D)))
                return self.maybe_yh_data(out)
            F = sizes["D"] * sizes["H"]
            return _Seq(tuple("F" if a == "DH" else a for a in out_axes), v.chain, {"F": F}, tokens=v.tokens)
        if "D" in v.axes and "D" not in out_axes:
            if v.gru is not None and "T" not in v.axes:
                out = _Seq(tuple(out_axes), v.chain, {"H": v.sizes["H"]}, gru=v.gru, dsel=(0,))
                return self.maybe_yh_data(out)
            return _Seq(tuple("F" if a == "H" else a for a in out_axes), v.chain, {"F": sizes["H"]}, tokens=v.tokens)
        return dataclasses.replace(v, axes=tuple(out_axes))

    def op_Flatten(self, node, ins):
        v = self.mat(ins[0], node)
        axis = self.attrs(node).get("axis", 1) % max(len(v.axes), 1)
        if len(v.axes) == 2 and axis == 1:
            return v
        src = self.shape_of(node, v)
        return self.regroup(node, v, src, [_prod(src[:axis]), _prod(src[axis:])])

    def op_ConstantOfShape(self, node, ins):
        a = self.attrs(node).get("value")
        val = 0.0 if a is None else float(tensor_to_array(a, self.label).reshape(-1)[0])
        dtype = np.float32 if a is None else tensor_to_array(a, self.label).dtype
        if isinstance(ins[0], _Shp):
            self.check_size(node, ins[0].elems)
            return _Filled(tuple(ins[0].elems), val, dtype)
        self.unsupported(node, "the shape of ConstantOfShape must be computed from shapes")

    def op_Expand(self, node, ins):
        v, shape_v = ins[0], ins[1]
        if isinstance(v, np.ndarray) and v.size >= 1 and np.all(v == v.reshape(-1)[0]):
            return _Filled(tuple(shape_v.elems) if isinstance(shape_v, _Shp) else None, float(v.reshape(-1)[0]), v.dtype)
        if isinstance(v, _Filled):
            return _Filled(None, v.value, v.dtype)
        self.unsupported(node, "Expand is supported only on a constant value (a zero initial state)")

    def op_unary(self, node, ins):
        v = ins[0]
        op = node.op_type
        a = self.attrs(node)
        if isinstance(v, _Filled):
            res = self.fold(node, [np.array([v.value], v.dtype)])[0]
            return _Filled(v.shape, float(res.reshape(-1)[0]), v.dtype)
        if not isinstance(v, (_Seq, _Expr)):
            self.unsupported(node, f"{op} is supported on the data path only")
        base, tree = (v.base, v.tree) if isinstance(v, _Expr) else (self.plain(v, node), ("x",))
        name = _UNARY[op]
        if name is None:
            return v
        if op == "Elu":
            t = (name, tree, float(a.get("alpha", 1.0)))
        elif op == "LeakyRelu":
            t = (name, tree, float(a.get("alpha", 0.01)))
        elif op == "HardSigmoid":
            t = (name, tree, float(a.get("alpha", 0.2)), float(a.get("beta", 0.5)))
        elif op == "Selu":
            t = (name, tree, float(a.get("alpha", 1.67326319217681884765625)), float(a.get("gamma", 1.05070102214813232421875)))
        elif op == "Gelu":
            ap = a.get("approximate", b"none")
            t = (name, tree, ap.decode() if isinstance(ap, bytes) else ap)
        else:
            t = (name, tree)
        return _Expr(base, t)

    def plain(self, v: _Seq, node) -> _Seq:
        if v.tokens or "D" in v.axes or v.dsel is not None or (v.gru is not None and "T" not in v.axes):
            self.unsupported(node, "element-wise math is supported on layer outputs with one feature axis only "
                                   "(merge the GRU directions first)")
        return v

    def op_binary(self, node, ins):
        a, b = ins[0], ins[1]
        op = node.op_type
        name = _BINARY[op]
        if op == "Mul" and any(isinstance(v, _Keep) for v in (a, b)):
            keep, v = (a, b) if isinstance(a, _Keep) else (b, a)
            if isinstance(v, _Seq) and _same_base(v, keep.seq):
                return _Seq(v.axes, v.chain + (Masking(mask_value=keep.value, name=node.name),), dict(v.sizes))
            self.unsupported(node, "a Keras Masking must multiply the data it was computed from")
        if isinstance(a, (_Shp, np.ndarray)) and isinstance(b, (_Shp, np.ndarray)):
            return self.shape_arith(node, name, a, b)
        if isinstance(a, _Filled) or isinstance(b, _Filled):
            if isinstance(a, (_Seq, _Expr)) or isinstance(b, (_Seq, _Expr)):
                self.unsupported(node, "arithmetic between the data and a filled tensor is not supported")
            fa = a.value if isinstance(a, _Filled) else np.asarray(a)
            fb = b.value if isinstance(b, _Filled) else np.asarray(b)
            if np.size(fa) != 1 or np.size(fb) != 1:
                return _Filled(None, float("nan"), np.float32)
            with np.errstate(all="ignore"):
                r = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide, "pow": np.power}[name](
                    float(np.asarray(fa).reshape(-1)[0]), float(np.asarray(fb).reshape(-1)[0]))
            shape = a.shape if isinstance(a, _Filled) else b.shape
            return _Filled(shape, float(r), (a if isinstance(a, _Filled) else b).dtype)
        if name == "mul":
            for u, c in ((a, b), (b, a)):
                if isinstance(u, _Seq) and isinstance(c, np.ndarray) and c.size == 1 and float(c.reshape(-1)[0]) == 0.5 \
                        and u.chain and isinstance(u.chain[-1], tuple) and u.chain[-1][3] == "sum":
                    return self.with_entry(node, u, merge="ave")
        ea, eb = self.expr_of(a, node), self.expr_of(b, node)
        if ea is not None and eb is not None:
            if ea[0] is not None and eb[0] is not None and not _same_base(ea[0], eb[0]):
                self.unsupported(node, "arithmetic between two different data values (e.g. a residual connection) "
                                       "is not supported")
            base = ea[0] if ea[0] is not None else eb[0]
            if base is None:
                self.unsupported(node, "arithmetic on constants only")
            return _Expr(base, (name, ea[1], eb[1]))
        # a per-feature constant on a plain layer output: fold into a Dense layer
        seq, c, seq_first = (a, b, True) if isinstance(a, _Seq) else (b, a, False)
        if isinstance(seq, _Seq) and isinstance(c, np.ndarray) and name in ("add", "sub", "mul", "div"):
            return self.affine(node, self.plain(seq, node), name, np.asarray(c, np.float64), seq_first)
        self.unsupported(node, f"{op} of these values is not supported (supported: scalar constants and "
                               f"per-feature constants on the data, shape arithmetic)")

    def expr_of(self, v, node):
        """(base or None, tree) for a scalar constant, a plain data value or an expression."""
        if isinstance(v, np.ndarray):
            if v.size == 1:
                return None, ("c", float(v.reshape(-1)[0]))
            return None
        if isinstance(v, _Expr):
            return v.base, v.tree
        if isinstance(v, _Seq):
            return self.plain(v, node), ("x",)
        self.unsupported(node, f"arithmetic on {type(v).__name__.strip('_')} values is not supported")

    def affine(self, node, v: _Seq, name, c, seq_first):
        F = v.sizes.get("F")
        if v.axes[-1] != "F" or F is None:
            self.unsupported(node, "per-feature constants must act on the feature axis")
        if c.ndim > len(v.axes) or any(d != 1 for d in c.shape[:-1]) or c.shape[-1:] not in ((F,), (1,)):
            self.unsupported(node, f"a constant of shape {c.shape} on data with {F} features is not supported "
                                   f"(only per-feature vectors)")
        c = np.broadcast_to(c.reshape(-1), (F,)).astype(np.float64)
        if name == "add":
            s, t = np.ones(F), c
        elif name == "sub":
            s, t = (np.ones(F), -c) if seq_first else (-np.ones(F), c)
        elif name == "mul":
            s, t = c, np.zeros(F)
        else:
            if not seq_first:
                self.unsupported(node, "dividing a constant by the data is not supported")
            s, t = 1.0 / c, np.zeros(F)
        last = v.chain[-1] if v.chain else None
        if isinstance(last, Dense) and last.activation == "linear":
            k = last.kernel.astype(np.float64) * s
            b = last.bias.astype(np.float64) * s + t
            d = Dense(kernel=k.astype(last.kernel.dtype), bias=b.astype(last.kernel.dtype), name=last.name)
        else:
            d = Dense(kernel=np.diag(s), bias=t, name=node.name if node is not None else "")
        return _Seq(v.axes, v.chain[:-1] + (d,) if isinstance(last, Dense) and last.activation == "linear"
                    else v.chain + (d,), dict(v.sizes))

    def shape_arith(self, node, name, a, b):
        ea, sa = self.shp_elems(a)
        eb, sb = self.shp_elems(b)
        n = max(len(ea), len(eb))
        if len(ea) not in (1, n) or len(eb) not in (1, n):
            self.unsupported(node, "shape arithmetic on vectors of different lengths")
        ea, eb = ea * (n // len(ea)), eb * (n // len(eb))
        out = []
        for x, y in zip(ea, eb):
            if name == "mul":
                out.append(_mul(x, y))
            elif name == "div" and isinstance(y, int) and y != 0:
                q = _div(x, y, self)
                if q is None:
                    self.unsupported(node, f"shape division {x} / {y}")
                out.append(q)
            elif name in ("add", "sub") and isinstance(x, int) and isinstance(y, int):
                out.append(x + y if name == "add" else x - y)
            elif name in ("add", "sub") and y == 0:
                out.append(x)
            elif name == "add" and x == 0:
                out.append(y)
            else:
                self.unsupported(node, f"symbolic shape arithmetic {x} {name} {y} is not supported")
        return self.shp(out, scalar=sa and sb)

    def with_entry(self, node, v: _Seq, **changes) -> _Seq:
        """``v`` with its chain's last GRU entry changed (rs / merge / trev)."""
        e = v.chain[-1] if v.chain else None
        if not (isinstance(e, tuple) and e[0] == "gru"):
            self.unsupported(node, "this is supported only directly on a GRU output")
        rs, merge, trev = changes.get("rs", e[2]), changes.get("merge", e[3]), changes.get("trev", e[4])
        return dataclasses.replace(v, chain=v.chain[:-1] + (_entry(e[1], rs, merge, trev),))

    def op_ReduceProd(self, node, ins):
        v = ins[0]
        if isinstance(v, _Shp):
            kd = self.attrs(node).get("keepdims", 1)
            p = _prod(list(v.elems))
            return self.shp([p], scalar=not kd)
        return self.merge_directions(node, ins, "mul")

    def op_ReduceSum(self, node, ins):
        if isinstance(ins[0], _KMask):
            axes = self.axes_of(node, 1)
            if axes not in ([1], [-1]) or self.attrs(node).get("keepdims", 1):
                self.unsupported(node, "a Keras mask must be summed over time (axis 1, keepdims=0)")
            return _MLen(ins[0].kinds)
        return self.merge_directions(node, ins, "sum")

    # ----------------------------------------------------------------- Keras masks
    def op_Equal(self, node, ins):
        a, b = ins
        v, c = (a, b) if isinstance(a, _Seq) else (b, a)
        if isinstance(v, _Seq) and isinstance(c, np.ndarray) and c.size == 1 and not v.dsel and "D" not in v.axes:
            return _Cmp(v, float(c.reshape(-1)[0]))
        self.unsupported(node, "Equal is supported between the data and a scalar (a Keras mask)")

    def op_Not(self, node, ins):
        v = ins[0]
        if isinstance(v, _Cmp):
            if v.seq.tokens and not v.seq.chain and v.value == 0:
                return _KMask((("emb",),))
            if not v.seq.tokens:
                return _NE(v.seq, v.value)
        self.unsupported(node, "Not is supported on Equal(data, scalar) (a Keras mask)")

    def op_ReduceMax(self, node, ins):
        v = ins[0]
        if isinstance(v, _NE):
            axes = self.axes_of(node, 1)
            n = len(v.seq.axes)
            if axes is None or [a % n for a in axes] != [n - 1] or not self.attrs(node).get("keepdims", 1):
                self.unsupported(node, "a Keras Masking must reduce over the features with keepdims=1")
            return _Keep(v.seq, v.value)
        extra = _extra_layers()
        fn = None if extra is None else extra.interp_handler(self, "ReduceMax")
        if fn is None:
            self.unsupported(node, "ReduceMax is supported over features of a mask comparison")
        return fn(node, ins)

    def op_And(self, node, ins):
        if all(isinstance(v, _KMask) for v in ins):
            return _KMask(tuple(k for v in ins for k in v.kinds if k not in ins[0].kinds or v is ins[0]))
        self.unsupported(node, "And is supported between Keras masks")

    def op_Min(self, node, ins):
        m = [v for v in ins if isinstance(v, _MLen)]
        ln = [v for v in ins if isinstance(v, _LenIn)]
        if len(ins) == 2 and len(m) == 1 and len(ln) == 1 and m[0].lengths is None:
            return _MLen(m[0].kinds, ln[0].name)
        self.unsupported(node, "Min is supported between mask lengths and a lengths input")

    def op_Greater(self, node, ins):
        a, b = ins
        if isinstance(a, _MLen) and isinstance(b, np.ndarray) and b.size == 1 and float(b.reshape(-1)[0]) == 0:
            return _NonEmpty(a)
        self.unsupported(node, "Greater is supported as mask lengths > 0")

    def op_Range(self, node, ins):
        a, lim, d = ins
        if isinstance(a, np.ndarray) and isinstance(d, np.ndarray) and a.size == 1 and d.size == 1 \
                and int(a.reshape(-1)[0]) == 0 and int(d.reshape(-1)[0]) == 1 \
                and isinstance(lim, _Shp) and len(lim.elems) == 1 and self.norm_dim(lim.elems[0]) == _sym(1, ("T",)):
            return _Steps()
        self.unsupported(node, "Range is supported as the time steps 0..T-1")

    def op_Less(self, node, ins):
        a, b = ins
        if isinstance(a, _Steps) and isinstance(b, _MLen):
            return _Valid(b)
        self.unsupported(node, "Less is supported as step index < mask lengths")

    def op_Where(self, node, ins):
        c, a, b = ins
        if isinstance(c, _NonEmpty) and isinstance(a, _Seq) and a.gru is not None and "T" not in a.axes:
            return a  # a fully masked row keeps its initial state (Keras); the GRU node gives 0
        if isinstance(c, _Valid) and isinstance(a, _Seq) and a.gru is not None and "T" in a.axes and "D" in a.axes:
            self.grus[a.gru]["masked_output"] = "carry"  # masked steps repeat the state
            return a
        self.unsupported(node, "Where is supported only in the masked-step glue that gru-engine writes")

    def merge_directions(self, node, ins, merge):
        """ReduceSum / ReduceProd over the direction axis of a bidirectional GRU's Y or Y_h."""
        v = ins[0]
        a = self.attrs(node)
        axes = self.axes_of(node, 1)
        if not isinstance(v, _Seq) or v.gru is None or "D" not in v.axes or v.dsel is not None or axes is None \
                or len(axes) != 1 or a.get("keepdims", 1) or v.sizes.get("D") != 2:
            self.unsupported(node, f"{node.op_type} is supported over the direction axis of a bidirectional GRU "
                                   f"output (keepdims=0), and on shapes")
        ax = axes[0] % len(v.axes)
        if v.axes[ax] != "D":
            self.unsupported(node, f"{node.op_type} over axis {v.axes[ax]!r} is not supported (only directions)")
        axes_out = tuple("F" if x == "H" else x for i, x in enumerate(v.axes) if i != ax)
        H = v.sizes["H"]
        if "T" in v.axes:
            out = self.with_entry(node, v, merge=merge)
        else:  # Y_h: the last-step output
            chain = self.grus[v.gru]["chain_before"] + (_entry(v.gru, False, merge),)
            out = dataclasses.replace(v, chain=chain)
        return _Seq(axes_out, out.chain, {"F": H})

    # ----------------------------------------------------------------- expressions -> layers
    def mat(self, v, node):
        """A _Seq for ``v`` (an expression becomes Activation / Dense layers)."""
        if isinstance(v, _Seq):
            return v
        if isinstance(v, _Expr):
            return self.materialize(v.base, v.tree, node)
        if isinstance(v, (_StateIn, _LenIn)):
            self.unsupported(node, f"graph input {v.name!r} (initial_h / sequence_lens) used as data is not supported")
        self.unsupported(node, f"this op needs the data path, got {type(v).__name__.strip('_')}")

    def materialize(self, base: _Seq, tree, node) -> _Seq:
        if tree == ("x",):
            return base
        stages = _stages(tree)
        if stages is None:
            self.unsupported(node, f"the element-wise computation ending here is not an activation the engine "
                                   f"supports; supported: {', '.join(a for a in _ACT_NAMES)}")
        v = base
        for act, alpha in stages:
            if act == "linear":
                continue
            if act == "affine":
                a, b = alpha
                F = v.sizes.get("F")
                v = self.affine(node, self.affine(node, v, "mul", np.full(F, a), True), "add", np.full(F, b), True)
            else:
                v = self.add_activation(v, act, alpha, node)
        return v

    def add_activation(self, v: _Seq, act, alpha, node) -> _Seq:
        last = v.chain[-1] if v.chain else None
        if isinstance(last, Dense) and last.activation == "linear":
            d = dataclasses.replace(last, activation=act, alpha=alpha)
            return _Seq(v.axes, v.chain[:-1] + (d,), dict(v.sizes))
        name = node.name if node is not None else ""
        return _Seq(v.axes, v.chain + (Activation(activation=act, alpha=alpha, name=name),), dict(v.sizes))

    # ----------------------------------------------------------------- layers
    def op_Softmax(self, node, ins):
        v = self.plain(self.mat(ins[0], node), node)
        default = -1 if self.opset >= 13 else 1
        axis = self.attrs(node).get("axis", default) % len(v.axes)
        if axis != len(v.axes) - 1:
            self.unsupported(node, f"Softmax must be over the last (feature) axis, got axis {axis} of {len(v.axes)}")
        return self.add_activation(v, "softmax", 0.0, node)

    def op_MatMul(self, node, ins):
        v = ins[0]
        w = ins[1]
        if not isinstance(w, np.ndarray) or w.ndim != 2:
            self.unsupported(node, "MatMul must multiply the data by a constant 2-D weight")
        v = self.plain(self.mat(v, node), node)
        if v.axes[-1] == "F" and v.sizes.get("F") is None:
            v.sizes["F"] = int(w.shape[0])
        F = v.sizes.get("F")
        if v.axes[-1] != "F" or F != w.shape[0]:
            raise ModelFileError(f"{self.where(node)}: weight {node.input[1]!r} must have shape ({F}, out), got {w.shape}")
        d = Dense(kernel=w, name=node.name)
        return _Seq(v.axes, v.chain + (d,), {"F": int(w.shape[1])})

    def op_Gemm(self, node, ins):
        a = self.attrs(node)
        if a.get("transA", 0):
            self.unsupported(node, "transA=1 is not supported")
        w = ins[1]
        if not isinstance(w, np.ndarray) or w.ndim != 2:
            self.unsupported(node, "Gemm must multiply the data by a constant 2-D weight")
        k = (w.T if a.get("transB", 0) else w).astype(np.float64) * float(a.get("alpha", 1.0))
        v = self.plain(self.mat(ins[0], node), node)
        if v.axes[-1] == "F" and v.sizes.get("F") is None:
            v.sizes["F"] = int(k.shape[0])
        F = v.sizes.get("F")
        if len(v.axes) != 2 or v.axes[-1] != "F" or F != k.shape[0]:
            raise ModelFileError(f"{self.where(node)}: Gemm weight {node.input[1]!r} must map {F} features, got "
                                 f"{w.shape} (transB={a.get('transB', 0)})")
        bias = None
        if len(ins) > 2 and ins[2] is not None:
            c = ins[2]
            if not isinstance(c, np.ndarray):
                self.unsupported(node, "the Gemm bias must be a constant")
            try:
                bias = np.broadcast_to(np.asarray(c, np.float64).reshape(-1) if c.size in (1, k.shape[1]) else c,
                                       (k.shape[1],)) * float(a.get("beta", 1.0))
            except ValueError:
                raise ModelFileError(f"{self.where(node)}: bias must have shape ({k.shape[1]},), got {c.shape}") from None
        d = Dense(kernel=k.astype(w.dtype), bias=None if bias is None else bias.astype(w.dtype), name=node.name)
        return _Seq(v.axes, v.chain + (d,), {"F": int(k.shape[1])})

    # ----------------------------------------------------------------- GRU
    _GRU_ATTRS = ("activation_alpha", "activation_beta", "activations", "clip", "direction", "hidden_size",
                  "layout", "linear_before_reset", "output_sequence")

    def op_GRU(self, node, ins):
        a = self.attrs(node)
        for k in a:
            if k not in self._GRU_ATTRS:
                self.unsupported(node, f"attribute {k!r} is not supported; supported: {', '.join(self._GRU_ATTRS)}")
        layout = int(a.get("layout", 0))
        if layout not in (0, 1):
            raise ModelFileError(f"{self.where(node)}: layout must be 0 or 1, got {layout}")
        direction = a.get("direction", b"forward")
        direction = direction.decode() if isinstance(direction, bytes) else str(direction)
        if direction not in DIRECTIONS:
            raise ModelFileError(f"{self.where(node)}: direction must be one of {list(DIRECTIONS)}, got {direction!r}")
        D = DIRECTIONS[direction]
        hs = a.get("hidden_size")
        if hs is not None and not 0 < int(hs) <= config.MAX_DIM:
            raise ModelFileError(f"{self.where(node)}: hidden_size must lie in [1, {config.MAX_DIM}] "
                                 f"(config.MAX_DIM), got {hs}")
        if len(ins) < 3 or ins[1] is None or ins[2] is None:
            raise ModelFileError(f"{self.where(node)}: inputs X, W and R are required")
        W, R = ins[1], ins[2]
        for nm, t in (("W", W), ("R", R)):
            if not isinstance(t, np.ndarray):
                self.unsupported(node, f"{nm} must be a constant (initializer), got a computed value")
        if R.ndim != 3 or R.shape[0] != D or R.shape[1] != 3 * R.shape[2]:
            raise ModelFileError(f"{self.where(node)}: R ({node.input[2]!r}) must have shape ({D}, 3*hidden_size, "
                                 f"hidden_size), got {R.shape}")
        H = R.shape[2]
        if hs is not None and int(hs) != H:
            raise ModelFileError(f"{self.where(node)}: R ({node.input[2]!r}) must have shape ({D}, {3 * int(hs)}, "
                                 f"{int(hs)}) for hidden_size={int(hs)}, got {R.shape}")
        x = self.mat(ins[0], node)
        if x.tokens or "D" in x.axes or len(x.axes) != 3 or x.axes[2] != "F":
            self.unsupported(node, "X must be a 3-D sequence with the features on the last axis")
        if x.sizes.get("F") is None:
            x.sizes["F"] = int(W.shape[2]) if W.ndim == 3 else None
        I = x.sizes["F"]
        if W.shape != (D, 3 * H, I):
            raise ModelFileError(f"{self.where(node)}: W ({node.input[1]!r}) must have shape ({D}, {3 * H}, {I}), "
                                 f"got {W.shape}")
        Bv = ins[3] if len(ins) > 3 else None
        if Bv is not None and not isinstance(Bv, np.ndarray):
            self.unsupported(node, "B must be a constant (initializer)")
        if Bv is not None and Bv.shape != (D, 6 * H):
            raise ModelFileError(f"{self.where(node)}: B ({node.input[3]!r}) must have shape ({D}, {6 * H}), got {Bv.shape}")
        want = ("T", "B") if layout == 0 else ("B", "T")
        for lab, w in zip(x.axes[:2], want):
            n = self.norm_label(lab)
            if n in ("x0", "x1"):
                self.bind[n] = w
                other = "x1" if n == "x0" else "x0"
                self.bind[other] = "B" if w == "T" else "T"
                for src in ("x0", "x1"):
                    if src in self.static:
                        self.static[self.bind[src]] = self.static[src]
            elif n != w:
                self.unsupported(node, f"X must be {'time-major (T, B, F)' if layout == 0 else 'batch-major (B, T, F)'}"
                                       f" for layout={layout}, got axes {[self.norm_label(l) for l in x.axes]}")
        lengths = None
        kmask = None
        if len(ins) > 5 and isinstance(ins[5], _Opaque):
            raise ins[5].error
        if len(ins) > 4 and ins[4] is not None:
            sl = ins[4]
            if isinstance(sl, _MLen):
                lengths = sl.lengths
                kmask = sl.kinds
            elif isinstance(sl, _LenIn):
                lengths = sl.name
            elif isinstance(sl, np.ndarray) and sl.ndim == 1 and sl.dtype.kind in "iu":
                lengths = sl.astype(np.int64)
            else:
                self.unsupported(node, "sequence_lens must be a graph input or a 1-D integer initializer")
        state = None
        if len(ins) > 5 and ins[5] is not None:
            st = ins[5]
            if isinstance(st, _Filled):
                if st.value != 0.0:
                    self.unsupported(node, f"a constant initial_h of {st.value} is not supported (only zeros)")
            elif isinstance(st, np.ndarray):
                if st.ndim != 3 or st.shape[2] != H or st.shape[layout] != D:
                    raise ModelFileError(f"{self.where(node)}: initial_h ({node.input[5]!r}) must have shape "
                                         f"{(D, 'batch', H) if layout == 0 else ('batch', D, H)}, got {st.shape}")
                if np.any(st != 0):
                    state = ("const", st if layout == 0 else st.transpose(1, 0, 2))
            elif isinstance(st, _StateIn):
                if st.layout.endswith("s"):
                    self.unsupported(node, "initial_h must be a 3-D slice of the state input")
                eff = st.layout if layout == 0 else ("bdh" if st.layout == "dbh" else "dbh")
                state = (st.name, st.start, st.stop, eff)
            else:
                self.unsupported(node, "initial_h must be a graph input, a slice of one, or zeros")
        acts = a.get("activations")
        acts = tuple(x.decode() if isinstance(x, bytes) else str(x) for x in acts) if acts else ()
        try:
            layer = GRU(
                W=W, R=R, B=Bv, direction=direction, linear_before_reset=int(a.get("linear_before_reset", 0)),
                activations=acts, activation_alpha=tuple(a.get("activation_alpha", ())),
                activation_beta=tuple(a.get("activation_beta", ())),
                clip=None if a.get("clip") is None else float(a["clip"]), name=node.name,
            )
        except UnsupportedError as e:
            raise UnsupportedError(f"{self.where(node)}: {e}") from None
        except ModelDefinitionError as e:
            raise ModelFileError(f"{self.where(node)}: {e}") from None
        idx = len(self.grus)
        before = x.chain
        if kmask is not None and ("emb",) in kmask:
            if not before or not isinstance(before[0], Embedding):
                self.unsupported(node, "a token mask needs an Embedding first")
            before = (dataclasses.replace(before[0], mask_zero=True),) + before[1:]
        self.grus.append(dict(layer=layer, chain_before=before, state=state, lengths=lengths, layout=layout,
                              node=node.name, kmask=kmask, masked_output="zero" if lengths is None else "carry"))
        x = dataclasses.replace(x, chain=before)
        chain = x.chain + (_entry(idx),)
        sizes = {"D": D, "H": H}
        Y = _Seq(("T", "D", "B", "H") if layout == 0 else ("B", "T", "D", "H"), chain, sizes, gru=idx)
        Y_h = _Seq(("D", "B", "H") if layout == 0 else ("B", "D", "H"), chain, dict(sizes), gru=idx)
        return [Y, Y_h]

    # ----------------------------------------------------------------- result
    def finish(self):
        outs = []  # (name, kind, value)
        for o in self.g.output:
            if o.name not in self.env:
                raise ModelFileError(f"{self.label}: graph output {o.name!r} must be computed by the graph, got none")
            v = self.env[o.name]
            if isinstance(v, _Opaque):
                raise v.error
            if isinstance(v, _HN):
                outs.append((o.name, "h_n", v))
            elif isinstance(v, _Seq) and v.gru is not None and "T" not in v.axes and v.dsel is None:
                outs.append((o.name, "h_n", _HN((v.gru,)), v.axes))
                continue
            elif isinstance(v, (_Seq, _Expr)):
                outs.append((o.name, "data", self.mat(v, None) if isinstance(v, _Expr) else v))
            else:
                raise UnsupportedError(f"{self.label}: graph output {o.name!r} must depend on the model input, got a "
                                       f"{type(v).__name__.strip('_') if not isinstance(v, np.ndarray) else 'constant'}")
            outs[-1] = outs[-1] + (None,)
        data = [o for o in outs if o[1] == "data"]
        chain = None
        for name, _, v, _ in data:
            if v.dsel is not None or (v.gru is not None and "T" not in v.axes):
                raise UnsupportedError(f"{self.label}: graph output {name!r} holds only some directions of a GRU "
                                       f"final state; not supported")
            if chain is None:
                chain = v.chain
            elif v.chain != chain:
                raise UnsupportedError(f"{self.label}: graph outputs {data[0][0]!r} and {name!r} come from different "
                                       f"layer chains; only one model output (plus h_n) is supported")
        hn_grus = [g for o in outs if o[1] == "h_n" for g in o[2].grus]
        if chain is None:
            if not hn_grus:
                raise UnsupportedError(f"{self.label}: the graph has no output computed from GRU or data")
            last = hn_grus[-1]
            chain = self.grus[last]["chain_before"] + (_entry(last),)
        chain_grus = [e[1] for e in chain if isinstance(e, tuple)]
        for o in outs:
            if o[1] == "h_n" and list(o[2].grus) != chain_grus:
                raise UnsupportedError(
                    f"{self.label}: graph output {o[0]!r} must hold the final states of all GRU layers of the model "
                    f"in order ({[self.grus[g]['node'] for g in chain_grus]}), got {[self.grus[g]['node'] for g in o[2].grus]}")
        # initial states and lengths
        states = [self.grus[g]["state"] for g in chain_grus]
        state_name, state_layout, default_state = None, "dbh", None
        if any(s is not None and s[0] == "const" for s in states):
            if any(s is not None and s[0] != "const" for s in states):
                raise UnsupportedError(f"{self.label}: initial states must all be graph inputs or all constants")
            Bs = {s[1].shape[1] for s in states if s is not None}
            if len(Bs) != 1:
                raise ModelFileError(f"{self.label}: constant initial states must share one batch size, got {sorted(Bs)}")
            nb = Bs.pop()
            parts = []
            for g, s in zip(chain_grus, states):
                lay = self.grus[g]["layer"]
                parts.append(s[1] if s is not None else np.zeros((lay.num_directions, nb, lay.hidden_size)))
            default_state = parts
            states = [None] * len(states)
        if any(s is not None for s in states):
            names = {s[0] for s in states if s is not None}
            if None in [s for s in states] or len(names) != 1:
                raise UnsupportedError(f"{self.label}: every GRU layer must take its initial state from the same "
                                       f"graph input (or all start from zeros)")
            off = 0
            for g, s in zip(chain_grus, states):
                D = self.grus[g]["layer"].num_directions
                stop = s[2] if s[2] is not None else (off + D if len(states) == 1 else None)
                if s[1] != off or stop != off + D:
                    raise UnsupportedError(f"{self.label}: GRU {self.grus[g]['node']!r} must take rows [{off}:{off + D}] "
                                           f"of {s[0]!r} as its initial state, got [{s[1]}:{s[2]}]")
                off += D
            state_name = names.pop()
            lays = {s[3] for s in states}
            if len(lays) != 1 or (len(states) > 1 and lays != {"dbh"}):
                raise UnsupportedError(f"{self.label}: initial state layouts must agree across layers")
            state_layout = lays.pop()
        lens = [self.grus[g]["lengths"] for g in chain_grus]
        len_name, default_lengths = None, None
        if any(l is not None for l in lens):
            keys = [l if isinstance(l, str) or l is None else ("const", tuple(l.tolist())) for l in lens]
            if len(set(keys)) != 1:
                raise UnsupportedError(f"{self.label}: every GRU layer must take the same sequence_lens, got {keys}")
            if isinstance(lens[0], str):
                len_name = lens[0]
            else:
                default_lengths = lens[0]
        self.bind.setdefault("x0", "B")
        self.bind.setdefault("x1", "T")
        layers = []
        for e in chain:
            if isinstance(e, tuple):
                info = self.grus[e[1]]
                layer = info["layer"]
                if not e[2] or e[3] != "concat" or e[4] or info["kmask"] is not None:
                    layer = dataclasses.replace(layer, return_sequences=e[2], merge=e[3], time_reversed_output=e[4],
                                                masked_output=info["masked_output"] if info["kmask"] else "carry")
                masked = any(isinstance(x, Masking) or (isinstance(x, Embedding) and x.mask_zero) for x in layers)
                if masked != (info["kmask"] is not None):
                    raise UnsupportedError(
                        f"{self.label}: GRU {info['node']!r} {'ignores' if masked else 'uses'} a Keras mask "
                        f"{'made before it' if masked else 'that no Masking / Embedding(mask_zero) layer makes'}; "
                        f"the engine applies a mask to every GRU after it")
                layers.append(layer)
            else:
                layers.append(e)
        dtypes = {a.dtype for layer in layers for f in dataclasses.fields(layer)
                  for a in [getattr(layer, f.name)] if isinstance(a, np.ndarray) and a.dtype.kind == "f"}
        dtype = np.float64 if (np.dtype(np.float64) in dtypes and self.x_dtype == "float64") or dtypes == {np.dtype(np.float64)} \
            else np.float32
        layers = [layer.astype(dtype) for layer in layers]
        x = self.x_seq
        if not x.tokens and x.sizes.get("F") is None:
            raise UnsupportedError(f"{self.label}: the feature size of input {self.x_name!r} must be fixed by the "
                                   f"graph (its shape or its first layer's weights), got none")
        try:
            model = Model(tuple(layers), None if x.tokens else x.sizes["F"], self.g.name or "")
        except ModelDefinitionError as e:
            raise ModelFileError(f"{self.label}: the graph does not form a valid layer chain: {e}") from None
        sig = Signature(x=self.x_name, x_dtype=self.x_dtype, lengths=len_name, initial_state=state_name,
                        state_layout=state_layout, inputs=[i.name for i in self.graph_inputs],
                        default_lengths=default_lengths,
                        default_state=None if default_state is None else [np.asarray(p, dtype) for p in default_state],
                        input_shapes=dict(self.input_shapes), x_features=None if x.tokens else model.input_size)
        sig.x_layout = "btf" if self.bind["x0"] == "B" else "tbf"
        for name, kind, v, hax in outs:
            if kind == "h_n":
                lay = "dbh" if hax is None else "".join({"D": "d", "B": "b", "H": "h"}[a] for a in hax)
                sig.outputs.append((name, "h_n", lay))
                continue
            labs = "".join({"T": "t", "B": "b", "F": "f", "D": "d", "H": "h", "1": "1"}.get(self.norm_label(a), "?")
                           for a in v.axes)
            if "?" in labs:
                raise UnsupportedError(f"{self.label}: graph output {name!r} has axes {v.axes} that do not map onto "
                                       f"the model output")
            if "d" in labs:
                if model.layers[-1] is not self.grus[v.gru]["layer"] and not isinstance(model.layers[-1], GRU):
                    raise UnsupportedError(f"{self.label}: graph output {name!r} must be a GRU's Y")
                sig.outputs.append((name, "Y", labs))
            else:
                want = set("btf") if model.output_is_sequence else set("bf")
                if set(labs) - {"1"} != want:
                    raise UnsupportedError(f"{self.label}: graph output {name!r} with axes {labs!r} does not match "
                                           f"the model output {'(B, T, F)' if model.output_is_sequence else '(B, F)'}")
                sig.outputs.append((name, "y", labs))
        return model, sig


_ACT_NAMES = ("sigmoid", "tanh", "relu", "softmax", "hard_sigmoid", "elu", "selu", "gelu", "swish", "softplus",
              "softsign", "leaky_relu", "gelu_tanh", "exp", "scalar affine")
_FOLDABLE = set(_GLUE_OPS) | set(_UNARY) | set(_BINARY) | {
    "Tile", "Split", "ReduceSum", "ReduceMax", "ReduceMin", "ArgMax", "Floor", "Ceil", "Round", "Sign",
    "Or", "And", "Xor", "LessOrEqual", "GreaterOrEqual", "Mod", "NonZero", "Sum", "Mean", "Softmax", "MatMul",
    "Gemm", "Clip", "Trilu", "CumSum", "Einsum", "ScatterND", "GatherND", "GatherElements", "OneHot", "Pad",
}


def _prod(dims):
    p = 1
    for d in dims:
        p = _mul(p, d)
    return p


def _mul(a, b):
    if isinstance(a, _Sym) or isinstance(b, _Sym):
        if isinstance(a, _Sym):
            return a * b
        return b * a
    return int(a) * int(b)


def _div(a, b, interp):
    """Exact symbolic division a / b, or None."""
    a, b = interp.norm_dim(a), interp.norm_dim(b)
    if isinstance(b, int):
        if b == 0:
            return None
        if isinstance(a, int):
            return a // b if a % b == 0 else None
        return _sym(a.coef // b, a.factors) if a.coef % b == 0 else None
    if isinstance(a, int):
        return None
    fa = list(a.factors)
    for f in b.factors:
        if f not in fa:
            return None
        fa.remove(f)
    if a.coef % b.coef:
        return None
    return _sym(a.coef // b.coef, tuple(fa))


def _same_base(a: _Seq, b: _Seq) -> bool:
    return a is b or (a.chain == b.chain and a.axes == b.axes)


def _entry(idx: int, rs: bool = True, merge: str = "concat", trev: bool = False) -> tuple:
    """A GRU layer in a chain: (tag, index into _Interp.grus, return_sequences, merge, time_reversed_output)."""
    return ("gru", idx, rs, merge, trev)


def _has_x(tree) -> bool:
    return tree[0] == "x" or any(isinstance(t, tuple) and _has_x(t) for t in tree[1:])


def _replace(tree, sub, by):
    if tree == sub:
        return by
    return (tree[0],) + tuple(_replace(t, sub, by) if isinstance(t, tuple) else t for t in tree[1:])


def _stages(tree, depth: int = 0):
    """Split an element-wise tree over x into a sequence of engine activations, innermost first
    (e.g. gelu(gelu(x)) written out with Erf/Mul/Add), or None."""
    ident = _identify_activation(tree)
    if ident is not None:
        return [ident]
    if depth > 8:
        return None
    cands = []

    def collect(t):
        if not isinstance(t, tuple) or not _has_x(t) or t == ("x",):
            return
        i = _identify_activation(t)
        if i is not None and i[0] not in ("linear", "affine"):
            cands.append(t)
            return
        for c in t[1:]:
            if isinstance(c, tuple):
                collect(c)

    for c in tree[1:]:
        if isinstance(c, tuple):
            collect(c)
    for inner in sorted(cands, key=lambda t: -len(repr(t))):
        outer = _replace(tree, inner, ("x",))
        # every x of the tree must lie inside an occurrence of `inner` (outer is then a function of inner only)
        if _count_x(tree) == _count_x(inner) * _count_sub(tree, inner):
            rest = _stages(outer, depth + 1)
            if rest is not None:
                return _stages(inner, depth + 1) + rest
    return None


def _count_x(tree) -> int:
    if tree == ("x",):
        return 1
    return sum(_count_x(t) for t in tree[1:] if isinstance(t, tuple))


def _count_sub(tree, sub) -> int:
    if tree == sub:
        return 1
    return sum(_count_sub(t, sub) for t in tree[1:] if isinstance(t, tuple))

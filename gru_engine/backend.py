"""An ONNX backend (``onnx.backend.base.Backend``) that runs models through gru-engine.

Use it as ``onnxruntime.backend`` is used::

    import gru_engine.backend as backend
    rep = backend.prepare("model.onnx")          # ModelProto, path or bytes
    Y, Y_h = rep.run([X, W_unused...])           # list (graph inputs in order) or dict by name
    outs = backend.run_model(model, {"X": X})
    Y, Y_h = backend.run_node(gru_node, [X, W, R, B])

Outputs come back in the graph's order and in the graph's own layout (a bare GRU node's
``Y`` is ``[T, D, B, H]``, or ``[B, T, D, H]`` with ``layout=1``). The graph is mapped onto a
:class:`gru_engine.Model` once, in :func:`prepare`, by :func:`converters.onnx_io.from_onnx`.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper
from onnx.backend.base import Backend, BackendRep, namedtupledict

from .errors import InputShapeError, UnsupportedError

_FLOAT_OUT = {TensorProto.FLOAT: np.float32, TensorProto.DOUBLE: np.float64, TensorProto.FLOAT16: np.float16}


class GRUEngineRep(BackendRep):
    """A prepared model: the canonical :class:`~gru_engine.Model` plus the graph signature."""

    def __init__(self, model, signature, output_types=None):
        self.model = model
        self.signature = signature
        self.output_names = [o[0] for o in signature.outputs]
        self._out_types = output_types or {}

    def _feeds(self, inputs) -> dict:
        sig = self.signature
        if isinstance(inputs, dict):
            feeds = dict(inputs)
        else:
            if isinstance(inputs, np.ndarray) or not isinstance(inputs, (list, tuple)):
                inputs = [inputs]
            if len(inputs) > len(sig.inputs):
                raise InputShapeError(
                    f"inputs must hold at most {len(sig.inputs)} arrays (graph inputs {sig.inputs}), got {len(inputs)}")
            feeds = dict(zip(sig.inputs, inputs))
        if sig.x not in feeds:
            raise InputShapeError(f"inputs must include the graph input {sig.x!r}, got {sorted(feeds)}")
        unknown = set(feeds) - set(sig.inputs)
        if unknown:
            raise InputShapeError(f"inputs must be graph inputs {sig.inputs}, got unknown names {sorted(unknown)}")
        return feeds

    def run(self, inputs, **kwargs):
        """Run the graph: ``inputs`` is a list (graph inputs in order) or a dict by name."""
        feeds = self._feeds(inputs)
        y, h_n = self.model.run(**self.signature.to_model_args(feeds))
        outs = self.signature.from_model_outputs(y, h_n, self.model)
        cast = []
        for name, a in zip(self.output_names, outs):
            t = _FLOAT_OUT.get(self._out_types.get(name))
            cast.append(a.astype(t, copy=False) if t is not None else a)
        return namedtupledict("Outputs", self.output_names)(*cast)


def _weight_inputs(proto) -> list:
    """Graph inputs (not initializers) that feed W, R or B of a GRU node."""
    inits = {t.name for t in proto.graph.initializer}
    names = {i.name for i in proto.graph.input} - inits
    out = []
    for n in proto.graph.node:
        if n.op_type == "GRU":
            for k in (1, 2, 3):
                if len(n.input) > k and n.input[k] in names and n.input[k] not in out:
                    out.append(n.input[k])
    return out


class _DeferredRep(BackendRep):
    """A graph with weights fed at run time: mapped onto a Model once the weights are known."""

    def __init__(self, proto, weights: list, kwargs: dict):
        self.proto = proto
        self.weights = weights
        self.kwargs = kwargs
        self.inputs = [i.name for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}]
        self._key = None
        self._rep = None

    def run(self, inputs, **kwargs):
        from onnx import numpy_helper

        if isinstance(inputs, dict):
            feeds = dict(inputs)
        else:
            if isinstance(inputs, np.ndarray) or not isinstance(inputs, (list, tuple)):
                inputs = [inputs]
            feeds = dict(zip(self.inputs, inputs))
        missing = [w for w in self.weights if w not in feeds]
        if missing:
            raise InputShapeError(f"inputs must include the weight inputs {missing}, got {sorted(feeds)}")
        arrays = {w: np.ascontiguousarray(feeds.pop(w)) for w in self.weights}
        key = tuple((w, a.dtype.str, a.shape, a.tobytes()) for w, a in arrays.items())
        if key != self._key:
            p = type(self.proto)()
            p.CopyFrom(self.proto)
            keep = [i for i in p.graph.input if i.name not in arrays]
            del p.graph.input[:]
            p.graph.input.extend(keep)
            p.graph.initializer.extend(numpy_helper.from_array(a, w) for w, a in arrays.items())
            self._rep = GRUEngineBackend.prepare(p, **self.kwargs)
            self._key = key
        return self._rep.run(feeds)


class GRUEngineBackend(Backend):
    """``onnx.backend.base.Backend`` running GRU graphs on gru-engine's CPU kernels."""

    @classmethod
    def is_compatible(cls, model, device: str = "CPU", **kwargs) -> bool:
        from .errors import GRUEngineError

        if not cls.supports_device(device):
            return False
        try:
            cls.prepare(model, device, **kwargs)
        except GRUEngineError:
            return False
        return True

    @classmethod
    def prepare(cls, model, device: str = "CPU", **kwargs) -> BackendRep:
        """Map ``model`` (ModelProto, path or bytes) onto the engine; raise typed errors if it can't.

        A graph whose GRU weights (W, R, B) are graph inputs (as in ONNX's own node tests) is
        mapped at the first ``run``, when the weights are known, and re-mapped when they change.
        """
        from converters.onnx_io import _load_proto, from_onnx

        if not cls.supports_device(device):
            raise UnsupportedError(f"device must be 'CPU' for gru_engine.backend, got {device!r}")
        proto, _ = _load_proto(model)
        weights = _weight_inputs(proto)
        if weights:
            return _DeferredRep(proto, weights, kwargs)
        m, sig = from_onnx(proto if not isinstance(model, (bytes, bytearray, str)) and not hasattr(model, "__fspath__")
                           else model, return_signature=True, **kwargs)
        return GRUEngineRep(m, sig, sig.output_elem_types)

    @classmethod
    def run_model(cls, model, inputs, device: str = "CPU", **kwargs):
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node, inputs, device: str = "CPU", outputs_info=None, **kwargs):
        """Run one ``GRU`` NodeProto; ``inputs`` align with the node's non-empty inputs
        (X, W, R, B, sequence_lens, initial_h). W, R, B are taken as constants."""
        from onnx import numpy_helper

        if node.op_type != "GRU" or node.domain not in ("", "ai.onnx"):
            raise UnsupportedError(f"node {node.name!r} ({node.op_type}): run_node supports only GRU nodes")
        names = [n for n in node.input if n]
        if isinstance(inputs, dict):
            arrays = [inputs.get(n) for n in names]
        else:
            arrays = list(inputs)
        if len(arrays) != len(names):
            raise InputShapeError(f"inputs must hold one array per node input {names}, got {len(arrays)}")
        slot = {n: i for i, n in enumerate(node.input) if n}
        ginputs, inits, feeds = [], [], {}
        for n, a in zip(names, arrays):
            a = np.asarray(a)
            if slot[n] in (1, 2, 3):
                inits.append(numpy_helper.from_array(np.ascontiguousarray(a), n))
            else:
                ginputs.append(helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape))
                feeds[n] = a
        x_dtype = np.asarray(arrays[0]).dtype
        elem = helper.np_dtype_to_tensor_dtype(x_dtype)
        outs = [helper.make_tensor_value_info(o, elem, None) for o in node.output if o]
        graph = helper.make_graph([node], "run_node", ginputs, outs, inits)
        opset = int(kwargs.pop("opset_version", 14))
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        return cls.prepare(model, device, **kwargs).run(feeds)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return str(device).upper().split(":")[0] == "CPU"


prepare = GRUEngineBackend.prepare
run_model = GRUEngineBackend.run_model
run_node = GRUEngineBackend.run_node
supports_device = GRUEngineBackend.supports_device
is_compatible = GRUEngineBackend.is_compatible

__all__ = ["GRUEngineBackend", "GRUEngineRep", "prepare", "run_model", "run_node", "supports_device", "is_compatible"]

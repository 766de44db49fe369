"""gru-engine: fast, exact GRU inference for models from PyTorch, Keras and ONNX.

Public names::

    model = gru_engine.load("model.onnx")      # -> Model
    y, h_n = model.run(x)                       # whole sequences, stateless
    stream = model.stream(batch_size=1)         # stateful step-by-step
    gru_engine.save(model, "out.onnx")          # ONNX is the engine's only file format
"""

from __future__ import annotations

__version__ = "0.1.0"  # first: gru_engine._cache reads it

from .errors import (
    DeviceError,
    GRUEngineError,
    InputShapeError,
    InputTypeError,
    ModelDefinitionError,
    ModelFileError,
    StreamingError,
    UnsupportedError,
    ValidationError,
)
from .model import GRU, Activation, Dense, Embedding, Masking, Model, Output
from .threads import get_num_threads, set_num_threads


def load(source, **kwargs) -> Model:
    """Load an ONNX file (path, bytes or ``onnx.ModelProto``) as a :class:`Model`."""
    from converters.onnx_io import from_onnx

    return from_onnx(source, **kwargs)


def save(model: Model, path, **kwargs):
    """Write ``model`` as an ONNX file (real GRU nodes) that onnxruntime runs identically."""
    from converters.onnx_io import to_onnx

    return to_onnx(model, path, **kwargs)


def __getattr__(name):  # lazy: keep `import gru_engine` light
    if name == "Stream":
        from .stream import Stream

        return Stream
    if name == "StreamPool":
        from .stream import StreamPool

        return StreamPool
    raise AttributeError(f"module 'gru_engine' has no attribute {name!r}")


__all__ = [
    "set_num_threads", "get_num_threads",
    "load", "save", "Model", "Output", "GRU", "Dense", "Embedding", "Activation", "Masking",
    "GRUEngineError", "ModelFileError", "UnsupportedError", "ModelDefinitionError",
    "InputShapeError", "InputTypeError", "DeviceError", "StreamingError", "ValidationError",
]

"""The one exception hierarchy of gru-engine.

Every error the engine raises on purpose derives from :class:`GRUEngineError`, so an
application can catch them all with one clause. Each subclass also derives from the
built-in exception a Python user would expect (``ValueError``, ``TypeError``, ...), so
``except ValueError`` keeps working too.
"""

from __future__ import annotations


class GRUEngineError(Exception):
    """Base class of every error raised by gru-engine."""


class ModelFileError(GRUEngineError, ValueError):
    """A model file (ONNX, Keras, PyTorch checkpoint) is missing, truncated, corrupt or inconsistent."""


class UnsupportedError(GRUEngineError, NotImplementedError):
    """A model uses an operator, layer or attribute the engine does not support.

    The message names the node or layer, the op or attribute and what is supported.
    """


class ModelDefinitionError(GRUEngineError, ValueError):
    """A layer or model was constructed with inconsistent shapes or values."""


class InputShapeError(GRUEngineError, ValueError):
    """An input array passed to run/step has the wrong shape or invalid values."""


class InputTypeError(GRUEngineError, TypeError):
    """An input array passed to run/step has a dtype the engine cannot use."""


class DeviceError(GRUEngineError, RuntimeError):
    """A requested device (CUDA) is not available."""


class StreamingError(GRUEngineError, ValueError):
    """A model cannot be streamed (e.g. it contains a backward-in-time layer)."""


class ValidationError(GRUEngineError, AssertionError):
    """The engine's results differ from a reference beyond tolerance."""

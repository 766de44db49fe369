"""Every tunable of the engine, in one place.

Kernels read these at decoration time only (numba treats globals as constants and its
cache does not notice changes in other modules), so change them through the environment
before the first import of ``gru_engine``.
"""

from __future__ import annotations

import os

import numpy as np

#: Default compute dtype of models built or loaded by the engine.
DTYPE = np.float32

#: LLVM fast-math flags for all kernels. ``nnan``/``ninf`` are left out on purpose so that
#: NaN and inf inputs still propagate to the outputs instead of being optimised away.
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}

#: numba error model: "numpy" lets LLVM vectorise divisions (no ZeroDivisionError checks).
ERROR_MODEL = "numpy"

#: Threads per block of the CUDA kernels (tests patch this small under the simulator).
THREADS_PER_BLOCK = int(os.environ.get("GRU_ENGINE_THREADS_PER_BLOCK", "128"))

#: Largest tensor (in elements) a model file may declare before we refuse to allocate it.
MAX_TENSOR_ELEMENTS = int(os.environ.get("GRU_ENGINE_MAX_TENSOR_ELEMENTS", str(1 << 31)))

#: Largest hidden size / feature size accepted from a model file.
MAX_DIM = int(os.environ.get("GRU_ENGINE_MAX_DIM", str(1 << 16)))

"""Every tunable of the engine, in one place.

Two kinds. The module constants (dtype, fast-math flags, CUDA block size, file limits) are
read by kernels at decoration time (numba treats globals as constants), so change them
through the environment before the first import of ``gru_engine``. The run-time tunables
(kernel path choice and its thresholds) live in one :class:`Settings` object::

    from gru_engine import config
    config.get().gru_path                          # read (thread-safe snapshot)
    with config.override(gru_path="packed"):       # tests and benchmarks
        model.run(x)
    config.configure(row_block=8)                  # the whole process
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
import threading

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


# --------------------------------------------------------------------------- run-time settings
# The constants above are read by kernels at decoration time (set them through the
# environment before the first import). Everything below is read at run time, from one
# immutable Settings object: `get()` returns the one in force, `override(...)` changes it for
# a `with` block (per thread / asyncio task: a ContextVar), `configure(...)` for the process.


@dataclasses.dataclass(frozen=True)
class Settings:
    """Run-time tunables of the engine. Read with :func:`get`; never mutated in place."""

    #: Which GRU kernel path runs: "auto", "rows" (whole sequence in one numba kernel, one
    #: work item per direction and block of batch rows), "packed" (the same kernel with the
    #: per-step products on packed weights in register tiles, one item per thread), "gemm"
    #: (a BLAS GEMM per step for all rows, then a fused numba gate kernel) or "tiles" (batch
    #: 1: hidden units split across threads at every step). Tests and benchmarks force a path.
    gru_path: str = "auto"

    #: float32 runs of at least this many batch rows use the packed register-tile product
    #: (:mod:`kernels_gemm`) inside the row kernel. Measured on one thread (Xeon, AVX-512,
    #: T=256, I=H) against the other paths: 1.2-1.6x faster at B=2..64 for H=64..512; at B=1
    #: the row kernel's GEMV is 0.7-1.4x of it, so batch 1 keeps the row kernel on one thread.
    #: With several threads batch 1 takes the packed path too (it still runs on one thread,
    #: but projects in the kernel, where the tiles beat the hand product): 1.15-1.52x
    #: onnxruntime at H=64 and 0.94-1.03x at H=128 against 0.79-0.99x for the row kernel.
    packed_min_rows: int = 2

    #: (float64) The GEMM path wins once a step's recurrent product is big enough for BLAS to
    #: pay off (measured on a 2-core Zen 3, one thread, quiet machine: the row kernel is 3-10%
    #: faster at B=16/H<=256 and B=64/H=64; the GEMM path 4-10% at B=16/H=512, B=64/H>=128).
    gemm_min_rows: int = 8
    gemm_min_macs: int = 1 << 23
    gemm_wide_rows: int = 48
    gemm_wide_macs: int = 1 << 21

    #: Batch 1, one direction, H at least ``tile_min_h``, several threads: hidden-unit tiles
    #: across threads (a parallel loop per step) instead of one work item -- when
    #: ``tiles_auto`` is on. It is off: on the shared 2-core machine the per-step barrier (256
    #: per sequence) made B=1/H=512 20x slower whenever other processes competed for the cores
    #: (2.8 s vs 0.14 s for the single-item row kernel at load average 6); force it with
    #: ``gru_path="tiles"``.
    tiles_auto: bool = False
    tile_min_h: int = 256

    #: Batch rows per work item of the row kernel (they share each load of the weights).
    row_block: int = 4

    #: Runs with fewer multiply-adds than this use one thread (a parallel launch costs ~10 us).
    parallel_min_macs: int = 1 << 21

    #: Row kernel: compute the input projection with the hand kernel inside numba (True), with
    #: one NumPy BLAS product before it (False), or None: BLAS on one thread (5-20% faster)
    #: except for small products, the kernel when several threads are set (see api.rows_call).
    project_in_kernel: bool | None = None

    #: On one thread, input projections of fewer multiply-adds than this run in the kernel
    #: (hand product) instead of NumPy's BLAS: 35.7 vs 41.3 us for 64 steps at H=32, B=1
    #: (the BLAS call and its argument handling cost more than the product).
    project_blas_min_macs: int = 1 << 19

    #: Input projections of fewer multiply-adds than this are not split over time chunks.
    parallel_split_macs: int = 1 << 24

    #: Batch 1, one direction, several threads: split the input projection over the threads
    #: (True) or run everything on the calling thread (False). Off: on the shared 2-vCPU
    #: machine, while the other vCPU was busy (2-thread sgemm peak then below the 1-thread
    #: one), the split ran B=1/H=256 in 11.6 ms against 5.2 ms on one thread; when both vCPUs
    #: are free it would help (onnxruntime's 2-thread B=1/H=512 run is then 1.7x faster).
    split_single_item: bool = False

    #: Work arrays up to this size are kept between runs (per thread); larger ones are not.
    scratch_keep_bytes: int = 64 << 20

    #: Conv1D / pooling: below this many output steps (B * To) the serial kernels run
    #: (thread wake-up costs more).
    parallel_min_steps: int = 256

    #: Conv1D with at least this many multiply-adds (and groups = 1) runs as one BLAS GEMM
    #: over an im2col copy of the input; smaller ones (and grouped ones) run the numba kernel.
    conv_gemm_min_macs: int = 1 << 22

    def __post_init__(self):
        paths = ("auto", "rows", "packed", "gemm", "tiles")
        if self.gru_path not in paths:
            raise ValueError(f"gru_path must be one of {paths}, got {self.gru_path!r}")


_default = Settings()
_override: contextvars.ContextVar[Settings | None] = contextvars.ContextVar("gru_engine_settings", default=None)
_lock = threading.Lock()


def get() -> Settings:
    """The settings in force for this thread / task (an immutable snapshot)."""
    s = _override.get()
    return _default if s is None else s


def configure(**changes) -> Settings:
    """Change the process-wide settings (fields of :class:`Settings`); returns the new ones."""
    global _default
    with _lock:
        _default = dataclasses.replace(_default, **changes)
        return _default


@contextlib.contextmanager
def override(**changes):
    """``with config.override(gru_path="packed"):`` -- settings for this thread / task only."""
    token = _override.set(dataclasses.replace(get(), **changes))
    try:
        yield get()
    finally:
        _override.reset(token)

"""One thread setting for the engine's two thread pools: numba's (``prange`` kernels) and
the BLAS libraries' (NumPy's OpenBLAS for the per-step GEMM path).

The engine never runs the two pools at once: a run uses either numba's threads (the row
kernel, which calls no BLAS) or NumPy's BLAS threads (the per-step GEMM path, whose numba
gate kernel is serial). So ``n`` threads for each never oversubscribes ``n`` cores. A BLAS
library that is loaded inside a parallel numba kernel elsewhere (SciPy's, for numba's
``np.dot``) is kept at one thread once loaded.

The starting value comes from ``GRU_ENGINE_NUM_THREADS``; without it numba keeps its own
count (``NUMBA_NUM_THREADS`` or the number of cores) and the BLAS libraries theirs. threadpoolctl sets the BLAS limits when
it is installed; without it the BLAS libraries keep what ``OPENBLAS_NUM_THREADS`` /
``OMP_NUM_THREADS`` gave them at load time.
"""

from __future__ import annotations

import os

from .errors import InputShapeError, InputTypeError

_state = {"n": None}


def _max_threads() -> int:
    from numba import config as ncfg

    return int(ncfg.NUMBA_NUM_THREADS)


def _blas_limit(n: int, prefix_filter=None) -> bool:
    """Limit BLAS libraries to ``n`` threads; ``prefix_filter(filepath) -> bool`` selects them."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - threadpoolctl is in the bench/test extras
        return False
    ctl = ThreadpoolController()
    for lib in ctl.lib_controllers:
        if lib.user_api != "blas":
            continue
        if prefix_filter is not None and not prefix_filter(lib.filepath or ""):
            continue
        lib.set_num_threads(n)
    return True


def _is_numba_blas(path: str) -> bool:
    """SciPy's BLAS is the one numba's ``np.dot`` calls (scipy.linalg.cython_blas)."""
    return "scipy.libs" in path or "scipy/.libs" in path or os.sep + "scipy" + os.sep in path


def set_num_threads(n: int) -> int:
    """Use ``n`` threads for numba kernels and for BLAS products; returns ``n``.

    ``n`` must be an integer in [1, numba's NUMBA_NUM_THREADS] (the number of cores unless
    the environment lowered it before import).
    """
    import numpy as np

    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise InputTypeError(f"set_num_threads: n must be an integer, got {type(n).__name__} {n!r}")
    n = int(n)
    top = _max_threads()
    if not 1 <= n <= top:
        raise InputShapeError(f"set_num_threads: n must be in [1, {top}] (NUMBA_NUM_THREADS), got {n}")
    import numba

    numba.set_num_threads(n)
    _blas_limit(n, lambda p: not _is_numba_blas(p))
    _state["n"] = n
    _blas_limit(1, _is_numba_blas)
    return n


def get_num_threads() -> int:
    """Threads the engine uses now (after :func:`set_num_threads` or the environment)."""
    ensure_init()
    return _state["n"]


def ensure_init() -> None:
    """Apply ``GRU_ENGINE_NUM_THREADS`` (or the default) once, before the first kernel runs."""
    if _state["n"] is not None:
        return
    env = os.environ.get("GRU_ENGINE_NUM_THREADS", "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            raise InputTypeError(f"GRU_ENGINE_NUM_THREADS must be an integer, got {env!r}") from None
        set_num_threads(n)
    else:  # numba's own default; the BLAS libraries keep what their environment gave them
        import numba

        _state["n"] = numba.get_num_threads()

"""``gru-engine warmup``: compile every CPU kernel variant ahead of time into numba's cache.

numba compiles a kernel on its first call and, with ``cache=True``, stores the machine code
on disk (in the engine's own folder, see :mod:`gru_engine._cache`). A fresh process then loads it in
a fraction of a second instead of compiling for several seconds. ``warmup`` makes those
first calls on tiny inputs for float32 and float64 and every code path: the row kernel,
the packed register-tile path and the per-step GEMM path, ``linear_before_reset`` 0 and 1,
sigmoid/tanh and the generic activations with clip, lengths and masks, Dense activations,
and the streaming step kernels when the streaming module is present.
"""

from __future__ import annotations

import os
import time


def warmup(verbose: bool = True) -> float:
    """Compile (or load) every kernel variant; returns the seconds it took."""
    import numpy as np

    from . import config
    from . import kernels_cpu as K
    from .model import GRU, Dense, Masking, Model

    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    done = []
    for dtype in (np.float32, np.float64):
        I, H, B, T = 3, 4, 2, 5
        for lbr in (0, 1):
            for generic in (False, True):
                kw = {}
                if generic:
                    kw = dict(activations=("HardSigmoid", "Softsign") * 2, clip=3.0)
                W = rng.standard_normal((2, 3 * H, I)).astype(dtype)
                R = rng.standard_normal((2, 3 * H, H)).astype(dtype)
                gru = GRU(W=W, R=R, direction="bidirectional", linear_before_reset=lbr, **kw)
                dense = Dense(kernel=np.ones((2 * H, 2), dtype), bias=np.zeros(2, dtype), activation="sigmoid")
                model = Model(layers=(gru, dense))
                masked = Model(layers=(Masking(mask_value=0.0), gru), input_size=I)
                x = rng.standard_normal((B, T, I)).astype(dtype)
                for path in ("rows", "packed", "gemm"):
                    with config.override(gru_path=path):  # this thread only
                        model.run(x)
                        model.run(x, lengths=[T, 2])
                        masked.run(x)
        done.append(f"GRU/Dense {np.dtype(dtype).name}")
        out = np.empty(4, dtype)
        K.dense_act_inplace(out.reshape(2, 2), 0, dtype(0))
    xs = np.zeros(4, np.float32)
    K.fast_act_array(xs, 0, xs.copy())
    K.matmul_rows(np.zeros((1, 4), np.float32), 1, np.zeros((4, 4), np.float32), np.zeros((1, 4), np.float32), 0)
    # streaming step kernels (owned by the streaming module) through its public API
    try:
        for dtype in (np.float32, np.float64):
            W = rng.standard_normal((1, 12, 3)).astype(dtype)
            R = rng.standard_normal((1, 12, 4)).astype(dtype)
            m = Model(layers=(GRU(W=W, R=R, linear_before_reset=1),))
            stream = m.stream(batch_size=1)
            stream.step(np.zeros((1, 3), dtype))
            stream.run(np.zeros((1, 3, 3), dtype))
        done.append("streaming steps")
    except (AttributeError, ImportError, NotImplementedError):
        pass
    # layers around the GRUs (gru_engine.layers: conv, normalization, pooling; runs and streams)
    try:
        from .layers import warmup as layers_warmup

        done.append(layers_warmup())
    except (ImportError, AttributeError):
        pass
    dt = time.perf_counter() - t0
    if verbose:
        from . import _cache

        where = _cache.install() or os.environ.get("NUMBA_CACHE_DIR") or "numba's default"
        print(f"warmup: compiled/loaded {', '.join(done)} in {dt:.1f} s; numba cache: {where}")
    return dt


def cmd_warmup(args) -> int:
    warmup(verbose=not args.quiet)
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "warmup",
        help="compile every CPU kernel variant ahead of time (numba cache), so later starts are fast",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing")
    p.set_defaults(func=cmd_warmup)

"""pytest-benchmark microbenchmarks of the streaming step (batch 1, from Python).

Catches regressions in the per-step call path: Python overhead in ``Stream.step``, the number
of array arguments of the step kernel, vectorisation of the fused GRU step, and the
batched StreamPool path. Baselines in the same group: onnxruntime's one-step session call
and torch's GRUCell, same shapes. Not part of the default test run (bench/ is outside
testpaths)::

    python -m pytest bench/bench_step.py --benchmark-only
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import step_latency as SL  # noqa: E402

pytest.importorskip("pytest_benchmark")

SIZES = [(32, 1), (32, 32), (64, 64), (128, 128), (256, 256)]
IDS = [f"H{h}_I{i}" for h, i in SIZES]


@pytest.mark.parametrize("H,I", SIZES, ids=IDS)
def test_engine_step(benchmark, H, I):
    block, model = SL._engine(*SL._weights(I, H))
    block(100)  # compile / warm up outside timing
    benchmark.group = f"step {H}x{I}"
    benchmark(block, 100)


@pytest.mark.parametrize("H,I", SIZES, ids=IDS)
def test_onnxruntime_step(benchmark, H, I):
    pytest.importorskip("onnxruntime")
    block = SL._ort(*SL._weights(I, H), 1)
    block(10)
    benchmark.group = f"step {H}x{I}"
    benchmark(block, 100)


@pytest.mark.parametrize("H,I", SIZES, ids=IDS)
def test_torch_grucell_step(benchmark, H, I):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    block = SL._torch(*SL._weights(I, H), "cell")
    block(10)
    benchmark.group = f"step {H}x{I}"
    benchmark(block, 100)


@pytest.mark.parametrize("H", [64, 128])
def test_pool_1000_streams(benchmark, H):
    from gru_engine import GRU, Model, StreamPool

    W, R, B = SL._weights(H, H)
    pool = StreamPool(Model((GRU(W=W, R=R, B=B, linear_before_reset=1),)), 1000)
    for i in range(1000):
        pool.open(i)
    slots = pool.slots(range(1000))
    x = np.ones((1000, H), np.float32)
    out = np.empty((1000, H), np.float32)
    pool.step_slots(slots, x, out)
    benchmark.group = f"pool 1000 streams H{H}"
    benchmark(pool.step_slots, slots, x, out)

"""pytest-benchmark microbenchmarks of the whole-sequence CPU kernels.

Catches regressions in: the register-blocked hand product (``matmul_rows``: blocks of 4/2/1
batch rows, k unrolled by 8), the packed register-tile product (``kernels_gemm.matmul_packed``,
the per-step product of float32 batches), the fused float32 gate math (rational sigmoid/tanh, which must
stay vectorised), the row kernel, the packed path and the per-step GEMM path of ``api._run_gru`` at the sizes
where each is chosen, and the per-call overhead of ``api.run``. Baselines in the same group:
onnxruntime's GRU and torch's nn.GRU on the same shapes, one thread. Not part of the default
test run (bench/ is outside testpaths)::

    python -m pytest bench/bench_sequence.py --benchmark-only
"""

from __future__ import annotations

import numpy as np
import pytest

import compare as C

pytest.importorskip("pytest_benchmark")

SEQ = [(1, 64), (16, 64), (1, 128), (16, 128), (64, 128), (1, 512), (64, 512)]
SEQ_IDS = [f"B{b}_H{h}" for b, h in SEQ]
T = 256


@pytest.fixture(autouse=True)
def _one_thread():
    import gru_engine

    gru_engine.set_num_threads(1)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


@pytest.mark.parametrize("nb", [1, 4, 16])
@pytest.mark.parametrize("H", [64, 128, 512])
def test_matmul_rows(benchmark, nb, H):
    from gru_engine import kernels_cpu as K

    rng = np.random.default_rng(0)
    V = rng.standard_normal((nb, H)).astype(np.float32)
    RT = rng.standard_normal((H, 3 * H)).astype(np.float32)
    G = np.empty((nb, 3 * H), np.float32)
    K.matmul_rows(V, nb, RT, G, 0)
    np.testing.assert_allclose(G, V @ RT, rtol=1e-4, atol=1e-3)
    benchmark.group = f"matmul_rows nb={nb} H={H}"
    benchmark.extra_info["gflop"] = 2 * nb * H * 3 * H / 1e9
    benchmark(K.matmul_rows, V, nb, RT, G, 0)


@pytest.mark.parametrize("nb", [1, 4, 16, 64])
@pytest.mark.parametrize("H", [64, 128, 512])
def test_matmul_packed(benchmark, nb, H):
    from gru_engine import kernels_gemm as KG

    rng = np.random.default_rng(0)
    V = rng.standard_normal((nb, H)).astype(np.float32)
    RT = rng.standard_normal((H, 3 * H)).astype(np.float32)
    RP = KG.pack_panels(RT)
    G = np.empty((nb, KG.padded_width(3 * H)), np.float32)
    KG.matmul_packed(V, nb, RP, G, 0)
    np.testing.assert_allclose(G[:, : 3 * H], V @ RT, rtol=1e-4, atol=1e-3)
    benchmark.group = f"matmul_packed nb={nb} H={H}"
    benchmark.extra_info["gflop"] = 2 * nb * H * 3 * H / 1e9
    benchmark(KG.matmul_packed, V, nb, RP, G, 0)


@pytest.mark.parametrize("code", [0, 1], ids=["sigmoid", "tanh"])
def test_fast_activation(benchmark, code):
    from gru_engine import kernels_cpu as K

    x = np.random.default_rng(0).uniform(-10, 10, 1 << 16).astype(np.float32)
    out = np.empty_like(x)
    K.fast_act_array(x, code, out)
    benchmark.group = "fast activations, 65536 floats"
    benchmark(K.fast_act_array, x, code, out)


def _fns(B, H):
    have = {"ort": True, "torch": True}
    for k, mod in (("ort", "onnxruntime"), ("torch", "torch")):
        try:
            __import__(mod)
        except ImportError:
            have[k] = False
    return C.contenders([C._weights(H, H)], B, T, 1, have)


@pytest.mark.parametrize("B,H", SEQ, ids=SEQ_IDS)
@pytest.mark.parametrize("path", ["auto", "rows", "packed", "gemm"])
def test_engine_sequence(benchmark, B, H, path):
    from gru_engine import config

    with config.override(gru_path=path):
        fn = _fns(B, H)["engine"]
        fn()
        benchmark.group = f"sequence T={T} B={B} H={H}"
        benchmark.extra_info["gflop"] = C.gflops([C._weights(H, H)], B, T)
        benchmark(fn)


@pytest.mark.parametrize("B,H", SEQ, ids=SEQ_IDS)
@pytest.mark.parametrize("who", ["ort", "torch"])
def test_baseline_sequence(benchmark, B, H, who):
    fns = _fns(B, H)
    if who not in fns:
        pytest.skip(f"{who} not installed")
    fns[who]()
    benchmark.group = f"sequence T={T} B={B} H={H}"
    benchmark(fns[who])


def test_run_overhead(benchmark):
    """api.run on a tiny input: validation, allocation, dispatch (no real work)."""
    from gru_engine import GRU, Model, api

    W, R, Bw = C._weights(4, 8)
    model = Model(layers=(GRU(W=W, R=R, B=Bw, linear_before_reset=1),))
    x = np.zeros((1, 2, 4), np.float32)
    api.run(model, x)
    benchmark.group = "overhead"
    benchmark(api.run, model, x)

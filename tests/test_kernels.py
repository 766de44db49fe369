"""CPU kernel paths against the float64 oracle (tests/naive.py) and onnxruntime.

Every path of :func:`gru_engine.api._run_gru` is forced in turn: the row kernel (hand
register-blocked products, batch blocks of 4/2/1 rows, parallel items) and the per-step
GEMM path; sigmoid/tanh fast path and the generic fallback (other activations, clip);
float32 and float64; lengths, Keras masks (carry and zero); threads; the accuracy of the
float32 rational activations.
"""

from __future__ import annotations

import numpy as np
import pytest

import naive
from conftest import ATOL, NO_JIT, random_gru_weights, slow_without_jit
from gru_engine import api, config
from gru_engine import kernels_cpu as K
from gru_engine.errors import InputShapeError, InputTypeError
from gru_engine.model import GRU, Masking, Model

PATHS = ["rows", "gemm", "packed"]


@pytest.fixture
def path(request):
    with config.override(gru_path=request.param):
        yield request.param


def _model(rng, I, H, direction="forward", lbr=1, dtype=np.float32, **kw):
    D = 2 if direction == "bidirectional" else 1
    W, R, B = random_gru_weights(rng, I, H, D, dtype)
    return Model(layers=(GRU(W=W, R=R, B=B, direction=direction, linear_before_reset=lbr, **kw),)), (W, R, B)


def _oracle(x, W, R, B, lengths=None, h0=None, **kw):
    Yr, Yh = naive.onnx_gru(x.transpose(1, 0, 2), W, R, B, lengths, h0, **kw)
    T, D, N, H = Yr.shape
    return Yr.transpose(2, 0, 1, 3).reshape(N, T, D * H), Yh


# --------------------------------------------------------------------------- fast activations


_GRID = np.concatenate([np.linspace(-30, 30, 200001), [-1e-30, 0.0, 1e-30, 1e-4, -1e-4, 8.99, 9.0, 9.01, 1e30, -1e30]])


def test_fast_activations_accuracy():
    """MLAS's rational tanh evaluated in float32: a few ulp (2.6e-7 worst), relative
    accuracy kept near 0, never beyond +-1; sigmoid = (1 + tanh(x/2)) / 2 in [0, 1]."""
    x32 = _GRID.astype(np.float32)
    xd = x32.astype(np.float64)
    out = np.empty_like(x32)
    K.fast_act_array(x32, 1, out)
    err_t = np.abs(out - np.tanh(xd))
    assert err_t.max() < 3e-7, f"tanh max abs error {err_t.max():.3g}"
    nz = (np.abs(xd) < 1e-2) & (xd != 0)  # near 0 the error must be relative (tanh(x) ~ x)
    rel = err_t[nz] / np.abs(np.tanh(xd[nz]))
    assert rel.max() < 3e-7, f"tanh relative error near 0 {rel.max():.3g}"
    assert np.abs(out).max() <= 1
    K.fast_act_array(x32, 0, out)
    ref = 1.0 / (1.0 + np.exp(-np.clip(xd, -700, 700)))
    err_s = np.abs(out - ref)
    # interpreted (NUMBA_DISABLE_JIT=1) the same formula rounds without FMA: a little looser
    assert err_s.max() < (3e-7 if NO_JIT else 1.6e-7), f"sigmoid max abs error {err_s.max():.3g}"
    assert out.min() >= 0 and out.max() <= 1
    big = ref > 1e-2
    assert (err_s[big] / ref[big]).max() < 1.6e-5


@pytest.mark.skipif(NO_JIT, reason="compares the compiled kernel's rounding (FMA) with onnxruntime's")
@pytest.mark.parametrize("op,code", [("Tanh", 1), ("Sigmoid", 0)])
def test_fast_activations_as_accurate_as_onnxruntime(op, code):
    """On the same float32 inputs our worst error is no larger than onnxruntime's own."""
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    from conftest import ort_session

    graph = helper.make_graph(
        [helper.make_node(op, ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])],
    )
    sess = ort_session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    x32 = _GRID.astype(np.float32)
    xd = x32.astype(np.float64)
    ref = np.tanh(xd) if code == 1 else 1.0 / (1.0 + np.exp(-np.clip(xd, -700, 700)))
    ours = np.empty_like(x32)
    K.fast_act_array(x32, code, ours)
    theirs = sess.run(None, {"x": x32})[0]
    assert np.abs(ours - ref).max() <= np.abs(theirs - ref).max() + 1e-8


def test_fast_activations_propagate_nan():
    out = np.empty(2, np.float32)
    K.fast_act_array(np.array([np.nan, 1.0], np.float32), 1, out)
    assert np.isnan(out[0]) and np.isfinite(out[1])
    K.fast_act_array(np.array([np.nan, 1.0], np.float32), 0, out)
    assert np.isnan(out[0])


# --------------------------------------------------------------------------- hand product


@pytest.mark.parametrize("nb", [1, 2, 3, 4, 5, 7, 8])
@pytest.mark.parametrize("K_", [1, 3, 4, 13])
def test_matmul_rows_blocks(nb, K_, rng):
    V = rng.standard_normal((nb, K_)).astype(np.float32)
    RT = rng.standard_normal((K_, 24)).astype(np.float32)
    G = np.full((nb, 30), np.nan, np.float32)
    K.matmul_rows(V, nb, RT, G, 3)
    np.testing.assert_allclose(G[:, 3:27], V.astype(np.float64) @ RT, rtol=1e-5, atol=1e-5)
    assert np.isnan(G[:, :3]).all() and np.isnan(G[:, 27:]).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nb", [1, 2, 3, 5, 8, 9, 12, 15, 16, 19, 139])  # 139 > MC: two row blocks
@pytest.mark.parametrize("K_,N", [(1, 5), (13, 24), (16, 33), (40, 96), (7, 200), (300, 40)])  # 300 > KC: two k blocks
def test_matmul_packed_tiles(dtype, nb, K_, N, rng):
    """The register-tile product (IR tiles for float32, loops for float64): every row-block
    remainder, panels padded past N with zeros, nothing written outside the padded width."""
    from gru_engine import kernels_gemm as KG

    V = rng.standard_normal((nb, K_)).astype(dtype)
    RT = rng.standard_normal((K_, N)).astype(dtype)
    RP = KG.pack_panels(RT)
    Np = KG.padded_width(N)
    assert RP.shape == (Np // KG.NR, K_, KG.NR) and Np >= N and Np % KG.NR == 0
    G = np.full((nb + 1, 3 + Np + 2), np.nan, dtype)
    KG.matmul_packed(V, nb, RP, G, 3)
    # float32 rounding of K products of N(0, 1) terms (|sum| ~ sqrt(K)): a wrong tile is off by O(1)
    np.testing.assert_allclose(G[:nb, 3:3 + N], V.astype(np.float64) @ RT, rtol=1e-5, atol=2e-6 * K_)
    assert (G[:nb, 3 + N:3 + Np] == 0).all()  # zero-padded columns
    assert np.isnan(G[:, :3]).all() and np.isnan(G[:, 3 + Np:]).all() and np.isnan(G[nb]).all()


# --------------------------------------------------------------------------- paths vs oracle


@slow_without_jit
@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("lbr", [0, 1])
@pytest.mark.parametrize("B", [1, 3, 6])
def test_paths_vs_oracle(path, dtype, direction, lbr, B, rng):
    T, I, H = 9, 5, 12
    m, (W, R, Bw) = _model(rng, I, H, direction, lbr, dtype)
    D = m.layers[0].num_directions
    x = rng.standard_normal((B, T, I)).astype(dtype)
    h0 = rng.standard_normal((D, B, H)).astype(dtype)
    lengths = rng.integers(0, T + 1, B) if B > 1 else None
    y, h = api.run(m, x, lengths=lengths, initial_state=h0)
    yr, hr = _oracle(x, W, R, Bw, lengths, h0, direction=direction, linear_before_reset=lbr)
    tol = ATOL[dtype]
    np.testing.assert_allclose(y, yr, atol=tol, rtol=0)
    np.testing.assert_allclose(h, hr, atol=tol, rtol=0)
    assert y.dtype == dtype


@slow_without_jit
@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.parametrize("lbr", [0, 1])
def test_generic_activations_and_clip(path, lbr, rng):
    T, I, H, B = 7, 3, 8, 5
    acts = ("HardSigmoid", "Softsign", "LeakyRelu", "ScaledTanh")
    kw = dict(activations=acts, activation_alpha=(0.3, 0.05, 0.9), activation_beta=(0.4, 1.1), clip=1.5)
    m, (W, R, Bw) = _model(rng, I, H, "bidirectional", lbr, **kw)
    x = rng.standard_normal((B, T, I)).astype(np.float32) * 2
    lengths = np.array([7, 0, 3, 7, 1])
    y, h = api.run(m, x, lengths=lengths)
    yr, hr = _oracle(x, W, R, Bw, lengths, direction="bidirectional", linear_before_reset=lbr, **kw)
    np.testing.assert_allclose(y, yr, atol=ATOL[np.float32], rtol=0)
    np.testing.assert_allclose(h, hr, atol=ATOL[np.float32], rtol=0)


def _carry_reference(x, keep, W, R, Bw, direction, lbr, masked_output):
    """Keras masks: the state skips masked steps; the output there repeats the previous
    one ("carry") or is 0 ("zero"). Built from the oracle run on the valid steps only."""
    B, T, _ = x.shape
    D, H = R.shape[0], R.shape[2]
    Y = np.zeros((B, T, D * H))
    hn = np.zeros((D, B, H))
    for b in range(B):
        idx = np.flatnonzero(keep[b])
        yv, hv = _oracle(x[b : b + 1, idx], W, R, Bw, direction=direction, linear_before_reset=lbr)
        hn[:, b] = hv[:, 0]
        for d in range(D):
            cur = np.zeros(H)
            order = range(T) if d == 0 and direction != "reverse" else range(T - 1, -1, -1)
            pos = {t: k for k, t in enumerate(idx)}
            for t in order:
                if t in pos:
                    cur = yv[0, pos[t], d * H : (d + 1) * H]
                    Y[b, t, d * H : (d + 1) * H] = cur
                else:
                    Y[b, t, d * H : (d + 1) * H] = cur if masked_output == "carry" else 0.0
    return Y, hn


@slow_without_jit
@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.parametrize("masked_output", ["carry", "zero"])
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_keras_masks(path, masked_output, direction, rng):
    T, I, H, B = 8, 4, 6, 5
    D = 2 if direction == "bidirectional" else 1
    W, R, Bw = random_gru_weights(rng, I, H, D)
    gru = GRU(W=W, R=R, B=Bw, direction=direction, linear_before_reset=1, masked_output=masked_output)
    m = Model(layers=(Masking(mask_value=0.0), gru), input_size=I)
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    keep = rng.random((B, T)) > 0.35
    keep[0] = True
    keep[1, :] = False
    keep[1, 3] = True
    x[~keep] = 0.0
    y, h = api.run(m, x)
    yr, hr = _carry_reference(x, keep, W, R, Bw, direction, 1, masked_output)
    np.testing.assert_allclose(y, yr, atol=ATOL[np.float32], rtol=0)
    np.testing.assert_allclose(h, hr, atol=ATOL[np.float32], rtol=0)


@slow_without_jit
@pytest.mark.parametrize("path", ["tiles"], indirect=True)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("lbr", [0, 1])
@pytest.mark.parametrize("generic", [False, True])
def test_hidden_tiles_vs_oracle(path, dtype, direction, lbr, generic, rng):
    """Batch 1 with hidden units split over threads (H=40, 2 threads: tiles of 32 and 8, padded)."""
    from gru_engine import threads

    T, I, H = 11, 3, 40
    kw = dict(activations=("HardSigmoid", "Softsign") * (2 if direction == "bidirectional" else 1), clip=2.0) if generic else {}
    m, (W, R, Bw) = _model(rng, I, H, direction, lbr, dtype, **kw)
    x = rng.standard_normal((1, T, I)).astype(dtype)
    old = threads.get_num_threads()
    try:
        threads.set_num_threads(min(3, __import__("numba").config.NUMBA_NUM_THREADS))
        for lengths in (None, [7], [0]):
            y, h = api.run(m, x, lengths=lengths)
            yr, hr = _oracle(x, W, R, Bw, lengths, direction=direction, linear_before_reset=lbr, **kw)
            np.testing.assert_allclose(y, yr, atol=ATOL[dtype], rtol=0)
            np.testing.assert_allclose(h, hr, atol=ATOL[dtype], rtol=0)
    finally:
        threads.set_num_threads(old)


@slow_without_jit
@pytest.mark.parametrize("kernel", ["rows", "packed"])
@pytest.mark.parametrize("project", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B,direction,lbr", [(1, "forward", 1), (1, "reverse", 0), (6, "bidirectional", 1), (5, "forward", 0)])
def test_row_kernel_projection_and_parallel_split(kernel, project, dtype, B, direction, lbr, rng):
    """Input projection in the kernel (split over time chunks at batch 1; panel-padded
    columns per direction for the packed product) or by NumPy, on 2 threads."""
    from gru_engine import threads

    T, I, H = 70, 7, 9
    m, (W, R, Bw) = _model(rng, I, H, direction, lbr, dtype)
    x = rng.standard_normal((B, T, I)).astype(dtype)
    lengths = rng.integers(0, T + 1, B)
    old = threads.get_num_threads()
    try:
        threads.set_num_threads(min(2, __import__("numba").config.NUMBA_NUM_THREADS))
        with config.override(gru_path=kernel, project_in_kernel=project, parallel_min_macs=0,
                             parallel_split_macs=0, split_single_item=True):
            y, h = api.run(m, x, lengths=lengths)
    finally:
        threads.set_num_threads(old)
    yr, hr = _oracle(x, W, R, Bw, lengths, direction=direction, linear_before_reset=lbr)
    np.testing.assert_allclose(y, yr, atol=ATOL[dtype], rtol=0)
    np.testing.assert_allclose(h, hr, atol=ATOL[dtype], rtol=0)


@slow_without_jit
def test_auto_path_choice_and_threads_agree(rng):
    """The automatic choice (both paths reached), 1 and 2 threads: same results."""
    from gru_engine import threads

    for B, H, path in [(1, 512, "rows"), (1, 32, "rows"), (2, 16, "packed"), (16, 512, "packed"), (64, 64, "packed")]:
        assert api.choose_gru_path(B, H, 1, 1, np.float32) == path, (B, H)
    assert api.choose_gru_path(1, 128, 1, 2, np.float32) == "packed"  # batch 1, several threads
    for B, H, path in [(1, 512, "rows"), (16, 64, "rows"), (16, 128, "rows"), (16, 512, "gemm"),
                       (16, 256, "rows"), (64, 64, "rows"), (64, 128, "gemm"), (64, 512, "gemm")]:
        assert api.choose_gru_path(B, H, 1, 2, np.float64) == path, (B, H)
    m, _ = _model(rng, 6, 16, "bidirectional", 0)
    x = rng.standard_normal((5, 40, 6)).astype(np.float32)
    old = threads.get_num_threads()
    try:
        threads.set_num_threads(1)
        y1, h1 = api.run(m, x)
        threads.set_num_threads(2)
        y2, h2 = api.run(m, x)
    finally:
        threads.set_num_threads(old)
    np.testing.assert_allclose(y1, y2, atol=1e-6, rtol=0)
    np.testing.assert_allclose(h1, h2, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- onnxruntime


def _ort_gru(W, R, Bw, direction, lbr):
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    from conftest import ort_session

    D, H3, I = W.shape
    H = H3 // 3
    node = helper.make_node(
        "GRU", ["X", "W", "R", "B", "L"], ["Y", "Y_h"], hidden_size=H, direction=direction, linear_before_reset=lbr
    )
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, None, I]),
         helper.make_tensor_value_info("L", TensorProto.INT32, [None])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(R, "R"), numpy_helper.from_array(Bw, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    return ort_session(model)


@slow_without_jit
@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.parametrize("direction,lbr", [("forward", 1), ("bidirectional", 0), ("reverse", 1)])
def test_paths_vs_onnxruntime(path, direction, lbr, rng):
    T, I, H, B = 20, 16, 32, 9
    m, (W, R, Bw) = _model(rng, I, H, direction, lbr)
    sess = _ort_gru(W, R, Bw, direction, lbr)
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    lengths = rng.integers(0, T + 1, B).astype(np.int32)
    Y, Y_h = sess.run(None, {"X": x.transpose(1, 0, 2).copy(), "L": lengths})
    y, h = api.run(m, x, lengths=lengths)
    np.testing.assert_allclose(y, Y.transpose(2, 0, 1, 3).reshape(B, T, -1), atol=2e-6, rtol=0)
    np.testing.assert_allclose(h, Y_h, atol=2e-6, rtol=0)


# --------------------------------------------------------------------------- threads


def test_set_num_threads():
    import scipy.linalg  # noqa: F401  (loads the BLAS numba's np.dot would call)

    import numba

    import gru_engine
    from gru_engine import threads

    old = threads.get_num_threads()
    top = numba.config.NUMBA_NUM_THREADS
    try:
        assert gru_engine.set_num_threads(1) == 1
        assert numba.get_num_threads() == 1 and threads.get_num_threads() == 1
        tpc = pytest.importorskip("threadpoolctl")
        infos = [i for i in tpc.threadpool_info() if i["user_api"] == "blas"]
        inner = [i for i in infos if threads._is_numba_blas(i["filepath"])]
        outer = [i for i in infos if not threads._is_numba_blas(i["filepath"])]
        assert inner and all(i["num_threads"] == 1 for i in inner)
        assert all(i["num_threads"] == 1 for i in outer)
        if top >= 2:
            threads.set_num_threads(2)
            infos = [i for i in tpc.threadpool_info() if i["user_api"] == "blas"]
            assert all(i["num_threads"] == 2 for i in infos if not threads._is_numba_blas(i["filepath"]))
            assert all(i["num_threads"] == 1 for i in infos if threads._is_numba_blas(i["filepath"]))
            assert numba.get_num_threads() == 2
        with pytest.raises(InputShapeError, match=r"n must be in \[1, "):
            threads.set_num_threads(0)
        with pytest.raises(InputShapeError, match="n must be in"):
            threads.set_num_threads(top + 1)
        with pytest.raises(InputTypeError, match="n must be an integer, got float"):
            threads.set_num_threads(1.5)
    finally:
        threads.set_num_threads(old)


def test_env_var_sets_threads(tmp_path):
    import subprocess
    import sys

    code = (
        "import numpy as np, numba\n"
        "from gru_engine import threads\n"
        "threads.ensure_init()\n"
        "print(threads.get_num_threads(), numba.get_num_threads())\n"
    )
    import os

    env = dict(os.environ, GRU_ENGINE_NUM_THREADS="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "1"]
    env["GRU_ENGINE_NUM_THREADS"] = "two"
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "GRU_ENGINE_NUM_THREADS must be an integer, got 'two'" in out.stderr


# --------------------------------------------------------------------------- warmup


@slow_without_jit
def test_warmup_command_compiles_all_variants(capsys):
    import argparse

    from gru_engine import cli_perf

    parser = argparse.ArgumentParser()
    cli_perf.add_parser(parser.add_subparsers())
    args = parser.parse_args(["warmup"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "GRU/Dense float32" in out and "GRU/Dense float64" in out and "numba cache" in out
    from gru_engine import kernels_cpu as K

    if hasattr(K.gru_rows, "signatures"):
        for kern in (K.gru_rows, K.gru_gates_step, K.dense_act_inplace):
            dts = {str(sig[0].dtype if hasattr(sig[0], "dtype") else sig[0]) for sig in kern.signatures}
            assert len(kern.signatures) >= 2, (kern, dts)

"""The GPU path (numba.cuda) against the CPU engine, on tiny sizes.

Runs on a real GPU, or on numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``, how CI runs
it, with ``GRU_ENGINE_THREADS_PER_BLOCK=16``); the simulator runs every CUDA thread as a
Python thread, so sizes stay tiny (B <= 3, T <= 6, H <= 8). One list of cases covers the
ONNX GRU features of the CPU engine (directions, both reset conventions, every activation
with alpha/beta, clip, lengths including 0, initial state, float64) and the Keras ones
(masks, merge modes, go_backwards, last-step output); the CPU engine (``model.run``,
itself tested against onnxruntime and the float64 oracle) is the reference.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import ATOL, random_gru_weights

from gru_engine import GRU, Activation, Dense, DeviceError, Embedding, Masking, Model
from gru_engine.errors import InputShapeError, InputTypeError, StreamingError
from gru_engine.model import DENSE_ACTIVATIONS, RNN_ACTIVATIONS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def _gpu_present() -> bool:
    if SIMULATOR:
        return False
    try:
        from numba import cuda

        return bool(cuda.is_available())
    except Exception:
        return False


GPU = _gpu_present()
needs_cuda = pytest.mark.skipif(
    not (SIMULATOR or GPU),
    reason="no CUDA GPU here and NUMBA_ENABLE_CUDASIM is not set (CI runs these on the CUDA simulator)",
)


@pytest.fixture(autouse=True, scope="module")
def _fast_thread_switching():
    """The simulator's syncthreads is a barrier over Python threads: switch threads often."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(5e-4)
    yield
    sys.setswitchinterval(old)


def tol(dtype) -> float:
    # different summation order than the CPU kernels (tiled products): a few ulps more
    return 10 * ATOL[np.dtype(dtype).type]


def assert_close(got, want, dtype, what=""):
    got = np.asarray(got)
    want = np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    err = float(np.max(np.abs(got - want))) if got.size else 0.0
    assert err <= tol(dtype), f"{what}: max abs error {err:.3g} > {tol(dtype):.3g}"


def assert_states_close(got, want, dtype):
    if isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want)
        for g, w in zip(got, want):
            assert_close(g, w, dtype, "h_n")
    else:
        assert_close(got, want, dtype, "h_n")


# --------------------------------------------------------------------------- case list

ALL_ACTS = list(RNN_ACTIVATIONS)
#: (id, GRU options, run options). Every RNN activation appears at least once, as f or g.
CASES = [
    ("fwd-lbr0", dict(direction="forward", linear_before_reset=0), {}),
    ("fwd-lbr1-H8", dict(direction="forward", linear_before_reset=1), dict(H=8)),  # 3H > 16 threads
    ("rev-lbr0-lens", dict(direction="reverse", linear_before_reset=0), dict(lengths=True)),
    ("rev-lbr1-h0", dict(direction="reverse", linear_before_reset=1), dict(h0=True)),
    ("bi-lbr0-lens-h0-H8", dict(direction="bidirectional", linear_before_reset=0), dict(lengths=True, h0=True, H=8)),
    ("bi-lbr1-lens", dict(direction="bidirectional", linear_before_reset=1), dict(lengths=True)),
    (
        "acts-hardsig-scaledtanh-leaky-affine",
        dict(direction="bidirectional", activations=("HardSigmoid", "ScaledTanh", "LeakyRelu", "Affine"),
             activation_alpha=(0.3, 0.9, 0.2, 0.5), activation_beta=(0.4, 1.1, 0.1)),
        {},
    ),
    ("acts-defaults", dict(activations=("HardSigmoid", "Elu")), {}),
    ("acts-relu-softsign", dict(activations=("Softsign", "Relu"), linear_before_reset=1), {}),
    ("acts-thresholded-softplus", dict(activations=("Softplus", "ThresholdedRelu"), activation_alpha=(0.1,)), {}),
    ("acts-tanh-sigmoid-lens", dict(activations=("Tanh", "Sigmoid"), linear_before_reset=1), dict(lengths=True)),
    ("clip-lbr0", dict(clip=0.4, linear_before_reset=0), dict(lengths=True)),
    ("clip-bi-lbr1", dict(direction="bidirectional", clip=0.3, linear_before_reset=1), {}),
    ("last-step-bi", dict(direction="bidirectional", return_sequences=False), dict(lengths=True)),
    ("merge-sum", dict(direction="bidirectional", merge="sum"), {}),
    ("merge-mul-last", dict(direction="bidirectional", merge="mul", return_sequences=False), {}),
    ("merge-ave-lbr1", dict(direction="bidirectional", merge="ave", linear_before_reset=1), {}),
    ("go-backwards", dict(direction="reverse", time_reversed_output=True), {}),
    ("bi-time-reversed-keras", dict(direction="bidirectional", time_reversed_output=True, linear_before_reset=1), {}),
    ("float64-bi-lens", dict(direction="bidirectional", linear_before_reset=0), dict(lengths=True, dtype=np.float64)),
    ("float64-fwd-lbr1-h0", dict(linear_before_reset=1), dict(h0=True, dtype=np.float64)),
]
#: cases also run through the per-step path (each step: tiled products over all rows)
STEPWISE = {"fwd-lbr0", "bi-lbr0-lens-h0-H8", "bi-lbr1-lens", "acts-hardsig-scaledtanh-leaky-affine", "merge-mul-last",
            "bi-time-reversed-keras", "float64-bi-lens"}


def test_case_list_covers_every_activation():
    used = {a for _, g, _ in CASES for a in g.get("activations", ("Sigmoid", "Tanh"))}
    assert used == set(ALL_ACTS)


def build_case(gru_opts, run_opts, seed=0, I=3, B=3, T=6):
    rng = np.random.default_rng(seed)
    H = run_opts.get("H", 5)
    dtype = run_opts.get("dtype", np.float32)
    D = 2 if gru_opts.get("direction") == "bidirectional" else 1
    W, R, Bias = random_gru_weights(rng, I, H, D, dtype)
    model = Model((GRU(W=W, R=R, B=Bias, **gru_opts),))
    x = rng.uniform(-1, 1, (B, T, I)).astype(dtype)
    kw = {}
    if run_opts.get("lengths"):
        kw["lengths"] = np.array([T, 0, T - 2][:B])
    if run_opts.get("h0"):
        kw["initial_state"] = rng.uniform(-0.5, 0.5, (D, B, H)).astype(dtype)
    return model, x, kw


def run_case(gru_opts, run_opts, recurrence):
    model, x, kw = build_case(gru_opts, run_opts)
    want_y, want_h = model.run(x, **kw)
    got_y, got_h = model.to("cuda").run(x, recurrence=recurrence, **kw)
    assert isinstance(got_y, np.ndarray)
    assert_close(got_y, want_y, model.dtype, "y")
    assert_states_close(got_h, want_h, model.dtype)


@needs_cuda
@pytest.mark.parametrize("gru_opts,run_opts", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_gru_cases_persistent_kernel_vs_cpu(gru_opts, run_opts):
    run_case(gru_opts, run_opts, "persistent")


@needs_cuda
@pytest.mark.parametrize(
    "gru_opts,run_opts", [c[1:] for c in CASES if c[0] in STEPWISE], ids=[c[0] for c in CASES if c[0] in STEPWISE]
)
def test_gru_cases_per_step_launches_vs_cpu(gru_opts, run_opts):
    run_case(gru_opts, run_opts, "stepwise")


@needs_cuda
@pytest.mark.parametrize(
    "gru_opts,run_opts", [c[1:] for c in CASES if c[0] in STEPWISE], ids=[c[0] for c in CASES if c[0] in STEPWISE]
)
def test_gru_cases_persistent_kernel_with_row_tiles_vs_cpu(gru_opts, run_opts, monkeypatch):
    from gru_engine import kernels_cuda

    # 2 blocks wanted for B*D = 3 or 6 rows: tiles of 2 (+ a partial tile of 1) or 3 rows
    monkeypatch.setattr(kernels_cuda, "PERSISTENT_MAX_BLOCKS", 2)
    run_case(gru_opts, run_opts, "auto")


@needs_cuda
def test_plan_recurrence_and_auto_paths_match_cpu(monkeypatch):
    from gru_engine import kernels_cuda as K

    f4 = np.float32
    assert K.plan_recurrence(f4, 3, 2, 5) == 1
    assert K.plan_recurrence(f4, 3, 2, 5, "stepwise") == 0
    assert K.plan_recurrence(f4, 4096, 1, 64) == 0  # too many rows: per-step products
    assert K.plan_recurrence(f4, 4096, 1, 64, "persistent") == K.RBMAX
    assert K.plan_recurrence(f4, 1, 1, 4096) == 0  # state does not fit in shared memory
    assert K.plan_recurrence(np.float64, 1, 1, 1536) == 1 and K.plan_recurrence(np.float64, 1, 1, 1537) == 0
    model, x, kw = build_case(dict(direction="bidirectional", linear_before_reset=1), dict(lengths=True))
    want_y, want_h = model.run(x, **kw)
    for limit, rb in ((1000, 1), (4, 2), (2, 3), (1, 0)):  # B*D = 6 rows
        monkeypatch.setattr(K, "PERSISTENT_MAX_BLOCKS", limit)
        assert K.plan_recurrence(f4, 3, 2, 5) == rb
        got_y, got_h = model.run(x, device="cuda", **kw)
        assert_close(got_y, want_y, model.dtype, f"y (limit {limit})")
        assert_close(got_h, want_h, model.dtype, f"h_n (limit {limit})")
    monkeypatch.setattr(K, "PERSISTENT_MAX_SHARED", 64)  # 4*H floats of H=5 no longer fit
    with pytest.raises(NotImplementedError, match="recurrence='persistent' needs hidden_size <= 4 in float32, got 5"):
        model.to("cuda").run(x, recurrence="persistent")
    got_y, _ = model.run(x, device="cuda", **kw)  # "auto" goes per step
    assert_close(got_y, want_y, model.dtype, "y (per step, state too big)")


# --------------------------------------------------------------------------- whole models


def f32(rng, *shape, scale=0.5):
    return rng.uniform(-scale, scale, shape).astype(np.float32)


def stacked_model(rng, I=3, H1=4, H2=4, out=3):
    W1, R1, B1 = random_gru_weights(rng, I, H1, 1)
    W2, R2, B2 = random_gru_weights(rng, H1, H2, 2)
    return Model((
        GRU(W=W1, R=R1, B=B1, linear_before_reset=1),
        GRU(W=W2, R=R2, B=B2, direction="bidirectional"),
        Dense(kernel=f32(rng, 2 * H2, out), bias=f32(rng, out), activation="softmax"),
    ))


@needs_cuda
def test_stacked_model_with_dense_head_lengths_and_initial_state():
    rng = np.random.default_rng(1)
    model = stacked_model(rng)
    x = f32(rng, 2, 5, 3, scale=1.0)
    h0 = f32(rng, 3, 2, 4)
    kw = dict(lengths=[3, 5], initial_state=h0)
    want_y, want_h = model.run(x, **kw)
    got_y, got_h = model.run(x, device="cuda", **kw)
    assert_close(got_y, want_y, np.float32, "y")
    assert_close(got_h, want_h, np.float32, "h_n")
    # the list form of initial_state gives the same
    got_y2, _ = model.run(x, device="cuda", lengths=[3, 5], initial_state=[h0[:1], h0[1:]])
    assert_close(got_y2, want_y, np.float32, "y (list initial_state)")


@needs_cuda
def test_embedding_mask_zero_keras_masks_and_last_step_head():
    rng = np.random.default_rng(2)
    E, H = 3, 4
    W1, R1, B1 = random_gru_weights(rng, E, H, 1)
    W2, R2, B2 = random_gru_weights(rng, H, H, 2)
    model = Model((
        Embedding(table=f32(rng, 7, E, scale=1.0), mask_zero=True),
        GRU(W=W1, R=R1, B=B1, linear_before_reset=1),  # Keras GRU: masked steps carry
        GRU(W=W2, R=R2, B=B2, direction="bidirectional", masked_output="zero", return_sequences=False, merge="ave"),
        Dense(kernel=f32(rng, H, 2), activation="sigmoid"),
    ))
    tokens = np.array([[3, 0, 5, 6, 0], [0, 0, 1, 2, 4]], np.int64)
    want_y, want_h = model.run(tokens)
    got_y, got_h = model.run(tokens, device="cuda")
    assert got_y.shape == (2, 2)
    assert_close(got_y, want_y, np.float32, "y")
    assert_close(got_h, want_h, np.float32, "h_n")
    with pytest.raises(InputShapeError, match="token ids"):
        model.run(np.array([[1, 9]]), device="cuda")


@needs_cuda
def test_masking_layer_and_mixed_hidden_sizes_give_state_list():
    rng = np.random.default_rng(3)
    W1, R1, B1 = random_gru_weights(rng, 2, 3, 1)
    W2, R2, B2 = random_gru_weights(rng, 3, 5, 1)
    model = Model((
        Masking(mask_value=0.0),
        GRU(W=W1, R=R1, B=B1),
        GRU(W=W2, R=R2, B=B2, linear_before_reset=1),
    ), input_size=2)
    x = f32(rng, 2, 5, 2, scale=1.0)
    x[0, 1] = 0.0
    x[1, 3:] = 0.0
    want_y, want_h = model.run(x)
    got_y, got_h = model.run(x, device="cuda")
    assert_close(got_y, want_y, np.float32, "y")
    assert isinstance(got_h, list) and [h.shape for h in got_h] == [(1, 2, 3), (1, 2, 5)]
    assert_states_close(got_h, want_h, np.float32)


@needs_cuda
@pytest.mark.parametrize("act", list(DENSE_ACTIVATIONS))
def test_dense_and_activation_layers_every_activation(act):
    rng = np.random.default_rng(4)
    model = Model((
        Dense(kernel=f32(rng, 3, 4, scale=1.0), bias=f32(rng, 4), activation=act, alpha=0.2),
        Activation(activation=act, alpha=0.3),
    ))
    x = f32(rng, 2, 3, 3, scale=1.0)
    want_y, want_h = model.run(x)
    got_y, got_h = model.run(x, device="cuda")
    assert want_h is None and got_h is None
    assert_close(got_y, want_y, np.float32, f"y ({act})")


# --------------------------------------------------------------------------- API


@needs_cuda
def test_to_cuda_is_cached_and_to_cpu_returns_the_model():
    rng = np.random.default_rng(5)
    model = stacked_model(rng)
    dm = model.to("cuda")
    assert model.to("cuda") is dm and model.to("cuda:0") is dm
    assert dm.to("cpu") is model and model.to("cpu") is model
    x = f32(rng, 1, 3, 3)
    assert_close(dm(x), model(x), np.float32, "dm(x)")
    with pytest.raises(DeviceError, match="device must be 'cpu' or 'cuda'"):
        model.to("tpu")


@needs_cuda
def test_device_input_gives_device_output():
    from numba import cuda

    rng = np.random.default_rng(6)
    model = stacked_model(rng)
    x = f32(rng, 2, 4, 3, scale=1.0)
    want_y, want_h = model.run(x, lengths=[4, 2])
    y, h = model.run(cuda.to_device(x), device="cuda", lengths=cuda.to_device(np.array([4, 2])),
                     initial_state=cuda.to_device(np.zeros((3, 2, 4), np.float32)))
    assert not isinstance(y, np.ndarray) and hasattr(y, "copy_to_host")
    assert not isinstance(h, np.ndarray) and hasattr(h, "copy_to_host")
    assert_close(y.copy_to_host(), want_y, np.float32, "y")
    assert_close(h.copy_to_host(), want_h, np.float32, "h_n")


@needs_cuda
def test_bad_inputs_are_typed_errors():
    from numba import cuda

    rng = np.random.default_rng(7)
    model = stacked_model(rng)
    with pytest.raises(InputTypeError, match="dtype float32"):
        model.run(cuda.to_device(np.zeros((1, 2, 3), np.float64)), device="cuda")
    with pytest.raises(InputShapeError, match=r"x must have shape \(batch, seq_len, 3\)"):
        model.run(cuda.to_device(np.zeros((1, 2, 4), np.float32)), device="cuda")
    with pytest.raises(InputShapeError, match=r"x must have shape"):
        model.run(np.zeros((2, 3)), device="cuda")
    with pytest.raises(InputShapeError, match="lengths must lie in"):
        model.run(np.zeros((1, 2, 3)), device="cuda", lengths=[3])
    with pytest.raises(InputShapeError, match="initial_state must have shape"):
        model.run(np.zeros((1, 2, 3)), device="cuda", initial_state=np.zeros((2, 1, 4)))
    with pytest.raises(ValueError, match="recurrence must be"):
        model.to("cuda").run(np.zeros((1, 2, 3)), recurrence="fast")


# --------------------------------------------------------------------------- streaming


def forward_model(rng, I=3, H=4, tokens=False):
    W1, R1, B1 = random_gru_weights(rng, 2 if tokens else I, H, 1)
    W2, R2, B2 = random_gru_weights(rng, H, H, 1)
    first = (Embedding(table=f32(rng, 6, 2, scale=1.0), mask_zero=True),) if tokens else ()
    return Model(first + (
        GRU(W=W1, R=R1, B=B1, linear_before_reset=1),
        GRU(W=W2, R=R2, B=B2, activations=("HardSigmoid", "Tanh"), clip=2.0),
        Dense(kernel=f32(rng, H, 2), activation="tanh"),
    ))


@needs_cuda
def test_stream_steps_and_chunks_match_whole_sequence_run():
    rng = np.random.default_rng(8)
    model = forward_model(rng)
    B, T = 3, 5
    x = f32(rng, B, T, 3, scale=1.0)
    want_y, want_h = model.run(x)
    s = model.stream(B, device="cuda")
    ys = [s.step(x[:, t]) for t in range(3)]
    assert ys[0].shape == (B, 2) and isinstance(ys[0], np.ndarray)
    ys.append(s.run(x[:, 3:]))
    got = np.concatenate([np.stack(ys[:3], axis=1), ys[3]], axis=1)
    assert_close(got, want_y, np.float32, "stepped y")
    assert_close(s.state, want_h, np.float32, "stream state")


@needs_cuda
def test_stream_state_reset_copy_and_out():
    rng = np.random.default_rng(9)
    model = forward_model(rng)
    B = 2
    x = f32(rng, B, 4, 3, scale=1.0)
    s = model.stream(B, device="cuda")
    s.run(x[:, :2])
    saved = s.state
    twin = s.copy()
    out = np.empty((B, 2), np.float32)
    r = s.step(x[:, 2], out=out)
    assert r is out
    assert_close(twin.step(x[:, 2]), out, np.float32, "copy steps alike")
    s.state = saved  # rewind
    assert_close(s.step(x[:, 2]), out, np.float32, "after state set")
    s.reset(rows=[1])
    st = s.state
    assert np.all(st[:, 1] == 0) and np.any(st[:, 0] != 0)
    s.reset()
    assert np.all(s.state == 0)
    # after a reset, row 0 starts again: equals a fresh run
    want_y, _ = model.run(x[:, :1])
    assert_close(s.step(x[:, 0]), want_y[:, 0], np.float32, "after reset")
    with pytest.raises(InputShapeError, match=r"x_t must have shape \(2, 3\)"):
        s.step(np.zeros((3, 3), np.float32))
    with pytest.raises(InputShapeError, match="rows must lie in"):
        s.reset(rows=[5])


@needs_cuda
def test_stream_steps_copy_no_weights_and_reuse_device_buffers(monkeypatch):
    from numba import cuda

    rng = np.random.default_rng(10)
    model = forward_model(rng)
    s = model.stream(3, device="cuda")
    x = f32(rng, 3, 3, 3, scale=1.0)
    s.step(x[:, 0])  # first step allocates the buffers
    buffers = {k: id(v) for k, v in s._ws[True].arrays.items()}
    calls = []
    real_to_device = cuda.to_device
    monkeypatch.setattr(cuda, "to_device", lambda *a, **k: calls.append(1) or real_to_device(*a, **k))
    monkeypatch.setattr(cuda, "device_array", lambda *a, **k: calls.append(2) or pytest.fail("allocated"))
    y1 = s.step(x[:, 1])
    dx = real_to_device(x[:, 2].copy())
    yd = s.step(dx)  # device in: device out, still no allocation
    assert calls == []
    assert {k: id(v) for k, v in s._ws[True].arrays.items()} == buffers
    want_y, _ = model.run(x)
    assert_close(y1, want_y[:, 1], np.float32, "step 1")
    assert_close(yd.copy_to_host(), want_y[:, 2], np.float32, "step 2 (device)")


@needs_cuda
def test_stream_tokens_and_refuses_backward_layers():
    rng = np.random.default_rng(11)
    model = forward_model(rng, tokens=True)
    tokens = np.array([[1, 0, 4, 5], [0, 2, 3, 0]], np.int64)
    want_y, _ = model.run(tokens)
    s = model.stream(2, device="cuda")
    got = np.stack([s.step(tokens[:, t]) for t in range(4)], axis=1)
    assert_close(got, want_y, np.float32, "token stream")
    W, R, B = random_gru_weights(rng, 3, 4, 2)
    bi = Model((GRU(W=W, R=R, B=B, direction="bidirectional", name="enc"),))
    with pytest.raises(StreamingError, match="backward in time"):
        bi.stream(1, device="cuda")


# --------------------------------------------------------------------------- no GPU


def _run_without_simulator(code: str):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=300, cwd=ROOT)


@pytest.mark.skipif(GPU, reason="this machine has a GPU: the no-GPU error cannot happen here")
def test_no_gpu_gives_device_error_with_fix_and_cpu_path_never_imports_cuda():
    code = """
        import sys
        import numpy as np
        from gru_engine import GRU, Model, DeviceError
        W = np.full((1, 6, 1), 0.1, np.float32); R = np.full((1, 6, 2), 0.1, np.float32)
        m = Model((GRU(W=W, R=R),))
        x = np.ones((1, 2, 1), np.float32)
        m.run(x)
        m.to("cpu")
        print("cpu-imported-cuda", "numba.cuda" in sys.modules)
        from numba import cuda
        if cuda.is_available():
            print("GPU-PRESENT")
            sys.exit(0)
        for call in (lambda: m.run(x, device="cuda"), lambda: m.to("cuda"), lambda: m.stream(1, device="cuda")):
            try:
                call()
            except DeviceError as e:
                print("DeviceError:", e)
        """
    p = _run_without_simulator(code)
    assert p.returncode == 0, p.stderr[-3000:]
    if "GPU-PRESENT" in p.stdout:
        pytest.skip("a GPU is usable without the simulator")
    assert "cpu-imported-cuda False" in p.stdout
    errors = [line for line in p.stdout.splitlines() if line.startswith("DeviceError:")]
    assert len(errors) == 3, p.stdout
    for msg in errors:
        assert "device='cuda' must find a usable CUDA GPU" in msg
        assert "gru-engine[cuda]" in msg and "nvidia-smi" in msg and "NUMBA_ENABLE_CUDASIM=1" in msg


@needs_cuda
def test_layers_without_gpu_kernel_run_on_the_host_in_between():
    from gru_engine.layers import Conv1D, LayerNormalization

    rng = np.random.default_rng(12)
    W, R, B = random_gru_weights(rng, 4, 3, 1)
    model = Model((
        Conv1D(kernel=f32(rng, 4, 2, 2), bias=f32(rng, 4), activation="relu"),  # valid padding: T -> T - 1
        LayerNormalization(gamma=np.ones(4, np.float32), beta=np.zeros(4, np.float32)),
        GRU(W=W, R=R, B=B, linear_before_reset=1),
        Dense(kernel=f32(rng, 3, 2)),
    ))
    x = f32(rng, 2, 5, 2, scale=1.0)
    want_y, want_h = model.run(x)
    dm = model.to("cuda")
    assert dm.host_layers == (0, 1)
    got_y, got_h = dm.run(x)
    assert got_y.shape == (2, 4, 2)
    assert_close(got_y, want_y, np.float32, "y")
    assert_close(got_h, want_h, np.float32, "h_n")
    with pytest.raises(StreamingError, match="has no GPU kernel"):
        dm.stream(1)


def _nvvm_home():
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and os.path.isdir(os.path.join(home, "nvvm")):
        return home
    return None


@pytest.mark.skipif(_nvvm_home() is None, reason="no CUDA toolkit (CUDA_HOME with nvvm/): the PTX type check needs NVVM")
def test_every_kernel_compiles_to_ptx_in_both_dtypes():
    """The simulator runs kernels as Python and checks no types: compile them for real (no GPU needed)."""
    code = """
        import numpy as np
        from gru_engine import kernels_cuda
        for dt in (np.float32, np.float64):
            names = kernels_cuda.ptx_check(dt, cc=(8, 0))
            print(dt.__name__, sorted(names) == sorted(kernels_cuda.KERNEL_NAMES))
        """
    p = _run_without_simulator(code)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "float32 True" in p.stdout and "float64 True" in p.stdout, p.stdout


@needs_cuda
def test_gpu_benchmark_script_smoke():
    """bench/gpu.py --smoke: validates each contender against the CPU engine, then times it."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "gpu.py"), "--smoke"], env=env,
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = [line for line in p.stdout.splitlines() if line.startswith("|     8 |")]
    assert len(rows) == 2 and "wrong" not in p.stdout, p.stdout
    assert "engine_us_per_step" in p.stdout, p.stdout


@needs_cuda
def test_stream_state_setter_checks_like_the_cpu_stream():
    rng = np.random.default_rng(13)
    model = forward_model(rng)
    s = model.stream(2, device="cuda")
    with pytest.raises(InputShapeError, match="state must be finite"):
        s.state = np.full((2, 2, 4), np.nan, np.float32)
    with pytest.raises(InputShapeError, match="initial_state must have shape"):
        s.state = np.zeros((2, 3, 4), np.float32)
    dense_only = Model((Dense(kernel=f32(rng, 3, 2)),))
    with pytest.raises(StreamingError, match="no GRU layer"):
        dense_only.stream(1, device="cuda").state = np.zeros((1, 1, 1), np.float32)

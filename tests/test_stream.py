"""Streaming: Stream / StreamPool against model.run, real torch / onnxruntime / Keras modules,
and the float64 ONNX oracle; allocation, concurrency and error behaviour."""

from __future__ import annotations

import os
import threading
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import naive
from conftest import NO_JIT, random_gru_weights, slow_without_jit
from gru_engine import GRU, Activation, Dense, Embedding, Masking, Model
from gru_engine.errors import InputShapeError, InputTypeError, StreamingError
from gru_engine.stream import STEP_BUILDERS, Stream, StreamPool
from gru_engine.model import DENSE_ACTIVATIONS

ATOL = 1e-5


def gru(rng, I, H, lbr=1, **kw):
    W, R, B = random_gru_weights(rng, I, H)
    return GRU(W=W, R=R, B=B, linear_before_reset=lbr, **kw)


def dense(rng, i, o, act="linear"):
    return Dense(kernel=rng.uniform(-0.5, 0.5, (i, o)).astype(np.float32), bias=rng.uniform(-0.1, 0.1, o).astype(np.float32), activation=act)


def step_all(stream, x):
    """Outputs of stepping every time step of x (B, T, F) or ids (B, T)."""
    return np.stack([stream.step(np.ascontiguousarray(x[:, t])).copy() for t in range(x.shape[1])], axis=1)


# ----------------------------------------------------------------------------- equivalence

@st.composite
def model_and_chunks(draw):
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    n_gru = draw(st.integers(1, 3))
    I = draw(st.integers(1, 9))
    tokens = draw(st.booleans()) and draw(st.booleans())
    layers = []
    size = I
    if tokens:
        layers.append(Embedding(table=rng.normal(size=(7, I)).astype(np.float32), mask_zero=draw(st.booleans())))
    elif draw(st.integers(0, 3)) == 0:
        layers.append(Masking(mask_value=0.0))
    last_step = draw(st.booleans())
    for g in range(n_gru):
        H = draw(st.integers(1, 20))
        layers.append(gru(rng, size, H, lbr=draw(st.integers(0, 1)), return_sequences=not (last_step and g == n_gru - 1)))
        size = H
        if g < n_gru - 1 and draw(st.integers(0, 3)) == 0:
            layers.append(dense(rng, size, size + 1, draw(st.sampled_from(["tanh", "relu", "linear"]))))
            size += 1
    if draw(st.booleans()):
        o = draw(st.integers(1, 5))
        layers.append(dense(rng, size, o, draw(st.sampled_from(["linear", "sigmoid", "softmax", "tanh", "elu"]))))
    if draw(st.integers(0, 3)) == 0:
        layers.append(Activation(activation="softsign"))
    model = Model(tuple(layers), None if tokens else I)
    B = draw(st.integers(1, 3))
    T = draw(st.integers(1, 24))
    if tokens:
        x = rng.integers(0, 7, (B, T))
    else:
        x = rng.normal(size=(B, T, I)).astype(np.float32)
        if layers[0].kind == "Masking":
            x[rng.random((B, T)) < 0.3] = 0.0
    cuts = sorted(set(draw(st.lists(st.integers(1, max(T - 1, 1)), max_size=4))) - {T})
    use_step = draw(st.lists(st.booleans(), min_size=len(cuts) + 1, max_size=len(cuts) + 1))
    return model, x, cuts, use_step


@slow_without_jit
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model_and_chunks())
def test_step_chunks_and_run_agree(case):
    """Stepping, random chunkings (some chunks stepped, some run) and model.run agree."""
    model, x, cuts, use_step = case
    y_run, h_run = model.run(x)
    stream = model.stream(batch_size=x.shape[0])
    y_step = step_all(stream, x)
    if model.output_is_sequence:
        np.testing.assert_allclose(y_step, y_run, atol=ATOL, rtol=0)
    else:  # last-step GRU: the final step's output is what model.run returns
        np.testing.assert_allclose(y_step[:, -1], y_run, atol=ATOL, rtol=0)
    _assert_state(stream.state, h_run)

    chunked = model.stream(batch_size=x.shape[0])
    parts = []
    for (a, b), stepped in zip(zip([0, *cuts], [*cuts, x.shape[1]]), use_step):
        parts.append(step_all(chunked, x[:, a:b]) if stepped else chunked.run(x[:, a:b]))
    np.testing.assert_allclose(np.concatenate(parts, axis=1), y_step, atol=ATOL, rtol=0)
    _assert_state(chunked.state, h_run)


def _assert_state(state, h_run):
    if isinstance(h_run, list):
        for s, h in zip(state, h_run):
            np.testing.assert_allclose(s, h, atol=ATOL, rtol=0)
    else:
        np.testing.assert_allclose(state, h_run, atol=ATOL, rtol=0)


@slow_without_jit
@pytest.mark.parametrize("lbr", [0, 1])
def test_1000_steps_match_oracle_and_run(lbr):
    """The fast float32 sigmoid/tanh keep 1e-5 agreement over 1000 steps (oracle: float64 ONNX GRU)."""
    rng = np.random.default_rng(5)
    I, H, T = 4, 64, 1000
    W, R, B = random_gru_weights(rng, I, H)
    W, R, B = 3 * W, 3 * R, 3 * B  # saturating gates exercise the whole tanh range
    model = Model((GRU(W=W, R=R, B=B, linear_before_reset=lbr),))
    x = rng.normal(size=(1, T, I)).astype(np.float32)
    y_step = step_all(model.stream(), x)
    Y, _ = naive.onnx_gru(x.transpose(1, 0, 2).astype(np.float64), W, R, B, linear_before_reset=lbr)
    np.testing.assert_allclose(y_step[0], Y[:, 0, 0], atol=ATOL, rtol=0)
    np.testing.assert_allclose(y_step, model.run(x)[0], atol=ATOL, rtol=0)


def test_generic_activations_clip_and_float64():
    """Non-default gate activations and clip (exact math path), also in float64."""
    rng = np.random.default_rng(2)
    I, H, T = 3, 6, 30
    W, R, B = random_gru_weights(rng, I, H)
    kw = dict(activations=("HardSigmoid", "Softsign"), activation_alpha=(0.3,), activation_beta=(0.4,), clip=0.7)
    x = rng.normal(size=(2, T, I))
    for dtype, atol in ((np.float32, ATOL), (np.float64, 1e-10)):
        model = Model((GRU(W=W.astype(dtype), R=R.astype(dtype), B=B.astype(dtype), **kw),))
        Y, _ = naive.onnx_gru(x.transpose(1, 0, 2), W.astype(np.float64), R.astype(np.float64), B.astype(np.float64), **kw)
        stream = model.stream(batch_size=2)
        y = step_all(stream, x.astype(dtype))
        assert y.dtype == dtype
        np.testing.assert_allclose(y, Y[:, 0].transpose(1, 0, 2), atol=atol, rtol=0)


def test_torch_gru_stepped_equals_stream():
    """A real 2-layer torch.nn.GRU called one step at a time with its h fed back."""
    torch = pytest.importorskip("torch")
    from converters.conventions import torch_gru_to_onnx

    torch.manual_seed(0)
    I, H, T = 5, 12, 40
    net = torch.nn.GRU(I, H, num_layers=2, batch_first=True)
    layers = []
    for k in range(2):
        W, R, B = torch_gru_to_onnx(*(getattr(net, f"{n}_l{k}").detach().numpy() for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")))
        layers.append(GRU(W=W[None], R=R[None], B=B[None], linear_before_reset=1))
    model = Model(tuple(layers))
    x = np.random.default_rng(0).normal(size=(3, T, I)).astype(np.float32)
    h = None
    ys = []
    with torch.no_grad():
        for t in range(T):
            y, h = net(torch.from_numpy(x[:, t : t + 1]), h)
            ys.append(y[:, 0].numpy())
    stream = model.stream(batch_size=3)
    np.testing.assert_allclose(step_all(stream, x), np.stack(ys, 1), atol=ATOL, rtol=0)
    np.testing.assert_allclose(stream.state, h.numpy(), atol=ATOL, rtol=0)


def test_onnxruntime_one_step_session_equals_stream():
    """onnxruntime's GRU called one step at a time with initial_h fed back, as users do."""
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    I, H, T = 4, 16, 50
    W, R, B = random_gru_weights(rng, I, H)
    node = helper.make_node("GRU", ["X", "W", "R", "B", "", "h0"], ["Y", "Y_h"], hidden_size=H)
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 1, I]), helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, 1, H])],
        [helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, [1, 1, H])],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(R, "R"), numpy_helper.from_array(B, "B")],
    )
    sess = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]).SerializeToString(), providers=["CPUExecutionProvider"])
    stream = Model((GRU(W=W, R=R, B=B),)).stream()
    h = np.zeros((1, 1, H), np.float32)
    out = np.empty((1, H), np.float32)
    x = rng.normal(size=(T, 1, 1, I)).astype(np.float32)
    for t in range(T):
        (h,) = sess.run(None, {"X": x[t], "h0": h})
        stream.step(x[t, 0], out=out)
        np.testing.assert_allclose(out, h[0], atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------- masks (Keras)

def test_keras_masking_and_mask_zero_match_keras():
    """Masked steps keep the state and repeat the last output, as real Keras models do."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    from converters.conventions import keras_gru_to_onnx

    rng = np.random.default_rng(4)
    I, H, T = 3, 5, 12
    inp = keras.Input((T, I))
    kgru = keras.layers.GRU(H, return_sequences=True)
    kdense = keras.layers.Dense(2)
    kmodel = keras.Model(inp, kdense(kgru(keras.layers.Masking(0.0)(inp))))
    x = rng.normal(size=(2, T, I)).astype(np.float32)
    x[0, 3:6] = 0.0
    x[1, 0] = 0.0
    ref = keras.ops.convert_to_numpy(kmodel(x))
    W, R, B, lbr = keras_gru_to_onnx(*[keras.ops.convert_to_numpy(v) for v in kgru.weights])
    k, b = (keras.ops.convert_to_numpy(v) for v in kdense.weights)
    model = Model((Masking(0.0), GRU(W=W[None], R=R[None], B=B[None], linear_before_reset=lbr), Dense(kernel=k, bias=b)), I)
    np.testing.assert_allclose(step_all(model.stream(batch_size=2), x), ref, atol=ATOL, rtol=0)

    # Embedding(mask_zero=True) + last-step GRU: the per-step output is Keras' output on the prefix
    tok_in = keras.Input((None,), dtype="int32")
    emb = keras.layers.Embedding(9, I, mask_zero=True)
    kgru2 = keras.layers.GRU(H)
    kmodel2 = keras.Model(tok_in, kgru2(emb(tok_in)))
    ids = rng.integers(1, 9, (2, T))
    ids[0, 4:7] = 0
    W, R, B, lbr = keras_gru_to_onnx(*[keras.ops.convert_to_numpy(v) for v in kgru2.weights])
    model2 = Model((Embedding(table=keras.ops.convert_to_numpy(emb.weights[0]), mask_zero=True), GRU(W=W[None], R=R[None], B=B[None], linear_before_reset=lbr, return_sequences=False)))
    y = step_all(model2.stream(batch_size=2), ids)
    for t in (3, 5, 7, T - 1):
        np.testing.assert_allclose(y[:, t], keras.ops.convert_to_numpy(kmodel2(ids[:, : t + 1])), atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------- API behaviour

def test_cannot_stream_backward_gru():
    rng = np.random.default_rng(0)
    for direction in ("reverse", "bidirectional"):
        D = 2 if direction == "bidirectional" else 1
        W, R, B = random_gru_weights(rng, 3, 4, D=D)
        model = Model((GRU(W=W, R=R, B=B, direction=direction, name="enc"),))
        with pytest.raises(StreamingError, match=rf"layer 0 .*'enc'.*forward in time.*direction='{direction}'"):
            model.stream()
        with pytest.raises(StreamingError, match="forward in time"):
            StreamPool(model, 4)


def test_step_out_allocates_nothing():
    """step(out=...) writes into out and allocates no array (numpy or numba)."""
    rng = np.random.default_rng(0)
    O = 4096  # a big output, so any per-step output allocation would show in the peak
    model = Model((gru(rng, 3, 8), dense(rng, 8, O)))
    stream = model.stream()
    x = rng.normal(size=(1, 3)).astype(np.float32)
    out = np.empty((1, O), np.float32)
    assert stream.step(x, out=out) is out
    stream.step(x, out=out)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(3 if NO_JIT else 200):
            stream.step(x, out=out)
        peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(2):
            stream.step(x)
        peak_alloc = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak_alloc >= 4 * O  # the check can see an output allocation
    if not NO_JIT:  # (the plain-Python kernels of NUMBA_DISABLE_JIT=1 make temporaries)
        assert peak < 1024, peak
        from numba.core.runtime import _nrt_python, rtsys

        _nrt_python.memsys_enable_stats()
        before = rtsys.get_allocation_stats()
        for _ in range(50):
            stream.step(x, out=out)
        after = rtsys.get_allocation_stats()
        # numba wraps each of the 5 array arguments on entry (freed on exit); the kernel allocates nothing
        assert after.alloc - before.alloc <= 5 * 50
        assert after.alloc - after.free == before.alloc - before.free


@slow_without_jit
@pytest.mark.parametrize("B", [1, 4])
@pytest.mark.parametrize("lbr", [0, 1])
def test_one_gru_chunk_plans_match_oracle(B, lbr):
    """A one-GRU model's chunks run through prepared kernel calls (one per chunk length,
    state updated in place at B=1): repeated and new lengths, a state set in between, a
    copy run alongside, all equal the float64 ONNX oracle over the whole sequence."""
    rng = np.random.default_rng(7 + B + lbr)
    I, H, T = 5, 33, 60
    W, R, Bw = random_gru_weights(rng, I, H)
    model = Model((GRU(W=W, R=R, B=Bw, linear_before_reset=lbr),))
    x = rng.normal(size=(B, T, I)).astype(np.float32)
    h0 = rng.normal(size=(1, B, H)).astype(np.float32)
    Y, Yh = naive.onnx_gru(x.transpose(1, 0, 2), W, R, Bw, None, h0, linear_before_reset=lbr)
    ref = Y[:, 0].transpose(1, 0, 2)
    s = model.stream(batch_size=B)
    s.state = h0
    cuts = [0, 7, 14, 21, 30, 37, 44, 51, 60]  # lengths 7, 7, 7, 9, 7, 7, 7, 9
    out = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        out.append(s.run(x[:, a:b]))
        if a == 21:
            c = s.copy()  # same state, own work arrays
            np.testing.assert_allclose(c.run(x[:, b:]), ref[:, b:], atol=ATOL, rtol=0)
            np.testing.assert_allclose(c.state, Yh, atol=ATOL, rtol=0)
    assert len(s._plans) == 2 and None not in s._plans.values()  # two lengths, both prepared
    np.testing.assert_allclose(np.concatenate(out, axis=1), ref, atol=ATOL, rtol=0)
    np.testing.assert_allclose(s.state, Yh, atol=ATOL, rtol=0)
    s.state = h0  # set between runs: the next chunk starts from it
    np.testing.assert_allclose(s.run(x[:, :7]), ref[:, :7], atol=ATOL, rtol=0)


def test_state_reset_copy():
    rng = np.random.default_rng(1)
    model = Model((gru(rng, 2, 4), gru(rng, 4, 4)))
    x = rng.normal(size=(3, 10, 2)).astype(np.float32)
    s = model.stream(batch_size=3)
    s.run(x)
    st0 = s.state
    assert st0.shape == (2, 3, 4)
    st0[:] = 0  # a copy
    assert np.abs(s.state).max() > 0
    c = s.copy()
    y1 = s.step(x[:, 0])
    y2 = c.step(x[:, 0])
    np.testing.assert_array_equal(y1, y2)
    c.step(x[:, 1])
    assert not np.array_equal(c.state, s.state)  # independent
    s.reset(rows=[1])
    assert np.all(s.state[:, 1] == 0) and np.abs(s.state[:, 0]).max() > 0
    s.reset()
    assert np.all(s.state == 0)
    h = rng.normal(size=(2, 3, 4))
    s.state = h
    np.testing.assert_allclose(s.state, h.astype(np.float32))
    _, h_run = model.run(x, initial_state=h)
    s.run(x)
    np.testing.assert_allclose(s.state, h_run, atol=ATOL)
    with pytest.raises(InputShapeError, match=r"initial_state must have shape \(num_layers\*num_directions=2, batch=3, hidden=4\)"):
        s.state = np.zeros((2, 2, 4))
    with pytest.raises(InputShapeError, match="rows must lie in"):
        s.reset(rows=[5])
    # different hidden sizes: a list of (1, B, H_l)
    m2 = Model((gru(rng, 2, 3), gru(rng, 3, 5)))
    s2 = m2.stream(batch_size=2)
    assert [a.shape for a in s2.state] == [(1, 2, 3), (1, 2, 5)]
    s2.state = [np.ones((1, 2, 3)), np.ones((1, 2, 5))]
    assert s2.state[1].sum() == 10


def test_step_input_errors_and_conversion():
    rng = np.random.default_rng(1)
    model = Model((gru(rng, 3, 4),))
    s = model.stream(batch_size=2)
    ref = model.stream(batch_size=2)
    x = rng.normal(size=(2, 3))
    np.testing.assert_array_equal(s.step(x), ref.step(x.astype(np.float32)))  # float64 converted
    xt = np.asfortranarray(rng.normal(size=(3, 2)).astype(np.float32)).T  # not C-contiguous
    np.testing.assert_array_equal(s.step(xt), ref.step(np.ascontiguousarray(xt)))
    with pytest.raises(InputShapeError, match=r"x must have shape \(2, 3\), got \(2, 4\)"):
        s.step(np.zeros((2, 4), np.float32))
    with pytest.raises(InputShapeError, match=r"x must have shape \(2, 3\), got \(3,\)"):
        s.step(np.zeros(3, np.float32))
    with pytest.raises(InputShapeError, match=r"out must have shape \(2, 4\), got \(1, 4\)"):
        s.step(np.zeros((2, 3), np.float32), out=np.empty((1, 4), np.float32))
    if not NO_JIT:  # dtype checks come from the compiled signature (plain Python is lenient)
        with pytest.raises(InputTypeError, match="out must have dtype float32"):
            s.step(np.zeros((2, 3), np.float32), out=np.empty((2, 4), np.float64))
        with pytest.raises(InputTypeError, match="floating array"):
            s.step(np.array([["a", "b", "c"]] * 2))
    with pytest.raises(InputShapeError, match="batch_size must be a positive integer"):
        model.stream(batch_size=0)
    tm = Model((Embedding(table=rng.normal(size=(5, 3)).astype(np.float32)), gru(rng, 3, 4)))
    ts = tm.stream(batch_size=2)
    assert ts.step(np.array([1, 4])).shape == (2, 4)
    with pytest.raises(InputShapeError, match=r"token id in \[0, 4\]"):
        ts.step(np.array([1, 5]))


# ----------------------------------------------------------------------------- StreamPool

@pytest.mark.parametrize("lbr", [0, 1])
def test_pool_matches_separate_streams(lbr):
    """Subsets stepped by the row kernel (< 3 rows) and the batched BLAS path (>= 3 rows)."""
    rng = np.random.default_rng(7)
    model = Model((gru(rng, 3, 6, lbr=lbr), gru(rng, 6, 5, lbr=1 - lbr), dense(rng, 5, 2, "tanh"), Activation(activation="softsign")))
    pool = StreamPool(model, capacity=8, batch_threshold=3)
    ids = ["a", ("b", 2), 7, "d", "e"]
    singles = {i: model.stream() for i in ids}
    for i in ids:
        pool.open(i)
    out = np.empty((5, 2), np.float32)
    for t in range(15):
        subset = [ids[j] for j in rng.permutation(5)[: rng.integers(1, 6)]]
        x = rng.normal(size=(len(subset), 3)).astype(np.float32)
        y = pool.step(subset, x, out=out[: len(subset)])
        for r, i in enumerate(subset):
            np.testing.assert_allclose(y[r], singles[i].step(x[r : r + 1])[0], atol=1e-6)
    for i in ids:
        for a, b in zip(pool.state(i), singles[i].state):
            np.testing.assert_allclose(a, b, atol=1e-6)
    slots = pool.slots(["e", 7])
    x = rng.normal(size=(2, 3)).astype(np.float32)
    y = pool.step_slots(slots, x)
    np.testing.assert_allclose(y[1], singles[7].step(x[1:2])[0], atol=1e-6)


def test_pool_open_close_errors():
    rng = np.random.default_rng(8)
    model = Model((gru(rng, 2, 3),))
    pool = StreamPool(model, capacity=2)
    pool.open("u1")
    pool.open("u2", state=np.ones((1, 1, 3)))
    assert len(pool) == 2 and "u2" in pool
    np.testing.assert_array_equal(pool.state("u2"), np.ones((1, 1, 3), np.float32))
    with pytest.raises(StreamingError, match=r"pool is full: capacity 2"):
        pool.open("u3")
    with pytest.raises(StreamingError, match="'u1' must not be open already"):
        pool.open("u1")
    x = np.zeros((1, 2), np.float32)
    with pytest.raises(StreamingError, match=r"stream id 'zz' must be open in this pool"):
        pool.step(["zz"], x)
    pool.close("u1")
    with pytest.raises(StreamingError, match=r"stream id 'u1' must be open"):
        pool.step(["u1"], x)
    with pytest.raises(StreamingError, match=r"stream id 'u1' must be open"):
        pool.close("u1")
    with pytest.raises(StreamingError, match="must be open"):  # a stale slot from a closed stream
        pool.step_slots(np.array([0]), x)
    with pytest.raises(StreamingError, match=r"stream id 'u2' must appear once per call"):
        pool.step(["u2", "u2"], np.zeros((2, 2), np.float32))
    with pytest.raises(InputShapeError, match="same number of rows"):
        pool.step(["u2"], np.zeros((2, 2), np.float32))
    batched = StreamPool(model, capacity=3, batch_threshold=1)  # the same checks on the BLAS path
    batched.open("a")
    batched.open("b")
    with pytest.raises(StreamingError, match=r"stream id 'a' must appear once per call"):
        batched.step(["b", "a", "a"], np.zeros((3, 2), np.float32))
    with pytest.raises(StreamingError, match="must be open"):
        batched.step_slots(np.array([0, 2]), np.zeros((2, 2), np.float32))
    with pytest.raises(InputShapeError, match=r"x must have shape \(2, 2\)"):
        batched.step(["a", "b"], np.zeros((2, 3), np.float32))
    pool.open("u3")  # the freed slot is reused, with a fresh zero state
    assert np.all(pool.state("u3") == 0)
    pool.reset("u2")
    assert np.all(pool.state("u2") == 0)


# ----------------------------------------------------------------------------- concurrency

@slow_without_jit
def test_threads_give_sequential_results():
    """Separate streams stepped from separate threads (kernels release the GIL) equal
    sequential stepping, bit for bit."""
    rng = np.random.default_rng(9)
    model = Model((gru(rng, 8, 48), gru(rng, 48, 48), dense(rng, 48, 3)))
    xs = [rng.normal(size=(300, 1, 8)).astype(np.float32) for _ in range(4)]

    def run(stream, x, res):
        out = np.empty((1, 3), np.float32)
        for t in range(x.shape[0]):
            stream.step(x[t], out=out)
            res.append(out.copy())

    seq = []
    for x in xs:
        r = []
        run(model.stream(), x, r)
        seq.append(r)
    par = [[] for _ in xs]
    threads = [threading.Thread(target=run, args=(model.stream(), x, r)) for x, r in zip(xs, par)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(seq, par):
        np.testing.assert_array_equal(np.array(a), np.array(b))


def test_conv_models_stream_layer_by_layer():
    """Layers without a step op (a causal Conv1D) stream through LayerStream; look-ahead ones are refused."""
    from gru_engine.layers import Conv1D
    from gru_engine.stream_layers import LayerStream

    rng = np.random.default_rng(11)
    conv = Conv1D(kernel=rng.normal(size=(4, 2, 3)).astype(np.float32), padding="causal", name="c")
    model = Model((conv, gru(rng, 4, 5)), 2)
    x = rng.normal(size=(1, 9, 2)).astype(np.float32)
    s = model.stream()
    assert isinstance(s, LayerStream)
    np.testing.assert_allclose(s.run(x), model.run(x)[0], atol=ATOL)
    same = Model((Conv1D(kernel=conv.kernel, padding="same", name="c2"), gru(rng, 4, 5)), 2)
    with pytest.raises(StreamingError, match="'c2'.*same"):
        same.stream()


def test_step_registry_lists_layers():
    assert {GRU, Dense, Activation, Embedding, Masking} <= set(STEP_BUILDERS)
    assert issubclass(Stream, object)


@pytest.mark.parametrize("act", sorted(DENSE_ACTIVATIONS))
def test_every_dense_activation_steps_like_model_run(act):
    """kernels_step keeps its own copy of the Dense activations (numba cache rule): keep both in step."""
    rng = np.random.default_rng(7)
    model = Model((gru(rng, 3, 6, lbr=1), Dense(kernel=rng.uniform(-0.5, 0.5, (6, 4)).astype(np.float32),
                                               bias=rng.uniform(-0.1, 0.1, 4).astype(np.float32),
                                               activation=act, alpha=0.2)))
    x = rng.standard_normal((2, 9, 3)).astype(np.float32)
    y_run, _ = model.run(x)
    s = model.stream(batch_size=2)
    y_step = np.stack([s.step(x[:, t]) for t in range(x.shape[1])], axis=1)
    np.testing.assert_allclose(y_step, y_run, atol=1e-5, rtol=1e-5)

"""Tiny cases that CI also runs with ``NUMBA_DISABLE_JIT=1``, where the kernels execute as
plain Python: they must keep working (no objmode / intrinsics / dispatcher-only calls) and
agree with the float64 oracle ``tests/naive.py``. Sizes are tiny so that the whole file
takes a few seconds without JIT."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ATOL, random_gru_weights

import naive
from gru_engine import GRU, Activation, Dense, Embedding, Masking, Model

ONNX_ACTS = [("Sigmoid", "Tanh"), ("HardSigmoid", "Softsign"), ("LeakyRelu", "ScaledTanh"),
             ("Softplus", "Elu"), ("ThresholdedRelu", "Affine"), ("Relu", "Tanh")]


def batch_first(Y):
    T, D, N, H = Y.shape
    return Y.transpose(2, 0, 1, 3).reshape(N, T, D * H)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("lbr", [0, 1])
def test_gru_vs_naive(direction, lbr, dtype):
    rng = np.random.default_rng(lbr + 10 * len(direction))
    D = 2 if direction == "bidirectional" else 1
    W, R, B = random_gru_weights(rng, 2, 3, D, dtype)
    X = rng.standard_normal((3, 4, 2)).astype(dtype)
    lens = np.array([4, 2, 0])
    h0 = rng.standard_normal((D, 3, 3)).astype(dtype)
    model = Model((GRU(W=W, R=R, B=B, direction=direction, linear_before_reset=lbr),))
    y, h_n = model.run(X, lengths=lens, initial_state=h0)
    Y, Y_h = naive.onnx_gru(X.transpose(1, 0, 2), W, R, B, lens, h0, direction=direction, linear_before_reset=lbr)
    tol = ATOL[dtype] if dtype == np.float64 else 1e-6
    np.testing.assert_allclose(y, batch_first(Y), atol=tol)
    np.testing.assert_allclose(h_n, Y_h, atol=tol)


@pytest.mark.parametrize("acts", ONNX_ACTS, ids=lambda a: "-".join(a))
def test_activations_alpha_beta_clip_vs_naive(acts):
    rng = np.random.default_rng(1)
    W, R, B = random_gru_weights(rng, 2, 3, 1, np.float64)
    X = rng.standard_normal((2, 4, 2))
    kw = dict(activations=acts, activation_alpha=(0.3, 0.7), activation_beta=(0.2,))
    model = Model((GRU(W=W, R=R, B=B, clip=1.5, **kw),))
    y, h_n = model.run(X)
    Y, Y_h = naive.onnx_gru(X.transpose(1, 0, 2), W, R, B, clip=1.5, **kw)
    np.testing.assert_allclose(y, batch_first(Y), atol=1e-12)
    np.testing.assert_allclose(h_n, Y_h, atol=1e-12)


def test_stack_with_mask_embedding_and_dense_activations():
    rng = np.random.default_rng(2)
    table = rng.standard_normal((6, 2))
    W1, R1, B1 = random_gru_weights(rng, 2, 3, 2, np.float64)
    W2, R2, B2 = random_gru_weights(rng, 3, 2, 1, np.float64)
    K = rng.standard_normal((2, 3))
    model = Model((Embedding(table=table),
                   GRU(W=W1, R=R1, B=B1, direction="bidirectional", merge="sum"),
                   GRU(W=W2, R=R2, B=B2, linear_before_reset=1, return_sequences=False),
                   Dense(kernel=K, activation="softmax"), Activation(activation="gelu")))
    tokens = rng.integers(0, 6, (2, 4))
    y, _ = model.run(tokens)
    Y1, _ = naive.onnx_gru(table[tokens].transpose(1, 0, 2), W1, R1, B1, direction="bidirectional")
    x2 = Y1[:, 0] + Y1[:, 1]
    _, Yh2 = naive.onnx_gru(x2, W2, R2, B2, linear_before_reset=1)
    from scipy.special import erf, softmax

    p = softmax(Yh2[0] @ K, axis=-1)
    np.testing.assert_allclose(y, 0.5 * p * (1 + erf(p / np.sqrt(2))), atol=1e-12)


def test_keras_mask_keeps_state_without_jit():
    rng = np.random.default_rng(3)
    W, R, B = random_gru_weights(rng, 2, 3, 1, np.float64)
    X = rng.standard_normal((1, 4, 2))
    X[0, 1] = 0.0  # a masked hole
    model = Model((Masking(mask_value=0.0), GRU(W=W, R=R, B=B)), input_size=2)
    y, h_n = model.run(X)
    keep = [0, 2, 3]
    Y, Y_h = naive.onnx_gru(X[:, keep].transpose(1, 0, 2), W, R, B)
    np.testing.assert_allclose(y[0, keep], Y[:, 0, 0], atol=1e-12)
    np.testing.assert_allclose(y[0, 1], y[0, 0], atol=0)  # the masked step repeats the last output
    np.testing.assert_allclose(h_n, Y_h, atol=1e-12)

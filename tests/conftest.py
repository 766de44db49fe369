"""Shared test settings: tolerances by dtype, seeded RNG, the Keras backend, reference helpers."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "torch")  # Keras would otherwise select TensorFlow (not installed)

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))  # for `import naive`

#: absolute tolerance of engine vs reference, by compute dtype
ATOL = {np.float32: 1e-5, np.float64: 1e-10}

NO_JIT = "NUMBA_DISABLE_JIT" in os.environ
slow_without_jit = pytest.mark.skipif(NO_JIT, reason="too slow with NUMBA_DISABLE_JIT=1")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def random_gru_weights(rng, I, H, D=1, dtype=np.float32):
    """Typical trained-model scale: uniform(-1/sqrt(H), 1/sqrt(H)), as PyTorch initialises."""
    s = 1.0 / np.sqrt(H)
    W = rng.uniform(-s, s, (D, 3 * H, I)).astype(dtype)
    R = rng.uniform(-s, s, (D, 3 * H, H)).astype(dtype)
    B = rng.uniform(-s, s, (D, 6 * H)).astype(dtype)
    return W, R, B


def ort_session(model_proto):
    ort = pytest.importorskip("onnxruntime")
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model_proto.SerializeToString(), so, providers=["CPUExecutionProvider"])

"""The test oracle: the ONNX GRU operator written from the spec in plain NumPy (float64).

Independent of the engine's kernels. Follows onnxruntime where the spec is silent:
Y is zero past each sequence length, the reverse direction runs within the length,
Y_h is the last valid step, a length of 0 gives Y_h = 0; activation alpha/beta consumed
in order by the activations that take them, with onnxruntime's defaults.
"""

from __future__ import annotations

import numpy as np

_TAKES_ALPHA = {"affine", "leakyrelu", "thresholdedrelu", "scaledtanh", "hardsigmoid", "elu"}
_TAKES_BETA = {"affine", "scaledtanh", "hardsigmoid"}
_DEF_ALPHA = {"leakyrelu": 0.01, "hardsigmoid": 0.2, "elu": 1.0}
_DEF_BETA = {"hardsigmoid": 0.5}


def act(name, x, alpha, beta):
    n = name.lower()
    if n == "sigmoid":
        return 1.0 / (1.0 + np.exp(-x))
    if n == "tanh":
        return np.tanh(x)
    if n == "relu":
        return np.maximum(x, 0)
    if n == "affine":
        return alpha * x + beta
    if n == "leakyrelu":
        return np.where(x >= 0, x, alpha * x)
    if n == "thresholdedrelu":
        return np.where(x > alpha, x, 0.0)
    if n == "scaledtanh":
        return alpha * np.tanh(beta * x)
    if n == "hardsigmoid":
        return np.clip(alpha * x + beta, 0, 1)
    if n == "elu":
        return np.where(x >= 0, x, alpha * (np.exp(np.minimum(x, 0)) - 1))
    if n == "softsign":
        return x / (1 + np.abs(x))
    if n == "softplus":
        return np.logaddexp(0, x)
    raise ValueError(name)


def resolve(names, alphas, betas):
    ai, bi = iter(alphas), iter(betas)
    out = []
    for name in names:
        n = name.lower()
        a = float(next(ai, _DEF_ALPHA.get(n, 0.0))) if n in _TAKES_ALPHA else 0.0
        b = float(next(bi, _DEF_BETA.get(n, 0.0))) if n in _TAKES_BETA else 0.0
        out.append((name, a, b))
    return out


def onnx_gru(
    X, W, R, B=None, sequence_lens=None, initial_h=None, *, direction="forward",
    linear_before_reset=0, activations=None, activation_alpha=(), activation_beta=(),
    clip=None, layout=0,
):
    """Return ``(Y, Y_h)`` of the ONNX GRU operator, computed in float64."""
    X = np.asarray(X, np.float64)
    if layout == 1:
        X = X.transpose(1, 0, 2)
        if initial_h is not None:
            initial_h = np.asarray(initial_h).transpose(1, 0, 2)
    T, N, _ = X.shape
    D, threeH, _ = W.shape
    H = threeH // 3
    B = np.zeros((D, 6 * H)) if B is None else np.asarray(B, np.float64)
    lens = np.full(N, T) if sequence_lens is None else np.asarray(sequence_lens)
    h0 = np.zeros((D, N, H)) if initial_h is None else np.asarray(initial_h, np.float64)
    names = activations or ["Sigmoid", "Tanh"] * D
    acts = resolve(names, activation_alpha, activation_beta)
    Y = np.zeros((T, D, N, H))
    Y_h = np.zeros((D, N, H))

    def c(v):
        return v if clip is None else np.clip(v, -clip, clip)

    for d in range(D):
        reverse = direction == "reverse" or d == 1
        (f, fa, fb), (g, ga, gb) = acts[2 * d], acts[2 * d + 1]
        Wz, Wr, Wh = np.split(np.asarray(W[d], np.float64), 3)
        Rz, Rr, Rh = np.split(np.asarray(R[d], np.float64), 3)
        Wbz, Wbr, Wbh, Rbz, Rbr, Rbh = np.split(B[d], 6)
        for n in range(N):
            h = h0[d, n].copy()
            L = int(lens[n])
            steps = range(L - 1, -1, -1) if reverse else range(L)
            for t in steps:
                x = X[t, n]
                z = act(f, c(x @ Wz.T + h @ Rz.T + Wbz + Rbz), fa, fb)
                r = act(f, c(x @ Wr.T + h @ Rr.T + Wbr + Rbr), fa, fb)
                if linear_before_reset:
                    ht = act(g, c(x @ Wh.T + r * (h @ Rh.T + Rbh) + Wbh), ga, gb)
                else:
                    ht = act(g, c(x @ Wh.T + (r * h) @ Rh.T + Rbh + Wbh), ga, gb)
                h = (1 - z) * ht + z * h
                Y[t, d, n] = h
            Y_h[d, n] = h if L > 0 else 0.0
    if layout == 1:
        return Y.transpose(2, 0, 1, 3), Y_h.transpose(1, 0, 2)
    return Y, Y_h

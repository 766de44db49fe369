"""Layers around the GRUs (gru_engine.layers) built directly from canonical specs, run through
Model.run and compared with float64 NumPy formulas written from the ONNX / Keras / torch
definitions (and with torch.nn.functional where torch is installed)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import ATOL
from gru_engine import config
from gru_engine.errors import InputShapeError, ModelDefinitionError, UnsupportedError
from gru_engine.layers import (
    AveragePooling1D,
    BatchNormalization,
    Conv1D,
    Flatten,
    GlobalAveragePooling1D,
    GlobalMaxPooling1D,
    LayerNormalization,
    MaxPooling1D,
    Reshape,
    UnitNormalization,
    ZeroPadding1D,
    fold_batchnorm,
)
from gru_engine.model import GRU, Activation, Dense, Model

F32 = np.float32


def r32(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(F32)


# --------------------------------------------------------------------------- numpy references


def np_same_pads(T, span, stride):
    out = math.ceil(T / stride)
    total = max((out - 1) * stride + span - T, 0)
    return total // 2, total - total // 2


def np_conv1d(x, W, b, stride, dilation, groups, left, right):
    """Direct float64 cross-correlation, x (B, T, Cin), W (Cout, Cin/g, K)."""
    x = np.pad(x.astype(np.float64), ((0, 0), (left, right), (0, 0)))
    B, Tp, Cin = x.shape
    Cout, Cg, K = W.shape
    span = (K - 1) * dilation + 1
    To = (Tp - span) // stride + 1
    Og = Cout // groups
    y = np.zeros((B, To, Cout))
    for o in range(To):
        for oc in range(Cout):
            g = oc // Og
            win = x[:, o * stride : o * stride + span : dilation, g * Cg : (g + 1) * Cg]  # (B, K, Cg)
            y[:, o, oc] = np.einsum("bkc,ck->b", win, W[oc].astype(np.float64)) + b[oc]
    return y


def np_pool(x, pool, stride, left, right, is_max, count_include_pad):
    B, T, F = x.shape
    To = (T + left + right - pool) // stride + 1
    y = np.zeros((B, To, F))
    for o in range(To):
        lo, hi = o * stride - left, o * stride - left + pool
        win = x[:, max(lo, 0) : min(hi, T)].astype(np.float64)
        if is_max:
            y[:, o] = win.max(axis=1)
        else:
            y[:, o] = win.sum(axis=1) / (pool if count_include_pad else win.shape[1])
    return y


def run1(layer, x, **kw):
    return Model((layer,), input_size=x.shape[-1]).run(x, **kw)[0]


# --------------------------------------------------------------------------- Conv1D


CONV_CASES = [
    # K, stride, dilation, groups, padding, pads
    (3, 1, 1, 1, "valid", None),
    (3, 1, 1, 1, "causal", None),
    (3, 1, 2, 1, "causal", None),
    (4, 2, 1, 1, "same", None),
    (3, 3, 1, 1, "same", None),
    (5, 1, 2, 1, "same", None),
    (1, 1, 1, 1, "valid", None),
    (3, 2, 1, 2, "explicit", (1, 2)),
    (2, 1, 3, 2, "causal", None),
    (3, 1, 1, 4, "valid", None),  # depthwise: groups = in channels
]


@pytest.mark.parametrize("K,stride,dilation,groups,padding,pads", CONV_CASES)
@pytest.mark.parametrize("T", [1, 7, 12])
def test_conv1d_matches_numpy(rng, K, stride, dilation, groups, padding, pads, T):
    Cin, Cout = 4, 8
    W = r32(rng, Cout, Cin // groups, K, scale=0.5)
    b = r32(rng, Cout)
    layer = Conv1D(kernel=W, bias=b, stride=stride, dilation=dilation, groups=groups, padding=padding, pads=pads or (0, 0))
    x = r32(rng, 3, T, Cin)
    span = (K - 1) * dilation + 1
    left, right = {"valid": (0, 0), "causal": (span - 1, 0), "same": np_same_pads(T, span, stride)}.get(padding, pads)
    if T + left + right < span:
        with pytest.raises(InputShapeError, match="steps"):
            run1(layer, x)
        return
    ref = np_conv1d(x, W, b, stride, dilation, groups, left, right)
    y = run1(layer, x)
    assert y.shape == ref.shape and y.dtype == F32
    np.testing.assert_allclose(y, ref, atol=ATOL[F32], rtol=0)
    assert layer.output_length(T) == ref.shape[1]
    if padding in ("same", "causal") and stride == 1:
        assert y.shape[1] == T


def test_parallel_and_serial_kernels_agree(rng):
    """Large calls take the parallel kernels, small ones the serial ones: same results."""
    W, b = r32(rng, 6, 2, 3, scale=0.5), r32(rng, 6)
    conv = Conv1D(kernel=W, bias=b, padding="same", stride=2, groups=2)
    pool = AveragePooling1D(pool_size=3, stride=1, padding="same")
    x = r32(rng, 6, 120, 4)
    assert 6 * conv.output_length(120) >= config.get().parallel_min_steps
    l, r = np_same_pads(120, 3, 2)
    np.testing.assert_allclose(run1(conv, x), np_conv1d(x, W, b, 2, 1, 2, l, r), atol=ATOL[F32], rtol=0)
    big = run1(pool, x)
    np.testing.assert_allclose(big, np_pool(x, 3, 1, 1, 1, False, False), atol=ATOL[F32], rtol=0)
    np.testing.assert_array_equal(np.concatenate([run1(pool, x[i : i + 1]) for i in range(6)]), big)


@pytest.mark.parametrize("padding,stride,dilation", [("causal", 1, 2), ("same", 3, 1), ("valid", 2, 1), ("same", 1, 3)])
def test_conv1d_gemm_path(rng, padding, stride, dilation):
    """Large ungrouped convolutions take the im2col + BLAS path: same results as the kernel."""
    W, b = r32(rng, 48, 40, 3, scale=0.2), r32(rng, 48)
    layer = Conv1D(kernel=W, bias=b, padding=padding, stride=stride, dilation=dilation, activation="tanh")
    x = r32(rng, 4, 300, 40)
    To = layer.output_length(300)
    assert 4 * To * 40 * 48 * 3 >= config.get().conv_gemm_min_macs or stride > 1
    y = run1(layer, x)
    l, r = layer.pad_amounts(300)
    np.testing.assert_allclose(y, np.tanh(np_conv1d(x, W, b, stride, dilation, 1, l, r)), atol=ATOL[F32], rtol=0)


def test_conv1d_matches_torch(rng):
    torch = pytest.importorskip("torch")
    W = r32(rng, 6, 3, 5, scale=0.3)
    b = r32(rng, 6)
    x = r32(rng, 2, 20, 6)
    for stride, dilation, pad in [(1, 1, 2), (2, 2, 3), (3, 1, 0)]:
        layer = Conv1D(kernel=W, bias=b, stride=stride, dilation=dilation, groups=2, padding="explicit", pads=(pad, pad))
        ref = torch.nn.functional.conv1d(
            torch.from_numpy(x).transpose(1, 2), torch.from_numpy(W), torch.from_numpy(b),
            stride=stride, padding=pad, dilation=dilation, groups=2,
        ).transpose(1, 2).numpy()
        np.testing.assert_allclose(run1(layer, x), ref, atol=ATOL[F32], rtol=0)


@pytest.mark.parametrize("act", ["relu", "tanh", "sigmoid", "elu", "swish", "gelu"])
def test_conv1d_activation(rng, act):
    W, b, x = r32(rng, 5, 3, 3), r32(rng, 5), r32(rng, 2, 9, 3)
    plain = run1(Conv1D(kernel=W, bias=b, padding="causal"), x)
    y = run1(Conv1D(kernel=W, bias=b, padding="causal", activation=act), x)
    ref = run1(Activation(act), plain.astype(F32))
    np.testing.assert_allclose(y, ref, atol=ATOL[F32], rtol=0)


def test_conv1d_float64(rng):
    W = rng.standard_normal((4, 2, 3))
    b = rng.standard_normal(4)
    x = rng.standard_normal((2, 10, 2))
    layer = Conv1D(kernel=W, bias=b, padding="same", stride=2)
    y = Model((layer,)).run(x)[0]
    assert y.dtype == np.float64
    l, r = np_same_pads(10, 3, 2)
    np.testing.assert_allclose(y, np_conv1d(x, W, b, 2, 1, 1, l, r), atol=ATOL[np.float64], rtol=0)
    np.testing.assert_allclose(Model((layer,)).astype(F32).run(x)[0], y, atol=1e-5)


# --------------------------------------------------------------------------- normalizations


def test_batchnorm_matches_formula(rng):
    F = 7
    gamma, beta, mean = r32(rng, F), r32(rng, F), r32(rng, F)
    var = (rng.random(F) + 0.1).astype(F32)
    x = r32(rng, 3, 5, F)
    for g, bt in [(gamma, beta), (None, beta), (gamma, None)]:
        layer = BatchNormalization(gamma=g, beta=bt, mean=mean, var=var, epsilon=1e-3)
        gg = np.ones(F) if g is None else g.astype(np.float64)
        bb = np.zeros(F) if bt is None else bt.astype(np.float64)
        ref = (x - mean.astype(np.float64)) / np.sqrt(var.astype(np.float64) + 1e-3) * gg + bb
        np.testing.assert_allclose(run1(layer, x), ref, atol=ATOL[F32], rtol=0)
    # on vectors (after a last-step GRU) too
    gru = GRU(W=r32(rng, 1, 3 * F, F, scale=0.3), R=r32(rng, 1, 3 * F, F, scale=0.3), return_sequences=False)
    v = Model((gru,)).run(x)[0]
    ref = (v - mean) / np.sqrt(var.astype(np.float64) + 1e-3) * gamma
    np.testing.assert_allclose(Model((gru, layer)).run(x)[0], ref, atol=ATOL[F32], rtol=0)


def test_layernorm_matches_formula_and_torch(rng):
    F = 6
    gamma, beta = r32(rng, F), r32(rng, F)
    x = r32(rng, 2, 4, F, scale=3.0) + 5
    layer = LayerNormalization(gamma=gamma, beta=beta, epsilon=1e-5)
    xd = x.astype(np.float64)
    ref = (xd - xd.mean(-1, keepdims=True)) / np.sqrt(xd.var(-1, keepdims=True) + 1e-5) * gamma + beta
    y = run1(layer, x)
    np.testing.assert_allclose(y, ref, atol=ATOL[F32], rtol=0)
    torch = pytest.importorskip("torch")
    t = torch.nn.functional.layer_norm(torch.from_numpy(x), (F,), torch.from_numpy(gamma), torch.from_numpy(beta), 1e-5)
    np.testing.assert_allclose(y, t.numpy(), atol=ATOL[F32], rtol=0)
    # center=False / scale=False
    y2 = run1(LayerNormalization(features=F, epsilon=1e-5), x)
    np.testing.assert_allclose(y2, (ref - beta) / gamma, atol=1e-4, rtol=0)


def test_unit_normalization(rng):
    x = r32(rng, 2, 5, 4)
    x[0, 1] = 0.0  # a zero vector stays zero (x / max(||x||, eps))
    y = run1(UnitNormalization(), x)
    n = np.linalg.norm(x.astype(np.float64), axis=-1, keepdims=True)
    ref = x / np.maximum(n, 1e-12)
    np.testing.assert_allclose(y, ref, atol=ATOL[F32], rtol=0)
    assert np.all(y[0, 1] == 0)
    torch = pytest.importorskip("torch")
    t = torch.nn.functional.normalize(torch.from_numpy(x), p=2.0, dim=-1)
    np.testing.assert_allclose(y, t.numpy(), atol=ATOL[F32], rtol=0)


def test_fold_batchnorm_is_exact(rng):
    conv = Conv1D(kernel=r32(rng, 5, 3, 3), bias=r32(rng, 5), padding="causal")
    bn = BatchNormalization(gamma=r32(rng, 5), beta=r32(rng, 5), mean=r32(rng, 5), var=(rng.random(5) + 0.5).astype(F32))
    dense = Dense(kernel=r32(rng, 5, 4), bias=r32(rng, 4))
    bn2 = BatchNormalization(gamma=r32(rng, 4), beta=r32(rng, 4), mean=r32(rng, 4), var=(rng.random(4) + 0.5).astype(F32))
    relu = Conv1D(kernel=r32(rng, 5, 5, 1), padding="valid", activation="relu")
    bn3 = BatchNormalization(mean=r32(rng, 5), var=np.ones(5, F32))
    layers = [conv, bn, relu, bn3, dense, bn2]
    folded = fold_batchnorm(layers)
    assert [type(layer).__name__ for layer in folded] == ["Conv1D", "Conv1D", "BatchNormalization", "Dense"]
    x = r32(rng, 2, 8, 3)
    np.testing.assert_allclose(Model(tuple(folded)).run(x)[0], Model(tuple(layers)).run(x)[0], atol=ATOL[F32], rtol=0)


# --------------------------------------------------------------------------- pooling


POOL_CASES = [
    # pool, stride, padding, pads, count_include_pad
    (2, None, "valid", None, False),
    (3, 1, "valid", None, False),
    (3, 2, "same", None, False),
    (2, 2, "same", None, False),
    (4, 3, "same", None, False),
    (3, 2, "explicit", (1, 1), True),
    (3, 2, "explicit", (1, 1), False),
    (2, 1, "explicit", (1, 0), True),
]


@pytest.mark.parametrize("is_max", [False, True])
@pytest.mark.parametrize("pool,stride,padding,pads,cip", POOL_CASES)
def test_pooling_matches_numpy(rng, is_max, pool, stride, padding, pads, cip):
    cls = MaxPooling1D if is_max else AveragePooling1D
    layer = cls(pool_size=pool, stride=stride, padding=padding, pads=pads or (0, 0), count_include_pad=cip)
    s = pool if stride is None else stride
    for T in (pool, 7, 10):
        x = r32(rng, 2, T, 3)
        left, right = {"valid": (0, 0), "same": np_same_pads(T, pool, s)}.get(padding, pads)
        ref = np_pool(x, pool, s, left, right, is_max, cip)
        np.testing.assert_allclose(run1(layer, x), ref, atol=ATOL[F32], rtol=0)


def test_pooling_matches_torch(rng):
    torch = pytest.importorskip("torch")
    x = r32(rng, 2, 11, 3)
    xt = torch.from_numpy(x).transpose(1, 2)
    tr = lambda t: t.transpose(1, 2).numpy()  # noqa: E731
    np.testing.assert_allclose(
        run1(AveragePooling1D(pool_size=3, stride=2, padding="explicit", pads=(1, 1), count_include_pad=True), x),
        tr(torch.nn.functional.avg_pool1d(xt, 3, 2, 1)), atol=ATOL[F32], rtol=0)
    np.testing.assert_allclose(
        run1(AveragePooling1D(pool_size=3, stride=2, padding="explicit", pads=(1, 1)), x),
        tr(torch.nn.functional.avg_pool1d(xt, 3, 2, 1, count_include_pad=False)), atol=ATOL[F32], rtol=0)
    np.testing.assert_allclose(
        run1(MaxPooling1D(pool_size=4, stride=3, padding="explicit", pads=(2, 2)), x),
        tr(torch.nn.functional.max_pool1d(xt, 4, 3, 2)), atol=ATOL[F32], rtol=0)


def test_global_pooling(rng):
    x = r32(rng, 3, 6, 4)
    np.testing.assert_allclose(run1(GlobalAveragePooling1D(), x), x.astype(np.float64).mean(1), atol=ATOL[F32], rtol=0)
    np.testing.assert_allclose(run1(GlobalMaxPooling1D(), x), x.max(1), atol=0, rtol=0)
    y = run1(GlobalAveragePooling1D(keepdims=True), x)
    assert y.shape == (3, 1, 4)
    # with lengths, the average runs over the valid steps only (Keras' masked average)
    lens = np.array([6, 2, 4])
    y = run1(GlobalAveragePooling1D(), x, lengths=lens)
    for b, n in enumerate(lens):
        np.testing.assert_allclose(y[b], x[b, :n].astype(np.float64).mean(0), atol=ATOL[F32], rtol=0)


def test_global_pooling_after_gru_with_lengths(rng):
    """GRU outputs past a row's length are zero; the masked average ignores them."""
    W, R = r32(rng, 1, 9, 3, scale=0.5), r32(rng, 1, 9, 3, scale=0.5)
    gru = GRU(W=W, R=R)
    x = r32(rng, 2, 5, 3)
    m = Model((gru, GlobalAveragePooling1D(), Dense(kernel=r32(rng, 3, 2))))
    y = m.run(x, lengths=[5, 3])[0]
    y_row = Model((gru, GlobalAveragePooling1D(), m.layers[2])).run(x[1:2, :3])[0]
    np.testing.assert_allclose(y[1], y_row[0], atol=ATOL[F32], rtol=0)


# --------------------------------------------------------------------------- shape layers


def test_zero_padding_flatten_reshape(rng):
    x = r32(rng, 2, 4, 3)
    y = run1(ZeroPadding1D((2, 1)), x)
    assert y.shape == (2, 7, 3)
    np.testing.assert_array_equal(y, np.pad(x, ((0, 0), (2, 1), (0, 0))))
    assert ZeroPadding1D(3).padding == (3, 3)
    np.testing.assert_array_equal(run1(Reshape(target_shape=(-1, 3)), x), x)
    np.testing.assert_array_equal(run1(Reshape(target_shape=(4, 3)), x), x)
    with pytest.raises(InputShapeError, match="steps"):
        run1(Reshape(target_shape=(5, 3)), x)
    gru = GRU(W=r32(rng, 1, 6, 3), R=r32(rng, 1, 6, 2), return_sequences=False)
    m = Model((gru, Flatten(), Reshape(target_shape=(2,)), Dense(kernel=r32(rng, 2, 1))))
    ref = Model((gru, m.layers[3])).run(x)[0]
    np.testing.assert_array_equal(m.run(x)[0], ref)


def test_full_chain_runs_and_matches_piecewise(rng):
    """Conv(causal) -> BN -> ZeroPadding -> pooling -> GRU -> Dense -> UnitNormalization."""
    conv = Conv1D(kernel=r32(rng, 6, 4, 3, scale=0.4), bias=r32(rng, 6), padding="causal", activation="relu")
    bn = BatchNormalization(gamma=r32(rng, 6), beta=r32(rng, 6), mean=r32(rng, 6), var=np.ones(6, F32))
    pad, pool = ZeroPadding1D((1, 0)), AveragePooling1D(pool_size=2)
    gru = GRU(W=r32(rng, 1, 15, 6, scale=0.4), R=r32(rng, 1, 15, 5, scale=0.4), linear_before_reset=1)
    dense, un = Dense(kernel=r32(rng, 5, 3)), UnitNormalization()
    m = Model((conv, bn, pad, pool, gru, dense, un))
    assert m.input_size == 4 and m.output_size == 3 and m.output_is_sequence
    x = r32(rng, 2, 9, 4)
    y, h = m.run(x)
    h_ = x
    for layer in m.layers:
        h_ = Model((layer,), input_size=h_.shape[-1]).run(h_)[0]
    np.testing.assert_allclose(y, h_, atol=ATOL[F32], rtol=0)
    assert y.shape == (2, 5, 3) and h.shape == (1, 2, 5)
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), 1.0, atol=1e-5)
    assert "Conv1D" in m.summary()


# --------------------------------------------------------------------------- activations


def test_activation_formulas(rng):
    """Each element-wise activation against its float64 formula (Keras 3 / torch definitions)."""
    x = np.concatenate([np.linspace(-8, 8, 61), [0.0, -30.0, 30.0]]).astype(F32)[None, None, :]
    xd = x.astype(np.float64)
    sig = 1 / (1 + np.exp(-xd))
    refs = {
        "linear": xd,
        "relu": np.maximum(xd, 0),
        "tanh": np.tanh(xd),
        "sigmoid": sig,
        "hard_sigmoid": np.clip(xd / 6 + 0.5, 0, 1),  # Keras 3 / torch Hardsigmoid: relu6(x + 3) / 6
        "elu": np.where(xd > 0, xd, np.expm1(xd)),
        "selu": 1.0507009873554805 * np.where(xd > 0, xd, 1.6732632423543772 * np.expm1(xd)),
        "gelu": 0.5 * xd * (1 + np.vectorize(math.erf)(xd / math.sqrt(2))),
        "swish": xd * sig,
        "silu": xd * sig,
        "softplus": np.logaddexp(0, xd),
        "softsign": xd / (1 + np.abs(xd)),
        "softmax": np.exp(xd - xd.max()) / np.exp(xd - xd.max()).sum(),
    }
    for name, ref in refs.items():
        y = run1(Activation(name), x)
        np.testing.assert_allclose(y, ref, atol=ATOL[F32], rtol=1e-6, err_msg=name)
    for alpha in (0.01, 0.2, 0.3):
        np.testing.assert_allclose(run1(Activation("leaky_relu", alpha=alpha), x), np.where(xd >= 0, xd, alpha * xd),
                                   atol=ATOL[F32], rtol=0)
    np.testing.assert_allclose(run1(Activation("elu", alpha=0.5), x), np.where(xd > 0, xd, 0.5 * np.expm1(xd)),
                               atol=ATOL[F32], rtol=0)


# --------------------------------------------------------------------------- errors


def test_bad_configurations_raise_typed_errors(rng):
    W = r32(rng, 4, 3, 3)
    with pytest.raises(ModelDefinitionError, match="padding must be one of"):
        Conv1D(kernel=W, padding="reflect")
    with pytest.raises(ModelDefinitionError, match="padding must be one of"):
        MaxPooling1D(padding="full")
    with pytest.raises(ModelDefinitionError, match="kernel must have shape"):
        Conv1D(kernel=r32(rng, 4, 3))
    with pytest.raises(ModelDefinitionError, match="divisible by groups"):
        Conv1D(kernel=W, groups=3)
    with pytest.raises(ModelDefinitionError, match="bias must have shape"):
        Conv1D(kernel=W, bias=np.zeros(5, F32))
    with pytest.raises(ModelDefinitionError, match="stride must be"):
        Conv1D(kernel=W, stride=0)
    with pytest.raises(ModelDefinitionError, match="var must have shape"):
        BatchNormalization(mean=np.zeros(3, F32), var=np.ones(4, F32))
    with pytest.raises(ModelDefinitionError, match="var \\+ epsilon"):
        BatchNormalization(mean=np.zeros(3, F32), var=-np.ones(3, F32))
    with pytest.raises(UnsupportedError, match="not supported"):
        Conv1D(kernel=W, activation="mish")
    # shape chain
    with pytest.raises(ModelDefinitionError, match="expects 3 input features, the previous layer gives 5"):
        Model((Conv1D(kernel=r32(rng, 5, 2, 1)), Conv1D(kernel=W)))
    gru = GRU(W=r32(rng, 1, 6, 3), R=r32(rng, 1, 6, 2), return_sequences=False)
    with pytest.raises(ModelDefinitionError, match="needs a sequence input"):
        Model((gru, Conv1D(kernel=r32(rng, 4, 2, 1))))
    with pytest.raises(ModelDefinitionError, match="needs a sequence input"):
        Model((gru, MaxPooling1D()))
    with pytest.raises(UnsupportedError, match="Flatten of a sequence"):
        Model((Conv1D(kernel=W), Flatten()))
    with pytest.raises(UnsupportedError, match="Reshape"):
        Model((Conv1D(kernel=W), Reshape(target_shape=(2, 2))))
    with pytest.raises(ModelDefinitionError, match="expects 4 input features"):
        Model((LayerNormalization(features=4),), input_size=3)
    # inputs
    m = Model((Conv1D(kernel=W, padding="causal"), MaxPooling1D(pool_size=2)))
    with pytest.raises(InputShapeError, match="lengths must be None"):
        m.run(r32(rng, 2, 6, 3), lengths=[6, 4])
    with pytest.raises(InputShapeError, match="no output"):
        Model((Conv1D(kernel=W),)).run(r32(rng, 1, 2, 3))
    with pytest.raises(InputShapeError, match="must have shape"):
        m.run(r32(rng, 2, 6, 4))


def test_lengths_pass_through_time_preserving_layers(rng):
    """Causal / same stride-1 convs and normalizations keep the time axis: lengths reach the GRU."""
    conv = Conv1D(kernel=r32(rng, 4, 3, 3, scale=0.5), padding="causal")
    ln = LayerNormalization(features=4)
    gru = GRU(W=r32(rng, 1, 9, 4, scale=0.5), R=r32(rng, 1, 9, 3, scale=0.5), return_sequences=False)
    m = Model((conv, ln, gru))
    x = r32(rng, 2, 7, 3)
    y, _ = m.run(x, lengths=[7, 4])
    y1, _ = m.run(x[1:, :4])
    np.testing.assert_allclose(y[1], y1[0], atol=ATOL[F32], rtol=0)


def test_warmup_runs_every_layer_kernel():
    from gru_engine.layers import warmup

    assert "conv" in warmup()

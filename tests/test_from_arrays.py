"""converters.from_arrays against a NumPy GRU written in each convention (not through the engine)."""

from __future__ import annotations

import numpy as np
import pytest

from converters import from_arrays
from gru_engine import Dense, ModelDefinitionError, UnsupportedError

ATOL = 1e-5


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def ref_gru(x, W, R, Wb, Rb, order, lbr, update, reverse=False):
    """x (B, T, I); W (3H, I), R (3H, H), Wb/Rb (3H,) gate blocks in ``order``; float64.

    update "textbook": h = (1-z)*h + z*h~ ; "frameworks": h = (1-z)*h~ + z*h.
    """
    x = x.astype(np.float64)
    H = R.shape[1]
    blk = {g: slice(i * H, (i + 1) * H) for i, g in enumerate(order.replace("n", "h"))}
    B, T, _ = x.shape
    h = np.zeros((B, H))
    ys = np.zeros((B, T, H))
    steps = range(T - 1, -1, -1) if reverse else range(T)
    for t in steps:
        xt = x[:, t]
        z = sigmoid(xt @ W[blk["z"]].T + Wb[blk["z"]] + h @ R[blk["z"]].T + Rb[blk["z"]])
        r = sigmoid(xt @ W[blk["r"]].T + Wb[blk["r"]] + h @ R[blk["r"]].T + Rb[blk["r"]])
        if lbr:
            ht = np.tanh(xt @ W[blk["h"]].T + Wb[blk["h"]] + r * (h @ R[blk["h"]].T + Rb[blk["h"]]))
        else:
            ht = np.tanh(xt @ W[blk["h"]].T + Wb[blk["h"]] + (r * h) @ R[blk["h"]].T + Rb[blk["h"]])
        h = (1 - z) * h + z * ht if update == "textbook" else (1 - z) * ht + z * h
        ys[:, t] = h
    return ys, h


def weights(rng, I, H):
    s = 1 / np.sqrt(H)
    return (rng.uniform(-s, s, (3 * H, I)).astype(np.float32), rng.uniform(-s, s, (3 * H, H)).astype(np.float32),
            rng.uniform(-s, s, 3 * H).astype(np.float32), rng.uniform(-s, s, 3 * H).astype(np.float32))


@pytest.mark.parametrize("order", ["zrh", "rzh", "hzr", "rzn"])
@pytest.mark.parametrize("update", ["frameworks", "textbook"])
@pytest.mark.parametrize("lbr", [0, 1])
def test_conventions_match_numpy(rng, order, update, lbr):
    I, H = 3, 5
    W, R, Wb, Rb = weights(rng, I, H)
    x = rng.uniform(-1, 1, (2, 7, I)).astype(np.float32)
    model = from_arrays(W, R, np.concatenate([Wb, Rb]), gate_order=order, linear_before_reset=lbr, update=update)
    y, h_n = model.run(x)
    ry, rh = ref_gru(x, W, R, Wb, Rb, order, lbr, update)
    assert np.abs(y - ry).max() < ATOL
    assert np.abs(h_n[0] - rh).max() < ATOL


def test_textbook_differs_from_frameworks(rng):
    """The update convention matters: reading textbook weights as the frameworks' form is wrong."""
    W, R, Wb, Rb = weights(rng, 3, 5)
    x = rng.uniform(-1, 1, (2, 7, 3)).astype(np.float32)
    wrong = from_arrays(W, R, np.concatenate([Wb, Rb]), gate_order="zrh", linear_before_reset=0).run(x)[0]
    ry, _ = ref_gru(x, W, R, Wb, Rb, "zrh", 0, "textbook")
    assert np.abs(wrong - ry).max() > 1e-2


@pytest.mark.parametrize("form", ["6H", "2x3H", "3H", "none", "1x6H"])
@pytest.mark.parametrize("layout", ["out_in", "in_out"])
def test_bias_forms_and_layouts(rng, form, layout):
    I, H = 4, 3
    W, R, Wb, Rb = weights(rng, I, H)
    if form == "3H":
        Rb = np.zeros_like(Rb)
    if form == "none":
        Wb, Rb = np.zeros_like(Wb), np.zeros_like(Rb)
    B = {"6H": np.concatenate([Wb, Rb]), "2x3H": np.stack([Wb, Rb]), "3H": Wb, "none": None,
         "1x6H": np.concatenate([Wb, Rb])[None]}[form]
    Wl, Rl = (W, R) if layout == "out_in" else (W.T, R.T)
    x = rng.uniform(-1, 1, (2, 5, I)).astype(np.float32)
    model = from_arrays(Wl, Rl, B, gate_order="rzh", linear_before_reset=1, layout=layout)
    ry, _ = ref_gru(x, W, R, Wb, Rb, "rzh", 1, "frameworks")
    assert np.abs(model.run(x)[0] - ry).max() < ATOL


def test_bidirectional_and_head(rng):
    I, H = 3, 4
    f = weights(rng, I, H)
    b = weights(rng, I, H)
    W = np.stack([f[0], b[0]])
    R = np.stack([f[1], b[1]])
    Bv = np.stack([np.concatenate([f[2], f[3]]), np.concatenate([b[2], b[3]])])
    kernel = rng.standard_normal((2 * H, 2)).astype(np.float32)
    model = from_arrays(W, R, Bv, gate_order="zrh", linear_before_reset=0, update="textbook", direction="bidirectional",
                        head=Dense(kernel=kernel, activation="tanh"))
    x = rng.uniform(-1, 1, (2, 6, I)).astype(np.float32)
    yf, _ = ref_gru(x, *f, "zrh", 0, "textbook")
    yb, _ = ref_gru(x, *b, "zrh", 0, "textbook", reverse=True)
    ref = np.tanh(np.concatenate([yf, yb], -1) @ kernel)
    assert np.abs(model.run(x)[0] - ref).max() < ATOL


def test_bad_arrays(rng):
    W, R, Wb, Rb = weights(rng, 3, 4)
    with pytest.raises(ModelDefinitionError, match="gate_order"):
        from_arrays(W, R, gate_order="zzh", linear_before_reset=0)
    with pytest.raises(ModelDefinitionError, match="update"):
        from_arrays(W, R, gate_order="zrh", linear_before_reset=0, update="paper")
    with pytest.raises(ModelDefinitionError, match="B must have shape"):
        from_arrays(W, R, np.zeros(5), gate_order="zrh", linear_before_reset=0)
    with pytest.raises(ModelDefinitionError, match="W must have"):
        from_arrays(W[:-1], R, gate_order="zrh", linear_before_reset=0)
    with pytest.raises(ModelDefinitionError, match="R must"):
        from_arrays(W, R.T, gate_order="zrh", linear_before_reset=0)
    with pytest.raises(ModelDefinitionError, match="leading axis of 2"):
        from_arrays(np.stack([W, W]), np.stack([R, R]), np.zeros(24), gate_order="zrh", linear_before_reset=0,
                    direction="bidirectional")
    with pytest.raises(UnsupportedError, match="Sigmoid"):
        from_arrays(W, R, gate_order="zrh", linear_before_reset=0, update="textbook", activations=["HardSigmoid", "Tanh"])

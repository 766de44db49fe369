"""THE one place for framework conventions: gate order, transposes, bias split, reset and
update conventions. Importers and exporters call these; nothing else reorders gates.

Why each rule holds (see ../shared/GRU-FACTS.md, checked against the frameworks):

* Gate order: ONNX and Keras stack gates z, r, h; PyTorch stacks r, z, n (n is PyTorch's name for h).
* linear_before_reset: PyTorch is always the "reset after" form (ONNX lbr = 1); Keras
  ``reset_after=True`` is lbr = 1, ``reset_after=False`` is lbr = 0.
* Layout: ONNX and PyTorch weights are (3H, I) / (3H, H); Keras kernels are (I, 3H) / (H, 3H).
* Bias: ONNX B = [Wb (3H), Rb (3H)]; PyTorch bias_ih / bias_hh map to Wb / Rb after
  reordering; Keras bias is (2, 3H) [input row, recurrent row] with reset_after, else (3H,)
  input bias only (Rb = 0).
* Update: all three compute h = (1 - z) * h~ + z * h_prev. The textbook form
  h = (1 - z) * h_prev + z * h~ is the same model with z' = 1 - z = sigmoid(-pre_z): negate
  the z rows of W, R and both z biases (exact for the sigmoid gate).
"""

from __future__ import annotations

import numpy as np

GATE_ORDER = {"onnx": "zrh", "keras": "zrh", "torch": "rzh"}  # torch names h "n"
LINEAR_BEFORE_RESET = {"torch": 1}  # keras: reset_after -> 1/0; onnx: attribute, default 0


def reorder_gates(a: np.ndarray, order: str, axis: int = 0, to: str = "zrh") -> np.ndarray:
    """Reorder the three gate blocks of ``a`` along ``axis`` from ``order`` to ``to``.

    ``order``/``to`` are permutations of "zrh" ("n" is accepted for "h").
    """
    order = order.lower().replace("n", "h")
    to = to.lower().replace("n", "h")
    if sorted(order) != ["h", "r", "z"] or sorted(to) != ["h", "r", "z"]:
        raise ValueError(f"gate order must be a permutation of 'zrh', got {order!r} -> {to!r}")
    a = np.asarray(a)
    if a.shape[axis] % 3:
        raise ValueError(f"axis {axis} of shape {a.shape} must hold 3 gate blocks")
    blocks = np.split(a, 3, axis=axis)
    return np.concatenate([blocks[order.index(g)] for g in to], axis=axis)


def negate_update_gate(W: np.ndarray, R: np.ndarray, B: np.ndarray):
    """Convert the textbook update h = (1-z)*h_prev + z*h~ to ONNX's, for zrh-ordered
    (D, 3H, I), (D, 3H, H), (D, 6H) arrays: negate the z rows and both z biases."""
    H = R.shape[-1]
    W, R, B = np.array(W), np.array(R), np.array(B)
    W[..., :H, :] *= -1
    R[..., :H, :] *= -1
    B[..., :H] *= -1
    B[..., 3 * H : 4 * H] *= -1
    return W, R, B


def torch_gru_to_onnx(w_ih, w_hh, b_ih=None, b_hh=None):
    """One PyTorch GRU direction (r, z, n order) -> ONNX (W (3H, I), R (3H, H), B (6H,))."""
    W = reorder_gates(w_ih, "rzh")
    R = reorder_gates(w_hh, "rzh")
    H = R.shape[1]
    bw = np.zeros(3 * H, W.dtype) if b_ih is None else reorder_gates(b_ih, "rzh")
    br = np.zeros(3 * H, W.dtype) if b_hh is None else reorder_gates(b_hh, "rzh")
    return W, R, np.concatenate([bw, br])


def onnx_gru_to_torch(W, R, B):
    """Inverse of :func:`torch_gru_to_onnx` for one direction: (w_ih, w_hh, b_ih, b_hh)."""
    H = R.shape[1]
    return (
        reorder_gates(W, "zrh", to="rzh"),
        reorder_gates(R, "zrh", to="rzh"),
        reorder_gates(B[: 3 * H], "zrh", to="rzh"),
        reorder_gates(B[3 * H :], "zrh", to="rzh"),
    )


def keras_gru_to_onnx(kernel, recurrent_kernel, bias=None, reset_after=True):
    """One Keras GRU cell (z, r, h order) -> ONNX (W, R, B (6H,), linear_before_reset)."""
    W = np.asarray(kernel).T
    R = np.asarray(recurrent_kernel).T
    H = R.shape[1]
    if bias is None:
        B = np.zeros(6 * H, W.dtype)
    elif reset_after:
        B = np.asarray(bias).reshape(6 * H)
    else:
        B = np.concatenate([np.asarray(bias).reshape(3 * H), np.zeros(3 * H, W.dtype)])
    return W, R, B, int(bool(reset_after))

"""Build a GRU :class:`~gru_engine.model.Model` from raw weight arrays.

For hand-written models and papers' notations: the caller states the gate order, the reset
convention and the update convention explicitly, and the arrays are mapped to the engine's
canonical ONNX form through :mod:`converters.conventions` (the one place for those rules).

Update conventions (``update=``):

* ``"frameworks"``: ``h = (1 - z) * h~ + z * h_prev`` (ONNX, PyTorch, Keras, cuDNN).
* ``"textbook"``: ``h = (1 - z) * h_prev + z * h~`` (Cho et al. 2014's paper form and several
  textbooks). It is the same network with ``z' = 1 - z = sigmoid(-pre_z)``, so it is imported
  exactly by negating the z rows of W, R and both z biases. Only exact for a sigmoid gate.

Reset conventions (``linear_before_reset=``, required):

* ``0``: ``h~ = g(x Wh' + (r * h_prev) Rh' + Wbh + Rbh)`` (ONNX default, Keras ``reset_after=False``).
* ``1``: ``h~ = g(x Wh' + r * (h_prev Rh' + Rbh) + Wbh)`` (PyTorch, Keras ``reset_after=True``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from gru_engine import config
from gru_engine.errors import ModelDefinitionError, UnsupportedError
from gru_engine.model import GRU, DIRECTIONS, Layer, Model

from . import conventions

UPDATE_CONVENTIONS = ("frameworks", "textbook")
LAYOUTS = ("out_in", "in_out")


def _float_array(name: str, a) -> np.ndarray:
    try:
        arr = np.asarray(a)
    except Exception as e:  # noqa: BLE001 - any array-like failure becomes one typed error
        raise ModelDefinitionError(f"{name} must be a numeric array, got {type(a).__name__}: {e}") from None
    if arr.dtype.kind not in "fiu":
        raise ModelDefinitionError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    return arr


def _with_direction_axis(name: str, a: np.ndarray, D: int, ndim: int, doc: str) -> np.ndarray:
    """``a`` with a leading num_directions axis: (D, ...) given as is, or (...) when D == 1."""
    if a.ndim == ndim and D == 1:
        return a[None]
    if a.ndim == ndim + 1 and a.shape[0] == D:
        return a
    lead = f"({D}, " if D > 1 else "("
    raise ModelDefinitionError(f"{name} must have shape {lead}{doc}), got {a.shape}")


def from_arrays(
    W,
    R,
    B=None,
    *,
    gate_order: str,
    linear_before_reset: int,
    update: str = "frameworks",
    layout: str = "out_in",
    direction: str = "forward",
    activations: Sequence[str] | None = None,
    clip: float | None = None,
    return_sequences: bool = True,
    head: Layer | Sequence[Layer] | None = None,
    dtype=None,
    name: str = "",
) -> Model:
    """A one-GRU-layer :class:`Model` (plus an optional head) from raw arrays.

    Parameters
    ----------
    W : input weights, three gate blocks stacked in ``gate_order``.
        ``layout="out_in"``: ``(3H, I)`` (ONNX / PyTorch); ``layout="in_out"``: ``(I, 3H)``
        (Keras kernels, ``x @ W``). Bidirectional: a leading axis of 2 (forward, reverse).
    R : recurrent weights, same gate order and layout: ``(3H, H)`` or ``(H, 3H)``.
    B : biases, gate blocks in ``gate_order``, one of

        * ``(6H,)``: input bias then recurrent bias ``[Wb, Rb]`` (ONNX);
        * ``(2, 3H)``: rows input bias, recurrent bias (Keras ``reset_after=True``);
        * ``(3H,)``: one bias, added with the input projection (recurrent bias 0);
        * ``None``: zeros.

        Bidirectional: a leading axis of 2 on each of these forms.
    gate_order : the order of the three blocks, a permutation of ``"zrh"`` (``"n"`` is
        accepted for h): ``"zrh"`` for ONNX/Keras, ``"rzh"`` for PyTorch.
    linear_before_reset : 0 or 1, see the module docstring.
    update : ``"frameworks"`` or ``"textbook"``, see the module docstring.
    direction : ``"forward"``, ``"reverse"`` or ``"bidirectional"`` (ONNX semantics).
    activations : ONNX activation names ``(f, g)`` per direction (default Sigmoid, Tanh).
    clip : ONNX pre-activation clip, or None.
    return_sequences : False -> the model returns the last state only.
    head : gru_engine layers (Dense, Activation, ...) to append after the GRU.
    dtype : compute dtype (default: float64 arrays stay float64, others become float32).
    """
    where = f"from_arrays({name!r})" if name else "from_arrays"
    if update not in UPDATE_CONVENTIONS:
        raise ModelDefinitionError(f"{where}: update must be one of {UPDATE_CONVENTIONS}, got {update!r}")
    if layout not in LAYOUTS:
        raise ModelDefinitionError(f"{where}: layout must be one of {LAYOUTS}, got {layout!r}")
    if direction not in DIRECTIONS:
        raise ModelDefinitionError(f"{where}: direction must be one of {list(DIRECTIONS)}, got {direction!r}")
    order = str(gate_order).lower().replace("n", "h")
    if sorted(order) != ["h", "r", "z"]:
        raise ModelDefinitionError(f"{where}: gate_order must be a permutation of 'zrh' (e.g. 'rzh'), got {gate_order!r}")
    if linear_before_reset not in (0, 1, True, False):
        raise ModelDefinitionError(f"{where}: linear_before_reset must be 0 or 1, got {linear_before_reset!r}")
    D = DIRECTIONS[direction]

    W = _float_array(f"{where}: W", W)
    R = _float_array(f"{where}: R", R)
    if dtype is None:
        dtype = np.float64 if W.dtype == np.float64 else config.DTYPE
    dtype = np.dtype(dtype)

    wdoc = "3*hidden_size, input_size" if layout == "out_in" else "input_size, 3*hidden_size"
    rdoc = "3*hidden_size, hidden_size" if layout == "out_in" else "hidden_size, 3*hidden_size"
    W = _with_direction_axis(f"{where}: W", W, D, 2, wdoc)
    R = _with_direction_axis(f"{where}: R", R, D, 2, rdoc)
    if layout == "in_out":
        W = np.swapaxes(W, 1, 2)
        R = np.swapaxes(R, 1, 2)
    H = R.shape[2]
    if H == 0 or R.shape[1] != 3 * H:
        raise ModelDefinitionError(
            f"{where}: R must hold 3 gate blocks of hidden_size x hidden_size ({rdoc}), got {R.shape[1:]} "
            f"after layout={layout!r}"
        )
    if W.shape[1] != 3 * H:
        raise ModelDefinitionError(
            f"{where}: W must have {3 * H} gate rows (3 * hidden_size {H}) in layout {layout!r}, got shape {W.shape[1:]}"
        )

    Bc = np.zeros((D, 6 * H), dtype)
    if B is not None:
        Ba = _float_array(f"{where}: B", B)
        forms = ((6 * H,), (2, 3 * H), (3 * H,))
        core = Ba.shape
        if D == 1 and Ba.ndim >= 2 and Ba.shape[0] == 1 and Ba.shape[1:] in forms:
            core = Ba.shape[1:]
        elif D > 1:
            if Ba.ndim < 2 or Ba.shape[0] != D:
                raise ModelDefinitionError(
                    f"{where}: B must have a leading axis of {D} (one bias per direction), got {Ba.shape}"
                )
            core = Ba.shape[1:]
        if core == (6 * H,):
            Bd = Ba.reshape(D, 6 * H)
        elif core == (2, 3 * H):
            Bd = Ba.reshape(D, 6 * H)
        elif core == (3 * H,):
            Bd = np.concatenate([Ba.reshape(D, 3 * H), np.zeros((D, 3 * H), Ba.dtype)], axis=1)
        else:
            raise ModelDefinitionError(
                f"{where}: B must have shape ({6 * H},), (2, {3 * H}) or ({3 * H},)"
                f"{' with a leading axis of 2' if D > 1 else ''}, got {Ba.shape}"
            )
        Bc = Bd.astype(np.float64)

    # gate order -> zrh, direction by direction (conventions.reorder_gates is the one place)
    Wz = np.stack([conventions.reorder_gates(W[d], order) for d in range(D)]).astype(np.float64)
    Rz = np.stack([conventions.reorder_gates(R[d], order) for d in range(D)]).astype(np.float64)
    Bz = np.stack(
        [np.concatenate([conventions.reorder_gates(Bc[d, : 3 * H], order), conventions.reorder_gates(Bc[d, 3 * H :], order)]) for d in range(D)]
    ).astype(np.float64)

    acts = tuple(activations) if activations else ()
    if update == "textbook":
        f_names = [str(a).lower() for a in acts[0::2]] if acts else ["sigmoid"] * D
        if any(f != "sigmoid" for f in f_names):
            raise UnsupportedError(
                f"{where}: update='textbook' is converted exactly only with a Sigmoid gate activation "
                f"(1 - sigmoid(a) = sigmoid(-a)), got f={f_names}"
            )
        Wz, Rz, Bz = conventions.negate_update_gate(Wz, Rz, Bz)

    gru = GRU(
        W=Wz.astype(dtype),
        R=Rz.astype(dtype),
        B=Bz.astype(dtype),
        direction=direction,
        linear_before_reset=int(linear_before_reset),
        activations=acts,
        clip=clip,
        return_sequences=bool(return_sequences),
        name=name or "gru",
    )
    layers: list[Layer] = [gru]
    if head is not None:
        extra = [head] if isinstance(head, Layer) else list(head)
        for i, layer in enumerate(extra):
            if not isinstance(layer, Layer):
                raise ModelDefinitionError(f"{where}: head[{i}] must be a gru_engine layer (Dense, Activation), got {type(layer).__name__}")
            layers.append(layer.astype(dtype))
    return Model(tuple(layers), name=name or "from_arrays")

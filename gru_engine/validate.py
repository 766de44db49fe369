"""Boundary checks on user inputs. Every user-facing input message lives here."""

from __future__ import annotations

import numpy as np

from .errors import InputShapeError, InputTypeError


def as_float(name: str, x, dtype) -> np.ndarray:
    """``x`` as a C-contiguous, writable array of ``dtype``; floats and ints are converted, others refused."""
    if hasattr(x, "__cuda_array_interface__") and not isinstance(x, np.ndarray):
        raise InputTypeError(f"{name} is a device array; pass device='cuda' or copy it to the host first")
    a = np.asarray(x)
    if a.dtype.kind not in "fiub":
        raise InputTypeError(f"{name} must be a floating array, got dtype {a.dtype}; convert it with .astype(np.float32)")
    return np.ascontiguousarray(a, dtype=dtype)


def as_tokens(name: str, x, vocab: int) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.kind == "f":
        if a.size and not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
            raise InputTypeError(f"{name} must hold integer token ids, got non-integer floats")
    elif a.dtype.kind not in "iu":
        raise InputTypeError(f"{name} must hold integer token ids, got dtype {a.dtype}")
    a = np.ascontiguousarray(a, dtype=np.int64)
    if a.size and (a.min() < 0 or a.max() >= vocab):
        raise InputShapeError(
            f"{name} holds token ids in [{a.min()}, {a.max()}], outside the embedding's range [0, {vocab - 1}]"
        )
    return a


def check_ndim(name: str, a: np.ndarray, shape_doc: str, ndim: int) -> None:
    if a.ndim != ndim:
        raise InputShapeError(f"{name} must have shape {shape_doc}, got {a.shape}")


def check_last(name: str, a: np.ndarray, shape_doc: str, size: int) -> None:
    if a.shape[-1] != size:
        raise InputShapeError(f"{name} must have shape {shape_doc}, got {a.shape}")


def as_lengths(lengths, batch: int, T: int) -> np.ndarray:
    """Per-row valid lengths: integers in [0, T], shape (batch,)."""
    a = np.asarray(lengths)
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)):
            raise InputShapeError(f"lengths must be finite integers, got {a!r}")
        if np.any(a != np.round(a)):
            raise InputShapeError(f"lengths must be integers, got {a!r}")
    elif a.dtype.kind not in "iub":
        raise InputTypeError(f"lengths must be an integer array, got dtype {a.dtype}")
    a = a.astype(np.int64).reshape(-1) if a.ndim == 0 else a.astype(np.int64)
    if a.shape != (batch,):
        raise InputShapeError(f"lengths must have shape ({batch},) (one per batch row), got {a.shape}")
    if a.size and (a.min() < 0 or a.max() > T):
        raise InputShapeError(f"lengths must lie in [0, {T}] (the sequence length), got values in [{a.min()}, {a.max()}]")
    return a


def as_state(initial_state, shapes: list[tuple[int, int]], batch: int, dtype) -> list[np.ndarray]:
    """Initial states: one ``(D, B, H)`` array per GRU layer.

    Accepts the PyTorch form ``(sum(D), B, H)`` when every layer has the same H, or a
    list/tuple with one ``(D, B, H)`` array per GRU layer.
    """
    total = sum(d for d, _ in shapes)
    if isinstance(initial_state, (list, tuple)):
        if len(initial_state) != len(shapes):
            raise InputShapeError(
                f"initial_state must hold one array per GRU layer ({len(shapes)}), got {len(initial_state)}"
            )
        out = []
        for i, (s, (D, H)) in enumerate(zip(initial_state, shapes)):
            a = as_float(f"initial_state[{i}]", s, dtype)
            if a.shape != (D, batch, H):
                raise InputShapeError(f"initial_state[{i}] must have shape ({D}, {batch}, {H}), got {a.shape}")
            out.append(a.copy())
        return out
    a = as_float("initial_state", initial_state, dtype)
    Hs = {H for _, H in shapes}
    if len(Hs) != 1:
        raise InputShapeError(
            "initial_state must be a list with one (D, B, H) array per GRU layer: the layers have different hidden sizes"
        )
    H = Hs.pop()
    if a.shape != (total, batch, H):
        raise InputShapeError(
            f"initial_state must have shape (num_layers*num_directions={total}, batch={batch}, hidden={H}), got {a.shape}"
        )
    out, i = [], 0
    for D, _ in shapes:
        out.append(np.ascontiguousarray(a[i : i + D]).copy())
        i += D
    return out

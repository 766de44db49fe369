"""PyTorch in and out: :func:`from_torch` reads ``nn.GRU`` / ``nn.GRUCell`` modules, whole
modules (through their own forward, via ``torch.onnx.export``) and state-dict checkpoints;
:func:`to_torch` builds an ``nn.Module`` from a :class:`~gru_engine.Model`.

torch is imported inside the functions, so ``import converters.torch_io`` works without it.
Gate order and bias layout go through :mod:`converters.conventions` (PyTorch: gates r, z, n,
always ``linear_before_reset=1``).

The engine's ``Model.run`` is always batch-first ``(B, T, F)``: a module with
``batch_first=False`` is converted to the same network, called with batch-first input.

Checkpoint heuristics (a state dict holds tensors only: no wiring, no activations)
----------------------------------------------------------------------------------
* Keys are grouped by module path (``encoder.gru.weight_ih_l0`` -> module ``encoder.gru``),
  in the state dict's order, which is the order the modules were registered in.
* A module whose parameters are all ``weight_ih_l{k}[_reverse]``, ``weight_hh_l{k}...``,
  ``bias_ih_l{k}...``, ``bias_hh_l{k}...`` is an ``nn.GRU`` (num_layers, bidirectional and
  bias read from the keys; shapes checked, ``weight_hh`` must have 3H rows — 4H is an LSTM);
  one with ``weight_ih``/``weight_hh``/``bias_ih``/``bias_hh`` is an ``nn.GRUCell``
  (unrolled over the sequence). Several GRU modules are chained in order.
* Before the first GRU: a ``weight``-only 2-D module ``(V, E)`` with ``E`` equal to the
  GRU's input size whose name contains ``emb`` (or that cannot be a Linear into the GRU) is
  an ``nn.Embedding`` (the model then takes token ids); ``weight (out, in)`` [+ ``bias``]
  modules chaining into the GRU are ``nn.Linear`` input projections.
* After a GRU: ``weight (out, in)`` [+ ``bias (out,)``] modules whose ``in`` matches the
  running feature size are ``nn.Linear`` layers, applied to every step (or to the last
  state with ``last_step=True``).
* Activations are not in a state dict: the Linear layers are linear unless ``activations``
  (one name or None per Linear, e.g. ``["relu", None]``) says otherwise; with two or more
  Linear layers ``activations`` is required, since two consecutive linear maps are rarely
  what a trained model computes.
* ``prefix`` (e.g. ``"encoder."`` or ``"module."``) selects the keys under that module
  path, strips it, and ignores the rest. Every selected key must be placed; the ones that
  cannot (norm layers, LSTMs, tensors out of order) are listed in an error.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from gru_engine import config
from gru_engine.errors import ModelDefinitionError, ModelFileError, UnsupportedError
from gru_engine.model import GRU, Activation, Dense, Embedding, Layer, Masking, Model, select_outputs

from . import conventions

_GRU_KEY = re.compile(r"^(weight|bias)_(ih|hh)_l(\d+)(_reverse)?$")
_CELL_KEYS = {"weight_ih", "weight_hh", "bias_ih", "bias_hh"}
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")


# =========================================================================== small helpers


def _to_numpy(name: str, t) -> np.ndarray:
    """A float tensor as a NumPy array: float64 kept, other floats (fp16, bf16) -> float32."""
    import torch

    if not isinstance(t, torch.Tensor):
        raise ModelFileError(f"{name} must be a tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise ModelFileError(f"{name} must be a floating tensor, got dtype {t.dtype}")
    if t.layout != torch.strided or t.is_quantized:
        raise UnsupportedError(f"{name} must be a dense float tensor, got layout {t.layout}")
    t = t.detach().cpu()
    if t.dtype != torch.float64:
        t = t.to(torch.float32)
    return t.numpy().copy()


def _dtype_of(arrays) -> np.dtype:
    return np.dtype(np.float64) if arrays and all(a.dtype == np.float64 for a in arrays) else np.dtype(config.DTYPE)


def _split_key(key: str) -> tuple[str, str]:
    module, _, param = key.rpartition(".")
    return module, param


# =========================================================================== GRU parameters


def _gru_layers(params: dict[str, Any], where: str, name: str, hint: str = "") -> tuple[list[GRU], dict]:
    """Engine GRU layers (one per torch layer) from an ``nn.GRU``'s parameter dict.

    ``params`` maps parameter names (``weight_ih_l0``...) to tensors or arrays. Returns the
    layers and a description ``{"num_layers", "bidirectional", "bias", "input_size",
    "hidden_size"}`` (what ``nn.GRU(...)`` needs to rebuild the module).
    """
    found: dict[tuple[int, str], dict[str, Any]] = {}
    for pname, value in params.items():
        m = _GRU_KEY.match(pname)
        if not m:
            raise ModelFileError(f"{where}: {hint}{pname!r} is not an nn.GRU parameter name")
        kind, ih, k, rev = m.group(1), m.group(2), int(m.group(3)), m.group(4) or ""
        found.setdefault((k, rev), {})[f"{kind}_{ih}"] = value
    layers_idx = sorted({k for k, _ in found})
    L = len(layers_idx)
    if layers_idx != list(range(L)):
        raise ModelFileError(f"{where}: GRU layer indices must be 0..{L - 1} without gaps, got {layers_idx}")
    bidirectional = any(rev for _, rev in found)
    dirs = ["", "_reverse"] if bidirectional else [""]
    has_bias = any("bias_ih" in v or "bias_hh" in v for v in found.values())
    need = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if has_bias else [])
    arrays: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    for k in range(L):
        for rev in dirs:
            got = found.get((k, rev), {})
            missing = [f"{p}_l{k}{rev}" for p in need if p not in got]
            if missing:
                raise ModelFileError(f"{where}: GRU {hint}keys {missing} are missing (the other layers/directions have them)")
            arrays[(k, rev)] = {p: _to_numpy(f"{where}: {hint}{p}_l{k}{rev}", got[p]) for p in need}
    w_hh0 = arrays[(0, "")]["weight_hh"]
    if w_hh0.ndim != 2 or w_hh0.shape[1] == 0:
        raise ModelFileError(f"{where}: {hint}weight_hh_l0 must have shape (3*hidden_size, hidden_size), got {w_hh0.shape}")
    H = w_hh0.shape[1]
    if w_hh0.shape[0] != 3 * H:
        what = {4: "an LSTM (4 gates)", 1: "a plain RNN (1 gate)"}.get(w_hh0.shape[0] // H if w_hh0.shape[0] % H == 0 else 0, "not a GRU")
        raise UnsupportedError(
            f"{where}: {hint}weight_hh_l0 must have shape ({3 * H}, {H}) (3 GRU gates), got {w_hh0.shape}: this looks like {what}"
        )
    I = arrays[(0, "")]["weight_ih"].shape[-1] if arrays[(0, "")]["weight_ih"].ndim == 2 else -1
    D = len(dirs)
    dtype = _dtype_of([a for d in arrays.values() for a in d.values()])
    layers = []
    for k in range(L):
        Ws, Rs, Bs = [], [], []
        in_k = I if k == 0 else D * H
        for rev in dirs:
            a = arrays[(k, rev)]
            sfx = f"_l{k}{rev}"
            expect = {"weight_ih": (3 * H, in_k), "weight_hh": (3 * H, H), "bias_ih": (3 * H,), "bias_hh": (3 * H,)}
            for p, arr in a.items():
                if arr.shape != expect[p]:
                    raise ModelFileError(f"{where}: {hint}{p}{sfx} must have shape {expect[p]}, got {arr.shape}")
            W, R, B = conventions.torch_gru_to_onnx(a["weight_ih"], a["weight_hh"], a.get("bias_ih"), a.get("bias_hh"))
            Ws.append(W)
            Rs.append(R)
            Bs.append(B)
        layers.append(
            GRU(
                W=np.stack(Ws).astype(dtype),
                R=np.stack(Rs).astype(dtype),
                B=np.stack(Bs).astype(dtype),
                direction="bidirectional" if bidirectional else "forward",
                linear_before_reset=conventions.LINEAR_BEFORE_RESET["torch"],
                name=f"{name}.l{k}" if L > 1 else name,
            )
        )
    info = {"num_layers": L, "bidirectional": bidirectional, "bias": has_bias, "input_size": I, "hidden_size": H}
    return layers, info


def _cell_layer(params: dict[str, Any], where: str, name: str, hint: str = "") -> tuple[GRU, dict]:
    """An ``nn.GRUCell``'s parameters as one engine GRU layer (the cell unrolled over time)."""
    extra = sorted(set(params) - _CELL_KEYS)
    if extra:
        raise ModelFileError(f"{where}: {hint}{extra} are not nn.GRUCell parameters")
    missing = [p for p in ("weight_ih", "weight_hh") if p not in params]
    has_bias = "bias_ih" in params or "bias_hh" in params
    if has_bias:
        missing += [p for p in ("bias_ih", "bias_hh") if p not in params]
    if missing:
        raise ModelFileError(f"{where}: GRUCell {hint}keys {missing} are missing")
    a = {p: _to_numpy(f"{where}: {hint}{p}", v) for p, v in params.items()}
    w_hh = a["weight_hh"]
    if w_hh.ndim != 2 or w_hh.shape[1] == 0 or w_hh.shape[0] != 3 * w_hh.shape[1]:
        raise UnsupportedError(
            f"{where}: {hint}weight_hh must have shape (3*hidden_size, hidden_size) (3 GRU gates), got {w_hh.shape}"
        )
    H = w_hh.shape[1]
    w_ih = a["weight_ih"]
    if w_ih.ndim != 2 or w_ih.shape[0] != 3 * H:
        raise ModelFileError(f"{where}: {hint}weight_ih must have shape ({3 * H}, input_size), got {w_ih.shape}")
    for p in ("bias_ih", "bias_hh"):
        if p in a and a[p].shape != (3 * H,):
            raise ModelFileError(f"{where}: {hint}{p} must have shape ({3 * H},), got {a[p].shape}")
    W, R, B = conventions.torch_gru_to_onnx(w_ih, w_hh, a.get("bias_ih"), a.get("bias_hh"))
    dtype = _dtype_of(list(a.values()))
    layer = GRU(
        W=W[None].astype(dtype), R=R[None].astype(dtype), B=B[None].astype(dtype),
        linear_before_reset=conventions.LINEAR_BEFORE_RESET["torch"], name=name,
    )
    return layer, {"cell": True, "bias": has_bias, "input_size": w_ih.shape[1], "hidden_size": H}


# =========================================================================== checkpoints


def load_checkpoint(path) -> dict[str, Any]:
    """The tensors of a ``.pt`` / ``.pth`` state-dict file, read ONLY with
    ``torch.load(weights_only=True)`` (no code in the file is ever run).

    Accepts a state dict, or a dict holding one under ``"state_dict"``,
    ``"model_state_dict"`` or ``"model"`` (training checkpoints). Returns the
    ``{key: tensor}`` mapping in the file's order.
    """
    import pickle

    import torch

    p = Path(os.fspath(path))
    if not p.is_file():
        raise ModelFileError(f"checkpoint {str(p)!r} must be an existing file")
    try:
        obj = torch.load(p, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelFileError(
            f"checkpoint {str(p)!r} must hold only tensors and plain containers (torch.load(weights_only=True)); "
            f"it references objects that would run code when unpickled, so it was refused and nothing was executed: {first}"
        ) from None
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError/EOFError/ValueError... for corrupt files
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ModelFileError(
            f"checkpoint {str(p)!r} must be a complete torch.save file, got {type(e).__name__}: {msg[:300]}"
        ) from None
    return _select_state_dict(obj, str(p))


def _select_state_dict(obj, label: str) -> dict[str, Any]:
    import torch

    def is_state(d):
        return isinstance(d, dict) and d and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items())

    if is_state(obj):
        return dict(obj)
    if isinstance(obj, dict):
        for k in _STATE_DICT_KEYS:
            if is_state(obj.get(k)):
                return dict(obj[k])
        keys = list(obj)[:12]
        raise ModelFileError(
            f"checkpoint {label!r} must be a state dict (str -> tensor) or hold one under "
            f"{list(_STATE_DICT_KEYS)}; its top-level keys are {keys}"
        )
    raise ModelFileError(f"checkpoint {label!r} must hold a state dict (a dict of tensors), got {type(obj).__name__}")


@dataclass
class Part:
    """One recognised module of a checkpoint, in order."""

    kind: str  # "embedding" | "linear" | "gru" | "cell"
    module: str  # module path after the prefix ("" for a bare nn.GRU state dict)
    params: dict  # param name -> tensor
    info: dict = field(default_factory=dict)
    layers: list = field(default_factory=list)  # engine layers


@dataclass
class CheckpointPlan:
    """How a state dict maps onto an engine model (shared by from_torch and validation)."""

    parts: list
    prefix: str
    last_step: bool
    activations: list  # one per linear part


def plan_checkpoint(state: dict, prefix: str | None = None, *, last_step: bool = False, activations=None, label: str = "checkpoint") -> CheckpointPlan:
    """Place every key of ``state`` (see the module docstring for the heuristics)."""
    prefix = prefix or ""
    if prefix and not prefix.endswith("."):
        prefix += "."
    if prefix:
        sel = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not sel:
            raise ModelFileError(
                f"{label}: prefix {prefix!r} must match some keys; the keys start with {sorted({k.split('.')[0] for k in state})[:12]}"
            )
    else:
        sel = dict(state)
    modules: dict[str, dict] = {}
    for key, value in sel.items():
        mod, param = _split_key(key)
        modules.setdefault(mod, {})[param] = value

    def full(mod, param):
        return prefix + (f"{mod}.{param}" if mod else param)

    def shape(v):
        return tuple(getattr(v, "shape", ()))

    # classify
    classified = []
    for mod, params in modules.items():
        names = set(params)
        if all(_GRU_KEY.match(n) for n in names):
            kind = "gru"
        elif names <= _CELL_KEYS and {"weight_ih", "weight_hh"} <= names:
            kind = "cell"
        elif names in ({"weight"}, {"weight", "bias"}) and len(shape(params["weight"])) == 2:
            kind = "weight"
        else:
            kind = "other"
        classified.append((mod, kind, params))

    grus = [i for i, (_, kind, _) in enumerate(classified) if kind in ("gru", "cell")]
    if not grus:
        listing = ", ".join(f"{full(m, p)} {list(shape(v))}" for m, _, ps in classified for p, v in ps.items())
        raise UnsupportedError(
            f"{label}: no GRU parameters found (weight_ih_l0/weight_hh_l0 of an nn.GRU, or weight_ih/weight_hh of an "
            f"nn.GRUCell){' under prefix ' + repr(prefix) if prefix else ''}; keys: {listing[:1500]}"
        )
    unplaced: list[str] = []
    parts: list[Part] = []

    def build_gru(i):
        mod, kind, params = classified[i]
        hint = f"{prefix}{mod}." if (prefix or mod) else ""
        gname = (prefix + mod).rstrip(".") or "gru"
        if kind == "gru":
            layers, info = _gru_layers(params, label, gname, hint)
        else:
            layer, info = _cell_layer(params, label, gname, hint)
            layers = [layer]
        return Part(kind, mod, params, info, layers)

    # before the first GRU: chain backwards from the GRU's input size
    first = build_gru(grus[0])
    pre: list[Part] = []
    size = first.info["input_size"]
    for j in range(grus[0] - 1, -1, -1):
        mod, kind, params = classified[j]
        if kind == "weight" and size is not None:
            w = shape(params["weight"])
            b = shape(params["bias"]) if "bias" in params else None
            if b is None and w[1] == size and ("emb" in mod.lower() or w[0] != size):
                pre.insert(0, Part("embedding", mod, params))
                size = None  # token ids: nothing can come before an Embedding
                continue
            if w[0] == size and (b is None or b == (w[0],)):
                pre.insert(0, Part("linear", mod, params))
                size = w[1]
                continue
        unplaced += [full(mod, p) + f" {list(shape(v))}" for p, v in params.items()]
    parts += pre
    parts.append(first)
    size = first.layers[-1].output_size(first.layers[-1].input_size)
    for j in range(grus[0] + 1, len(classified)):
        mod, kind, params = classified[j]
        if kind in ("gru", "cell"):
            part = build_gru(j)
            if part.info["input_size"] != size:
                unplaced += [full(mod, p) + f" {list(shape(v))}" for p, v in params.items()]
                continue
            parts.append(part)
            size = part.layers[-1].output_size(0)
            continue
        if kind == "weight":
            w = shape(params["weight"])
            b = shape(params["bias"]) if "bias" in params else None
            if w[1] == size and (b is None or b == (w[0],)):
                parts.append(Part("linear", mod, params))
                size = w[0]
                continue
        unplaced += [full(mod, p) + f" {list(shape(v))}" for p, v in params.items()]
    if unplaced:
        raise UnsupportedError(
            f"{label}: these keys cannot be placed in an Embedding -> GRU -> Linear chain: {', '.join(unplaced)}. "
            f"Use prefix= to select the GRU's module, or pass the nn.Module itself with example_input= "
            f"so its real forward is captured."
        )
    n_lin = sum(p.kind == "linear" for p in parts)
    if activations is None:
        if n_lin > 1:
            names = [prefix + p.module for p in parts if p.kind == "linear"]
            raise UnsupportedError(
                f"{label}: a state dict does not record the activations between its {n_lin} Linear layers {names}; "
                f"pass activations=[...] (one name or None per Linear, e.g. ['relu', None]) or the nn.Module with example_input="
            )
        activations = [None] * n_lin
    activations = list(activations)
    if len(activations) != n_lin:
        raise ModelDefinitionError(f"activations must list one entry per Linear layer ({n_lin}), got {len(activations)}")
    return CheckpointPlan(parts, prefix, bool(last_step), activations)


def _plan_to_model(plan: CheckpointPlan, name: str) -> Model:
    layers: list[Layer] = []
    acts = iter(plan.activations)
    gru_parts = [p for p in plan.parts if p.kind in ("gru", "cell")]
    last_gru = gru_parts[-1]
    dtypes = []
    for part in plan.parts:
        pname = (plan.prefix + part.module).rstrip(".") or part.kind
        if part.kind == "embedding":
            table = _to_numpy(f"{name}: {pname}.weight", part.params["weight"])
            dtypes.append(table.dtype)
            layers.append(Embedding(table=table, name=pname))
        elif part.kind == "linear":
            w = _to_numpy(f"{name}: {pname}.weight", part.params["weight"])
            b = _to_numpy(f"{name}: {pname}.bias", part.params["bias"]) if "bias" in part.params else None
            dtypes.append(w.dtype)
            layers.append(Dense(kernel=w.T, bias=b, activation=next(acts) or "linear", name=pname))
        else:
            gl = list(part.layers)
            if plan.last_step and part is last_gru:
                gl[-1] = _replace(gl[-1], return_sequences=False)
            dtypes += [g.W.dtype for g in gl]
            layers += gl
    dtype = np.float64 if all(np.dtype(d) == np.float64 for d in dtypes) else config.DTYPE
    layers = [layer.astype(dtype) for layer in layers]
    return Model(tuple(layers), name=name)


def _replace(layer, **changes):
    return dataclasses.replace(layer, **changes)


# =========================================================================== from_torch


def from_torch(obj, example_input=None, prefix: str | None = None, *, last_step: bool = False, activations: Sequence[str | None] | None = None, opset: int | None = None) -> Model:
    """Convert a PyTorch GRU model to a :class:`~gru_engine.Model`.

    Parameters
    ----------
    obj :
        * ``nn.GRU`` (any num_layers, bidirectional, batch_first, bias=False; dropout is an
          inference no-op) or ``nn.GRUCell`` (one step of the resulting GRU layer equals
          one call of the cell): read directly from the parameters;
        * any other ``nn.Module``: its real forward is captured with ``torch.onnx.export``
          on ``example_input`` and read by :func:`converters.onnx_io.from_onnx`;
        * a path to a ``.pt`` / ``.pth`` state-dict checkpoint (or a state dict itself):
          loaded with ``torch.load(weights_only=True)`` and placed by the heuristics of
          the module docstring.
    example_input : tensor or tuple of tensors for a general ``nn.Module``.
    prefix : checkpoints: only keys under this module path (e.g. ``"encoder.gru."``).
    last_step : checkpoints: the (last) GRU returns its final state instead of every step,
        and the Linear head acts on it (``out[:, -1]`` of a unidirectional GRU).
    activations : checkpoints: one activation name (or None) per Linear layer.

    The engine's ``Model.run`` is batch-first whatever the module's ``batch_first``.
    """
    try:
        import torch
        from torch import nn
    except ImportError as e:  # pragma: no cover - exercised only without torch
        raise ImportError("from_torch needs PyTorch: pip install torch") from e

    if isinstance(obj, (str, os.PathLike)):
        state = load_checkpoint(obj)
        plan = plan_checkpoint(state, prefix, last_step=last_step, activations=activations, label=f"checkpoint {os.fspath(obj)!r}")
        return _plan_to_model(plan, Path(os.fspath(obj)).stem)
    if isinstance(obj, dict):
        state = _select_state_dict(obj, "state dict")
        plan = plan_checkpoint(state, prefix, last_step=last_step, activations=activations, label="state dict")
        return _plan_to_model(plan, "state_dict")
    if isinstance(obj, nn.GRU):
        params = dict(obj.named_parameters())
        layers, _ = _gru_layers(params, "nn.GRU", "gru")
        return Model(tuple(layers), name="nn.GRU")
    if isinstance(obj, nn.GRUCell):
        layer, _ = _cell_layer(dict(obj.named_parameters()), "nn.GRUCell", "gru_cell")
        return Model((layer,), name="nn.GRUCell")
    if isinstance(obj, nn.Module):
        if example_input is None:
            raise ModelDefinitionError(
                f"example_input must be given to convert a {type(obj).__name__} (only nn.GRU and nn.GRUCell are read "
                f"from their parameters): pass a tensor shaped like a real input, e.g. from_torch(module, "
                f"example_input=torch.randn(1, 10, n_features)), so the module's own forward is captured"
            )
        return _from_module(obj, example_input, opset)
    raise ModelDefinitionError(
        f"obj must be an nn.GRU, nn.GRUCell, nn.Module, state dict or checkpoint path, got {type(obj).__name__}"
    )


def export_module_onnx(module, example_input, dynamo: bool = False, opset: int | None = None) -> bytes:
    """``torch.onnx.export`` of ``module`` on ``example_input``, as ONNX bytes.

    ``dynamo=False`` is the legacy TorchScript exporter (needs no onnxscript); the dynamo
    exporter writes opset 18 (its lowest native opset) unless ``opset`` says otherwise.
    """
    import logging
    import warnings

    import torch

    args = example_input if isinstance(example_input, tuple) else (example_input,)
    module = module.eval()
    buf = io.BytesIO()
    kw: dict = {"dynamo": dynamo, "opset_version": opset or (18 if dynamo else 17)}
    if dynamo:
        kw.update(external_data=False, verbose=False, optimize=True)
    quiet = [logging.getLogger(n) for n in ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript")]
    levels = [lg.level for lg in quiet]
    try:
        for lg in quiet:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, buf, **kw)
    finally:
        for lg, lv in zip(quiet, levels):
            lg.setLevel(lv)
    return buf.getvalue()


def _from_module(module, example_input, opset: int | None) -> Model:
    """Capture the module's real forward: legacy export -> from_onnx, then dynamo export ->
    from_onnx if the first fails (either the export or the reading of its graph)."""
    import onnx

    from .onnx_io import from_onnx

    errors = []
    for dynamo in (False, True):
        stage = "torch.onnx.export"
        try:
            data = export_module_onnx(module, example_input, dynamo=dynamo, opset=opset)
            stage = "from_onnx"
            model = from_onnx(onnx.load_model_from_string(data))
            return _rename(model, type(module).__name__)
        except Exception as e:  # noqa: BLE001 - try the other exporter, report both
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            errors.append(f"{'dynamo' if dynamo else 'legacy'} {stage}: {type(e).__name__}: {msg[:400]}")
    raise UnsupportedError(
        f"{type(module).__name__} must be exportable by torch.onnx.export into a graph of GRU layers, "
        f"embeddings, linear layers and activations; both exporters failed: " + " | ".join(errors)
    )


def _rename(model: Model, name: str) -> Model:
    return dataclasses.replace(model, name=name)


# =========================================================================== to_torch

_TORCH_CLASSES: dict = {}


def _act_fn(name: str, alpha: float):
    import torch
    import torch.nn.functional as F

    a = float(alpha)
    table = {
        "linear": lambda x: x,
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
        "relu": F.relu,
        "softmax": lambda x: torch.softmax(x, dim=-1),
        "hard_sigmoid": F.hardsigmoid,  # relu6(x + 3) / 6, Keras 3's and the engine's
        "elu": lambda x: F.elu(x, alpha=a if a != 0.0 else 1.0),
        "selu": F.selu,
        "gelu": F.gelu,
        "swish": F.silu,
        "softplus": F.softplus,
        "softsign": F.softsign,
        "leaky_relu": lambda x: F.leaky_relu(x, negative_slope=a),
        "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
        "exp": torch.exp,
    }
    return table[name]


def _classes():
    if _TORCH_CLASSES:
        return _TORCH_CLASSES
    import torch
    from torch import nn

    class GRUEngineModule(nn.Module):
        """A gru-engine Model as PyTorch modules: ``embedding``, ``gru{i}`` (nn.GRU,
        batch_first=True), ``dense{i}`` (nn.Linear), in the order of the model's layers.

        ``forward(x, h0=None) -> (y, h_n)`` exactly as ``Model.run``: ``x`` is ``(B, T, F)``
        (or ``(B, T)`` token ids), ``h0`` ``(sum(D), B, H)`` (or a list per GRU layer),
        ``h_n`` layer by layer, forward then reverse (a list when hidden sizes differ).
        """

        def __init__(self, ops, outputs=(), directions=()):
            super().__init__()
            self._ops = []
            for op in ops:
                if op["module"] is not None:
                    self.add_module(op["name"], op["module"])
                self._ops.append({k: v for k, v in op.items() if k != "module"})
            self._outputs, self._directions = tuple(outputs), tuple(directions)

        def predict(self, x, h0=None):
            """The source model's outputs, like ``Model.predict``: ``y``, or a list for a
            model with several (Keras return_state, Bidirectional merge_mode=None)."""
            y, h_n = self(x, h0)
            if not self._outputs:
                return y
            out = select_outputs(self._outputs, self._directions, y, h_n)
            return out[0] if len(out) == 1 else out

        def forward(self, x, h0=None):
            states = []
            h0_parts = self._split_h0(h0) if h0 is not None else None
            gi = 0
            for op in self._ops:
                kind = op["kind"]
                if kind == "embedding":
                    x = getattr(self, op["name"])(x)
                elif kind == "dense":
                    x = op["act"](getattr(self, op["name"])(x))
                elif kind == "act":
                    x = op["act"](x)
                else:  # gru group
                    gru = getattr(self, op["name"])
                    hin = None
                    if h0_parts is not None:
                        hin = torch.cat(h0_parts[gi : gi + op["num_layers"]], dim=0)
                    gi += op["num_layers"]
                    inp = torch.flip(x, dims=[1]) if op["reverse_only"] else x
                    y, h = gru(inp, hin)
                    H = op["hidden_size"]
                    if op["reverse_only"] and not op["time_reversed"]:
                        y = torch.flip(y, dims=[1])
                    if op["bidirectional"] and op["time_reversed"]:
                        y = torch.cat([y[..., :H], torch.flip(y[..., H:], dims=[1])], dim=-1)
                    states.append(h)
                    D = 2 if op["bidirectional"] else 1
                    if op["return_sequences"]:
                        x = self._merge(op["merge"], y[..., :H], y[..., H:]) if D == 2 else y
                    else:
                        x = self._merge(op["merge"], h[-2], h[-1]) if D == 2 else h[-1]
            if not states:
                return x, None
            if len({s.shape[-1] for s in states}) == 1:
                return x, torch.cat(states, dim=0)
            return x, self._per_layer(states)

        def _per_layer(self, states):
            out = []
            for op, s in zip([o for o in self._ops if o["kind"] == "gru"], states):
                D = 2 if op["bidirectional"] else 1
                out += [s[i * D : (i + 1) * D] for i in range(op["num_layers"])]
            return out

        def _split_h0(self, h0):
            shapes = []
            for op in self._ops:
                if op["kind"] == "gru":
                    D = 2 if op["bidirectional"] else 1
                    shapes += [D] * op["num_layers"]
            if isinstance(h0, (list, tuple)):
                return list(h0)
            out, i = [], 0
            for D in shapes:
                out.append(h0[i : i + D])
                i += D
            return out

        @staticmethod
        def _merge(mode, a, b):
            if mode == "sum":
                return a + b
            if mode == "mul":
                return a * b
            if mode == "ave":
                return (a + b) * 0.5
            return torch.cat([a, b], dim=-1)

    _TORCH_CLASSES["GRUEngineModule"] = GRUEngineModule
    return _TORCH_CLASSES


def _torch_compatible(layer: GRU, i: int) -> None:
    where = f"layer {i} ({layer.describe()}{', ' + repr(layer.name) if layer.name else ''})"
    if layer.linear_before_reset != 1:
        raise UnsupportedError(
            f"{where}: linear_before_reset must be 1 for nn.GRU (PyTorch always applies the reset gate after the "
            f"recurrent product), got 0 (e.g. Keras reset_after=False); it has no nn.GRU equivalent"
        )
    if layer.activations != ("Sigmoid", "Tanh") * layer.num_directions:
        raise UnsupportedError(f"{where}: activations must be Sigmoid, Tanh for nn.GRU, got {list(layer.activations)}")
    if layer.clip is not None:
        raise UnsupportedError(f"{where}: clip={layer.clip} has no nn.GRU equivalent")


def _groups(model: Model):
    """Consecutive GRU layers that one multi-layer nn.GRU computes exactly."""
    out = []
    cur: list[tuple[int, GRU]] = []

    def stackable(prev: GRU, nxt: GRU) -> bool:
        return (
            prev.return_sequences
            and prev.direction == nxt.direction
            and nxt.direction in ("forward", "bidirectional")
            and prev.hidden_size == nxt.hidden_size
            and prev.merge == "concat"
            and prev.W.dtype == nxt.W.dtype
            and not prev.time_reversed_output
            and not nxt.time_reversed_output
        )

    for i, layer in enumerate(model.layers):
        if isinstance(layer, GRU):
            if cur and stackable(cur[-1][1], layer):
                cur.append((i, layer))
                continue
            if cur:
                out.append(cur)
            cur = [(i, layer)]
        else:
            if cur:
                out.append(cur)
                cur = []
            out.append([(i, layer)])
    if cur:
        out.append(cur)
    return out


def to_torch(model: Model):
    """An ``nn.Module`` computing ``model`` (``forward(x, h0=None) -> (y, h_n)`` like
    ``Model.run``; batch-first). GRU layers become ``nn.GRU`` (consecutive compatible layers
    share one multi-layer ``nn.GRU``), Embedding ``nn.Embedding``, Dense ``nn.Linear`` plus
    its activation. Only ``linear_before_reset=1`` Sigmoid/Tanh GRUs without clip exist in
    PyTorch; other layers raise :class:`UnsupportedError` naming the layer and the reason.
    Masks (Masking, ``Embedding(mask_zero=True)``) have no nn.GRU equivalent either.
    """
    import torch
    from torch import nn

    tdtype = torch.float64 if model.dtype == np.float64 else torch.float32
    ops = []
    n_gru = n_dense = n_act = 0
    for group in _groups(model):
        i, layer = group[0]
        where = f"layer {i} ({layer.describe()}{', ' + repr(layer.name) if layer.name else ''})"
        if isinstance(layer, GRU):
            for j, g in group:
                _torch_compatible(g, j)
            D = layer.num_directions
            H = layer.hidden_size
            gru = nn.GRU(
                layer.input_size, H, num_layers=len(group), bias=True, batch_first=True,
                bidirectional=layer.direction == "bidirectional", dtype=tdtype,
            )
            sd = {}
            for k, (_, g) in enumerate(group):
                for d in range(D):
                    sfx = f"_l{k}" + ("_reverse" if d == 1 else "")
                    w_ih, w_hh, b_ih, b_hh = conventions.onnx_gru_to_torch(g.W[d], g.R[d], g.B[d])
                    sd["weight_ih" + sfx] = torch.from_numpy(np.array(w_ih)).to(tdtype)
                    sd["weight_hh" + sfx] = torch.from_numpy(np.array(w_hh)).to(tdtype)
                    sd["bias_ih" + sfx] = torch.from_numpy(np.array(b_ih)).to(tdtype)
                    sd["bias_hh" + sfx] = torch.from_numpy(np.array(b_hh)).to(tdtype)
            gru.load_state_dict(sd, strict=True)
            last = group[-1][1]
            ops.append({
                "kind": "gru", "name": f"gru{n_gru}", "module": gru, "num_layers": len(group),
                "hidden_size": H, "bidirectional": D == 2, "reverse_only": layer.direction == "reverse",
                "time_reversed": last.time_reversed_output, "return_sequences": last.return_sequences,
                "merge": last.merge,
            })
            n_gru += 1
        elif isinstance(layer, Embedding):
            if layer.mask_zero:
                raise UnsupportedError(
                    f"{where}: mask_zero=True must be False for to_torch: nn.GRU has no per-step masks "
                    f"(Keras carries the state over masked steps)"
                )
            emb = nn.Embedding(layer.table.shape[0], layer.table.shape[1], dtype=tdtype)
            emb.load_state_dict({"weight": torch.from_numpy(np.array(layer.table)).to(tdtype)})
            ops.append({"kind": "embedding", "name": "embedding", "module": emb})
        elif isinstance(layer, Dense):
            lin = nn.Linear(layer.in_features, layer.out_features, dtype=tdtype)
            lin.load_state_dict({
                "weight": torch.from_numpy(np.array(layer.kernel.T)).to(tdtype),
                "bias": torch.from_numpy(np.array(layer.bias)).to(tdtype),
            })
            ops.append({"kind": "dense", "name": f"dense{n_dense}", "module": lin, "act": _act_fn(layer.activation, layer.alpha)})
            n_dense += 1
        elif isinstance(layer, Activation):
            ops.append({"kind": "act", "name": f"act{n_act}", "module": None, "act": _act_fn(layer.activation, layer.alpha)})
            n_act += 1
        elif isinstance(layer, Masking):
            raise UnsupportedError(f"{where}: Masking has no PyTorch equivalent (nn.GRU has no per-step masks)")
        else:
            raise UnsupportedError(f"{where}: {layer.kind} layers are not supported by to_torch")
    module = _classes()["GRUEngineModule"](ops, model.outputs, [g.num_directions for g in model.gru_layers])
    return module.eval()


# =========================================================================== validation


def reference_forward(plan: CheckpointPlan, dtype=np.float32):
    """A function ``x -> (y, h_n)`` computed by REAL torch modules (``nn.Embedding``,
    ``nn.GRU(batch_first=True)``, ``nn.GRUCell`` unrolled, ``nn.Linear``) built from the
    checkpoint's keys and loaded with ``load_state_dict(strict=True)`` from its original
    tensors: the reference that :func:`validate_torch` compares the engine with."""
    import torch
    from torch import nn

    tdtype = torch.float64 if np.dtype(dtype) == np.float64 else torch.float32
    mods = []
    acts = iter(plan.activations)
    gru_parts = [p for p in plan.parts if p.kind in ("gru", "cell")]
    for part in plan.parts:
        params = part.params
        if part.kind == "embedding":
            m = nn.Embedding(*params["weight"].shape, dtype=tdtype)
        elif part.kind == "linear":
            out_f, in_f = params["weight"].shape
            m = nn.Linear(in_f, out_f, bias="bias" in params, dtype=tdtype)
        elif part.kind == "gru":
            info = part.info
            m = nn.GRU(info["input_size"], info["hidden_size"], num_layers=info["num_layers"], bias=info["bias"],
                       batch_first=True, bidirectional=info["bidirectional"], dtype=tdtype)
        else:
            info = part.info
            m = nn.GRUCell(info["input_size"], info["hidden_size"], bias=info["bias"], dtype=tdtype)
        m.load_state_dict(params, strict=True)
        m.eval()
        mods.append((part, m, _act_fn(next(acts) or "linear", 0.0) if part.kind == "linear" else None))

    def forward(x):
        x = torch.as_tensor(np.asarray(x))
        x = x.long() if plan.parts[0].kind == "embedding" else x.to(tdtype)
        states = []
        with torch.no_grad():
            for part, m, act in mods:
                if part.kind == "embedding":
                    x = m(x)
                elif part.kind == "linear":
                    x = act(m(x))
                else:
                    if part.kind == "gru":
                        y, h = m(x)
                    else:
                        h1 = torch.zeros(x.shape[0], m.hidden_size, dtype=x.dtype)
                        ys = []
                        for t in range(x.shape[1]):
                            h1 = m(x[:, t], h1)
                            ys.append(h1)
                        y, h = torch.stack(ys, dim=1), h1[None]
                    states.append(h)
                    if plan.last_step and part is gru_parts[-1]:
                        x = torch.cat([h[-2], h[-1]], dim=-1) if part.info.get("bidirectional") else h[-1]
                    else:
                        x = y
        h_n = None
        if states:
            if len({s.shape[-1] for s in states}) == 1:
                h_n = torch.cat(states, 0).numpy()
            else:  # one (D, B, H) array per GRU layer, as Model.run
                h_n = []
                for part, s in zip(gru_parts, states):
                    D = 2 if part.info.get("bidirectional") else 1
                    h_n += [s[i : i + D].numpy() for i in range(0, s.shape[0], D)]
        return x.numpy(), h_n

    return forward


def validate_torch(source, x=None, atol: float = 1e-5, model: Model | None = None, *, prefix=None,
                   last_step: bool = False, activations=None, example_input=None) -> dict:
    """Engine vs PyTorch on the same input: ``{"y": {...}, "h_n": {...}}`` (see
    :func:`converters.validate_against`). ``source``: a checkpoint path or state dict (the
    reference is :func:`reference_forward`), an ``nn.GRU`` / ``nn.GRUCell``, or another
    ``nn.Module`` (run on ``x``, which must then be given; its first output is compared
    with ``y`` and a second tensor output with ``h_n``)."""
    import torch
    from torch import nn

    from . import compare, default_input

    if isinstance(source, (str, os.PathLike, dict)):
        state = load_checkpoint(source) if not isinstance(source, dict) else _select_state_dict(source, "state dict")
        label = f"checkpoint {os.fspath(source)!r}" if not isinstance(source, dict) else "state dict"
        plan = plan_checkpoint(state, prefix, last_step=last_step, activations=activations, label=label)
        if model is None:
            model = _plan_to_model(plan, "checkpoint")
        if x is None:
            x = default_input(model)
        ref_y, ref_h = reference_forward(plan, model.dtype)(x)
    elif isinstance(source, (nn.GRU, nn.GRUCell)):
        if model is None:
            model = from_torch(source)
        if x is None:
            x = default_input(model)
        p = next(source.parameters())
        xt = torch.as_tensor(np.asarray(x)).to(p.dtype)
        with torch.no_grad():
            if isinstance(source, nn.GRU):
                y, h = source(xt if source.batch_first else xt.transpose(0, 1))
                ref_y = (y if source.batch_first else y.transpose(0, 1)).numpy()
                ref_h = h.numpy()
            else:
                h1 = torch.zeros(xt.shape[0], source.hidden_size, dtype=xt.dtype)
                ys = []
                for t in range(xt.shape[1]):
                    h1 = source(xt[:, t], h1)
                    ys.append(h1)
                ref_y, ref_h = torch.stack(ys, 1).numpy(), h1[None].numpy()
    elif isinstance(source, nn.Module):
        if x is None:
            raise ModelDefinitionError(f"x must be given to validate a {type(source).__name__} (its input shape is unknown)")
        xt = torch.as_tensor(np.asarray(x))
        if model is None:
            model = from_torch(source, example_input=xt if example_input is None else example_input)
        with torch.no_grad():
            out = source.eval()(xt)
        outs = list(out) if isinstance(out, (tuple, list)) else [out]
        ref_y = outs[0].numpy()
        ref_h = outs[1].numpy() if len(outs) > 1 and isinstance(outs[1], torch.Tensor) else None
    else:
        raise ModelDefinitionError(f"source must be a checkpoint path, state dict or nn.Module, got {type(source).__name__}")
    y, h_n = model.run(x)
    report = {"y": compare(y, ref_y, atol)}
    if ref_h is not None and h_n is not None:
        if isinstance(ref_h, list) or isinstance(h_n, list):
            rl = ref_h if isinstance(ref_h, list) else [ref_h]
            hl = h_n if isinstance(h_n, list) else [h_n]
            for i, (a, b) in enumerate(zip(hl, rl)):
                report[f"h_n_{i}"] = compare(a, b, atol)
        else:
            report["h_n"] = compare(h_n, ref_h, atol)
    return report

"""Converters between gru-engine models and PyTorch, Keras, ONNX and raw arrays.

``import converters`` imports no framework: each public function is loaded on first use.

    from_torch(obj, example_input=None, prefix=None)   nn.GRU / nn.GRUCell / nn.Module / .pt
    to_torch(model)                                     -> nn.Module, forward(x) -> (y, h_n)
    from_keras(path)                                    .keras / .h5 (zipfile, json, h5py only)
    from_onnx(source) / to_onnx(model, path)            the engine's ONNX reader and writer
    from_arrays(W, R, B, gate_order=..., linear_before_reset=...)
    load_any(path, fmt=None)                            any of the above files -> Model
    validate_against(source, framework, x=None)         engine vs the source framework
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

_LAZY = {
    "from_torch": ("converters.torch_io", "from_torch"),
    "to_torch": ("converters.torch_io", "to_torch"),
    "from_keras": ("converters.keras_io", "from_keras"),
    "from_onnx": ("converters.onnx_io", "from_onnx"),
    "to_onnx": ("converters.onnx_io", "to_onnx"),
    "from_arrays": ("converters.arrays_io", "from_arrays"),
}

FORMATS = ("onnx", "keras", "torch")
_EXT = {".onnx": "onnx", ".keras": "keras", ".h5": "keras", ".hdf5": "keras", ".pt": "torch", ".pth": "torch", ".ckpt": "torch", ".bin": "torch"}
_FRAMEWORK_ALIASES = {"torch": "torch", "pytorch": "torch", "keras": "keras", "onnxruntime": "onnxruntime", "ort": "onnxruntime", "onnx": "onnxruntime"}
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def __getattr__(name):
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'converters' has no attribute {name!r}")
    import importlib

    fn = getattr(importlib.import_module(target[0]), target[1])
    globals()[name] = fn
    return fn


def __dir__():
    return sorted(list(globals()) + list(_LAZY))


# --------------------------------------------------------------------------- format detection


def detect_format(path) -> str:
    """``"onnx"``, ``"keras"`` or ``"torch"`` for a model file: by extension, else by content
    (a zip holding ``config.json`` is Keras, one holding ``*/data.pkl`` a torch.save file,
    HDF5 is a legacy Keras file, a pickle a legacy torch file, a protobuf ModelProto ONNX)."""
    from gru_engine.errors import ModelFileError

    p = Path(os.fspath(path))
    if not p.is_file():
        raise ModelFileError(f"model file {str(p)!r} must exist")
    name = p.name.lower()
    if name.endswith(".weights.h5"):
        return "keras"
    fmt = _EXT.get(p.suffix.lower())
    if fmt is not None:
        return fmt
    with open(p, "rb") as f:
        head = f.read(8)
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(p) as z:
                names = z.namelist()
        except zipfile.BadZipFile:
            raise ModelFileError(f"model file {str(p)!r} must be a complete zip archive (it starts like one)") from None
        if "config.json" in names:
            return "keras"
        if any(n.endswith("data.pkl") for n in names):
            return "torch"
        raise ModelFileError(f"model file {str(p)!r} is a zip archive but neither a .keras nor a torch.save file: {names[:8]}")
    if head.startswith(_HDF5_MAGIC):
        return "keras"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "torch"
    try:
        import onnx

        proto = onnx.load_model(str(p), load_external_data=False)
        if proto.graph.node or proto.graph.input:
            return "onnx"
    except Exception:  # noqa: BLE001 - not ONNX either: fall through to the error
        pass
    raise ModelFileError(
        f"model file {str(p)!r} must be ONNX, Keras (.keras/.h5) or a torch checkpoint (.pt/.pth); "
        f"its format could not be recognised from the extension or the first bytes {head!r}"
    )


def load_any(path, fmt: str | None = None, **kwargs):
    """Load a model file of any supported format as a :class:`gru_engine.Model`.

    ``fmt`` (``"onnx"``, ``"keras"``, ``"torch"``) overrides :func:`detect_format`. Extra
    keyword arguments go to the format's reader (e.g. ``prefix=`` for torch checkpoints).
    """
    from gru_engine.errors import ModelDefinitionError

    if fmt is None:
        fmt = detect_format(path)
    fmt = {"pytorch": "torch", "pt": "torch", "h5": "keras"}.get(str(fmt).lower(), str(fmt).lower())
    if fmt not in FORMATS:
        raise ModelDefinitionError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    fn = __getattr__({"onnx": "from_onnx", "keras": "from_keras", "torch": "from_torch"}[fmt])
    return fn(os.fspath(path), **kwargs)


# --------------------------------------------------------------------------- validation


def default_input(model, batch: int = 2, steps: int = 7, seed: int = 0) -> np.ndarray:
    """A seeded input for ``model``: token ids in [1, V) or floats in [-1, 1)."""
    rng = np.random.default_rng(seed)
    if model.takes_tokens:
        V = model.layers[0].num_embeddings
        return rng.integers(1 if V > 1 else 0, V, size=(batch, steps)).astype(np.int64)
    return rng.uniform(-1, 1, size=(batch, steps, model.input_size)).astype(model.dtype)


def compare(got, ref, atol: float = 1e-5) -> dict:
    """``{"max_abs", "max_rel", "ok"}`` of ``got`` against ``ref``.

    ``max_rel`` is ``max |got - ref| / max(|ref|, atol)`` elementwise; ``ok`` means the
    shapes agree and ``max_abs <= atol``.
    """
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        return {"max_abs": float("inf"), "max_rel": float("inf"), "ok": False, "shape": [list(got.shape), list(ref.shape)]}
    if got.size == 0:
        return {"max_abs": 0.0, "max_rel": 0.0, "ok": True}
    diff = np.abs(got - ref)
    max_abs = float(np.max(diff))
    max_rel = float(np.max(diff / np.maximum(np.abs(ref), atol)))
    ok = bool(np.isfinite(max_abs) and max_abs <= atol)
    return {"max_abs": max_abs, "max_rel": max_rel, "ok": ok}


def validate_against(source, framework: str, x=None, atol: float = 1e-5, *, model=None, **kwargs) -> dict:
    """Run the engine on the converted model and the source framework on the same input.

    Parameters
    ----------
    source : the source model file (``.pt``/``.pth`` checkpoint, ``.keras``/``.h5``,
        ``.onnx``), or for torch an ``nn.Module`` object.
    framework : ``"torch"`` (the checkpoint loaded into real ``nn.GRU`` / ``nn.GRUCell`` /
        ``nn.Embedding`` / ``nn.Linear`` modules built from its keys, or the module itself),
        ``"keras"`` (``keras.saving.load_model(path, compile=False, safe_mode=True)``) or
        ``"onnxruntime"`` (the ONNX file in onnxruntime's CPU provider).
    x : the input; default :func:`default_input` of the converted model (batch-first).
    model : the converted :class:`gru_engine.Model` to check; default ``load_any(source)``.
    kwargs : passed to the reader (``prefix=``, ``last_step=``, ``activations=`` for torch).

    Returns
    -------
    ``{output_name: {"max_abs", "max_rel", "ok"}}``; ``"y"`` is the model output, ``"h_n"``
    the final GRU states where the framework returns them.
    """
    from gru_engine.errors import ModelDefinitionError

    fw = _FRAMEWORK_ALIASES.get(str(framework).lower())
    if fw is None:
        raise ModelDefinitionError(f"framework must be one of torch, keras, onnxruntime, got {framework!r}")
    if fw == "torch":
        from .torch_io import validate_torch

        return validate_torch(source, x=x, atol=atol, model=model, **kwargs)
    if model is None:
        model = load_any(source, "keras" if fw == "keras" else "onnx", **kwargs)
    if x is None and fw == "onnxruntime":
        x = default_input_for_graph(source, model)
    if x is None:
        x = default_input(model)
    if fw == "keras":
        y, h_n = model.run(x)
        return _validate_keras(source, x, y, h_n, atol, model, kwargs.get("config"))
    return _validate_ort(source, x, model, atol)


def _validate_keras(path, x, y, h_n, atol, model, config=None) -> dict:
    """Keras itself on the file: ``load_model`` (safe mode), or for a weights-only file the
    architecture ``config`` (what :func:`from_keras` accepts) built by Keras plus ``load_weights``."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import json

    import keras

    if config is None:
        km = keras.saving.load_model(os.fspath(path), compile=False, safe_mode=True)
    else:
        from .keras_io import _load_config_arg

        cfg = _load_config_arg(config)
        if "class_name" not in cfg:  # model.get_config()
            cfg = {"class_name": "Functional" if "input_layers" in cfg else "Sequential", "config": cfg}
        km = keras.models.model_from_json(json.dumps(cfg))
        km.load_weights(os.fspath(path))
    out = km(x) if isinstance(x, np.ndarray) and x.dtype.kind == "f" else km(np.asarray(x))
    if isinstance(out, dict):
        out = [out[o.name] for o in model.outputs] if model.outputs else list(out.values())
    outs = [keras.ops.convert_to_numpy(o) for o in (out if isinstance(out, (list, tuple)) else [out])]
    if not model.outputs:
        ours, names = [y], ["y"]
    else:  # several outputs (return_state, merge_mode=None): each against its own
        ours, names = model.select_outputs(y, h_n), [o.name or f"output_{i}" for i, o in enumerate(model.outputs)]
    if len(ours) != len(outs):
        return {"outputs": {"max_abs": float("inf"), "max_rel": float("inf"), "ok": False,
                            "shape": [[len(ours)], [len(outs)]]}}
    return {n: compare(a, r, atol) for n, a, r in zip(names, ours, outs)}


def default_input_for_graph(path, model):
    """:func:`default_input` shaped to the graph's fixed batch / time dims, if it has any
    (``torch.onnx.export`` without ``dynamic_axes`` fixes them to the example's)."""
    import onnx

    from .onnx_io import from_onnx

    _, sig = from_onnx(os.fspath(path), return_signature=True)
    proto = onnx.load_model(os.fspath(path), load_external_data=False)
    batch, steps = 2, 7
    for vi in proto.graph.input:
        if vi.name == sig.x:
            dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
            if len(dims) >= 2:
                b, t = (dims[1], dims[0]) if sig.x_layout == "tbf" else (dims[0], dims[1])
                batch, steps = b or batch, t or steps
    return default_input(model, batch=batch, steps=steps)


def _validate_ort(path, x, model, atol) -> dict:
    """onnxruntime on the ONNX file, fed and read through the reader's ``Signature``
    (time-major graphs, optional ``lengths`` / ``initial_state`` inputs, states fixed in
    initializers); the engine runs ``model`` on the same arguments."""
    import onnxruntime as ort

    from gru_engine.errors import UnsupportedError

    from .onnx_io import from_onnx

    label = os.fspath(path)
    _, sig = from_onnx(label, return_signature=True)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(label, so, providers=["CPUExecutionProvider"])
    x = np.asarray(x)
    B, T = x.shape[0], x.shape[1]
    feeds = {}
    for inp in sess.get_inputs():
        name = inp.name
        if name == sig.x:
            a = np.swapaxes(x, 0, 1) if sig.x_layout == "tbf" else x
            feeds[name] = np.ascontiguousarray(a.astype(_ort_dtype(inp.type)))
        elif name == sig.lengths:
            feeds[name] = np.full(B, T, dtype=_ort_dtype(inp.type))
        elif name == sig.initial_state:
            total = sum(d for d, _ in model.state_shapes)
            Hs = {h for _, h in model.state_shapes}
            if len(Hs) != 1:
                raise UnsupportedError(f"{label!r}: graph input {name!r} (initial state of layers of different sizes) cannot be fed")
            shape = (total, B, Hs.pop()) if sig.state_layout == "dbh" else (B, total, Hs.pop())
            feeds[name] = np.zeros(shape, _ort_dtype(inp.type))
        else:
            raise UnsupportedError(f"{label!r}: graph input {name!r} is not x, lengths or initial_state; it cannot be fed")
    kw = sig.to_model_args(feeds)
    y, h_n = model.run(kw.pop("x"), **kw)
    names = [name for name, _, _ in sig.outputs]
    outs = sess.run(names, feeds)
    expected = _expected_outputs(sig, y, h_n, model)
    return {name: compare(got, ref, atol) for name, got, ref in zip(names, expected, outs)}


def _expected_outputs(sig, y, h_n, model) -> list:
    """``Model.run``'s ``(y, h_n)`` arranged as the graph's outputs: h_n-kind outputs take
    the per-layer states in order when ``h_n`` is a list; axes are permuted to the output's
    layout when its labels match the array's."""
    states = iter(h_n) if isinstance(h_n, list) else None
    out = []
    selected = model.select_outputs(y, h_n) if model.outputs else []  # views, taken once
    for _, kind, layout in sig.outputs:
        if isinstance(kind, tuple):  # ("output", i): one of model.outputs
            out.append(np.ascontiguousarray(selected[kind[1]]))
            continue
        if kind == "h_n":
            a, src = (next(states) if states is not None else h_n), "dbh"
        elif kind == "Y":
            g = model.gru_layers[-1]
            a, src = y.reshape(y.shape[0], y.shape[1], g.num_directions, g.hidden_size), "btdh"
        else:
            a, src = y, ("btf" if y.ndim == 3 else "bf")
        core = layout.replace("1", "")
        if sorted(core) == sorted(src):
            a = a.transpose([src.index(c) for c in core])
            for i, c in enumerate(layout):
                if c == "1":
                    a = np.expand_dims(a, i)
        out.append(np.ascontiguousarray(a))
    return out


def _ort_dtype(type_str: str):
    return {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64, "tensor(int32)": np.int32}.get(
        type_str, np.float32
    )

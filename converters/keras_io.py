"""Keras 3 models in: ``.keras`` archives, legacy ``.h5`` files and ``.weights.h5`` plus a config.

Files are read with :mod:`zipfile`, :mod:`json` and :mod:`h5py` only: Keras is never imported
and nothing in the file is deserialised as code (a ``Lambda`` or a custom class is rejected by
name). Only the architecture and the weights are read; ``compile_config`` (losses, metrics,
optimizer) is ignored, so a model compiled with a custom loss converts as well.

Where the weights are:

* ``.keras`` / ``.weights.h5`` (Keras 3): ``layers/<group>/...`` where ``<group>`` is the
  snake_case class name plus ``_N`` in order of appearance (``gru``, ``gru_1``, ``dense``),
  not the layer's name; the layer's name is the ``name`` attribute of ``<group>/vars``.
  GRU: ``cell/vars/{0,1,2}`` = kernel, recurrent_kernel, bias; Bidirectional:
  ``forward_layer/cell/vars`` and ``backward_layer/cell/vars``; Dense: ``vars/{0,1}``;
  TimeDistributed: ``layer/vars``; Embedding: ``vars/0``.
* legacy ``.h5``: ``model_config`` (JSON) in the root attributes, weights under
  ``model_weights/<layer name>`` whose ``weight_names`` attribute lists them in order
  (``.../kernel``, ``.../recurrent_kernel``, ``.../bias``, ``.../embeddings``). A legacy
  weights-only file has ``layer_names`` at its root.

Keras semantics reproduced (checked against Keras 3.15 ``model.predict``):

* ``go_backwards=True``: the layer reads the sequence from the end and returns its outputs in
  that reversed order -> engine ``direction="reverse"``, ``time_reversed_output=True``.
* Bidirectional: the backward layer's outputs are flipped back before merging
  (concat [forward, backward], sum, mul, ave) -> engine ``direction="bidirectional"``.
* Masks (Embedding ``mask_zero``, Masking): a masked step keeps the state and repeats the
  previous output (zero before the first valid step); ``Bidirectional`` with
  ``return_sequences=True`` forces ``zero_output_for_mask`` on both layers, so masked steps
  output zeros there (engine ``masked_output="zero"``).
* Activations: Keras 3 ``hard_sigmoid`` is ``relu6(x + 3) / 6`` = ONNX ``HardSigmoid`` with
  alpha = 1/6, beta = 0.5 (Keras 2 used 0.2; Keras 3 loads old files with its own 1/6 too).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
import numpy as np

from gru_engine import config
from gru_engine.errors import GRUEngineError, ModelFileError, UnsupportedError
from gru_engine.model import Activation as EActivation
from gru_engine.model import Dense as EDense
from gru_engine.model import Embedding as EEmbedding
from gru_engine.model import GRU as EGRU
from gru_engine.model import Masking as EMasking
from gru_engine.model import Model, Output

from .conventions import keras_gru_to_onnx

__all__ = ["from_keras", "SUPPORTED_LAYERS"]

# --------------------------------------------------------------------------- tables

#: Layers that do nothing at inference time (random noise / dropout only when training).
NOOP_LAYERS = {
    "Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout", "AlphaDropout",
    "ActivityRegularization",
}
#: Every Keras class the converter understands, for error messages.
SUPPORTED_LAYERS = sorted(
    {"InputLayer", "Embedding", "Masking", "GRU", "RNN(GRUCell)", "Bidirectional", "Dense", "TimeDistributed",
     "Activation"}
    | NOOP_LAYERS
)
#: Keras ops that Keras records in a Functional graph to compute masks (Embedding mask_zero ->
#: NotEqual(ids, 0); Masking -> Any(NotEqual(x, value), axis=-1)). They are allowed only when they
#: feed ``mask=`` arguments; the engine recomputes the same masks from the layers themselves.
MASK_OPS = {"NotEqual", "Any", "All", "LogicalAnd", "LogicalOr", "Cast", "ExpandDims", "Squeeze"}

#: Layers of converters.keras_layers that pass a Keras mask on unchanged / that consume it.
MASK_KEEPING = {"BatchNormalization", "LayerNormalization", "UnitNormalization", "ReLU", "LeakyReLU", "ELU", "Softmax"}
MASK_CONSUMING = {"GlobalAveragePooling1D", "GlobalAvgPool1D", "GlobalMaxPooling1D", "GlobalMaxPool1D"}


#: a .keras archive's JSON members larger than this are refused; weights larger than
#: _MAX_IN_MEMORY_BYTES are inflated to a temporary file rather than into memory
_MAX_JSON_BYTES = 64 << 20
_MAX_IN_MEMORY_BYTES = 256 << 20


def _supported_list() -> str:
    try:
        from .keras_layers import KERAS_LAYER_CLASSES  # noqa: PLC0415
    except ImportError:  # pragma: no cover
        KERAS_LAYER_CLASSES = ()
    return ", ".join(sorted(set(SUPPORTED_LAYERS) | set(KERAS_LAYER_CLASSES)))


def _is_other(cls: str) -> bool:
    try:
        from .keras_layers import KERAS_LAYER_CLASSES  # noqa: PLC0415
    except ImportError:  # pragma: no cover
        return False
    return cls in KERAS_LAYER_CLASSES


# Keras activation name -> (ONNX RNN activation, alpha, beta); alpha/beta None when unused.
_KERAS_RNN_ACT = {
    "tanh": ("Tanh", None, None),
    "sigmoid": ("Sigmoid", None, None),
    "relu": ("Relu", None, None),
    "linear": ("Affine", 1.0, 0.0),
    "hard_sigmoid": ("HardSigmoid", 1.0 / 6.0, 0.5),  # Keras 3: relu6(x + 3) / 6
    "softsign": ("Softsign", None, None),
    "softplus": ("Softplus", None, None),
    "elu": ("Elu", 1.0, None),
    "leaky_relu": ("LeakyRelu", 0.2, None),  # Keras default negative_slope
}
# Keras activation name -> (engine Dense activation, alpha).
_KERAS_DENSE_ACT = {
    "linear": ("linear", 0.0),
    "sigmoid": ("sigmoid", 0.0),
    "tanh": ("tanh", 0.0),
    "relu": ("relu", 0.0),
    "softmax": ("softmax", 0.0),
    "hard_sigmoid": ("hard_sigmoid", 0.0),
    "elu": ("elu", 1.0),
    "selu": ("selu", 0.0),
    "gelu": ("gelu", 0.0),  # Keras default approximate=False (erf form)
    "swish": ("swish", 0.0),
    "silu": ("swish", 0.0),
    "softplus": ("softplus", 0.0),
    "softsign": ("softsign", 0.0),
    "leaky_relu": ("leaky_relu", 0.2),
    "exponential": ("exp", 0.0),
}


# --------------------------------------------------------------------------- public


def from_keras(path, config=None, *, name: str | None = None, keras_version: str | None = None) -> Model:
    """Convert a saved Keras model to a :class:`gru_engine.Model`, without importing Keras.

    Parameters
    ----------
    path : a ``.keras`` archive, a legacy ``.h5`` model (``model.save("m.h5")``), or a
        ``.weights.h5`` / legacy weights-only ``.h5`` file (then ``config`` is required).
        The format is detected from the file's content, not its name.
    config : the architecture, when ``path`` holds weights only (or to override it): a dict
        (``json.loads(model.to_json())``, the ``config.json`` of a ``.keras`` archive, or
        ``model.get_config()``), a JSON string, a path to a ``.json`` file, or a path to a
        ``.keras`` / legacy ``.h5`` file whose architecture is used.
    name : the engine model's name (default: the Keras model's name).
    keras_version : whose activation definitions apply, default the version recorded in the
        file (``metadata.json`` / the ``keras_version`` attribute; Keras 3 when absent). Only
        ``hard_sigmoid`` differs: Keras 3 ``relu6(x + 3) / 6``, Keras 1-2 ``clip(0.2 x + 0.5)``.

    Raises
    ------
    ModelFileError : missing, truncated or corrupt file; missing weights; a weight whose shape
        disagrees with the architecture (the message names file, layer, tensor and shapes).
    UnsupportedError : a layer or option that cannot be converted (named, with what is supported).
    """
    src = os.fspath(path)
    if config is not None and not isinstance(config, (dict, str, bytes, bytearray, os.PathLike)):
        raise TypeError(f"config must be a dict, a JSON string or a path, got {type(config).__name__}")
    try:
        cfg_arg = None if config is None else _load_config_arg(config)
        with _open_source(src) as (file_cfg, store):
            cfg = file_cfg if cfg_arg is None else cfg_arg
            if cfg is None:
                raise ModelFileError(
                    f"{src!r} holds weights only: pass its architecture as config= (a dict, a JSON string, "
                    "a config.json path or the .keras file it came from)"
                )
            arch = _parse_architecture(cfg, src)
            version = keras_version if keras_version is not None else store.keras_version
            arch.keras2 = bool(version) and str(version).split(".")[0] in ("1", "2")
            return _build(arch, store, src, name)
    except GRUEngineError:
        raise
    except (OSError, RuntimeError, EOFError) as e:
        # h5py reports damage found late (while listing groups, reading attributes) this way.
        raise ModelFileError(f"{src!r} cannot be read (truncated or corrupt file?): {type(e).__name__}: {e}") from None
    except (TypeError, AttributeError, KeyError, IndexError, ValueError) as e:
        # A config entry (or HDF5 attribute) of the wrong type or shape: hand-edited or foreign files.
        raise ModelFileError(
            f"{src!r}: the Keras config and weights must describe a Sequential or Functional model, got a "
            f"malformed entry ({type(e).__name__}: {e})"
        ) from None


# --------------------------------------------------------------------------- opening files


class _Source:
    """Context manager yielding ``(config dict or None, weight store)``."""

    def __init__(self, src: str):
        self.src = src
        self._closers: list = []

    def __enter__(self):
        try:
            return self._enter()
        except BaseException:
            self.__exit__(None, None, None)  # `with` does not call __exit__ when __enter__ raises
            raise

    def _enter(self):
        src = self.src
        if not os.path.exists(src):
            raise ModelFileError(f"Keras model file {src!r} does not exist")
        if os.path.isdir(src):
            raise ModelFileError(
                f"Keras model file {src!r} must be a file, got a directory (a TensorFlow SavedModel is not "
                "supported: save the model with model.save('model.keras'))"
            )
        with open(src, "rb") as f:
            magic = f.read(8)
        if magic[:2] == b"PK":
            return self._open_keras_zip()
        if magic == b"\x89HDF\r\n\x1a\n":
            h5 = _h5_open(src, src)
            self._closers.append(h5)
            store = _store_for_h5(h5, src)
            store.keras_version = _h5_version(h5)
            return _h5_config(h5, src), store
        raise ModelFileError(
            f"{src!r} must be a .keras archive (zip) or an HDF5 file (.h5 / .weights.h5), "
            f"got a file starting with {magic!r}"
        )

    def _open_keras_zip(self):
        src = self.src
        try:
            zf = zipfile.ZipFile(src)
            self._closers.append(zf)
            names = set(zf.namelist())
            if "config.json" not in names:
                raise ModelFileError(f"{src!r}: a .keras archive must contain config.json, found {sorted(names)}")
            for member in ("config.json", "metadata.json"):
                if member in names and zf.getinfo(member).file_size > _MAX_JSON_BYTES:
                    raise ModelFileError(f"{src!r}: {member} must be at most {_MAX_JSON_BYTES} bytes, "
                                         f"got {zf.getinfo(member).file_size} (declared in the zip)")
            try:
                cfg = json.loads(zf.read("config.json"))
            except (ValueError, UnicodeDecodeError) as e:
                raise ModelFileError(f"{src!r}: config.json must be valid JSON, got an error: {e}") from None
            if "model.weights.h5" not in names:
                raise ModelFileError(
                    f"{src!r}: a .keras archive must contain model.weights.h5, found {sorted(names)}"
                )
            if zf.getinfo("model.weights.h5").file_size <= _MAX_IN_MEMORY_BYTES:
                data = io.BytesIO(zf.read("model.weights.h5"))
            else:  # large (or a zip bomb): inflate to a temporary file, not into memory
                data = tempfile.TemporaryFile()
                self._closers.append(data)
                with zf.open("model.weights.h5") as member:
                    shutil.copyfileobj(member, data, 1 << 20)
                data.seek(0)
        except ModelFileError:
            raise
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, KeyError, ValueError,
                NotImplementedError, RuntimeError) as e:  # zipfile: unknown versions / compression
            raise ModelFileError(f"{src!r} is not a readable .keras archive (truncated or corrupt?): {e}") from None
        h5 = _h5_open(data, f"{src}:model.weights.h5")
        self._closers.append(h5)
        store = _store_for_h5(h5, f"{src}:model.weights.h5")
        try:
            meta = json.loads(zf.read("metadata.json")) if "metadata.json" in names else {}
            store.keras_version = str(meta.get("keras_version") or "") or None
        except (ValueError, AttributeError, KeyError, OSError, zipfile.BadZipFile):
            store.keras_version = None
        return cfg, store

    def __exit__(self, *exc):
        for c in reversed(self._closers):
            try:
                c.close()
            except Exception:  # noqa: BLE001 - closing a corrupt file must not hide the real error
                pass
        return False


def _open_source(src: str) -> _Source:
    return _Source(src)


def _h5py():
    try:
        import h5py  # noqa: PLC0415 - optional dependency, only for Keras files
    except ImportError:  # pragma: no cover - h5py is in the [keras] extra
        raise ModelFileError("reading Keras files needs h5py: pip install 'gru-engine[keras]'") from None
    return h5py


def _h5_open(obj, label: str):
    h5py = _h5py()
    try:
        h5 = h5py.File(obj, "r")
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ModelFileError(f"{label!r} is not a readable HDF5 file (truncated or corrupt?): {e}") from None
    links = []
    try:  # external links would open other files (anywhere on disk): refuse them unresolved
        h5.visititems_links(lambda n, link: links.append(n) if isinstance(link, h5py.ExternalLink) else None)
    except (OSError, KeyError, ValueError, RuntimeError) as e:
        h5.close()
        raise ModelFileError(f"{label!r} is not a readable HDF5 file (truncated or corrupt?): {e}") from None
    if links:
        h5.close()
        raise ModelFileError(f"{label!r}: HDF5 external links to other files are not allowed, found {links[:5]}")
    return h5


def _h5_config(h5, src: str):
    try:
        raw = h5.attrs.get("model_config")
    except (OSError, KeyError, RuntimeError) as e:
        raise ModelFileError(f"{src!r}: cannot read the root attributes (corrupt file?): {e}") from None
    if raw is None:
        return None
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    try:
        return json.loads(str(raw))
    except ValueError as e:
        raise ModelFileError(f"{src!r}: the model_config attribute must be valid JSON, got an error: {e}") from None


def _h5_version(h5) -> str | None:
    try:
        v = h5.attrs.get("keras_version")
        if v is None and "model_weights" in h5:
            v = h5["model_weights"].attrs.get("keras_version")
    except (OSError, KeyError, RuntimeError, TypeError):
        return None
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    return None if v is None else str(v)


def _load_config_arg(config) -> dict:
    if isinstance(config, dict):
        return config
    if isinstance(config, (bytes, bytearray)):
        config = config.decode("utf-8")
    if isinstance(config, str) and config.lstrip().startswith("{"):
        try:
            return json.loads(config)
        except ValueError as e:
            raise ModelFileError(f"config must be valid JSON, got an error: {e}") from None
    if isinstance(config, (str, os.PathLike)):
        p = os.fspath(config)
        if not os.path.isfile(p):
            raise ModelFileError(f"config file {p!r} does not exist")
        with open(p, "rb") as f:
            magic = f.read(8)
        if magic[:2] == b"PK" or magic == b"\x89HDF\r\n\x1a\n":
            with _open_source(p) as (cfg, _store):
                if cfg is None:
                    raise ModelFileError(f"config file {p!r} holds no model architecture")
                return cfg
        try:
            with open(p, encoding="utf-8") as f:
                return json.load(f)
        except (ValueError, UnicodeDecodeError) as e:
            raise ModelFileError(f"config file {p!r} must be valid JSON, got an error: {e}") from None
    raise TypeError(f"config must be a dict, a JSON string or a path, got {type(config).__name__}")


# --------------------------------------------------------------------------- weight stores


class _WeightStore:
    """Gives the arrays of one layer by layer name and class."""

    src: str
    keras_version: str | None = None

    def layer_weights(self, lname: str, cls: str, parts: tuple[str, ...], scope: tuple = ()) -> dict[str, list[np.ndarray]]:
        """``{part: [arrays in order]}``; ``parts`` are sub-paths such as ``"cell"`` or
        ``"forward_layer/cell"`` for the new format (the legacy format splits by name)."""
        raise NotImplementedError


def _read(ds, label: str) -> np.ndarray:
    try:
        if getattr(ds, "external", None):
            raise ModelFileError(f"{label}: the tensor must be stored in the file itself, got external storage "
                                 f"{[e[0] for e in ds.external][:3]}")
        nbytes = int(np.prod(ds.shape, dtype=object)) * ds.dtype.itemsize if ds.shape is not None else 0
        stored = ds.id.get_storage_size()
        # uncompressed data must be on disk; compressed at most deflate's ratio; never past the limit
        ratio = 1 if not ds.compression and not ds.id.get_create_plist().get_nfilters() else 1100
        if nbytes > stored * ratio or nbytes > config.MAX_TENSOR_ELEMENTS * 8:
            raise ModelFileError(f"{label}: the tensor declares shape {ds.shape} ({nbytes} bytes) but the file "
                                 f"stores {stored} bytes for it (truncated or corrupt file?)")
        return np.array(ds[()])
    except ModelFileError:
        raise
    except (OSError, KeyError, ValueError, RuntimeError, TypeError) as e:
        raise ModelFileError(f"{label}: cannot read the tensor (truncated or corrupt file?): {e}") from None


def _snake(name: str) -> str:
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


class _NewStore(_WeightStore):
    """Keras 3 layout (``.keras`` archives and ``.weights.h5``). A nested model's layers sit
    under ``<its group>/layers``, found the same way."""

    def __init__(self, h5, src: str):
        self.h5, self.src = h5, src
        self._maps: dict[str, dict[str, str]] = {}
        self.order_names: dict[tuple, str] = {}
        self._names("layers")

    def _names(self, container: str) -> dict[str, str]:
        """``{layer name: group path}`` for the groups under ``container``, from the ``name``
        attribute of each group's ``vars``."""
        m = self._maps.get(container)
        if m is None:
            m = {}
            try:
                if container in self.h5:
                    layers = self.h5[container]
                    for g in layers:
                        obj = layers[g]
                        vname = obj["vars"].attrs.get("name") if "vars" in obj else None
                        if isinstance(vname, bytes):
                            vname = vname.decode()
                        if vname is not None:
                            m[str(vname)] = f"{container}/{g}"
            except (OSError, KeyError, ValueError, RuntimeError) as e:
                raise ModelFileError(
                    f"{self.src!r}: cannot list the weight groups of {container!r} (truncated or corrupt file?): {e}"
                ) from None
            self._maps[container] = m
        return m

    def set_layer_order(self, orders: dict) -> None:
        """Fallback for files without ``vars`` name attributes: Keras' own naming,
        snake_case class + ``_N`` in order of ``model.layers``, per (nested) model."""
        for scope, layers in orders.items():
            used: dict[str, int] = {}
            for lname, cls in layers:
                base = _snake(cls)
                if base in used:
                    used[base] += 1
                    g = f"{base}_{used[base]}"
                else:
                    used[base] = 0
                    g = base
                self.order_names[(scope, lname)] = g

    def _group(self, lname: str, cls: str, scope: tuple) -> str:
        container = "layers"
        for i in range(len(scope) + 1):
            name, sc = (scope[i], scope[:i]) if i < len(scope) else (lname, scope)
            g = self._names(container).get(name)
            if g is None and (sc, name) in self.order_names:
                g = f"{container}/{self.order_names[(sc, name)]}"
            if g is None or g not in self.h5:
                what = f"layer {lname!r} ({cls})" + (f" in nested model {'/'.join(scope)!r}" if scope else "")
                raise ModelFileError(
                    f"{self.src!r}: weights of {what} not found; weight groups in {container!r}: "
                    f"{sorted(self._names(container)) or sorted(self.h5.get(container, {}))}"
                )
            container = f"{g}/layers"
        return g

    def layer_weights(self, lname, cls, parts, scope=()):
        group = self._group(lname, cls, tuple(scope))
        out = {}
        for part in parts:
            path = f"{group}/{part}/vars" if part else f"{group}/vars"
            try:
                if path not in self.h5:
                    raise ModelFileError(f"{self.src!r}: weights of layer {lname!r} ({cls}) not found: no group {path!r}")
                g = self.h5[path]
                keys = sorted(g.keys(), key=lambda k: int(k) if k.isdigit() else 1 << 30)
                out[part] = [_read(g[k], f"{self.src!r}: layer {lname!r} tensor {path}/{k}") for k in keys]
            except ModelFileError:
                raise
            except (OSError, KeyError, ValueError, RuntimeError) as e:
                raise ModelFileError(f"{self.src!r}: cannot read {path!r} of layer {lname!r} (corrupt file?): {e}") from None
        return out


class _LegacyStore(_WeightStore):
    """Legacy HDF5 layout: ``<root>/<layer name>`` with a ``weight_names`` attribute."""

    def __init__(self, root, src: str):
        self.root, self.src = root, src

    def layer_weights(self, lname, cls, parts, scope=()):
        top = scope[0] if scope else lname
        try:
            if top not in self.root:
                raise ModelFileError(
                    f"{self.src!r}: weights of layer {top!r} ({cls if not scope else 'nested model'}) not found; layers in "
                    f"the file: {sorted(self.root.keys())}"
                )
            g = self.root[top]
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in g.attrs.get("weight_names", [])]
            if scope:  # a nested model lists all its layers' weights: keep lname's (".../<scope>/<lname>/...")
                names = [n for n in names if _follows(n.split("/"), scope, lname)]
            arrays = []
            for n in names:
                if n not in g:
                    raise ModelFileError(f"{self.src!r}: layer {lname!r} lists weight {n!r}, which is missing from the file")
                arrays.append((n, _read(g[n], f"{self.src!r}: layer {lname!r} tensor {n!r}")))
        except ModelFileError:
            raise
        except (OSError, KeyError, ValueError, RuntimeError) as e:
            raise ModelFileError(f"{self.src!r}: cannot read the weights of layer {lname!r} (corrupt file?): {e}") from None
        out: dict[str, list] = {p: [] for p in parts}
        if len(parts) == 1:
            out[parts[0]] = [(n.split("/"), a) for n, a in arrays]
            return {p: _order_legacy(v) for p, v in out.items()}
        # Bidirectional: forward_* / backward_* path components name the side; with an explicit
        # backward_layer the sub-layers keep their own names, and Keras lists forward first.
        sides = []
        for n, _a in arrays:
            side = next((c for c in n.split("/") if c.startswith(("forward_", "backward_"))), None)
            sides.append(next((p for p in parts if side and p.startswith(side.split("_")[0])), None))
        if None in sides or len(set(sides)) != len(parts):
            if len(arrays) % len(parts):
                raise ModelFileError(
                    f"{self.src!r}: layer {lname!r} ({cls}) must hold the same number of weights per direction, "
                    f"got {len(arrays)}: {[n for n, _a in arrays]}"
                )
            half = len(arrays) // len(parts)
            sides = [parts[i // half] for i in range(len(arrays))]
        for (n, a), key in zip(arrays, sides):
            out[key].append((n.split("/"), a))
        return {p: _order_legacy(v) for p, v in out.items()}


def _follows(comps: list, scope: tuple, lname: str) -> bool:
    """Whether a legacy weight name belongs to layer ``lname`` of nested model ``scope[-1]``:
    names are ``<model>/<layer>/...`` (nested Sequential) or ``<layer>/...`` (nested Functional)."""
    for i, c in enumerate(comps[:-1]):
        if c == lname and (i == 0 or comps[i - 1] == scope[-1]):
            return True
    return False


_LEGACY_ORDER = ("kernel", "recurrent_kernel", "bias", "embeddings")


def _order_legacy(items) -> list[np.ndarray]:
    """Legacy weights listed by name: return them in the new format's order
    (kernel, recurrent_kernel, bias) whatever order the file lists them in."""
    def base(comps):
        return comps[-1].split(":")[0]

    known = [it for it in items if base(it[0]) in _LEGACY_ORDER]
    if len(known) == len(items):
        return [a for _c, a in sorted(items, key=lambda it: _LEGACY_ORDER.index(base(it[0])))]
    return [a for _c, a in items]


def _store_for_h5(h5, src: str) -> _WeightStore:
    try:
        if "layers" in h5 and "model_weights" not in h5:
            return _NewStore(h5, src)
        if "model_weights" in h5:
            return _LegacyStore(h5["model_weights"], src)
        if "layer_names" in h5.attrs:
            return _LegacyStore(h5, src)
    except ModelFileError:
        raise
    except (OSError, KeyError, ValueError, RuntimeError) as e:
        raise ModelFileError(f"{src!r}: cannot read the HDF5 structure (truncated or corrupt file?): {e}") from None
    raise ModelFileError(
        f"{src!r} must hold Keras weights (a 'layers' group, a 'model_weights' group or a 'layer_names' "
        f"attribute), found groups {sorted(h5.keys())}"
    )


# --------------------------------------------------------------------------- architecture


@dataclass
class _Node:
    """One layer of the chain: Keras class, config and Functional call information."""

    cls: str
    cfg: dict
    lname: str
    masked_call: bool | None = None  # Functional: called with a mask= argument
    scope: tuple = ()  # names of the nested models it sits in, outermost first
    extra: dict = field(default_factory=dict)


@dataclass
class _Arch:
    kind: str  # Sequential | Functional
    name: str
    nodes: list  # [_Node] in order, InputLayer excluded
    input_shape: list | None
    input_dtype: str | None
    dtype: str
    weight_order: dict  # {scope: [(layer name, class)] as model.layers orders them}
    keras2: bool = False  # written by Keras 1/2: their hard_sigmoid is clip(0.2 x + 0.5)
    # Functional: the model outputs [(layer name, tensor index, output name)], in order;
    # None: the chain's last layer's output(s) (a Sequential model).
    outputs: list | None = None


def _unwrap(cfg: dict) -> tuple[str, dict]:
    if not isinstance(cfg, dict):
        raise ModelFileError(f"the Keras config must be a JSON object, got {type(cfg).__name__}")
    if "class_name" in cfg and isinstance(cfg.get("config"), (dict, list)):
        return str(cfg["class_name"]), cfg["config"]
    if "layers" in cfg:  # model.get_config()
        return ("Functional" if "input_layers" in cfg else "Sequential"), cfg
    raise ModelFileError("the Keras config must have 'class_name' and 'config' (model.to_json()) or 'layers'")


def _policy_name(d) -> str:
    if isinstance(d, str):
        return d
    if isinstance(d, dict):
        c = d.get("config")
        if isinstance(c, dict) and isinstance(c.get("name"), str):
            return c["name"]
        if isinstance(d.get("name"), str):
            return d["name"]
    return "float32"


def _class_of(layer: dict) -> str:
    """The class to dispatch on; a registered custom class keeps its registered name
    (``package>Name``) so that it can never pass for a built-in layer."""
    cls = str(layer.get("class_name"))
    mod = layer.get("module")
    reg = layer.get("registered_name")
    if isinstance(mod, str) and not mod.startswith("keras"):
        return str(reg or f"{mod}.{cls}")
    if reg and reg != cls:
        return str(reg)
    return cls


def _layer_name(layer: dict) -> str:
    c = layer.get("config") or {}
    return str(layer.get("name") or c.get("name") or "")


def _parse_architecture(cfg: dict, src: str) -> _Arch:
    cls, c = _unwrap(cfg)
    if isinstance(c, list):  # Keras 2.0-2.1 Sequential: "config" is the list of layers
        c = {"layers": c}
    layers = c.get("layers")
    if not isinstance(layers, list):
        raise ModelFileError(f"{src!r}: the model config must list its layers, got {type(layers).__name__}")
    dtype = _policy_name(c.get("dtype"))
    mname = str(c.get("name") or os.path.splitext(os.path.basename(src))[0])
    if cls == "Sequential":
        return _parse_sequential(layers, c, mname, dtype)
    if cls in ("Functional", "Model"):
        return _parse_functional(layers, c, mname, dtype, src)
    raise UnsupportedError(
        f"Keras model class {cls!r} is not supported; supported: Sequential, Functional (a custom Model "
        "subclass has no architecture in the file: rebuild it as Sequential or Functional)"
    )


def _parse_sequential(layers, c, mname, dtype) -> _Arch:
    nodes = []
    input_shape = None
    input_dtype = None
    for layer in layers:
        lc = layer.get("config") or {}
        cls = _class_of(layer)
        if cls == "InputLayer":
            input_shape = lc.get("batch_shape") or lc.get("batch_input_shape")
            input_dtype = _policy_name(lc.get("dtype")) if lc.get("dtype") else None
            continue
        if input_shape is None and not nodes:
            input_shape = lc.get("batch_shape") or lc.get("batch_input_shape")
        nodes.append(_Node(cls, lc, _layer_name(layer)))
    if input_shape is None:
        input_shape = c.get("build_input_shape")
    weight_order = {(): [(n.lname, n.cls) for n in nodes]}
    return _Arch("Sequential", mname, _flatten(nodes, weight_order), input_shape, input_dtype, dtype, weight_order)


NESTED_MODELS = ("Sequential", "Functional", "Model")


def _flatten(nodes: list, weight_order: dict) -> list:
    """Splice nested Sequential / Functional models into the chain (Keras propagates masks
    through them as through the flat model); their layers keep a ``scope`` for the weights."""
    out = []
    for n in nodes:
        if n.cls in NESTED_MODELS and isinstance(n.cfg.get("layers"), list):
            sub = _parse_architecture({"class_name": n.cls, "config": n.cfg}, f"nested model {n.lname!r}")
            for scope, order in sub.weight_order.items():
                weight_order[(n.lname, *scope)] = order
            for sn in sub.nodes:
                sn.scope = (n.lname, *sn.scope)
                out.append(sn)
        else:
            out.append(n)
    return out


def _is_tensor(v) -> bool:
    return isinstance(v, dict) and v.get("class_name") == "__keras_tensor__"


def _history(v) -> tuple[str, int, int]:
    h = v["config"]["keras_history"]
    return str(h[0]), int(h[1]), int(h[2])


def _node_calls(layer: dict) -> list[tuple[list, dict]]:
    """Normalise a layer's inbound nodes to ``[(args, kwargs)]`` with tensor args as
    ``(layer, node, index)`` tuples. Handles Keras 3 (``{"args", "kwargs"}``) and the Keras 2
    form (``[[layer, node, index, kwargs], ...]``)."""
    calls = []
    for node in layer.get("inbound_nodes") or []:
        if isinstance(node, dict):
            args = [(_history(a) if _is_tensor(a) else a) for a in node.get("args", [])]
            kwargs = {k: (_history(v) if _is_tensor(v) else v) for k, v in (node.get("kwargs") or {}).items()}
            # Tensors nested in lists (e.g. initial_state=[t]) are kept as lists of tuples.
            for k, v in list(kwargs.items()):
                if isinstance(v, list) and any(_is_tensor(x) for x in v):
                    kwargs[k] = [(_history(x) if _is_tensor(x) else x) for x in v]
            calls.append((args, kwargs))
        elif isinstance(node, list):  # Keras 2: one entry per input tensor
            args, kwargs = [], {}
            for entry in node:
                args.append((str(entry[0]), int(entry[1]), int(entry[2])))
                if len(entry) > 3 and isinstance(entry[3], dict):
                    kwargs.update(entry[3])
            calls.append((args, kwargs))
    return calls


def _refs(v):
    if isinstance(v, tuple) and len(v) == 3 and isinstance(v[0], str):
        yield v
    elif isinstance(v, (list, tuple)):
        for x in v:
            yield from _refs(x)
    elif isinstance(v, dict):
        for x in v.values():
            yield from _refs(x)


def _norm_io(v, what: str, src: str) -> list[tuple[str, int, int]]:
    if isinstance(v, dict):
        v = list(v.values())
    if isinstance(v, list) and len(v) == 3 and isinstance(v[0], str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(x, list) and len(x) == 3 for x in v):
        raise ModelFileError(f"{src!r}: the Functional model's {what} must be [layer, node, index] lists, got {v!r}")
    return [(str(x[0]), int(x[1]), int(x[2])) for x in v]


def _parse_functional(layers, c, mname, dtype, src) -> _Arch:
    by_name: dict[str, dict] = {}
    for layer in layers:
        by_name[_layer_name(layer)] = layer
    ins = _norm_io(c.get("input_layers"), "input_layers", src)
    raw_outs = c.get("output_layers")
    if isinstance(raw_outs, dict):  # named outputs: Keras flattens (and predict returns) them sorted by name
        raw_outs = dict(sorted(raw_outs.items()))
    outs = _norm_io(raw_outs, "output_layers", src)
    out_names = [str(k) for k in raw_outs] if isinstance(raw_outs, dict) else [f"{o[0]}:{o[2]}" for o in outs]
    if len(ins) != 1 or not outs:
        raise UnsupportedError(
            f"Functional model {mname!r} must have one input and at least one output (a chain), got "
            f"{len(ins)} inputs {[i[0] for i in ins]} and {len(outs)} outputs {[o[0] for o in outs]}"
        )
    calls = {n: _node_calls(layer) for n, layer in by_name.items()}
    # consumers of every tensor: (layer, node, index) -> [(consumer, "arg"|kwarg name)]
    consumers: dict[tuple, list] = {}
    for n, cl in calls.items():
        for args, kwargs in cl:
            for a in args:
                for r in _refs(a):
                    consumers.setdefault(r, []).append((n, "input"))
            for k, v in kwargs.items():
                for r in _refs(v):
                    consumers.setdefault(r, []).append((n, k))
    for r in outs:
        consumers.setdefault(r, []).append(("<model output>", "output"))

    def is_op(n: str) -> bool:
        lay = by_name.get(n, {})
        return str(lay.get("module", "")).startswith("keras.src.ops") or (
            lay.get("class_name") in MASK_OPS and "module" not in lay
        )

    in_name = ins[0][0]

    def walk(ref) -> list[str]:
        """The layers from the input to ``ref``'s layer, along each layer's one input."""
        chain: list[str] = []
        seen = set()
        first = True
        while True:
            lname, node_i, t_i = ref
            if lname not in by_name:
                raise ModelFileError(f"{src!r}: the Functional config refers to layer {lname!r}, which it does not define")
            if lname in seen:
                raise ModelFileError(f"{src!r}: the Functional graph has a cycle at layer {lname!r}")
            seen.add(lname)
            layer = by_name[lname]
            lcls = str(layer.get("class_name"))
            if t_i != 0 and not first:
                raise UnsupportedError(
                    f"layer {lname!r} ({lcls}): its output #{t_i} (a return_state state, or the backward half of "
                    "Bidirectional(merge_mode=None)) feeds the next layer; only the main output (#0) can feed the "
                    "converted chain (states and extra outputs can be model outputs)"
                )
            first = False
            if lname == in_name:
                break
            cl = calls[lname]
            if len(cl) != 1:
                raise UnsupportedError(
                    f"layer {lname!r} ({lcls}) is called {len(cl)} times (a shared layer); supported: each layer called "
                    "once, in a chain"
                )
            if node_i != 0:
                raise ModelFileError(f"{src!r}: layer {lname!r} has no call #{node_i}")
            args, _kwargs = cl[0]
            tensor_args = [r for a in args for r in _refs(a)]
            if len(tensor_args) != 1:
                raise UnsupportedError(
                    f"layer {lname!r} ({lcls}) takes {len(tensor_args)} tensors {[t[0] for t in tensor_args]}; "
                    "supported: layers with one input, in a chain (no merges, no branches)"
                )
            chain.append(lname)
            ref = tensor_args[0]
        chain.reverse()
        return chain

    # The chain runs from the input to the deepest output; every other output must be read off
    # that chain (the state of one of its GRUs, or another output of its last layer).
    chains = [walk(r) for r in outs]
    chain = max(chains, key=len)
    for r, ch in zip(outs, chains):
        if ch != chain[: len(ch)]:
            raise UnsupportedError(
                f"Functional model {mname!r}: output {r[0]!r} is on a branch off the chain "
                f"{' -> '.join([in_name, *chain])}; supported: models whose layers form one chain"
            )
    chain_set = set(chain) | {in_name}

    nodes = []
    for i, lname in enumerate(chain):
        layer = by_name[lname]
        cls = _class_of(layer)
        if is_op(lname):
            raise UnsupportedError(
                f"op {lname!r} ({cls}) on the model's main path is not supported; supported layers: {_supported_list()}"
            )
        _args, kwargs = calls[lname][0]
        for k, v in kwargs.items():
            if k == "mask" or not list(_refs(v)):
                continue
            raise UnsupportedError(
                f"layer {lname!r} ({cls}) receives a tensor as {k}= (from {[r[0] for r in _refs(v)]}); supported: "
                "the layer input only (and the masks Keras derives from Embedding(mask_zero=True) / Masking)"
            )
        # States of return_state layers may only be model outputs.
        for key, uses in consumers.items():
            if key[0] == lname and key[2] != 0:
                bad = [u for u, _how in uses if u != "<model output>"]
                if bad:
                    raise UnsupportedError(
                        f"layer {lname!r} ({cls}): its output #{key[2]} (a state) feeds {bad[0]!r}; supported: a "
                        "return_state layer whose states are model outputs or unused (the chain consumes its main output)"
                    )
        for key, uses in consumers.items():
            if key[0] == lname and key[2] == 0:
                bad = [u for u, how in uses if u not in chain_set and u != "<model output>" and not is_op(u)]
                if bad:
                    raise UnsupportedError(
                        f"layer {lname!r} ({cls}) also feeds {bad}, off the chain; supported: models whose layers form one chain"
                    )
        nodes.append(_Node(cls, layer.get("config") or {}, lname, masked_call=(kwargs.get("mask") is not None)))
    # Everything else must be mask bookkeeping, and nothing may consume states or branch off.
    for n, layer in by_name.items():
        if n in chain_set:
            continue
        lcls = str(layer.get("class_name"))
        if not is_op(n) or lcls not in MASK_OPS:
            raise UnsupportedError(
                f"layer {n!r} ({lcls}) is not on the chain from input {in_name!r} to the output; supported: models "
                "whose layers form one chain"
            )
        for key, uses in consumers.items():
            if key[0] == n:
                for user, how in uses:
                    if how != "mask" and not (is_op(user) and by_name[user].get("class_name") in MASK_OPS):
                        raise UnsupportedError(
                            f"op {n!r} ({lcls}) feeds {user!r} ({how}); supported: ops that only compute masks"
                        )
    inp = by_name[in_name]
    ic = inp.get("config") or {}
    if str(inp.get("class_name")) != "InputLayer":
        raise UnsupportedError(f"the model input {in_name!r} must be an InputLayer, got {inp.get('class_name')!r}")
    weight_order = {(): [(n, str(by_name[n].get("class_name"))) for n in by_name if not is_op(n)]}
    for (lname, _n, t_i) in outs:
        if t_i != 0 and _class_of(by_name[lname]) in NESTED_MODELS:
            raise UnsupportedError(
                f"Functional model {mname!r}: output #{t_i} of the nested model {lname!r} is a model output; supported: "
                "a nested model's main output"
            )
    return _Arch(
        "Functional", mname, _flatten(nodes, weight_order), ic.get("batch_shape") or ic.get("batch_input_shape"),
        _policy_name(ic.get("dtype")) if ic.get("dtype") else None, dtype, weight_order,
        outputs=[(o[0], o[2], nm) for o, nm in zip(outs, out_names)],
    )


# --------------------------------------------------------------------------- building


def _where(node: _Node, cls: str | None = None) -> str:
    return f"layer {'/'.join((*node.scope, node.lname))!r} ({cls or node.cls})"


def _act_name(v, where: str, attr: str) -> str:
    if v is None:
        return "linear"
    if isinstance(v, str):
        return v.lower()
    if isinstance(v, dict):  # serialised function: only Keras' own built-ins
        mod = str(v.get("module", ""))
        inner = v.get("config")
        if mod.startswith("keras") and v.get("class_name") == "function" and isinstance(inner, str):
            return inner.lower()
    raise UnsupportedError(f"{where}: {attr}={v!r} is a custom activation; supported: Keras built-in activations by name")


def _rnn_act(v, where: str, attr: str, keras2: bool = False):
    n = _act_name(v, where, attr)
    if keras2 and n == "hard_sigmoid":
        return ("HardSigmoid", 0.2, 0.5)  # Keras 1/2: clip(0.2 x + 0.5, 0, 1)
    if n not in _KERAS_RNN_ACT:
        raise UnsupportedError(
            f"{where}: {attr}={n!r} has no ONNX RNN equivalent; supported: {', '.join(sorted(_KERAS_RNN_ACT))}"
        )
    return _KERAS_RNN_ACT[n]


def _dense_act(v, where: str, keras2: bool = False):
    n = _act_name(v, where, "activation")
    if keras2 and n == "hard_sigmoid":
        raise UnsupportedError(
            f"{where}: activation='hard_sigmoid' of a Keras 1/2 file (clip(0.2 x + 0.5)) has no Dense equivalent in the "
            "engine; supported: hard_sigmoid of Keras 3 files (relu6(x + 3) / 6), or pass keras_version='3'"
        )
    if n not in _KERAS_DENSE_ACT:
        raise UnsupportedError(
            f"{where}: activation={n!r} is not supported; supported: {', '.join(sorted(_KERAS_DENSE_ACT))}"
        )
    return _KERAS_DENSE_ACT[n]


def _check(src: str, where: str, tensor: str, a: np.ndarray, expected: tuple) -> None:
    if tuple(a.shape) != tuple(expected):
        raise ModelFileError(
            f"{src!r}: {where} tensor {tensor!r} must have shape {tuple(expected)} (from the config), got {tuple(a.shape)}"
        )


def _gru_config(layer: dict, where: str) -> dict | None:
    """The GRU options of a ``GRU`` layer or of an ``RNN`` wrapping one ``GRUCell`` (the cell's
    options merged with the RNN's return_sequences / go_backwards / ...); None otherwise."""
    cls = _class_of(layer)
    c = layer.get("config") or {}
    if cls == "GRU":
        return c
    if cls == "RNN":
        cell = c.get("cell")
        if isinstance(cell, dict) and _class_of(cell) == "GRUCell":
            return {**(cell.get("config") or {}), **{k: v for k, v in c.items() if k != "cell"}}
        inner = [_class_of(x) for x in cell] if isinstance(cell, list) else _class_of(cell) if isinstance(cell, dict) else cell
        raise UnsupportedError(f"{where}: RNN with cell {inner!r} is not supported; supported: RNN(GRUCell(...))")
    return None


def _gru_options(gc: dict, where: str, keras2: bool = False) -> dict:
    """Validate one Keras GRU config and return what the engine needs."""
    if gc.get("time_major"):
        raise UnsupportedError(f"{where}: time_major=True is not supported; supported: batch-major inputs")
    units = gc.get("units")
    if not isinstance(units, int) or units <= 0:
        raise ModelFileError(f"{where}: units must be a positive integer, got {units!r}")
    f = _rnn_act(gc.get("recurrent_activation", "sigmoid"), where, "recurrent_activation", keras2)
    g = _rnn_act(gc.get("activation", "tanh"), where, "activation", keras2)
    return {
        "units": units,
        "acts": (f, g),
        "use_bias": bool(gc.get("use_bias", True)),
        # The key is absent only in Keras 2.0-2.1 files, which predate reset_after (reset before):
        # resolved from the bias shape in _gru_arrays, else reset before for Keras 1/2 files.
        "reset_after": bool(gc["reset_after"]) if "reset_after" in gc else None,
        "keras2": keras2,
        "return_sequences": bool(gc.get("return_sequences", False)),
        "return_state": bool(gc.get("return_state", False)),
        "go_backwards": bool(gc.get("go_backwards", False)),
        "zero_output_for_mask": bool(gc.get("zero_output_for_mask", False)),
    }


def _gru_arrays(arrs: list, opts: dict, in_size: int | None, src: str, where: str, sub: str):
    """Check and map one Keras GRU cell's tensors; returns (W, R, B, lbr, input_size)."""
    H = opts["units"]
    n_exp = 3 if opts["use_bias"] else 2
    if len(arrs) != n_exp:
        raise ModelFileError(
            f"{src!r}: {where}{sub} must have {n_exp} weight tensors (kernel, recurrent_kernel"
            f"{', bias' if opts['use_bias'] else ''}), got {len(arrs)}"
        )
    kernel, rk = arrs[0], arrs[1]
    if kernel.ndim != 2:
        raise ModelFileError(f"{src!r}: {where}{sub} tensor 'kernel' must have shape (input_dim, {3 * H}), got {kernel.shape}")
    I = kernel.shape[0] if in_size is None else in_size
    _check(src, where + sub, "kernel", kernel, (I, 3 * H))
    _check(src, where + sub, "recurrent_kernel", rk, (H, 3 * H))
    bias = None
    reset_after = opts["reset_after"]
    if reset_after is None:
        reset_after = arrs[2].ndim == 2 if opts["use_bias"] else not opts["keras2"]
    if opts["use_bias"]:
        bias = arrs[2]
        _check(src, where + sub, "bias", bias, (2, 3 * H) if reset_after else (3 * H,))
    W, R, B, lbr = keras_gru_to_onnx(kernel, rk, bias, reset_after)
    return W, R, B, lbr, I


def _act_lists(acts_per_dir) -> tuple[tuple, tuple, tuple]:
    names, alphas, betas = [], [], []
    for f, g in acts_per_dir:
        for n, a, b in (f, g):
            names.append(n)
            if a is not None:
                alphas.append(a)
            if b is not None:
                betas.append(b)
    return tuple(names), tuple(alphas), tuple(betas)


class _Builder:
    def __init__(self, arch: _Arch, store: _WeightStore, src: str):
        self.arch, self.store, self.src = arch, store, src
        self.dtype = np.float64 if arch.dtype == "float64" else np.float32
        self.layers: list = []
        self.size: int | None = None  # features flowing between layers
        self.seq = True  # inputs are sequences until a last-step GRU
        self.masked = False  # a mask producer precedes
        # Keras outputs of each GRU / Bidirectional layer (top-level name -> {tensor index: Output})
        # and the engine layer they belong to: model outputs are read from these.
        self.taps: dict[str, tuple[object, dict]] = {}

    def cast(self, a: np.ndarray) -> np.ndarray:
        return np.asarray(a, dtype=self.dtype)

    def weights(self, node: _Node, parts, cls=None):
        return self.store.layer_weights(node.lname, cls or node.cls, parts, node.scope)

    # ---------------------------------------------------------------- layers
    def add(self, node: _Node, is_last: bool) -> None:
        cls = node.cls
        where = _where(node)
        if cls in NOOP_LAYERS:
            return
        pol = node.cfg.get("dtype") if isinstance(node.cfg, dict) else None
        if str(_policy_name(pol)).startswith(("int8", "int4", "float8", "gptq")) or (
            isinstance(pol, dict) and "Quantized" in str(pol.get("class_name"))
        ):
            raise UnsupportedError(
                f"{where}: quantized layers (dtype policy {json.dumps(pol.get('config') if isinstance(pol, dict) else pol)}) "
                "are not supported; supported: float weights"
            )
        handler = getattr(self, f"_l_{cls}", None)
        if handler is None and self._add_other(node, where):
            return
        if handler is None:
            raise UnsupportedError(
                f"{where} cannot be converted: supported layers are {_supported_list()} "
                "(Lambda and custom layers hold code, which is never loaded)"
            )
        if node.masked_call and not self.masked:
            raise UnsupportedError(
                f"{where}: the file passes a mask to this layer, but no mask-producing layer (Embedding mask_zero / "
                "Masking) precedes it; supported: masks derived from Embedding(mask_zero=True) or Masking only"
            )
        handler(node, where, is_last)

    def _add_other(self, node, where) -> bool:
        """Layers around the GRUs (Conv1D, normalisations, pooling, ...): converters.keras_layers.
        Keras drops a mask at a layer that does not support masking (with a warning), while the
        engine would keep applying it, so such a layer after a mask is refused."""
        try:
            from .keras_layers import add_keras_layer  # noqa: PLC0415 - optional sibling module
        except ImportError:  # pragma: no cover - keras_layers ships with the package
            return False
        masked_seq = self.masked and self.seq
        if masked_seq and node.cls not in MASK_KEEPING | MASK_CONSUMING:
            if _is_other(node.cls):
                raise UnsupportedError(
                    f"{where} follows a mask (Embedding mask_zero / Masking) but does not support masking: Keras "
                    f"drops the mask there; supported after a mask: {', '.join(sorted(MASK_KEEPING | MASK_CONSUMING))}"
                )
        if not add_keras_layer(self, node, where):
            return False
        if node.cls in MASK_CONSUMING:
            self.masked = False
        return True

    def _l_Embedding(self, node, where, is_last):
        if self.layers:
            raise UnsupportedError(f"{where}: an Embedding is supported only as the first layer")
        c = node.cfg
        arrs = self.weights(node, ("",))[""]
        V, E = c.get("input_dim"), c.get("output_dim")
        if len(arrs) != 1:
            raise ModelFileError(f"{self.src!r}: {where} must have 1 weight tensor (embeddings), got {len(arrs)}")
        _check(self.src, where, "embeddings", arrs[0], (V, E))
        if c.get("quantization_config"):
            raise UnsupportedError(f"{where}: quantized embeddings are not supported")
        self.layers.append(EEmbedding(table=self.cast(arrs[0]), mask_zero=bool(c.get("mask_zero")), name=node.lname))
        self.size = E
        self.masked = self.masked or bool(c.get("mask_zero"))

    def _l_Masking(self, node, where, is_last):
        self.layers.append(EMasking(mask_value=float(node.cfg.get("mask_value", 0.0)), name=node.lname))
        self.masked = True

    def _l_Activation(self, node, where, is_last):
        act, alpha = _dense_act(node.cfg.get("activation"), where, self.arch.keras2)
        self.layers.append(EActivation(activation=act, alpha=alpha, name=node.lname))

    def _l_Dense(self, node, where, is_last, outer: _Node | None = None):
        c = node.cfg
        if c.get("quantization_config") or c.get("lora_rank"):
            raise UnsupportedError(f"{where}: quantized / LoRA Dense layers are not supported")
        units = c.get("units")
        act, alpha = _dense_act(c.get("activation"), where, self.arch.keras2)
        use_bias = bool(c.get("use_bias", True))
        if outer is None:
            arrs = self.weights(node, ("",))[""]
        else:
            arrs = self.weights(outer, ("layer",))["layer"]
        n_exp = 2 if use_bias else 1
        if len(arrs) != n_exp:
            raise ModelFileError(f"{self.src!r}: {where} must have {n_exp} weight tensors, got {len(arrs)}")
        k = arrs[0]
        if k.ndim != 2:
            raise ModelFileError(f"{self.src!r}: {where} tensor 'kernel' must have shape (in, {units}), got {k.shape}")
        fin = k.shape[0] if self.size is None else self.size
        _check(self.src, where, "kernel", k, (fin, units))
        b = None
        if use_bias:
            b = arrs[1]
            _check(self.src, where, "bias", b, (units,))
            b = self.cast(b)
        self.layers.append(EDense(kernel=self.cast(k), bias=b, activation=act, alpha=alpha, name=node.lname))
        self.size = units

    def _l_TimeDistributed(self, node, where, is_last):
        inner = node.cfg.get("layer") or {}
        icls = _class_of(inner)
        if icls in NOOP_LAYERS:
            return
        if icls == "Activation":
            return self._l_Activation(_Node(icls, inner.get("config") or {}, node.lname, scope=node.scope), where, is_last)
        if icls != "Dense":
            raise UnsupportedError(
                f"{where} wraps {icls!r}; supported: TimeDistributed(Dense), TimeDistributed(Activation), "
                "TimeDistributed(Dropout)"
            )
        if not self.seq:
            raise UnsupportedError(f"{where} needs a sequence input, but the previous GRU returns the last step only")
        inner_node = _Node("Dense", inner.get("config") or {}, node.lname, scope=node.scope)
        return self._l_Dense(inner_node, f"{where} -> Dense", is_last, outer=node)

    def _check_seq(self, where):
        if not self.seq:
            raise UnsupportedError(f"{where} needs a sequence input, but the previous GRU returns the last step only")

    def _check_state(self, node, where, opts, is_last):
        if opts["return_state"] and self.arch.kind == "Sequential" and not is_last:
            raise UnsupportedError(
                f"{where}: return_state=True in a Sequential model makes the layer output a list, which the next "
                "layer cannot take; supported: return_state on the last layer, or in a Functional model"
            )

    def _tap(self, node, outputs: list, states: int) -> None:
        """Record the Keras outputs of the GRU layer just added: ``outputs`` (``Output`` specs
        of its main output(s)) then, with return_state, its ``states`` final states."""
        gi = sum(isinstance(layer, EGRU) for layer in self.layers) - 1
        taps = list(outputs) + [Output("state", gru=gi, direction=d) for d in range(states)]
        if not node.scope:
            self.taps[node.lname] = (self.layers[-1], dict(enumerate(taps)))

    def _l_RNN(self, node, where, is_last):
        cfg = _gru_config({"class_name": "RNN", "config": node.cfg}, where)
        return self._l_GRU(_Node("RNN", cfg, node.lname, node.masked_call, node.scope), where, is_last)

    def _l_GRU(self, node, where, is_last):
        self._check_seq(where)
        c = node.cfg
        opts = _gru_options(c, where, self.arch.keras2)
        self._check_state(node, where, opts, is_last)
        if opts["zero_output_for_mask"] and not opts["return_sequences"] and self.masked:
            raise UnsupportedError(
                f"{where}: zero_output_for_mask=True with return_sequences=False and a mask returns zeros for rows "
                "whose last step is masked; supported: zero_output_for_mask with return_sequences=True"
            )
        arrs = self.weights(node, ("cell",))["cell"]
        W, R, B, lbr, I = _gru_arrays(arrs, opts, self.size, self.src, where, "")
        names, alphas, betas = _act_lists([opts["acts"]])
        back = opts["go_backwards"]
        self.layers.append(
            EGRU(
                W=self.cast(W)[None], R=self.cast(R)[None], B=self.cast(B)[None],
                direction="reverse" if back else "forward", linear_before_reset=lbr,
                activations=names, activation_alpha=alphas, activation_beta=betas,
                return_sequences=opts["return_sequences"], time_reversed_output=back,
                masked_output="zero" if opts["zero_output_for_mask"] else "carry", name=node.lname,
            )
        )
        self.size = opts["units"]
        self.seq = opts["return_sequences"]
        self.masked = self.masked and self.seq  # Keras: no mask after a last-step RNN
        self._tap(node, [Output("y")], 1 if opts["return_state"] else 0)

    def _l_Bidirectional(self, node, where, is_last):
        self._check_seq(where)
        c = node.cfg
        merge = c.get("merge_mode", "concat")
        if merge is None and not is_last:
            raise UnsupportedError(
                f"{where}: merge_mode=None outputs the two directions as two tensors, which the next layer cannot "
                "take; supported: merge_mode=None on the model's last layer (both become model outputs), or merge_mode "
                "'concat', 'sum', 'mul', 'ave'"
            )
        if merge not in ("concat", "sum", "mul", "ave", None):
            raise UnsupportedError(
                f"{where}: merge_mode={merge!r} is not supported; supported: concat, sum, mul, ave, None"
            )
        fl = c.get("layer") or {}
        bl = c.get("backward_layer")
        sides = {}
        for side, lay in (("forward", fl), ("backward", bl)):
            if lay is None:  # Keras rebuilds the backward layer from the forward one
                lay = dict(fl, config=dict(fl.get("config") or {}, go_backwards=True))
                if fl.get("config", {}).get("go_backwards"):
                    lay["config"]["go_backwards"] = False
            gcfg = _gru_config(lay, f"{where} {side} layer")
            if gcfg is None:
                raise UnsupportedError(
                    f"{where}: the {side} layer is {_class_of(lay)!r}; supported: Bidirectional(GRU), Bidirectional(RNN(GRUCell))"
                )
            sides[side] = _gru_options(gcfg, f"{where} {side} GRU", self.arch.keras2)
        fo, bo = sides["forward"], sides["backward"]
        if fo["go_backwards"] or not bo["go_backwards"]:
            raise UnsupportedError(
                f"{where}: the forward layer must have go_backwards=False and the backward layer go_backwards=True, got "
                f"{fo['go_backwards']} and {bo['go_backwards']}"
            )
        for key in ("units", "reset_after", "return_sequences", "return_state"):
            if fo[key] != bo[key]:
                raise UnsupportedError(
                    f"{where}: the forward and backward GRU must share {key}, got {fo[key]!r} and {bo[key]!r}"
                )
        self._check_state(node, where, fo, is_last)
        w = self.weights(node, ("forward_layer/cell", "backward_layer/cell"))
        Wf, Rf, Bf, lbr, I = _gru_arrays(w["forward_layer/cell"], fo, self.size, self.src, where, " forward GRU")
        Wb, Rb, Bb, lbr_b, _ = _gru_arrays(w["backward_layer/cell"], bo, I, self.src, where, " backward GRU")
        if lbr_b != lbr:
            raise ModelFileError(f"{self.src!r}: {where}: the forward and backward GRU biases disagree on reset_after")
        names, alphas, betas = _act_lists([fo["acts"], bo["acts"]])
        rs = fo["return_sequences"]
        self.layers.append(
            EGRU(
                W=self.cast(np.stack([Wf, Wb])), R=self.cast(np.stack([Rf, Rb])), B=self.cast(np.stack([Bf, Bb])),
                direction="bidirectional", linear_before_reset=lbr,
                activations=names, activation_alpha=alphas, activation_beta=betas,
                return_sequences=rs, merge=merge or "concat",  # None: the two halves of concat's output
                # Keras forces zero_output_for_mask = return_sequences on both layers.
                masked_output="zero" if rs else "carry", name=node.lname,
            )
        )
        H = fo["units"]
        self.size = 2 * H if merge in ("concat", None) else H
        self.seq = rs
        self.masked = self.masked and rs
        mains = [Output("y")] if merge is not None else [Output("y", 0, H), Output("y", H, 2 * H)]
        self._tap(node, mains, 2 if fo["return_state"] else 0)


def _build(arch: _Arch, store: _WeightStore, src: str, name: str | None) -> Model:
    if isinstance(store, _NewStore):
        store.set_layer_order(arch.weight_order)
    b = _Builder(arch, store, src)
    shape = arch.input_shape
    takes_tokens = False
    if arch.nodes and arch.nodes[0].cls == "Embedding":
        takes_tokens = True
    elif isinstance(shape, (list, tuple)) and shape and isinstance(shape[-1], int):
        if len(shape) != 3:
            raise UnsupportedError(
                f"model {arch.name!r}: input shape {list(shape)} must be (batch, time, features) or token ids (batch, time)"
            )
        b.size = int(shape[-1])
    for i, node in enumerate(arch.nodes):
        b.add(node, i == len(arch.nodes) - 1)
    if not b.layers:
        raise UnsupportedError(f"model {arch.name!r} has no layer to convert (only no-op layers)")
    input_size = None
    if not takes_tokens:
        input_size = _first_input_size(b.layers, arch, b.size)
    outputs = _model_outputs(arch, b)
    return Model(tuple(b.layers), input_size=input_size, name=name or arch.name, outputs=outputs)


def _model_outputs(arch: _Arch, b: _Builder) -> tuple:
    """The Keras model's outputs as engine ``Output`` specs; () when it has one, the chain's output."""
    last = arch.nodes[-1].lname if arch.nodes else None
    refs = arch.outputs
    if refs is None:  # Sequential: the last layer's outputs (several with return_state / merge_mode=None)
        n = len(b.taps[last][1]) if last in b.taps else 1
        refs = [(last, i, f"{last}:{i}") for i in range(n)]
    outs = []
    for lname, t_i, oname in refs:
        layer, taps = b.taps.get(lname, (None, {}))
        if layer is None:  # not a GRU: the chain's end (the walk in _parse_functional checked it)
            if lname != last or t_i != 0:
                raise UnsupportedError(f"model {arch.name!r}: output {oname!r} must be the chain's output or a GRU state")
            outs.append(Output("y", name=oname))
            continue
        if t_i not in taps:
            raise ModelFileError(f"model {arch.name!r}: output {oname!r} refers to output #{t_i} of {lname!r}, which has {len(taps)}")
        o = taps[t_i]
        if o.kind == "y" and (lname != last or b.layers[-1] is not layer):
            raise UnsupportedError(
                f"model {arch.name!r}: output {oname!r} is the output of layer {lname!r}, which other layers follow; "
                "supported: the chain's last output and GRU states as model outputs"
            )
        outs.append(dataclasses.replace(o, name=oname))
    if len(outs) == 1 and outs[0].kind == "y" and outs[0].start == 0 and outs[0].stop is None:
        return ()
    return tuple(outs)


def _first_input_size(layers, arch: _Arch, final_size):
    shape = arch.input_shape
    if isinstance(shape, (list, tuple)) and shape and isinstance(shape[-1], int):
        return int(shape[-1])
    for layer in layers:
        if isinstance(layer, EGRU):
            return layer.input_size
        if isinstance(layer, EDense):
            return layer.in_features
    raise ModelFileError(
        f"model {arch.name!r}: the input feature size is unknown (no InputLayer shape and no layer with weights)"
    )

"""Where numba caches the engine's compiled kernels: outside the package, per version.

Numba's default puts its cache files in ``__pycache__`` beside each module, that is inside
the installed package. pip does not know those files: after an uninstall, or a switch from a
regular to an editable install, they stay behind, and ``import gru_engine`` from another
folder then finds an empty namespace package. Numba's stamp also covers only the file that
defines a kernel, so a kernel cached before an edit to an ``@njit`` helper imported from
another module would keep running the old helper.

So every kernel of the package is cached under::

    $NUMBA_CACHE_DIR/gru-engine/<version>-<sources>/    when NUMBA_CACHE_DIR is set
    $XDG_CACHE_HOME/gru-engine/<version>-<sources>/     otherwise (default ~/.cache)

where ``<sources>`` is a hash of every module of the package that uses numba (and of
``config.py``, which kernels read at decoration time). Any edit to one of them gives a fresh
folder; older folders beyond the newest :data:`KEEP` are removed. Other packages' numba
functions keep numba's own locators. ``NUMBA_CACHE_LOCATOR_CLASSES`` (numba's override) wins.

Kernel modules import this module before their first ``@njit``; :func:`install` is idempotent.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile

#: How many cache folders (versions or source states) to keep side by side.
KEEP = 4

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_installed = False


def _version() -> str:
    from . import __version__  # defined before gru_engine/__init__ imports anything

    return __version__


def sources_hash(package_dir: str = _PACKAGE_DIR) -> str:
    """sha1 (12 hex digits) of every package module that uses numba, and of config.py."""
    h = hashlib.sha1()
    for root, dirs, files in os.walk(package_dir):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                text = f.read()
            if b"numba" in text or name == "config.py":
                h.update(os.path.relpath(path, package_dir).encode())
                h.update(text)
    return h.hexdigest()[:12]


def cache_root() -> str:
    """The folder that holds the engine's cache folders (``.../gru-engine``)."""
    base = os.environ.get("NUMBA_CACHE_DIR")
    if not base:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "gru-engine")


def cache_dir() -> str:
    """This version's and these sources' cache folder."""
    return os.path.join(cache_root(), f"{_version()}-{sources_hash()}")


def _prune(root: str, current: str) -> None:
    try:
        entries = [os.path.join(root, e) for e in os.listdir(root)]
    except OSError:
        return
    old = sorted((p for p in entries if p != current and os.path.isdir(p)), key=os.path.getmtime, reverse=True)
    for path in old[KEEP - 1:]:
        shutil.rmtree(path, ignore_errors=True)


def _writable(folder: str) -> str | None:
    try:
        os.makedirs(folder, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
        os.utime(folder)  # the most recently used folder survives pruning
    except OSError:
        return None
    return folder


def install() -> str | None:
    """Put the engine's locator first in numba's list; returns the cache folder (None if not)."""
    global _installed, _dir
    if _installed:
        return _dir
    _installed = True
    _dir = None
    from numba.core import caching, config as numba_config

    if getattr(numba_config, "CACHE_LOCATOR_CLASSES", None):
        return None  # the user chose numba's locators explicitly
    base = getattr(caching, "UserWideCacheLocator", None) or getattr(caching, "_UserWideCacheLocator", None)
    impl = getattr(caching, "_CacheImpl", None) or getattr(caching, "CacheImpl", None)
    if base is None or impl is None or not isinstance(getattr(impl, "_locator_classes", None), list):
        return None  # an unknown numba: its default locators apply
    stamp = sources_hash()
    tag = f"{_version()}-{stamp}"
    folder = _writable(os.path.join(cache_root(), tag))
    if folder is None:  # e.g. a read-only home: a per-user temporary folder, never the package
        user = getattr(os, "getuid", lambda: "user")()
        folder = _writable(os.path.join(tempfile.gettempdir(), f"gru-engine-{user}", tag))
    if folder is None:
        return None

    class EngineCacheLocator(base):
        """numba cache locator for the engine's modules: one folder per version and sources."""

        def __init__(self, py_func, py_file):
            self._py_file = py_file
            self._lineno = py_func.__code__.co_firstlineno
            self._cache_path = os.path.join(folder, self.get_suitable_cache_subpath(py_file))

        def get_cache_path(self):
            return self._cache_path

        def get_source_stamp(self):
            return (super().get_source_stamp(), stamp)

        @classmethod
        def from_function(cls, py_func, py_file):
            if not os.path.abspath(py_file).startswith(_PACKAGE_DIR + os.sep):
                return None
            return super().from_function(py_func, py_file)

    impl._locator_classes.insert(0, EngineCacheLocator)
    _dir = folder
    _prune(os.path.dirname(folder), folder)
    return folder


_dir: str | None = None
install()

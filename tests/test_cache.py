"""Where numba caches the engine's kernels: outside the package (gru_engine._cache).

An install must never leave files pip does not know about in the package folder (they turn
into an importable empty namespace package after an uninstall or a switch to an editable
install), and an edit to any kernel module must give fresh compiled kernels.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import gru_engine
from gru_engine import _cache

PKG = os.path.dirname(gru_engine.__file__)
NUMBA_FILES = (".nbi", ".nbc")


def _numba_files(folder: str, since: float = 0.0) -> list[str]:
    found = []
    for root, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            if f.endswith(NUMBA_FILES) and os.path.getmtime(p) >= since:
                found.append(p)
    return found


def test_kernels_cache_outside_the_package(tmp_path):
    """A fresh process compiles (or loads) kernels into the engine's cache folder, never the package."""
    env = dict(os.environ)
    env.pop("NUMBA_CACHE_DIR", None)
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    code = (
        "import numpy as np, gru_engine\n"
        "from gru_engine import _cache\n"
        "from gru_engine.kernels_cpu import dense_act_inplace\n"
        "y = np.ones((2, 3), np.float32); dense_act_inplace(y, 2, np.float32(0))\n"
        "print(_cache.install())\n"
    )
    start = time.time() - 1
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    folder = out.stdout.strip().splitlines()[-1]
    assert folder.startswith(str(tmp_path / "xdg" / "gru-engine")), folder
    assert os.path.basename(folder) == f"{gru_engine.__version__}-{_cache.sources_hash()}"
    assert any("dense_act_inplace" in p for p in _numba_files(folder)), os.listdir(folder)
    assert _numba_files(PKG, since=start) == []


def test_numba_cache_dir_is_the_root(tmp_path, monkeypatch):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    assert _cache.cache_root() == str(tmp_path / "gru-engine")
    monkeypatch.delenv("NUMBA_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert _cache.cache_root() == str(tmp_path / "x" / "gru-engine")


def test_sources_hash_follows_every_kernel_module(tmp_path):
    """An edit to any module that uses numba (a helper imported by kernels elsewhere) changes the
    folder; an edit to a module without numba does not."""
    copy = tmp_path / "gru_engine"
    shutil.copytree(PKG, copy, ignore=shutil.ignore_patterns("__pycache__", "data"))
    h0 = _cache.sources_hash(str(copy))
    assert h0 == _cache.sources_hash(PKG)
    (copy / "errors.py").write_text((copy / "errors.py").read_text() + "\n# an edit without kernels\n")
    assert _cache.sources_hash(str(copy)) == h0
    (copy / "kernels_step.py").write_text((copy / "kernels_step.py").read_text() + "\n# edited\n")
    h1 = _cache.sources_hash(str(copy))
    assert h1 != h0
    (copy / "config.py").write_text((copy / "config.py").read_text() + "\n# edited\n")
    assert _cache.sources_hash(str(copy)) not in (h0, h1)


def test_old_folders_are_pruned(tmp_path):
    for i in range(_cache.KEEP + 3):
        d = tmp_path / f"0.0.{i}-abc"
        d.mkdir()
        os.utime(d, (1000 + i, 1000 + i))
    current = tmp_path / "0.1.0-new"
    current.mkdir()
    _cache._prune(str(tmp_path), str(current))
    left = sorted(os.listdir(tmp_path))
    assert "0.1.0-new" in left and len(left) == _cache.KEEP
    assert f"0.0.{_cache.KEEP + 2}-abc" in left  # the newest old ones stay

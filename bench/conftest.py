"""Shared set-up of the pytest-benchmark microbenchmarks in bench/ (not in the default test run).

Run them with ``python -m pytest bench --benchmark-only``. The repository root and bench/
are put on ``sys.path``; Keras uses the torch backend; the engine runs on one thread unless
``GRU_ENGINE_NUM_THREADS`` says otherwise, so that numbers compare across runs.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ.setdefault("GRU_ENGINE_NUM_THREADS", "1")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _p in (ROOT, HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)

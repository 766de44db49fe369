"""Package data: the demo model and its held-out data.

* ``demo_gru.onnx``: a GRU(1 -> 32) + Dense(32 -> 1) one-step-ahead forecaster of the weekly
  Mauna Loa CO2 record, written by ``gru_engine.save`` (so onnxruntime runs the same file).
* ``demo_data.npz``: the held-out end of the series it never saw in training, with the weeks
  before it (warm-up) and the normalisation constants.

Both are produced by the committed, seeded ``tools/train_demo.py``.
"""

from __future__ import annotations

from importlib import resources

import numpy as np

from ..errors import ModelFileError

DEMO_MODEL = "demo_gru.onnx"
DEMO_DATA = "demo_data.npz"


def path(name: str) -> str:
    """Filesystem path of the package data file ``name`` (the package is installed unzipped)."""
    p = resources.files(__name__) / name
    if not p.is_file():
        raise ModelFileError(
            f"package data file {name!r} must exist in gru_engine/data, got nothing at {p}; "
            "reinstall the package or run tools/train_demo.py"
        )
    return str(p)


def load_demo_data() -> dict:
    """The held-out data as a dict of arrays (no pickles): ``series`` (ppm), ``years``
    (decimal years), ``context`` (warm-up weeks before the scored window), ``diff_mean``,
    ``diff_std`` (normalisation of the weekly change), ``source`` (a description)."""
    with np.load(path(DEMO_DATA), allow_pickle=False) as f:
        return {k: f[k] for k in f.files}

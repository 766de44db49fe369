"""Train the demo model shipped in ``gru_engine/data/`` (seeded, CPU, about a minute).

The series is the weekly Mauna Loa CO2 record (ppm, March 1958 - December 2001) that
statsmodels ships (``statsmodels.datasets.co2``); its 59 missing weeks are filled by linear
interpolation in time. The model reads one feature per week, the normalised week-to-week
change, and predicts the next week's change (one output per step), so it forecasts one
step ahead all along a sequence and can be streamed. The forecast of the level is
``y[t+1] = y[t] + change``; the baseline is the naive last value ``y[t+1] = y[t]``.

The last ``HELD_OUT`` weeks are never seen in training; they are shipped with the
``CONTEXT`` weeks before them (warm-up only, not scored) in ``demo_data.npz``, together
with the normalisation constants.

Architecture: PyTorch ``nn.GRU(1, 32)`` + ``nn.Linear(32, 1)``, converted to the engine's
canonical model through ``converters.conventions.torch_gru_to_onnx`` and written with
``gru_engine.save`` (ONNX, a real GRU node), so onnxruntime runs the very same file.

Run from the repository root (needs torch, statsmodels; dev-only dependencies)::

    python tools/train_demo.py            # writes gru_engine/data/demo_gru.onnx, demo_data.npz
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SEED = 20240611
HIDDEN = 32
HELD_OUT = 520  # weeks scored in the demo (the last 10 years of the record)
CONTEXT = 104  # weeks before the held-out window, shipped for warm-up (not scored)
WINDOW = 208  # training sequence length (4 years)
BURN_IN = 26  # steps of each training window not scored (the state warms up)
BATCH = 32
ITERS = 1500
LR = 3e-3


def load_series():
    """Weekly CO2 in ppm and the dates as decimal years, NaNs interpolated in time."""
    from statsmodels.datasets import co2

    df = co2.load_pandas().data
    s = df["co2"].interpolate(method="time").bfill().ffill()
    t = df.index
    years = (t.year + (t.day_of_year - 1) / 365.25).to_numpy(np.float64)
    return s.to_numpy(np.float64), years


def build_model(gru, head):
    """The engine's canonical model from the trained torch modules."""
    import gru_engine
    from converters.conventions import torch_gru_to_onnx

    def a(t):
        return t.detach().cpu().numpy().astype(np.float32)

    W, R, B = torch_gru_to_onnx(a(gru.weight_ih_l0), a(gru.weight_hh_l0), a(gru.bias_ih_l0), a(gru.bias_hh_l0))
    layers = (
        gru_engine.GRU(W=W[None], R=R[None], B=B[None], linear_before_reset=1, name="gru"),
        gru_engine.Dense(kernel=a(head.weight).T, bias=a(head.bias), name="head"),
    )
    return gru_engine.Model(layers, name="co2-weekly-forecaster")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", default=os.path.join(ROOT, "gru_engine", "data"))
    ap.add_argument("--iters", type=int, default=ITERS)
    args = ap.parse_args(argv)

    import torch

    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    rng = np.random.default_rng(SEED)

    y, years = load_series()
    n = len(y)
    start = n - HELD_OUT  # first scored week
    train = y[:start]
    d_train = np.diff(train)
    mu, sd = float(d_train.mean()), float(d_train.std())
    z = ((d_train - mu) / sd).astype(np.float32)  # z[k]: change from week k to k+1

    gru = torch.nn.GRU(1, HIDDEN, batch_first=True)
    head = torch.nn.Linear(HIDDEN, 1)
    params = list(gru.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=LR)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.iters)
    zt = torch.from_numpy(z)
    t0 = time.perf_counter()
    for it in range(args.iters):
        starts = rng.integers(0, len(z) - WINDOW - 1, BATCH)
        xb = torch.stack([zt[s : s + WINDOW] for s in starts])[..., None]
        yb = torch.stack([zt[s + 1 : s + WINDOW + 1] for s in starts])[..., None]
        out, _ = gru(xb)
        pred = head(out)
        loss = torch.mean((pred[:, BURN_IN:] - yb[:, BURN_IN:]) ** 2)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if it % 250 == 0 or it == args.iters - 1:
            print(f"iter {it:5d}  loss {loss.item():.4f}  ({time.perf_counter() - t0:.0f} s)")

    # Held-out evaluation with torch (the demo repeats it with the engine).
    seg = y[start - CONTEXT :]
    x = ((np.diff(seg) - mu) / sd).astype(np.float32)
    with torch.no_grad():
        o = head(gru(torch.from_numpy(x)[None, :, None])[0])[0, :, 0].numpy().astype(np.float64)
    # o[k] predicts the change seg[k+2] - seg[k+1]; score weeks CONTEXT .. end of seg
    pred = seg[1:-1] + o[:-1] * sd + mu  # forecasts of seg[2:]
    actual = seg[2:]
    naive = seg[1:-1]
    sl = slice(CONTEXT - 2, None)
    rmse = float(np.sqrt(np.mean((pred[sl] - actual[sl]) ** 2)))
    rmse_naive = float(np.sqrt(np.mean((naive[sl] - actual[sl]) ** 2)))
    print(f"held-out RMSE: GRU {rmse:.3f} ppm, naive last value {rmse_naive:.3f} ppm")

    model = build_model(gru, head)
    ye, _ = model.run(x[None, :, None])
    print(f"engine vs torch, max abs diff: {np.abs(ye[0, :, 0] - o).max():.2e}")

    import gru_engine

    os.makedirs(args.out_dir, exist_ok=True)
    onnx_path = os.path.join(args.out_dir, "demo_gru.onnx")
    gru_engine.save(model, onnx_path)
    np.savez_compressed(
        os.path.join(args.out_dir, "demo_data.npz"),
        series=seg,
        years=years[start - CONTEXT :],
        context=np.int64(CONTEXT),
        diff_mean=np.float64(mu),
        diff_std=np.float64(sd),
        source=np.array("statsmodels.datasets.co2: weekly Mauna Loa CO2 (ppm), NaNs interpolated in time"),
    )
    print(f"wrote {onnx_path} and demo_data.npz ({len(seg)} weeks, {HELD_OUT} scored)")


if __name__ == "__main__":
    main()

"""Per-step latency of streaming through the layers around the GRUs (causal Conv1D, norms).

One command::

    python bench/layers_step.py

Side by side in one process, round-robin blocks, medians, batch 1, float32, input size 8:

* ``gru``: GRU(H) -> Dense(4) through the fused :class:`gru_engine.stream.Stream`;
* ``conv+gru``: causal Conv1D(8->8, K=3, relu) -> GRU(H) -> Dense(4) through
  :class:`gru_engine.stream_layers.LayerStream` (ring buffer + the fused Stream segment);
* ``conv+bn+ln+gru``: the same with BatchNormalization and LayerNormalization added;
* ``torch``: the same conv+gru model in torch, one step with a hand-kept receptive field.

Reports microseconds per ``step(x, out=y)`` and the ratio to the GRU-only stream.
"""

from __future__ import annotations

import time

import numpy as np


def _models(H: int, rng):
    from gru_engine.layers import BatchNormalization, Conv1D, LayerNormalization
    from gru_engine.model import GRU, Dense, Model

    f = lambda *s: (rng.standard_normal(s) * 0.2).astype(np.float32)  # noqa: E731
    gru = GRU(W=f(1, 3 * H, 8), R=f(1, 3 * H, H), B=f(1, 6 * H), linear_before_reset=1)
    dense = Dense(kernel=f(H, 4), bias=f(4))
    conv = Conv1D(kernel=f(8, 8, 3), bias=f(8), padding="causal", activation="relu")
    bn = BatchNormalization(gamma=f(8), beta=f(8), mean=f(8), var=np.ones(8, np.float32))
    ln = LayerNormalization(gamma=f(8), beta=f(8))
    return {
        "gru": Model((gru, dense)),
        "conv+gru": Model((conv, gru, dense)),
        "conv+bn+ln+gru": Model((conv, bn, ln, gru, dense)),
    }


def _torch_step(models, H):
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(1)
    m = models["conv+gru"]
    conv, gru, dense = m.layers
    tconv = torch.nn.Conv1d(8, 8, 3)
    cell = torch.nn.GRUCell(8, H)
    lin = torch.nn.Linear(H, 4)
    with torch.no_grad():
        tconv.weight.copy_(torch.from_numpy(conv.kernel.copy()))
        tconv.bias.copy_(torch.from_numpy(conv.bias.copy()))
        from converters.conventions import onnx_gru_to_torch

        w_ih, w_hh, b_ih, b_hh = onnx_gru_to_torch(gru.W[0], gru.R[0], gru.B[0])
        cell.weight_ih.copy_(torch.from_numpy(np.ascontiguousarray(w_ih)))
        cell.weight_hh.copy_(torch.from_numpy(np.ascontiguousarray(w_hh)))
        cell.bias_ih.copy_(torch.from_numpy(np.ascontiguousarray(b_ih)))
        cell.bias_hh.copy_(torch.from_numpy(np.ascontiguousarray(b_hh)))
        lin.weight.copy_(torch.from_numpy(dense.kernel.T.copy()))
        lin.bias.copy_(torch.from_numpy(dense.bias.copy()))
    state = {"buf": torch.zeros(1, 8, 3), "h": torch.zeros(1, H)}

    def step(x_t):
        with torch.no_grad():
            buf = torch.cat([state["buf"][:, :, 1:], torch.from_numpy(x_t)[:, :, None]], dim=2)
            state["buf"] = buf
            c = torch.relu(tconv(buf))[:, :, 0]
            state["h"] = cell(c, state["h"])
            return lin(state["h"])

    return step


def measure(H: int = 32, steps: int = 400, blocks: int = 7, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    models = _models(H, rng)
    streams = {k: m.stream() for k, m in models.items()}
    x = rng.standard_normal((1, steps, 8)).astype(np.float32)
    out = np.empty((1, 4), np.float32)
    runners = {k: (lambda s: (lambda x_t: s.step(x_t, out=out)))(s) for k, s in streams.items()}
    tstep = _torch_step(models, H)
    if tstep is not None:
        runners["torch"] = tstep
    for fn in runners.values():  # compile / warm up
        for t in range(50):
            fn(np.ascontiguousarray(x[:, t]))
    cols = [np.ascontiguousarray(x[:, t]) for t in range(steps)]
    times = {k: [] for k in runners}
    for _ in range(blocks):
        for k, fn in runners.items():
            t0 = time.perf_counter()
            for c in cols:
                fn(c)
            times[k].append((time.perf_counter() - t0) / steps * 1e6)
    return {k: float(np.median(v)) for k, v in times.items()}


def main() -> None:
    print("| H | " + " | ".join(["gru (Stream)", "conv+gru", "conv+bn+ln+gru", "torch conv+gru"]) + " |")
    print("|---|---|---|---|---|")
    for H in (32, 128):
        r = measure(H)
        base = r["gru"]
        cells = [f"{r['gru']:.2f} us"] + [f"{r[k]:.2f} us ({r[k] / base:.1f}x)" for k in ("conv+gru", "conv+bn+ln+gru")]
        cells.append(f"{r['torch']:.2f} us" if "torch" in r else "-")
        print(f"| {H} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

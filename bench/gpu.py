"""GPU benchmark: gru-engine on CUDA vs torch.nn.GRU on CUDA (cuDNN) and onnxruntime's CUDA provider.

Catches regressions of the numba.cuda kernels (:mod:`gru_engine.kernels_cuda`): the tiled
input projection, the persistent and per-step recurrence, and batched streaming.

    python bench/gpu.py                 # full grid: T=256, I=H, H in {64,128,512,1024}, B in {1,16,64,256}
    python bench/gpu.py --quick         # H in {64,512}, B in {1,64}
    python bench/gpu.py --json out.json
    python bench/gpu.py --smoke         # tiny sizes; also runs on the CUDA simulator (checks the script)

Every contender is validated against the engine's CPU run (first rows of the batch) before it
is timed; a contender that disagrees is reported as "wrong", not timed. Timed regions end with
``cuda.synchronize()`` (``torch.cuda.synchronize()`` for torch), so they measure finished work.
Inputs live on the device for the engine and torch; onnxruntime is fed NumPy arrays (its
``run`` copies them in and out: noted in the table). Streaming: ``model.stream(1000,
device="cuda")`` stepping 1000 streams at once vs ``torch.nn.GRUCell`` on a (1000, I) batch.

Needs a real NVIDIA GPU: on a machine without one (or under NUMBA_ENABLE_CUDASIM, whose
timings mean nothing, unless --smoke) it exits with a message and status 2. Without a CUDA
build of torch the torch columns read "n/a".
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gru_engine import GRU, DeviceError, Model  # noqa: E402

T = 256
HS = (64, 128, 512, 1024)
BS = (1, 16, 64, 256)
STREAMS = 1000
STREAM_HS = (64, 256)
ATOL = 1e-4  # float32 over 256 steps, different summation orders
WARMUP = 2  # untimed calls before each timing (after the validating call)
STREAM_REPS = 10  # the streaming timings take this many times --reps steps
STREAM_STEPS = 8  # steps of the streaming validation
VALIDATE_ROWS = 4


def median_time(fn, sync, reps: int) -> float:
    for _ in range(WARMUP):
        fn()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def make_model(H: int, I: int, seed: int = 0) -> Model:
    """One forward GRU, linear_before_reset=1 (what torch computes), weights of scale 1/sqrt(H)."""
    rng = np.random.default_rng(seed)
    s = 1.0 / np.sqrt(H)
    W = rng.uniform(-s, s, (1, 3 * H, I)).astype(np.float32)
    R = rng.uniform(-s, s, (1, 3 * H, H)).astype(np.float32)
    B = rng.uniform(-s, s, (1, 6 * H)).astype(np.float32)
    return Model((GRU(W=W, R=R, B=B, linear_before_reset=1),))


def torch_weights(model: Model):
    """ONNX z, r, h rows -> torch r, z, n rows (GRU-FACTS: rows [H:2H], [0:H], [2H:3H])."""
    g = model.layers[0]
    H = g.hidden_size

    def rz(a):
        return np.concatenate([a[H : 2 * H], a[:H], a[2 * H :]], axis=0)

    return rz(g.W[0]), rz(g.R[0]), rz(g.B[0, : 3 * H]), rz(g.B[0, 3 * H :])


def load_torch_gru(model: Model, cell: bool):
    import torch

    I, H = model.input_size, model.layers[0].hidden_size
    m = torch.nn.GRUCell(I, H) if cell else torch.nn.GRU(I, H, batch_first=True)
    w_ih, w_hh, b_ih, b_hh = (torch.from_numpy(np.ascontiguousarray(a)) for a in torch_weights(model))
    sfx = "" if cell else "_l0"
    with torch.no_grad():
        getattr(m, "weight_ih" + sfx).copy_(w_ih)
        getattr(m, "weight_hh" + sfx).copy_(w_hh)
        getattr(m, "bias_ih" + sfx).copy_(b_ih)
        getattr(m, "bias_hh" + sfx).copy_(b_hh)
    return m.cuda().eval()


def ort_cuda_session(model: Model):
    try:
        import onnxruntime as ort
    except ImportError:
        return None, "onnxruntime not installed"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return None, "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"
    import gru_engine

    path = os.path.join(tempfile.mkdtemp(), "gru.onnx")
    gru_engine.save(model, path)
    sess = ort.InferenceSession(path, providers=["CUDAExecutionProvider"])
    if sess.get_providers()[0] != "CUDAExecutionProvider":
        return None, f"onnxruntime fell back to {sess.get_providers()}"
    return sess, ""


def err(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def torch_cuda():
    """torch when it has CUDA, else None."""
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def bench_sequences(cuda, Hs, Bs, reps, T=T):
    torch = torch_cuda()
    rows = []
    for H in Hs:
        model = make_model(H, H)
        dm = model.to("cuda")
        tg = load_torch_gru(model, cell=False) if torch else None
        sess, ort_note = ort_cuda_session(model)
        for B in Bs:
            rng = np.random.default_rng(B)
            x = rng.uniform(-1, 1, (B, T, H)).astype(np.float32)
            n = min(B, VALIDATE_ROWS)
            want, _ = model.run(x[:n])  # the CPU engine is the reference
            row = dict(T=T, H=H, I=H, B=B)
            xd = cuda.to_device(x)
            y, _ = dm.run(xd)
            e = err(y.copy_to_host()[:n], want)
            row["engine_err"] = e
            if e <= ATOL:
                row["engine_ms"] = 1e3 * median_time(lambda: dm.run(xd), cuda.synchronize, reps)
            if torch is not None:
                xt = torch.from_numpy(x).cuda()
                with torch.no_grad():
                    yt, _ = tg(xt)
                    e = err(yt[:n].cpu().numpy(), want)
                    row["torch_err"] = e
                    if e <= ATOL:
                        row["torch_ms"] = 1e3 * median_time(lambda: tg(xt), torch.cuda.synchronize, reps)
            if sess is not None:
                name = sess.get_inputs()[0].name
                yo = sess.run(None, {name: x})[0]
                e = err(yo[:n], want) if yo.shape[:2] == (B, T) else float("inf")
                row["ort_err"] = e
                if e <= ATOL:
                    row["ort_ms"] = 1e3 * median_time(lambda: sess.run(None, {name: x}), lambda: None, reps)
            else:
                row["ort_note"] = ort_note
            rows.append(row)
            print(fmt_row(row), flush=True)
    return rows


def bench_streaming(cuda, Hs, reps, streams=STREAMS):
    torch = torch_cuda()
    rows = []
    for H in Hs:
        model = make_model(H, H, seed=1)
        rng = np.random.default_rng(2)
        xs = rng.uniform(-1, 1, (streams, STREAM_STEPS, H)).astype(np.float32)
        want, _ = model.run(xs[:VALIDATE_ROWS])
        s = model.stream(streams, device="cuda")
        steps_d = [cuda.to_device(np.ascontiguousarray(xs[:, t])) for t in range(STREAM_STEPS)]
        got = np.stack([s.step(steps_d[t]).copy_to_host() for t in range(STREAM_STEPS)], axis=1)
        row = dict(streams=streams, H=H, I=H, engine_err=err(got[:VALIDATE_ROWS], want))
        out = cuda.device_array((streams, H), np.float32)
        if row["engine_err"] <= ATOL:
            row["engine_us_per_step"] = 1e6 * median_time(lambda: s.step(steps_d[0], out=out), cuda.synchronize, reps * STREAM_REPS)
        if torch is None:
            rows.append(row)
            print(row, flush=True)
            continue
        cell = load_torch_gru(model, cell=True)
        with torch.no_grad():
            h = torch.zeros(streams, H, device="cuda")
            xt = [torch.from_numpy(xs[:, t]).cuda() for t in range(STREAM_STEPS)]
            outs = []
            for t in range(STREAM_STEPS):
                h = cell(xt[t], h)
                outs.append(h)
            e = err(torch.stack(outs, 1)[:VALIDATE_ROWS].cpu().numpy(), want)
            row["torch_cell_err"] = e
            if e <= ATOL:
                row["torch_cell_us_per_step"] = 1e6 * median_time(lambda: cell(xt[0], h), torch.cuda.synchronize, reps * STREAM_REPS)
        rows.append(row)
        print(row, flush=True)
    return rows


def fmt_row(r) -> str:
    def ms(k):
        if k in r:
            return f"{r[k]:9.3f}"
        e = r.get(k.replace("_ms", "_err"))
        return "    wrong" if e is not None else "      n/a"

    return f"| {r['H']:5d} | {r['B']:4d} | {ms('engine_ms')} | {ms('torch_ms')} | {ms('ort_ms')} |"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="H in {64, 512}, B in {1, 64}")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, allowed on the CUDA simulator")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    simulator = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
    if simulator and not args.smoke:
        print("bench/gpu.py: NUMBA_ENABLE_CUDASIM is set; simulator timings mean nothing. Unset it and run on a GPU.",
              file=sys.stderr)
        return 2
    from gru_engine.cuda_backend import get_cuda

    try:
        cuda = get_cuda()
    except DeviceError as e:
        print(f"bench/gpu.py needs an NVIDIA GPU: {e}", file=sys.stderr)
        return 2
    global WARMUP, STREAM_REPS, STREAM_STEPS
    torch = torch_cuda()
    if args.smoke:
        Hs, Bs, steps, streams, stream_hs, reps = (8,), (1, 2), 4, 3, (8,), 1
        WARMUP, STREAM_REPS, STREAM_STEPS = 0, 1, 2
    elif args.quick:
        Hs, Bs, steps, streams, stream_hs, reps = (64, 512), (1, 64), T, STREAMS, STREAM_HS[:1], args.reps
    else:
        Hs, Bs, steps, streams, stream_hs, reps = HS, BS, T, STREAMS, STREAM_HS, args.reps
    if simulator:
        device = "CUDA simulator (timings mean nothing)"
    else:
        dev = cuda.get_current_device()
        device = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
    baseline = (f"torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}" if torch
                else "torch without CUDA: no torch baseline")
    print(f"device: {device}; {baseline}; T={steps}, I=H, float32, median of {reps}")
    print("| H     | B    | engine ms | torch ms  | ort ms    |")
    print("|------:|-----:|----------:|----------:|----------:|")
    seq = bench_sequences(cuda, Hs, Bs, reps, T=steps)
    stream = bench_streaming(cuda, stream_hs, reps, streams=streams)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(sequences=seq, streaming=stream), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

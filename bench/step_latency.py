"""Per-step latency from Python at batch 1: gru-engine's Stream vs onnxruntime vs torch.

One command::

    python bench/step_latency.py            # full table -> bench/results/step_latency.md
    python bench/step_latency.py --quick    # fewer sizes and repeats

Every contender runs the same single-layer GRU (``linear_before_reset=1``, PyTorch's form)
for one step with the state fed back, side by side in one process, in round-robin blocks;
the table reports medians over the blocks and ratios taken within this one run:

* engine: ``stream.step(x, out=y)`` (the allocation-free path; serial kernel, 1 thread);
* onnxruntime: a one-step ``InferenceSession.run`` of a GRU node with ``initial_h`` fed
  back, as users do it; 1 intra-op thread and the default thread count;
* torch: ``GRUCell`` and ``nn.GRU`` called on one step under ``torch.no_grad()``,
  ``torch.set_num_threads(1)``.

Also: the throughput of a :class:`~gru_engine.stream.StreamPool` stepping 1000 streams in
one call, and "x real-time at 48 kHz" (one step per audio sample) for audio-size models.

``OPENBLAS_CORETYPE`` / ``OPENBLAS_L2_SIZE`` are removed from this process's environment
before numpy loads (the output says whether they were set); nothing else is changed.

:func:`measure` returns the rows as dicts for other scripts (``bench/compare.py``).
"""

from __future__ import annotations

import os

_UNSET = {k: os.environ.pop(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ}

import argparse  # noqa: E402  (the environment must be cleaned before numpy is imported)
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

SAMPLE_RATE = 48_000


def _weights(I, H, seed=0):
    rng = np.random.default_rng(seed)
    s = 1.0 / np.sqrt(H)
    W = rng.uniform(-s, s, (1, 3 * H, I)).astype(np.float32)
    R = rng.uniform(-s, s, (1, 3 * H, H)).astype(np.float32)
    B = rng.uniform(-s, s, (1, 6 * H)).astype(np.float32)
    return W, R, B


def _engine(W, R, B):
    from gru_engine import GRU, Model

    model = Model((GRU(W=W, R=R, B=B, linear_before_reset=1),))
    stream = model.stream()
    I, H = W.shape[2], R.shape[2]
    x = np.random.default_rng(1).normal(size=(1, I)).astype(np.float32)
    out = np.empty((1, H), np.float32)
    step = stream.step

    def block(n):
        for _ in range(n):
            step(x, out)

    return block, model


def _ort(W, R, B, threads):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    I, H = W.shape[2], R.shape[2]
    node = helper.make_node("GRU", ["X", "W", "R", "B", "", "initial_h"], ["Y", "Y_h"], hidden_size=H, linear_before_reset=1)
    graph = helper.make_graph(
        [node], "gru_step",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 1, I]),
         helper.make_tensor_value_info("initial_h", TensorProto.FLOAT, [1, 1, H])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 1, 1, H]),
         helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, [1, 1, H])],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(R, "R"), numpy_helper.from_array(B, "B")],
    )
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    sess = ort.InferenceSession(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]).SerializeToString(), so,
        providers=["CPUExecutionProvider"],
    )
    x = np.random.default_rng(1).normal(size=(1, 1, I)).astype(np.float32)
    state = {"h": np.zeros((1, 1, H), np.float32)}

    def block(n):
        h = state["h"]
        run = sess.run
        for _ in range(n):
            y, h = run(None, {"X": x, "initial_h": h})
        state["h"] = h

    return block


def _torch(W, R, B, kind):
    import torch

    from converters.conventions import onnx_gru_to_torch

    I, H = W.shape[2], R.shape[2]
    w_ih, w_hh, b_ih, b_hh = (torch.from_numpy(np.ascontiguousarray(a)) for a in onnx_gru_to_torch(W[0], R[0], B[0]))
    if kind == "cell":
        net = torch.nn.GRUCell(I, H)
        names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    else:
        net = torch.nn.GRU(I, H, batch_first=True)
        names = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")
    with torch.no_grad():
        for n, v in zip(names, (w_ih, w_hh, b_ih, b_hh)):
            getattr(net, n).copy_(v)
    net.eval()
    x = torch.from_numpy(np.random.default_rng(1).normal(size=(1, 1, I)).astype(np.float32))
    x2 = x[:, 0]
    state = {"h": torch.zeros(1, H) if kind == "cell" else torch.zeros(1, 1, H)}

    def block(n):
        h = state["h"]
        with torch.no_grad():
            if kind == "cell":
                for _ in range(n):
                    h = net(x2, h)
            else:
                for _ in range(n):
                    y, h = net(x, h)
        state["h"] = h

    return block


def _calibrate(block, target_s):
    n = 1
    while True:
        t = time.perf_counter()
        block(n)
        dt = time.perf_counter() - t
        if dt >= target_s / 4 or n >= 1 << 20:
            return max(1, int(n * target_s / max(dt, 1e-9)))
        n *= 4


def _check_agreement(model, W, R, B):
    """The contenders compute the same thing: 50 engine steps vs torch GRUCell steps."""
    try:
        import torch
    except ImportError:
        return None
    from converters.conventions import onnx_gru_to_torch

    I, H = W.shape[2], R.shape[2]
    cell = torch.nn.GRUCell(I, H)
    with torch.no_grad():
        for n, v in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), onnx_gru_to_torch(W[0], R[0], B[0])):
            getattr(cell, n).copy_(torch.from_numpy(np.ascontiguousarray(v)))
    s = model.stream()
    xs = np.random.default_rng(2).normal(size=(50, 1, I)).astype(np.float32)
    h = torch.zeros(1, H)
    err = 0.0
    with torch.no_grad():
        for x in xs:
            h = cell(torch.from_numpy(x), h)
            err = max(err, float(np.abs(s.step(x) - h.numpy()).max()))
    return err


def measure(hidden_sizes=(16, 32, 64, 128, 256), input_sizes=("1", "H"), repeats=15, block_s=0.02,
            ort_default=True, with_torch=True, pause_s=0.005, log=print) -> list[dict]:
    """Per-step latency (microseconds, medians over ``repeats`` round-robin blocks).

    Returns one dict per (H, I): ``H, I, engine_us, ort1_us, ort_default_us, torch_cell_us,
    torch_gru_us`` (None where a framework is missing), ``ratio_ort1``: the median over
    rounds of ort1 / engine within each round (and ``ratio_ort_default``, ``ratio_torch_cell``,
    ``ratio_torch_gru``),
    ``realtime_48k`` (x real-time, one step per sample) and ``max_abs_diff_vs_torch``.
    """
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        with_torch = False
    try:
        import onnxruntime  # noqa: F401

        have_ort = True
    except ImportError:
        have_ort = False
    rows = []
    for H in hidden_sizes:
        for spec in input_sizes:
            I = H if spec == "H" else int(spec)
            W, R, B = _weights(I, H)
            eng, model = _engine(W, R, B)
            contenders = {"engine": eng}
            if have_ort:
                contenders["ort1"] = _ort(W, R, B, 1)
                if ort_default:
                    contenders["ort_default"] = _ort(W, R, B, 0)
            if with_torch:
                contenders["torch_cell"] = _torch(W, R, B, "cell")
                contenders["torch_gru"] = _torch(W, R, B, "gru")
            sizes = {}
            for name, block in contenders.items():
                block(200)  # warm-up (compiles, allocates, faults pages in)
                sizes[name] = _calibrate(block, block_s)
            times = {name: [] for name in contenders}
            for _ in range(repeats):
                for name, block in contenders.items():
                    n = sizes[name]
                    t = time.perf_counter()
                    block(n)
                    times[name].append((time.perf_counter() - t) / n * 1e6)
                    # let thread pools that spin after a call (onnxruntime's default session)
                    # go idle, so they do not steal the next contender's core
                    time.sleep(pause_s)
            row = {"H": H, "I": I}
            for name in ("engine", "ort1", "ort_default", "torch_cell", "torch_gru"):
                row[f"{name}_us"] = float(np.median(times[name])) if name in times else None
            for name in ("ort1", "ort_default", "torch_cell", "torch_gru"):
                # median over rounds of the within-round ratio: robust to load that changes
                # between rounds on a shared machine
                row[f"ratio_{name}"] = (
                    float(np.median(np.array(times[name]) / np.array(times["engine"]))) if name in times else None
                )
            row["realtime_48k"] = 1e6 / row["engine_us"] / SAMPLE_RATE
            row["max_abs_diff_vs_torch"] = _check_agreement(model, W, R, B) if with_torch else None
            rows.append(row)
            if log:
                log(_fmt_row(row))
    return rows


def measure_pool(hidden_sizes=(32, 64, 128, 256), n_streams=1000, repeats=15, log=print) -> list[dict]:
    """Throughput of a StreamPool stepping ``n_streams`` streams in one call (input size = H)."""
    from gru_engine import GRU, Model, StreamPool

    try:  # one BLAS thread, like the other contenders (threaded BLAS stalls on a busy 2-core machine)
        from threadpoolctl import threadpool_limits

        limit = threadpool_limits(1, user_api="blas")
    except ImportError:
        limit = None
    try:
        return _measure_pool(StreamPool, GRU, Model, hidden_sizes, n_streams, repeats, log)
    finally:
        if limit is not None:
            limit.restore_original_limits()


def _measure_pool(StreamPool, GRU, Model, hidden_sizes, n_streams, repeats, log):
    rows = []
    for H in hidden_sizes:
        W, R, B = _weights(H, H)
        model = Model((GRU(W=W, R=R, B=B, linear_before_reset=1),))
        pool = StreamPool(model, n_streams)
        for i in range(n_streams):
            pool.open(i)
        slots = pool.slots(range(n_streams))
        x = np.random.default_rng(1).normal(size=(n_streams, H)).astype(np.float32)
        out = np.empty((n_streams, H), np.float32)
        res = {}
        for label, thr in (("rows", n_streams + 1), ("batched", 1)):
            pool.batch_threshold = thr
            pool.step_slots(slots, x, out)
            ts = []
            for _ in range(repeats):
                t = time.perf_counter()
                pool.step_slots(slots, x, out)
                ts.append(time.perf_counter() - t)
            res[label] = float(np.median(ts))
        pool.batch_threshold = 32
        row = {
            "H": H, "I": H, "streams": n_streams,
            "call_ms_rows": res["rows"] * 1e3, "call_ms_batched": res["batched"] * 1e3,
            "stream_steps_per_s_rows": n_streams / res["rows"],
            "stream_steps_per_s_batched": n_streams / res["batched"],
            "us_per_stream_step_rows": res["rows"] / n_streams * 1e6,
            "us_per_stream_step_batched": res["batched"] / n_streams * 1e6,
        }
        rows.append(row)
        if log:
            log(f"pool H={H}: {n_streams} streams per call: serial {row['call_ms_rows']:.2f} ms "
                f"({row['stream_steps_per_s_rows'] / 1e6:.2f} M stream-steps/s), "
                f"batched {row['call_ms_batched']:.2f} ms ({row['stream_steps_per_s_batched'] / 1e6:.2f} M/s)")
    return rows


def _f(v, fmt="{:.2f}"):
    return "-" if v is None else fmt.format(v)


def _fmt_row(r):
    return (f"H={r['H']:>3} I={r['I']:>3}: engine {_f(r['engine_us'])} us | ort(1 thr) {_f(r['ort1_us'])} us "
            f"x{_f(r['ratio_ort1'], '{:.1f}')} | ort(default) {_f(r['ort_default_us'])} | "
            f"torch GRUCell {_f(r['torch_cell_us'])} | nn.GRU {_f(r['torch_gru_us'])}")


def environment() -> dict:
    import numba

    info = {"python": platform.python_version(), "numpy": np.__version__, "numba": numba.__version__,
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    for mod in ("onnxruntime", "torch"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            info[mod] = None
    return info


def to_markdown(rows, pool_rows, env, command) -> str:
    lines = [
        "# Streaming step latency (batch 1, from Python)",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {env['cpu']}, {env['cores']} cores; Python {env['python']}, numpy {env['numpy']}, numba {env['numba']}, "
        f"onnxruntime {env['onnxruntime']}, torch {env['torch']}.",
        "Threads: engine step kernel serial (1 thread); onnxruntime `intra_op_num_threads=1` (\"ort 1t\") and default "
        "(\"ort def\"); torch `set_num_threads(1)`. Round-robin blocks (~20 ms each, 5 ms pause after each so "
        "spinning thread pools go idle) in one process; times are medians over rounds, ratios (x) the median over rounds of other / engine within a round.",
        "Environment: OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE "
        + (f"were set ({', '.join(f'{k}={v}' for k, v in _UNSET.items())}) and were unset for this run." if _UNSET else "were not set."),
        "",
        "| H | I | engine us | ort 1t us | x ort 1t | ort def us | x ort def | torch GRUCell us | x GRUCell | nn.GRU us | x nn.GRU | x real-time 48 kHz |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        rt = _f(r["realtime_48k"], "{:.1f}") if (r["H"] <= 64 and r["I"] == 1) else ""
        lines.append(
            f"| {r['H']} | {r['I']} | {_f(r['engine_us'])} | {_f(r['ort1_us'])} | {_f(r['ratio_ort1'], '{:.1f}')} | "
            f"{_f(r['ort_default_us'])} | {_f(r['ratio_ort_default'], '{:.1f}')} | {_f(r['torch_cell_us'])} | "
            f"{_f(r['ratio_torch_cell'], '{:.1f}')} | {_f(r['torch_gru_us'])} | {_f(r['ratio_torch_gru'], '{:.1f}')} | {rt} |"
        )
    diffs = [r["max_abs_diff_vs_torch"] for r in rows if r["max_abs_diff_vs_torch"] is not None]
    if diffs:
        lines += ["", f"Engine vs torch GRUCell over 50 steps: max abs difference {max(diffs):.1e}."]
    if pool_rows:
        lines += [
            "",
            f"StreamPool: {pool_rows[0]['streams']} independent streams stepped in one `step_slots` call (I = H, `out=` given, "
            "BLAS limited to 1 thread): the fused row kernel (one stream after another) vs the batched path (BLAS products "
            "over all rows, the default from 32 rows).",
            "",
            "| H | row kernel: ms/call | stream-steps/s | batched BLAS path: ms/call | stream-steps/s | us per stream-step |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for p in pool_rows:
            lines.append(
                f"| {p['H']} | {p['call_ms_rows']:.2f} | {p['stream_steps_per_s_rows']:,.0f} | "
                f"{p['call_ms_batched']:.2f} | {p['stream_steps_per_s_batched']:,.0f} | {p['us_per_stream_step_batched']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="H in {32, 128}, 5 repeats")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "step_latency.md"))
    args = ap.parse_args(argv)
    print("OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE: "
          + (f"unset for this benchmark (were {_UNSET})" if _UNSET else "not set in the environment"))
    hs = (32, 128) if args.quick else (16, 32, 64, 128, 256)
    reps = args.repeats or (5 if args.quick else 25)
    rows = measure(hs, repeats=reps)
    pool_rows = measure_pool((64,) if args.quick else (32, 64, 128, 256), repeats=5 if args.quick else 15)
    command = "python bench/step_latency.py" + (" --quick" if args.quick else "") + (f" --repeats {args.repeats}" if args.repeats else "")
    md = to_markdown(rows, pool_rows, environment(), command)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(md)
    print(md)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()

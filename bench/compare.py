"""gru-engine vs onnxruntime vs PyTorch, side by side in one process.

One command (full run, several minutes on 2 cores)::

    python bench/compare.py            # -> bench/results/compare.md, compare.png, compare.json
    python bench/compare.py --quick    # smoke run: small grid, 1 thread, few repeats

What it measures (float32, the same weights for all three, ``linear_before_reset=1`` since
that is the only form PyTorch has; outputs checked to agree before timing):

* whole sequences, T=256, I=H, H in {64, 128, 512}, B in {1, 16, 64}, at 1 and 2 threads
  (the same count for all three: ``gru_engine.set_num_threads``, onnxruntime
  ``intra_op_num_threads`` with ``inter_op_num_threads=1``, ``torch.set_num_threads``);
  each contender gets its native layout (engine/torch batch-first, onnxruntime time-major);
* a 2-layer bidirectional GRU, H=256, B=16, T=256;
* GFLOP/s (2 flops per multiply-add of the input and recurrent products) and, at B=64,
  H=512, the share of the float32 matrix-multiply peak measured in the same run (NumPy's
  BLAS on a large square product, same thread count);
* streaming: per-step latency from ``bench/step_latency.py`` (the streaming benchmark,
  imported), and the per-step time of 64-step chunks (``Stream.run``) vs onnxruntime's own
  per-step time inside one 64-step call;
* cold start: a fresh process doing import + load + first result, for the engine with an
  empty and with a warm numba cache (``NUMBA_CACHE_DIR``), for onnxruntime and for torch.

Timing: round-robin (each repeat times every contender once, in turn), medians of the
repeats; each sample is a block of calls lasting at least ~20 ms, after a 50 ms pause so
that the previous contender's spinning thread pool has gone idle. Ratios are other / engine
(> 1: the engine is faster), taken within this run. The machine load (load average) and
the spread of the samples are reported, and rows with a large spread are flagged.

``OPENBLAS_CORETYPE`` / ``OPENBLAS_L2_SIZE`` are removed from this process's environment
before NumPy loads (the BLAS then picks its kernel for this CPU); the output names the BLAS
libraries and the kernel they run (threadpoolctl).
"""

from __future__ import annotations

import os

_UNSET = {k: os.environ.pop(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ}

import argparse  # noqa: E402  (the environment must be cleaned before numpy is imported)
import json  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
for _p in (ROOT, BENCH):
    if _p not in sys.path:
        sys.path.insert(0, _p)

SPREAD_FLAG = 0.15  # (p75 - p25) / median above this marks a row as noisy


# --------------------------------------------------------------------------- models


def _weights(I, H, D=1, seed=0):
    rng = np.random.default_rng(seed)
    s = 1.0 / np.sqrt(H)
    W = rng.uniform(-s, s, (D, 3 * H, I)).astype(np.float32)
    R = rng.uniform(-s, s, (D, 3 * H, H)).astype(np.float32)
    B = rng.uniform(-s, s, (D, 6 * H)).astype(np.float32)
    return W, R, B


def _onnx_model(layers):
    """ONNX graph of stacked GRU nodes (lbr=1); bidirectional outputs merged as torch does."""
    from onnx import TensorProto, helper, numpy_helper

    I = layers[0][0].shape[2]
    nodes, inits = [], []
    cur = "X"
    for k, (W, R, B) in enumerate(layers):
        D, H = W.shape[0], R.shape[2]
        direction = "bidirectional" if D == 2 else "forward"
        nodes.append(helper.make_node("GRU", [cur, f"W{k}", f"R{k}", f"B{k}"], [f"Y{k}", f"Yh{k}"],
                                      hidden_size=H, linear_before_reset=1, direction=direction))
        inits += [numpy_helper.from_array(W, f"W{k}"), numpy_helper.from_array(R, f"R{k}"), numpy_helper.from_array(B, f"B{k}")]
        # Y (T, D, N, H) -> (T, N, D*H)
        nodes.append(helper.make_node("Transpose", [f"Y{k}"], [f"Yt{k}"], perm=[0, 2, 1, 3]))
        nodes.append(helper.make_node("Reshape", [f"Yt{k}", "shape3"], [f"O{k}"]))
        cur = f"O{k}"
    inits.append(numpy_helper.from_array(np.array([0, 0, -1], np.int64), "shape3"))
    graph = helper.make_graph(
        nodes, "gru", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, None, I])],
        [helper.make_tensor_value_info(cur, TensorProto.FLOAT, None)], inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def _engine_model(layers):
    from gru_engine import GRU, Model

    return Model(layers=tuple(GRU(W=W, R=R, B=B, linear_before_reset=1,
                                  direction="bidirectional" if W.shape[0] == 2 else "forward") for W, R, B in layers))


def _torch_model(layers):
    import torch

    from converters.conventions import onnx_gru_to_torch

    W0, R0, _ = layers[0]
    D, I, H = W0.shape[0], W0.shape[2], R0.shape[2]
    net = torch.nn.GRU(I, H, num_layers=len(layers), bidirectional=D == 2, batch_first=True)
    with torch.no_grad():
        for k, (W, R, B) in enumerate(layers):
            for d in range(D):
                sfx = f"l{k}" + ("_reverse" if d == 1 else "")
                for name, v in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), onnx_gru_to_torch(W[d], R[d], B[d])):
                    getattr(net, f"{name}_{sfx}").copy_(torch.from_numpy(np.ascontiguousarray(v)))
    return net.eval()


def _ort_session(proto, threads):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])


def contenders(layers, Bn, T, threads, have):
    """{name: (callable, output getter)} for one configuration; the outputs are (B, T, F)."""
    I = layers[0][0].shape[2]
    x = np.random.default_rng(1).standard_normal((Bn, T, I)).astype(np.float32)
    out = {}
    model = _engine_model(layers)
    from gru_engine import api

    out["engine"] = lambda: api.run(model, x)[0]
    if have["ort"]:
        sess = _ort_session(_onnx_model(layers), threads)
        xt = np.ascontiguousarray(x.transpose(1, 0, 2))
        name = sess.get_outputs()[0].name

        def ort_run():
            return sess.run([name], {"X": xt})[0]

        out["ort"] = ort_run
    if have["torch"]:
        import torch

        net = _torch_model(layers)
        xx = torch.from_numpy(x)

        def torch_run():
            with torch.no_grad():
                return net(xx)[0]

        out["torch"] = torch_run
    return out


def _as_bt(name, y):
    y = np.asarray(y.numpy() if hasattr(y, "numpy") else y)
    return y.transpose(1, 0, 2) if name == "ort" else y


# --------------------------------------------------------------------------- timing


def _block_size(fn, target_s):
    t = time.perf_counter()
    fn()
    dt = time.perf_counter() - t
    return max(1, int(target_s / max(dt, 1e-7)))


def time_round_robin(fns: dict, repeats: int, target_s=0.02, settle_s=0.05) -> dict:
    """Median seconds per call of each function, sampled in turn; plus the spread.

    ``settle_s`` of sleep before each sample: onnxruntime's and torch's (and numba's) pool
    threads spin for a while after a call and would slow whichever contender runs next.
    """
    for fn in fns.values():
        fn()  # warm-up: compile, allocate, page in
    sizes = {k: _block_size(fn, target_s) for k, fn in fns.items()}
    samples = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            time.sleep(settle_s)  # let the previous contender's spinning pool threads go idle
            n = sizes[k]
            t = time.perf_counter()
            for _ in range(n):
                fn()
            samples[k].append((time.perf_counter() - t) / n)
    res = {}
    for k, v in samples.items():
        a = np.asarray(v)
        med = float(np.median(a))
        q1, q3 = np.percentile(a, [25, 75])
        res[k] = {"median_s": med, "spread": float((q3 - q1) / med) if med > 0 else 0.0, "samples": len(a)}
    return res


def sgemm_peak(threads, n=2048, repeats=7) -> float:
    """float32 GFLOP/s of NumPy's BLAS on an n x n x n product (best of ``repeats``)."""
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    b = a.T.copy()
    c = np.empty_like(a)
    np.matmul(a, b, out=c)
    best = min(_timed(lambda: np.matmul(a, b, out=c)) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def set_threads(n, have):
    import gru_engine

    gru_engine.set_num_threads(n)
    if have["torch"]:
        import torch

        torch.set_num_threads(n)


def gflops(layers, Bn, T):
    f = 0
    for W, R, _ in layers:
        D, H3, I = W.shape
        f += 2 * D * Bn * T * H3 * (I + R.shape[2])
    return f / 1e9


# --------------------------------------------------------------------------- sections


def bench_sequences(grid, thread_counts, repeats, have, log):
    rows = []
    for n in thread_counts:
        set_threads(n, have)
        peak = sgemm_peak(n)
        log(f"[threads={n}] float32 sgemm peak (NumPy BLAS, 2048^3): {peak:.1f} GFLOP/s")
        first = len(rows)
        for label, layers, Bn, T in grid:
            fns = contenders(layers, Bn, T, n, have)
            ref = _as_bt("engine", fns["engine"]())
            diffs = {k: float(np.abs(_as_bt(k, fns[k]()) - ref).max()) for k in fns if k != "engine"}
            load0 = os.getloadavg()[0]
            res = time_round_robin(fns, repeats)
            load1 = os.getloadavg()[0]
            gf = gflops(layers, Bn, T)
            row = {"threads": n, "label": label, "B": Bn, "T": T, "gflop": gf, "peak_gflops": peak,
                   "load": max(load0, load1), "max_abs_diff": diffs}
            for k, r in res.items():
                row[f"{k}_ms"] = r["median_s"] * 1e3
                row[f"{k}_spread"] = r["spread"]
                row[f"{k}_gflops"] = gf / r["median_s"]
            for k in ("ort", "torch"):
                if f"{k}_ms" in row:
                    row[f"x_{k}"] = row[f"{k}_ms"] / row["engine_ms"]
            row["noisy"] = any(r["spread"] > SPREAD_FLAG for r in res.values())
            rows.append(row)
            log(_fmt_seq(row))
        again = sgemm_peak(n)  # measured again after the section: the best of both counts
        if again > peak:
            log(f"[threads={n}] sgemm peak measured again: {again:.1f} GFLOP/s")
            for r in rows[first:]:
                r["peak_gflops"] = again
    return rows


def _fmt_seq(r):
    s = f"threads={r['threads']} {r['label']:<24} engine {r['engine_ms']:9.2f} ms {r['engine_gflops']:6.1f} GF/s"
    for k in ("ort", "torch"):
        if f"{k}_ms" in r:
            s += f" | {k} {r[f'{k}_ms']:9.2f} ms x{r[f'x_{k}']:.2f}"
    return s + (" [noisy]" if r["noisy"] else "")


def bench_chunks(hidden_sizes, repeats, have, log, chunk=64):
    """Per-step time of Stream.run on 64-step chunks vs onnxruntime's 64-step call (1 thread)."""
    from gru_engine import GRU, Model

    rows = []
    set_threads(1, have)
    for H in hidden_sizes:
        W, R, B = _weights(H, H)
        model = Model(layers=(GRU(W=W, R=R, B=B, linear_before_reset=1),))
        try:
            stream = model.stream(batch_size=1)
        except (AttributeError, NotImplementedError):
            return rows
        x = np.random.default_rng(1).standard_normal((1, chunk, H)).astype(np.float32)
        fns = {"engine": lambda: stream.run(x)}
        if have["ort"]:
            sess = _ort_session(_onnx_model([(W, R, B)]), 1)
            xt = np.ascontiguousarray(x.transpose(1, 0, 2))
            fns["ort"] = lambda: sess.run(None, {"X": xt})
        res = time_round_robin(fns, repeats)
        row = {"H": H, "chunk": chunk, "engine_us_per_step": res["engine"]["median_s"] / chunk * 1e6}
        if "ort" in res:
            row["ort_us_per_step"] = res["ort"]["median_s"] / chunk * 1e6
            row["x_ort"] = row["ort_us_per_step"] / row["engine_us_per_step"]
        rows.append(row)
        log(f"chunk {chunk} H={H}: engine {row['engine_us_per_step']:.2f} us/step"
            + (f", ort {row['ort_us_per_step']:.2f} us/step x{row['x_ort']:.2f}" if "x_ort" in row else ""))
    return rows


_COLD_ENGINE = """
import time; t0 = time.perf_counter()
import numpy as np, gru_engine
m = gru_engine.load({path!r})
y, h = m.run(np.ones((1, 16, {I}), np.float32))
print(time.perf_counter() - t0)
"""
_COLD_ORT = """
import time; t0 = time.perf_counter()
import numpy as np, onnxruntime as ort
s = ort.InferenceSession({path!r}, providers=["CPUExecutionProvider"])
y = s.run(None, {{"X": np.ones((16, 1, {I}), np.float32)}})
print(time.perf_counter() - t0)
"""
_COLD_TORCH = """
import time; t0 = time.perf_counter()
import torch
net = torch.nn.GRU({I}, {H}, batch_first=True)
net.load_state_dict(torch.load({path!r}, weights_only=True))
with torch.no_grad():
    y = net(torch.ones(1, 16, {I}))
print(time.perf_counter() - t0)
"""


def _child(code, env, log):
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        log(f"cold-start child failed: {p.stderr.strip().splitlines()[-1:]}")
        return None
    return {"inside_s": float(p.stdout.strip().splitlines()[-1]), "wall_s": wall}


def bench_cold_start(have, log, repeats=3, empty_cache=True, H=128):
    import gru_engine

    W, R, B = _weights(H, H)
    tmp = tempfile.mkdtemp(prefix="gru_cold_")
    onnx_path = os.path.join(tmp, "gru.onnx")
    with open(onnx_path, "wb") as f:
        f.write(_onnx_model([(W, R, B)]).SerializeToString())
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("GRU_ENGINE_NUM_THREADS", None)
    # Bytecode as an installed package has it (pip compiles .pyc files at install): with
    # PYTHONDONTWRITEBYTECODE=1 (set on some machines) every start would compile the engine's
    # sources again (~75 ms). The untimed first run below writes them, into the temp folder.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = os.path.join(tmp, "pycache")
    rows = {}
    cache = os.path.join(tmp, "numba_cache")
    env_e = dict(env, NUMBA_CACHE_DIR=cache)
    code = _COLD_ENGINE.format(path=onnx_path, I=H)
    if empty_cache:
        rows["engine, empty numba cache"] = _child(code, env_e, log)
    else:  # quick: the package's own cache (filled by `gru-engine warmup` or earlier runs)
        env_e = env
        _child(code, env_e, log)
    warm = [r for r in (_child(code, env_e, log) for _ in range(repeats)) if r]
    rows["engine, warm numba cache"] = _median_run(warm)
    _ = gru_engine

    def timed(code):  # one untimed run first: it writes the bytecode, as for the engine
        _child(code, env, log)
        return _median_run([r for r in (_child(code, env, log) for _ in range(repeats)) if r])

    if have["ort"]:
        rows["onnxruntime"] = timed(_COLD_ORT.format(path=onnx_path, I=H))
    if have["torch"]:
        import torch

        from converters.conventions import onnx_gru_to_torch

        pt = os.path.join(tmp, "gru.pt")
        sd = dict(zip(("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"),
                      (torch.from_numpy(np.ascontiguousarray(a)) for a in onnx_gru_to_torch(W[0], R[0], B[0]))))
        torch.save(sd, pt)
        rows["torch"] = timed(_COLD_TORCH.format(path=pt, I=H, H=H))
    for k, v in rows.items():
        if v:
            log(f"cold start {k}: {v['inside_s']:.2f} s import+load+first result ({v['wall_s']:.2f} s with interpreter start)")
    return rows


def _median_run(runs):
    if not runs:
        return None
    return {"inside_s": float(np.median([r["inside_s"] for r in runs])), "wall_s": float(np.median([r["wall_s"] for r in runs])),
            "runs": len(runs)}


# --------------------------------------------------------------------------- report


def environment(thread_counts) -> dict:
    import numba
    import step_latency  # bench/ is on sys.path (above): the versions and CPU, read one way

    info = step_latency.environment()
    info["threading_layer"] = None
    try:
        from threadpoolctl import threadpool_info

        info["blas"] = [
            f"{os.path.basename(i['filepath'])} {i.get('internal_api')} {i.get('version')} kernel={i.get('architecture')} "
            f"threads={i.get('num_threads')}"
            for i in threadpool_info() if i.get("user_api") == "blas"
        ]
    except ImportError:
        info["blas"] = ["threadpoolctl not installed"]
    try:
        info["threading_layer"] = numba.threading_layer()
    except ValueError:
        pass
    info["unset_env"] = _UNSET
    return info


def _f(v, fmt="{:.2f}"):
    return "" if v is None else fmt.format(v)


def to_markdown(seq, chunks, steps, cold, env, command, busy) -> str:
    L = ["# gru-engine vs onnxruntime vs PyTorch", "", f"Command: `{command}`", ""]
    L.append(f"Machine: {env['cpu']}, {env['cores']} cores; Python {env['python']}, numpy {env['numpy']}, "
             f"numba {env['numba']} (threading layer {env['threading_layer']}), onnxruntime {env['onnxruntime']}, "
             f"torch {env['torch']}.")
    L.append("BLAS: " + "; ".join(env["blas"]) + ". OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE "
             + (f"were set ({env['unset_env']}) and were unset for this run." if env["unset_env"] else "were not set."))
    L.append("")
    L.append("Float32, same weights, outputs checked to agree before timing. Round-robin, medians; "
             "ratio = other's time / engine's time (> 1: the engine is faster). GF/s counts 2 flops per "
             "multiply-add of the input and recurrent products.")
    L.append("")
    if busy:
        L += [f"**Machine busy:** {busy}", ""]
    if seq:
        L += ["## Whole sequences", "",
              "| threads | model (T=256, I=H) | B | engine ms | GF/s | ort ms | x ort | torch ms | x torch | max diff | note |",
              "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in seq:
            note = []
            if r["noisy"]:
                note.append("noisy")
            if r["B"] == 64 and "H=512" in r["label"]:
                note.append(f"{100 * r['engine_gflops'] / r['peak_gflops']:.0f}% of sgemm peak {r['peak_gflops']:.0f} GF/s")
            L.append(f"| {r['threads']} | {r['label']} | {r['B']} | {r['engine_ms']:.2f} | {r['engine_gflops']:.1f} | "
                     f"{_f(r.get('ort_ms'))} | {_f(r.get('x_ort'))} | {_f(r.get('torch_ms'))} | {_f(r.get('x_torch'))} | "
                     f"{max(r['max_abs_diff'].values()) if r['max_abs_diff'] else 0:.1e} | {', '.join(note)} |")
        L.append("")
    if steps:
        L += ["## Streaming steps (batch 1, I = H, from `bench/step_latency.py`)", "",
              "| H | engine us | ort 1t us | x ort | torch GRUCell us | x GRUCell | nn.GRU us | x nn.GRU |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in steps:
            L.append(f"| {r['H']} | {_f(r['engine_us'])} | {_f(r['ort1_us'])} | {_f(r['ratio_ort1'], '{:.1f}')} | "
                     f"{_f(r['torch_cell_us'])} | {_f(r['ratio_torch_cell'], '{:.1f}')} | {_f(r['torch_gru_us'])} | "
                     f"{_f(r['ratio_torch_gru'], '{:.1f}')} |")
        L.append("")
    if chunks:
        L += ["## Chunks of 64 steps (batch 1, I = H, 1 thread): per-step time", "",
              "| H | engine `Stream.run` us/step | ort 64-step call us/step | x ort |", "|---:|---:|---:|---:|"]
        for r in chunks:
            L.append(f"| {r['H']} | {r['engine_us_per_step']:.2f} | {_f(r.get('ort_us_per_step'))} | {_f(r.get('x_ort'))} |")
        L.append("")
    if cold:
        L += ["## Start-up (fresh process: import + load the model file + first result, H=128, 16 steps)", "",
              "Bytecode cached, as after `pip install` (each contender's untimed first run writes it; "
              "PYTHONDONTWRITEBYTECODE is unset for these runs).", "",
              "| contender | import+load+first s | with interpreter start s |", "|---|---:|---:|"]
        for k, v in cold.items():
            if v:
                L.append(f"| {k} | {v['inside_s']:.2f} | {v['wall_s']:.2f} |")
        L.append("")
    return "\n".join(L) + "\n"


def plot(seq, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    threads = sorted({r["threads"] for r in seq})
    fig, axes = plt.subplots(1, len(threads), figsize=(6.5 * len(threads), 4.2), squeeze=False)
    for ax, n in zip(axes[0], threads):
        rows = [r for r in seq if r["threads"] == n]
        labels = [f"{r['label']}\nB={r['B']}" for r in rows]
        xs = np.arange(len(rows))
        for off, k, c in ((-0.2, "ort", "tab:blue"), (0.2, "torch", "tab:orange")):
            vals = [r.get(f"x_{k}", np.nan) for r in rows]
            ax.bar(xs + off, vals, 0.4, label=f"{k} time / engine time", color=c)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(xs)
        ax.set_xticklabels(labels, fontsize=6, rotation=60, ha="right")
        ax.set_yscale("log")
        ax.set_title(f"whole sequences, {n} thread{'s' if n > 1 else ''} (> 1: engine faster)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: H in {64, 128}, B in {1, 16}, 1 thread, 3 repeats")
    ap.add_argument("--threads", default=None, help="comma-separated thread counts (default 1,2; quick: 1)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--out", default=os.path.join(BENCH, "results"))
    ap.add_argument("--no-steps", action="store_true", help="skip the streaming sections")
    ap.add_argument("--no-cold", action="store_true", help="skip the start-up section")
    args = ap.parse_args(argv)
    print("OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE: "
          + (f"unset for this benchmark (were {_UNSET})" if _UNSET else "not set in the environment"))
    have = {}
    for k, mod in (("ort", "onnxruntime"), ("torch", "torch")):
        try:
            __import__(mod)
            have[k] = True
        except ImportError:
            have[k] = False
            print(f"{mod} not installed: its columns stay empty")
    q = args.quick
    threads = [int(t) for t in (args.threads or ("1" if q else "1,2")).split(",")]
    reps = args.repeats or (3 if q else 7)
    Hs, Bs = ((64, 128), (1, 16)) if q else ((64, 128, 512), (1, 16, 64))
    grid = [(f"H={H}", [_weights(H, H)], Bn, 256) for H in Hs for Bn in Bs]
    if not q:
        grid.append(("2-layer bidir H=256", [_weights(256, 256, 2), _weights(512, 256, 2, seed=1)], 16, 256))
    load_start = os.getloadavg()
    t0 = time.time()
    env = environment(threads)
    for line in env["blas"]:
        print("BLAS:", line)
    seq = bench_sequences(grid, threads, reps, have, print)
    steps, chunks = [], []
    if not args.no_steps:
        try:
            import step_latency

            steps = step_latency.measure((32, 128) if q else (32, 64, 128, 256), input_sizes=("H",),
                                         repeats=5 if q else 15, ort_default=False, with_torch=have["torch"], log=print)
        except (ImportError, AttributeError) as e:
            print(f"streaming step benchmark unavailable: {e}")
        chunks = bench_chunks((32, 128), reps, have, print)
    cold = {} if args.no_cold else bench_cold_start(have, print, repeats=2 if q else 3, empty_cache=not q)
    load_end = os.getloadavg()
    env = environment(threads)  # after set_num_threads: the BLAS thread counts in use
    cores = os.cpu_count() or 1
    busy = []
    peak_load = max([load_start[0], load_end[0]] + [r["load"] for r in seq])
    if peak_load > 0.5 * cores + 1:
        busy.append(f"load average reached {peak_load:.1f} on {cores} cores (others were running); absolute times "
                    "are inflated and ratios noisier than on an idle machine")
    noisy = [r for r in seq if r["noisy"]]
    if noisy:
        busy.append(f"{len(noisy)} of {len(seq)} rows had a sample spread above {SPREAD_FLAG:.0%} (marked 'noisy')")
    cmd = "python bench/compare.py" + (" --quick" if q else "") + (f" --threads {args.threads}" if args.threads else "") \
        + (f" --repeats {args.repeats}" if args.repeats else "")
    md = to_markdown(seq, chunks, steps, cold, env, cmd, "; ".join(busy))
    md += f"\nRun took {time.time() - t0:.0f} s; load average at start {load_start[0]:.1f}, at end {load_end[0]:.1f}.\n"
    os.makedirs(args.out, exist_ok=True)
    stem = "compare_quick" if q else "compare"
    png = plot(seq, os.path.join(args.out, stem + ".png"))
    if png:
        md += f"\n![ratios]({os.path.basename(png)})\n"
    with open(os.path.join(args.out, stem + ".md"), "w") as f:
        f.write(md)
    with open(os.path.join(args.out, stem + ".json"), "w") as f:
        json.dump({"sequences": seq, "steps": steps, "chunks": chunks, "cold": cold, "env": env, "busy": busy}, f, indent=1)
    print(md)
    print(f"written to {os.path.join(args.out, stem + '.md')}")


if __name__ == "__main__":
    main()

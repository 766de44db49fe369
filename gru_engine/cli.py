"""The ``gru-engine`` command line (also ``python -m gru_engine``).

Subcommands::

    gru-engine info MODEL                          layers, shapes, parameter count
    gru-engine run MODEL --input x.npy --output y.npy [--lengths l.npy] [--batch-size N]
    gru-engine validate MODEL [--against onnxruntime|torch|keras] [--input x.npy] [--atol 1e-5]
    gru-engine demo [--plot forecast.png]

Other modules add subcommands: each name in :data:`SUBCOMMAND_MODULES` that can be
imported must expose ``add_parser(subparsers)``, which registers its subparser with
``set_defaults(func=...)``; ``func(args)`` returns the exit status (None means 0).

Errors of the engine (:class:`gru_engine.errors.GRUEngineError`) and unreadable files print
one line ``gru-engine: error: ...`` and exit with status 2. ``validate`` exits with status 1
when the engine and the reference differ by more than the tolerance.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import time

import numpy as np

from .errors import GRUEngineError, UnsupportedError

PROG = "gru-engine"

#: Optional modules that add subcommands (skipped when the module itself is absent).
SUBCOMMAND_MODULES = ["gru_engine.cli_convert", "gru_engine.cli_perf", "gru_engine.cli_stream"]

FORMATS = ("onnx", "torch", "keras")


class CLIError(GRUEngineError, ValueError):
    """A command-line argument or an input file given on the command line is unusable."""


# =========================================================================== helpers


def load_model(path: str, fmt: str | None = None):
    """Load ``path`` as a :class:`gru_engine.Model`: any format through
    ``converters.load_any`` when it exists, else ONNX through :func:`gru_engine.load`."""
    from .errors import ModelFileError

    if not os.path.exists(path):
        raise ModelFileError(f"model file {path!r} must exist, got no such file or directory")
    try:
        import converters

        load_any = getattr(converters, "load_any", None)
    except ImportError:
        load_any = None
    if load_any is not None:
        return load_any(path, fmt=fmt)
    if fmt not in (None, "onnx"):
        raise UnsupportedError(
            f"--format must be 'onnx' in this installation (converters.load_any is missing), got {fmt!r}"
        )
    from . import load

    return load(path)


def is_onnx_source(path: str, fmt: str | None) -> bool:
    if fmt is not None:
        return fmt == "onnx"
    return path.lower().endswith(".onnx")


def load_array(path: str, what: str, *, mmap: bool = False, allow_npz: bool = False):
    """``np.load`` without pickles; unreadable files become :class:`CLIError`."""
    if not os.path.isfile(path):
        raise CLIError(f"{what} file {path!r} must exist, got no such file")
    try:
        a = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except ValueError as e:
        raise CLIError(f"{what} file {path!r} must hold a numeric .npy array (no Python objects), got: {e}") from None
    except (OSError, EOFError) as e:
        raise CLIError(f"{what} file {path!r} must be a .npy file, got: {e}") from None
    if isinstance(a, np.lib.npyio.NpzFile):
        if allow_npz:
            try:
                with a:
                    return {k: a[k] for k in a.files}
            except ValueError as e:
                raise CLIError(f"{what} file {path!r} must hold numeric arrays (no Python objects), got: {e}") from None
        a.close()
        raise CLIError(f"{what} file {path!r} must be a .npy file holding one array, got an .npz archive")
    return a


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split("\n")).strip() or type(e).__name__


class Progress:
    """A text progress bar on stderr; on a non-terminal only the final line is written."""

    def __init__(self, total: int, label: str, enabled: bool = True, width: int = 30):
        self.total, self.label, self.width = max(total, 1), label, width
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()
        self.t0 = time.perf_counter()

    def update(self, done: int) -> None:
        if not self.enabled or (not self.tty and done < self.total):
            return
        frac = done / self.total
        n = int(round(frac * self.width))
        line = (
            f"{self.label} [{'#' * n}{'.' * (self.width - n)}] {done}/{self.total} batches "
            f"{100 * frac:3.0f}%  {time.perf_counter() - self.t0:.1f} s"
        )
        end = "\n" if done >= self.total else ""
        sys.stderr.write(("\r" if self.tty else "") + line + end)
        sys.stderr.flush()


# =========================================================================== info


def cmd_info(args) -> int:
    model = load_model(args.model, args.format)
    print(f"file: {args.model}")
    print(model.summary())
    shapes = model.state_shapes
    if shapes:
        Hs = {H for _, H in shapes}
        total = sum(D for D, _ in shapes)
        if len(Hs) == 1:
            print(f"  state h_n: ({total}, B, {Hs.pop()})  [num_layers*num_directions, batch, hidden]")
        else:
            print("  state h_n: " + ", ".join(f"({D}, B, {H})" for D, H in shapes) + "  [one per GRU layer]")
    return 0


# =========================================================================== run


def cmd_run(args) -> int:
    from numpy.lib.format import open_memmap

    model = load_model(args.model, args.format)
    x = load_array(args.input, "--input", mmap=True)
    if x.ndim < 2 or x.shape[0] == 0:
        doc = "(batch, seq_len) token ids" if model.takes_tokens else f"(batch, seq_len, {model.input_size})"
        raise CLIError(f"--input must hold an array of shape {doc} with batch >= 1, got {x.shape}")
    n = x.shape[0]
    lengths = None
    if args.lengths is not None:
        lengths = np.asarray(load_array(args.lengths, "--lengths"))
        if lengths.shape != (n,):
            raise CLIError(f"--lengths must have shape ({n},) (one length per input row), got {lengths.shape}")
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
    bs = args.batch_size
    nb = (n + bs - 1) // bs
    bar = Progress(nb, "run", enabled=not args.quiet)
    out = None
    states = []
    t0 = time.perf_counter()
    for i, s in enumerate(range(0, n, bs)):
        xb = np.asarray(x[s : s + bs])
        lb = None if lengths is None else lengths[s : s + bs]
        y, h_n = model.run(xb, lengths=lb)
        if out is None:
            out = open_memmap(args.output, mode="w+", dtype=y.dtype, shape=(n,) + y.shape[1:])
        out[s : s + len(xb)] = y
        if args.final_state is not None and h_n is not None:
            states.append(h_n)
        bar.update(i + 1)
    out.flush()
    shape, dtype = out.shape, out.dtype
    del out
    if args.final_state is not None:
        if not states:
            raise CLIError("--final-state was given, but the model has no GRU layer")
        if isinstance(states[0], list):
            np.savez(args.final_state, **{f"h_n_{k}": np.concatenate([s[k] for s in states], axis=1) for k in range(len(states[0]))})
        else:
            np.save(args.final_state, np.concatenate(states, axis=1))
    if not args.quiet:
        dt = time.perf_counter() - t0
        print(f"wrote {args.output}: {shape} {dtype} ({n} sequences in {dt:.2f} s)", file=sys.stderr)
    return 0


# =========================================================================== validate


def _ort_session(source):
    try:
        import onnxruntime as ort
    except ImportError:
        raise CLIError(
            "validate --against onnxruntime needs onnxruntime: pip install 'gru-engine[ort]'"
        ) from None
    so = ort.SessionOptions()
    so.log_severity_level = 3
    data = source if isinstance(source, bytes) else open(source, "rb").read()
    try:
        return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        raise CLIError(f"onnxruntime must accept the model, got {type(e).__name__}: {_one_line(e)}") from None


_ORT_INT = {"tensor(int32)": np.int32, "tensor(int64)": np.int64}
_ORT_FLOAT = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16}


def random_feeds(model, sig, sess, batch: int, steps: int, seed: int) -> dict:
    """Random inputs in the graph's own layout for every graph input ``sig`` knows about.

    Fixed dimensions declared by the graph win over ``batch`` / ``steps``.
    """
    rng = np.random.default_rng(seed)
    specs = {i.name: i for i in sess.get_inputs()}
    B, T = batch, steps
    if sig.x in specs:
        dims = specs[sig.x].shape
        bi, ti = (0, 1) if sig.x_layout == "btf" else (1, 0)
        if len(dims) > max(bi, ti):
            B = dims[bi] if isinstance(dims[bi], int) and dims[bi] > 0 else B
            T = dims[ti] if isinstance(dims[ti], int) and dims[ti] > 0 else T
    feeds = {}
    for name, spec in specs.items():
        if name == sig.x:
            if model.takes_tokens:
                x = rng.integers(0, model.layers[0].num_embeddings, (B, T)).astype(_ORT_INT.get(spec.type, np.int64))
            else:
                x = rng.standard_normal((B, T, model.input_size)).astype(_ORT_FLOAT.get(spec.type, np.float32))
            feeds[name] = x if sig.x_layout == "btf" else np.ascontiguousarray(np.swapaxes(x, 0, 1))
        elif name == sig.lengths:
            feeds[name] = rng.integers(1, T + 1, B).astype(_ORT_INT.get(spec.type, np.int64))
        elif name == sig.initial_state:
            total = sum(D for D, _ in model.state_shapes)
            H = model.state_shapes[0][1]
            s = (0.5 * rng.standard_normal((total, B, H))).astype(_ORT_FLOAT.get(spec.type, np.float32))
            feeds[name] = s if sig.state_layout == "dbh" else np.ascontiguousarray(np.swapaxes(s, 0, 1))
        else:
            raise CLIError(
                f"graph input {name!r} is not the sequence, lengths or initial state; give every graph "
                f"input with --input FILE.npz (one array per input name, in the graph's layout)"
            )
    return feeds


def compare(name: str, got: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """``(max abs error, max abs error / max |ref|)``; inf on a shape mismatch or NaN disagreement."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if got.shape != ref.shape:
        print(f"  {name}: shape {got.shape} differs from the reference's {ref.shape}")
        return float("inf"), float("inf")
    if got.size == 0:
        return 0.0, 0.0
    nan_g, nan_r = np.isnan(got), np.isnan(ref)
    if np.any(nan_g != nan_r):
        return float("inf"), float("inf")
    d = np.abs(np.where(nan_r, 0.0, got - ref))
    err = float(d.max())
    scale = float(np.abs(np.where(nan_r, 0.0, ref)).max())
    return err, err / scale if scale > 0 else (0.0 if err == 0 else float("inf"))


def validate_onnxruntime(model, path: str, fmt: str | None, x_given, batch: int, steps: int, seed: int, atol: float) -> bool:
    """Run the engine and onnxruntime on the same inputs; print the error per output."""
    from converters.onnx_io import from_onnx

    from . import save

    tmpdir = None
    try:
        onnx_path = path
        note = ""
        if not is_onnx_source(path, fmt) or model.dtype != np.float32:
            # onnxruntime runs the engine's own ONNX export of the model (float32: it refuses double GRUs)
            tmpdir = tempfile.mkdtemp(prefix="gru_engine_validate_")
            onnx_path = os.path.join(tmpdir, "model.onnx")
            save(model.astype(np.float32), onnx_path)
            note = " (onnxruntime runs the engine's float32 ONNX export)"
        _, sig = from_onnx(onnx_path, return_signature=True)
        sess = _ort_session(onnx_path)
        if x_given is None:
            feeds = random_feeds(model, sig, sess, batch, steps, seed)
            what = "random inputs " + ", ".join(f"{k} {v.shape}" for k, v in feeds.items())
        elif isinstance(x_given, dict):
            feeds = {k: np.ascontiguousarray(v) for k, v in x_given.items()}
            missing = [i.name for i in sess.get_inputs() if i.name not in feeds]
            if missing:
                raise CLIError(f"--input archive must hold every graph input, missing {missing}")
            what = "given inputs " + ", ".join(f"{k} {v.shape}" for k, v in feeds.items())
        else:
            x = np.ascontiguousarray(x_given)
            spec = {i.name: i for i in sess.get_inputs()}[sig.x]
            if model.takes_tokens:
                x = x.astype(_ORT_INT.get(spec.type, np.int64))
            else:
                x = x.astype(_ORT_FLOAT.get(spec.type, np.float32))
            feeds = {sig.x: x if sig.x_layout == "btf" else np.ascontiguousarray(np.swapaxes(x, 0, 1))}
            others = [i.name for i in sess.get_inputs() if i.name != sig.x]
            if others:
                extra = random_feeds(model, sig, sess, x.shape[0], x.shape[1], seed)
                feeds.update({k: extra[k] for k in others})
            what = f"given input {sig.x} {x.shape}"
        y, h_n = model.run(**sig.to_model_args(feeds))
        ours = sig.from_model_outputs(y, h_n, model)
        names = [name for name, _, _ in sig.outputs]
        try:
            theirs = sess.run(names, feeds)
        except Exception as e:  # onnxruntime's own exception types
            raise CLIError(f"onnxruntime must run the inputs, got {type(e).__name__}: {_one_line(e)}") from None
        print(f"engine vs onnxruntime{note}, {what}:")
        ok = True
        for name, a, b in zip(names, ours, theirs):
            err, rel = compare(name, a, b)
            good = err <= atol
            ok &= good
            print(f"  {name:<16s} {str(tuple(np.shape(b))):<16s} max abs err {err:.3e}  rel {rel:.3e}  {'ok' if good else 'FAIL'}")
        print(f"{'PASS' if ok else 'FAIL'}: tolerance atol={atol:g}")
        return ok
    finally:
        if tmpdir is not None:
            import shutil

            shutil.rmtree(tmpdir, ignore_errors=True)


def cmd_validate(args) -> int:
    x = None
    if args.input is not None:
        x = load_array(args.input, "--input", allow_npz=args.against == "onnxruntime")
    if args.against in ("torch", "keras"):
        try:
            import converters

            validate_against = getattr(converters, "validate_against", None)
        except ImportError:
            validate_against = None
        if validate_against is None:
            raise UnsupportedError(
                f"validate --against {args.against} needs converters.validate_against, which this installation lacks"
            )
        kw = {}
        if args.config is not None:
            if args.against != "keras":
                raise UnsupportedError(f"--config applies to --against keras only, got --against {args.against}")
            kw["config"] = args.config
        report = validate_against(args.model, args.against, x=None if x is None else np.asarray(x), atol=args.atol, **kw)
        print(f"engine vs {args.against} ({'given' if x is not None else 'default random'} input):")
        ok = True
        for name, r in report.items():
            if isinstance(r, dict):
                good = bool(r.get("ok", False)) and float(r.get("max_abs", np.inf)) <= args.atol
                ok &= good
                print(f"  {name:<16s} max abs err {float(r.get('max_abs', np.nan)):.3e}  "
                      f"rel {float(r.get('max_rel', np.nan)):.3e}  {'ok' if good else 'FAIL'}")
            else:
                print(f"  {name}: {r}")
        if not any(isinstance(r, dict) for r in report.values()):
            ok = False
        print(f"{'PASS' if ok else 'FAIL'}: tolerance atol={args.atol:g}")
        return 0 if ok else 1
    model = load_model(args.model, args.format)
    ok = validate_onnxruntime(model, args.model, args.format, x, args.batch, args.steps, args.seed, args.atol)
    return 0 if ok else 1


# =========================================================================== demo


def _median_time(fn, repeats: int) -> float:
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def cmd_demo(args) -> int:
    from . import data, load

    model_path = data.path(data.DEMO_MODEL)
    d = data.load_demo_data()
    seg, years, C = d["series"], d["years"], int(d["context"])
    mu, sd = float(d["diff_mean"]), float(d["diff_std"])
    model = load(model_path)
    x = ((np.diff(seg) - mu) / sd).astype(np.float32)[None, :, None]  # (1, N-1, 1)
    steps = x.shape[1]
    y, _ = model.run(x)
    o = y[0, :, 0].astype(np.float64)
    # o[k] predicts the change seg[k+2] - seg[k+1]: forecasts of seg[2:]; score seg[C:]
    pred = (seg[1:-1] + o[:-1] * sd + mu)[C - 2 :]
    naive = seg[1:-1][C - 2 :]
    actual = seg[2:][C - 2 :]
    t_scored = years[C:]

    def err(p):
        e = p - actual
        return float(np.sqrt(np.mean(e**2))), float(np.mean(np.abs(e)))

    rmse, mae = err(pred)
    rmse_n, mae_n = err(naive)
    print("gru-engine demo: one-step-ahead forecast of the weekly Mauna Loa CO2 record")
    print(f"  data  : {str(d['source'])}")
    print(f"  model : {os.path.basename(model_path)}, " + " + ".join(layer.describe() for layer in model.layers)
          + f", {model.param_count():,d} parameters")
    print(f"  held out: {len(actual)} weeks, {t_scored[0]:.1f}-{t_scored[-1]:.1f} (never seen in training),"
          f" after {C} weeks of warm-up")
    print("forecast error (ppm)          RMSE     MAE")
    print(f"  GRU (gru-engine)          {rmse:7.3f} {mae:7.3f}")
    print(f"  naive: last value         {rmse_n:7.3f} {mae_n:7.3f}")
    print(f"  improvement over naive    {100 * (1 - rmse / rmse_n):6.1f}% {100 * (1 - mae / mae_n):6.1f}%")

    # streaming, if this installation has it
    stream = None
    try:
        stream = model.stream(batch_size=1)
    except (ImportError, AttributeError, NotImplementedError):
        pass
    if stream is not None:
        ys = np.empty(steps, np.float64)
        for t in range(steps):
            ys[t] = np.asarray(stream.step(x[:, t])).reshape(-1)[0]
        print(f"streaming: step by step (model.stream) vs whole sequence, max abs diff {np.abs(ys - o).max():.2e}")

    x1 = np.ascontiguousarray(x[:, :1])
    reps_step = max(1, args.repeats)
    reps_seq = max(3, reps_step // 60)
    t_seq = _median_time(lambda: model.run(x), reps_seq) / steps
    if stream is not None:
        one = np.ascontiguousarray(x[:, 0])
        buf = np.empty((1, model.output_size), model.dtype)
        t_step = _median_time(lambda: stream.step(one, out=buf), reps_step)
        step_how = "stream.step"
    else:
        t_step = _median_time(lambda: model.run(x1), reps_step)
        step_how = "run, 1 step"
    rows = [("gru-engine", t_seq, t_step, step_how)]
    try:
        import onnxruntime as ort
    except ImportError:
        ort = None
        print("agreement with onnxruntime: skipped (onnxruntime is not installed: pip install 'gru-engine[ort]')")
    if ort is not None:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        sess = ort.InferenceSession(model_path, so, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        (yr,) = sess.run(["y"], {name: x})
        diff = float(np.abs(yr[0, :, 0] - y[0, :, 0]).max())
        print(f"agreement with onnxruntime (same file): max abs diff {diff:.2e} over {steps} steps")
        r_seq = _median_time(lambda: sess.run(["y"], {name: x}), reps_seq) / steps
        r_step = _median_time(lambda: sess.run(["y"], {name: x1}), reps_step)
        rows.append(("onnxruntime", r_seq, r_step, "run, 1 step"))
    print(f"time per step (median; whole sequence of {steps} steps / one-step call):")
    for who, a, b, how in rows:
        print(f"  {who:<12s} {a * 1e6:8.2f} us/step in sequence   {b * 1e6:8.2f} us per one-step call ({how})")

    if args.plot:
        plot_forecast(args.plot, t_scored, actual, pred, naive, rmse, rmse_n)
        print(f"wrote {args.plot}")
    return 0


def plot_forecast(path, t, actual, pred, naive, rmse, rmse_n):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CLIError("--plot needs matplotlib: pip install 'gru-engine[plot]'") from None
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(10, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot(t, actual, color="0.2", lw=1.2, label="actual (held out)")
    ax.plot(t, pred, color="tab:red", lw=1.0, label=f"GRU one-step forecast (RMSE {rmse:.3f} ppm)")
    ax.set_ylabel("CO2 (ppm)")
    ax.set_title("Mauna Loa weekly CO2: one-step-ahead forecast by gru-engine")
    ax.legend(loc="upper left")
    ax2.plot(t, naive - actual, color="0.65", lw=0.8, label=f"naive last-value error (RMSE {rmse_n:.3f})")
    ax2.plot(t, pred - actual, color="tab:red", lw=0.8, label="GRU error")
    ax2.axhline(0, color="k", lw=0.5)
    ax2.set_ylabel("error (ppm)")
    ax2.set_xlabel("year")
    ax2.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except OSError as e:
        raise CLIError(f"--plot must name a writable file, got {path!r}: {e}") from None
    finally:
        plt.close(fig)


# =========================================================================== parser


def _add_format(p):
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="source format (default: from the file name / contents)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Fast, exact GRU inference: inspect, run and validate GRU models."
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("info", help="show the layers, shapes and parameter count of a model")
    p.add_argument("model", metavar="MODEL")
    _add_format(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("run", help="run a model on a .npy array of sequences (batch-first)")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--input", "-i", required=True, help="x.npy: (B, T, F) floats or (B, T) token ids")
    p.add_argument("--output", "-o", required=True, help="where to write y (.npy)")
    p.add_argument("--lengths", help="lengths.npy: (B,) valid length of each row")
    p.add_argument("--final-state", help="also write h_n, (L*D, B, H), to this .npy file")
    p.add_argument("--batch-size", type=int, default=256, help="rows per call (default 256)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    _add_format(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("validate", help="compare the engine with onnxruntime (or torch / keras)")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--against", choices=("onnxruntime", "torch", "keras"), default="onnxruntime")
    p.add_argument("--input", "-i", help="x.npy (batch-first, as for run), or an .npz of named graph inputs")
    p.add_argument("--atol", type=float, default=1e-5, help="absolute tolerance (default 1e-5)")
    p.add_argument("--batch", type=int, default=2, help="batch of the random inputs (default 2)")
    p.add_argument("--steps", type=int, default=16, help="time steps of the random inputs (default 16)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    p.add_argument("--config", default=None, help="--against keras, weights-only MODEL: its architecture (JSON or .keras)")
    _add_format(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("demo", help="forecast real data (Mauna Loa CO2) with the shipped demo model")
    p.add_argument("--plot", metavar="FILE.png", help="draw forecast vs actual (needs matplotlib)")
    p.add_argument("--repeats", type=int, default=2000,
                   help="timed one-step calls per engine (default 2000; sequence runs: 1/60 of it, at least 3)")
    p.set_defaults(func=cmd_demo)

    for modname in SUBCOMMAND_MODULES:
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name == modname:
                continue  # that extension is not part of this installation
            print(f"{PROG}: warning: subcommands of {modname} unavailable: {_one_line(e)}", file=sys.stderr)
            continue
        except ImportError as e:
            print(f"{PROG}: warning: subcommands of {modname} unavailable: {_one_line(e)}", file=sys.stderr)
            continue
        mod.add_parser(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        rc = func(args)
    except GRUEngineError as e:
        print(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except (OSError, MemoryError) as e:
        print(f"{PROG}: error: {type(e).__name__}: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    return 0 if rc is None else int(rc)


if __name__ == "__main__":
    sys.exit(main())

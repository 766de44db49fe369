"""``gru-engine convert SRC -o DST``: convert a model file and check the result.

The source format is detected from the file (``--from`` overrides): a PyTorch state-dict
checkpoint (``.pt``/``.pth``), a Keras file (``.keras``/``.h5``) or ONNX. DST is ``.onnx``
(real ONNX GRU nodes, see ``converters.to_onnx``) or ``.pt``/``.pth`` (the state dict of
``converters.to_torch(model)``, saved with ``torch.save``).

After writing DST the engine's run of the converted model is compared, on a seeded input,
with the source framework when it is installed (torch, Keras, or onnxruntime for an ONNX
source) and with DST itself (onnxruntime running a ``.onnx`` DST, the ``nn.Module`` of
``to_torch`` loaded from a ``.pt`` DST). The worst error is printed; the exit status is 1
when any check exceeds ``--atol`` (2 for an error, 0 otherwise).

Frameworks are imported only when a check needs them.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from .errors import GRUEngineError, ModelDefinitionError, UnsupportedError

DST_FORMATS = {".onnx": "onnx", ".pt": "torch", ".pth": "torch"}


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert a PyTorch / Keras / ONNX model file to .onnx or .pt and validate it",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument("src", metavar="SRC", help="source model file (.pt/.pth, .keras/.h5, .onnx)")
    p.add_argument("-o", "--output", dest="dst", metavar="DST", required=True, help="destination: .onnx or .pt/.pth")
    p.add_argument("--from", dest="src_format", choices=["torch", "keras", "onnx"], help="source format (default: detected)")
    p.add_argument("--atol", type=float, default=1e-5, help="absolute tolerance of the checks (default 1e-5)")
    p.add_argument("--prefix", default=None, help="torch checkpoints: only keys under this module path (e.g. encoder.)")
    p.add_argument("--last-step", action="store_true", help="torch checkpoints: the head acts on the last GRU state")
    p.add_argument(
        "--activations", default=None,
        help="torch checkpoints: comma-separated activation per Linear layer, 'none' for linear (e.g. relu,none)",
    )
    p.add_argument(
        "--config", default=None,
        help="Keras weights-only files (.weights.h5): the architecture, a JSON file (model.to_json()) or the .keras / "
             ".h5 file it came from",
    )
    p.add_argument("--no-validate", action="store_true", help="write DST without running the checks")
    p.add_argument("--batch", type=int, default=None, help="batch size of the check input (default 2, or the ONNX graph's)")
    p.add_argument("--steps", type=int, default=None, help="time steps of the check input (default 7, or the ONNX graph's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the check input (default 0)")
    p.set_defaults(func=cmd_convert)


def _torch_kwargs(args) -> dict:
    kw = {}
    if args.prefix:
        kw["prefix"] = args.prefix
    if args.last_step:
        kw["last_step"] = True
    if args.activations is not None:
        kw["activations"] = [None if a.strip().lower() in ("none", "linear", "") else a.strip() for a in args.activations.split(",")]
    return kw


def _installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def write_destination(model, dst: str) -> str:
    """Write ``model`` to ``dst`` (.onnx or .pt/.pth); returns the destination format."""
    ext = os.path.splitext(dst)[1].lower()
    fmt = DST_FORMATS.get(ext)
    if fmt is None:
        raise ModelDefinitionError(f"DST must end in .onnx, .pt or .pth, got {dst!r}")
    import converters

    if fmt == "onnx":
        converters.to_onnx(model, dst)
    else:
        import torch

        module = converters.to_torch(model)
        torch.save(module.state_dict(), dst)
    return fmt


def _check_torch_dst(model, dst: str, x, atol: float) -> dict:
    """The ``to_torch`` module with DST's state dict (read with weights_only=True) vs the engine."""
    import torch

    import converters

    module = converters.to_torch(model)
    state = torch.load(dst, weights_only=True, map_location="cpu")
    module.load_state_dict(state, strict=True)
    y, h_n = model.run(x)
    with torch.no_grad():
        ty, th = module(torch.from_numpy(np.asarray(x)))
    report = {"y": converters.compare(y, ty.numpy(), atol)}
    if h_n is not None and not isinstance(h_n, list):
        report["h_n"] = converters.compare(h_n, th.numpy(), atol)
    elif isinstance(h_n, list):
        for i, (a, b) in enumerate(zip(h_n, th)):
            report[f"h_n_{i}"] = converters.compare(a, b.numpy(), atol)
    return report


def cmd_convert(args) -> int:
    import converters

    src, dst = args.src, args.dst
    fmt = args.src_format or converters.detect_format(src)
    kwargs = _torch_kwargs(args) if fmt == "torch" else {}
    if fmt != "torch" and (args.prefix or args.last_step or args.activations):
        raise ModelDefinitionError(f"--prefix, --last-step and --activations apply to torch checkpoints only, the source is {fmt}")
    if args.config is not None:
        if fmt != "keras":
            raise ModelDefinitionError(f"--config applies to Keras files only, the source is {fmt}")
        kwargs["config"] = args.config
    if os.path.abspath(src) == os.path.abspath(dst):
        raise ModelDefinitionError(f"DST must differ from SRC, got {dst!r} for both")
    model = converters.load_any(src, fmt, **kwargs)
    dst_fmt = write_destination(model, dst)
    print(f"converted {src} ({fmt}) -> {dst} ({dst_fmt}): {len(model.layers)} layers, {model.param_count():,d} parameters")
    if args.no_validate:
        return 0
    if fmt == "onnx" and args.batch is None and args.steps is None:
        x = converters.default_input_for_graph(src, model)  # fixed dims of torch exports
    else:
        x = converters.default_input(model, batch=args.batch or 2, steps=args.steps or 7, seed=args.seed)
    checks: list[tuple[str, dict | None, str]] = []  # (label, report, skipped reason)

    source_fw = {"torch": "torch", "keras": "keras", "onnx": "onnxruntime"}[fmt]
    if _installed(source_fw):
        checks.append((f"source ({source_fw} on {os.path.basename(src)})",
                       converters.validate_against(src, source_fw, x=x, atol=args.atol, model=model, **kwargs), ""))
    else:
        checks.append((f"source ({source_fw})", None, f"{source_fw} is not installed"))
    if dst_fmt == "onnx":
        if _installed("onnxruntime"):
            checks.append((f"destination (onnxruntime on {os.path.basename(dst)})",
                           converters.validate_against(dst, "onnxruntime", x=x, atol=args.atol, model=model), ""))
        else:
            checks.append(("destination (onnxruntime)", None, "onnxruntime is not installed"))
    else:
        checks.append((f"destination (torch module loaded from {os.path.basename(dst)})",
                       _check_torch_dst(model, dst, x, args.atol), ""))

    worst, worst_where, ok = 0.0, "", True
    for label, report, why in checks:
        if report is None:
            print(f"  {label}: skipped, {why}")
            continue
        for name, r in report.items():
            good = bool(r["ok"])
            ok &= good
            print(f"  {label} {name}: max abs err {r['max_abs']:.3e}  rel {r['max_rel']:.3e}  {'ok' if good else 'FAIL'}")
            if not r["max_abs"] <= worst:
                worst, worst_where = r["max_abs"], f"{label} {name}"
    ran = [c for c in checks if c[1] is not None]
    if not ran:
        print("no check could run (install torch / keras / onnxruntime)", file=sys.stderr)
        return 0
    print(f"worst error {worst:.3e} ({worst_where}); {'PASS' if ok else 'FAIL'} at atol={args.atol:g}")
    return 0 if ok else 1


__all__ = ["add_parser", "cmd_convert", "write_destination", "GRUEngineError", "UnsupportedError"]

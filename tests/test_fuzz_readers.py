"""Fuzzing the file readers (issue 12): damaged ONNX, Keras (.keras / .h5) and torch files.

Every case is loaded (and, when it loads, run) in a forked child process under
``RLIMIT_AS`` = the parent's address space + 500 MB and a 10 s wall-clock limit, with an
audit hook recording every file the child opens. A case passes when it ends in a
:class:`gru_engine.GRUEngineError` subclass, or loads and runs; a raw exception, a crash, a
hang, a ``MemoryError`` (the 500 MB limit) or an ``open`` of a file outside the model's
folder fails it. Hostile pickles must not run their code (the marker file must not exist).

The whole file is sized to about a minute on two cores (``max_examples`` per test below);
``pytest -s`` prints the outcome counts per reader at the end.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import resource
import select
import shutil
import signal
import sys
import time
import traceback
import zipfile
from collections import Counter, defaultdict

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import converters  # noqa: E402
import gru_engine  # noqa: E402
from gru_engine import GRU, Dense, GRUEngineError, Model  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from test_bad_files import _fuzz_sources, gru_graph  # noqa: E402

if not hasattr(os, "fork") or sys.platform != "linux":  # pragma: no cover
    pytest.skip("the fuzz harness forks a child per case (Linux only)", allow_module_level=True)

MEM_LIMIT = 500 << 20  # bytes of address space a case may add
TIME_LIMIT = 10.0  # seconds per case
FUZZ = settings(deadline=None, database=None, derandomize=True, print_blob=True,
                suppress_health_check=list(HealthCheck))


def fuzz(n: int):
    return settings(FUZZ, max_examples=n)

#: per reader: Counter of outcomes ("ok", "ModelFileError", ...); printed at the end
STATS: dict[str, Counter] = defaultdict(Counter)


# =========================================================================== the harness


def _vm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _child(fn, args, sandbox, model_dir, w):
    opened = []
    sb, md = os.path.realpath(sandbox), os.path.realpath(model_dir)

    def hook(event, a):
        if event == "open" and a and isinstance(a[0], (str, bytes, os.PathLike)):
            p = os.path.realpath(os.fsdecode(a[0]))
            if p.startswith(sb + os.sep) and not p.startswith(md + os.sep):
                opened.append(p)

    out = {}
    try:
        limit = _vm_bytes() + MEM_LIMIT
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        sys.addaudithook(hook)
        t0 = time.perf_counter()
        try:
            out["result"] = fn(*args)
            out["kind"] = "ok"
        except GRUEngineError as e:
            out["kind"], out["type"], out["msg"] = "typed", type(e).__name__, str(e)[:500]
        except BaseException as e:  # noqa: BLE001 - exactly what the fuzz looks for
            out["kind"], out["type"], out["msg"] = "raw", type(e).__name__, str(e)[:500]
            out["tb"] = traceback.format_exc()[-3000:]
        out["elapsed"] = time.perf_counter() - t0
        out["opened_outside"] = list(opened)
        data = pickle.dumps(out)
    except BaseException as e:  # noqa: BLE001
        data = pickle.dumps({"kind": "raw", "type": type(e).__name__, "msg": str(e)[:500], "opened_outside": []})
    try:
        os.write(w, len(data).to_bytes(8, "little"))
        view = memoryview(data)
        while view:
            view = view[os.write(w, view):]
    finally:
        os._exit(0)


def isolated(fn, *args, sandbox, model_dir) -> dict:  # noqa: D401
    """``fn(*args)`` in a forked child under the memory and time limits; its outcome dict."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(r)
        _child(fn, args, sandbox, model_dir, w)
    os.close(w)
    buf, deadline = b"", time.monotonic() + TIME_LIMIT + 5
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([r], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return {"kind": "hang", "type": "timeout", "msg": f"no answer within {TIME_LIMIT + 5} s"}
            chunk = os.read(r, 1 << 16)
            if not chunk:
                break
            buf += chunk
    finally:
        os.close(r)
    _, status = os.waitpid(pid, 0)
    if len(buf) < 8:
        return {"kind": "crash", "type": "signal", "msg": f"child died: wait status {status}"}
    return pickle.loads(buf[8:])


def _send(fd, obj):
    data = pickle.dumps(obj)
    data = len(data).to_bytes(8, "little") + data
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _recv(fd, timeout):
    buf, deadline, need = b"", time.monotonic() + timeout, None
    while need is None or len(buf) < need:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return None
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return None
        buf += chunk
        if need is None and len(buf) >= 8:
            need = 8 + int.from_bytes(buf[:8], "little")
    return pickle.loads(buf[8:need])


def _serve():  # pragma: no cover - runs in the worker process
    """The worker: a fresh interpreter whose numba uses the fork-safe workqueue threading layer
    (GNU OpenMP aborts a forked child), kernels compiled once, then one fork per case."""
    out_fd = os.dup(1)
    os.dup2(2, 1)  # stray prints must not corrupt the protocol
    rng = np.random.default_rng(0)
    m = Model((GRU(W=rng.standard_normal((1, 12, 3)), R=rng.standard_normal((1, 12, 4))).astype(np.float32),
               Dense(kernel=rng.standard_normal((4, 2)).astype(np.float32))))
    m.run(converters.default_input(m, batch=2, steps=3))
    m.astype(np.float64).run(converters.default_input(m, batch=2, steps=3).astype(np.float64))
    import h5py  # noqa: F401 - imported once here, not per case
    import torch  # noqa: F401
    _send(out_fd, "ready")
    while True:
        req = _recv(0, 1e9)
        if req is None:
            os._exit(0)
        args, kw, sandbox, model_dir = req
        _send(out_fd, isolated(lambda: load_and_run(*args, **kw), sandbox=sandbox, model_dir=model_dir))


class Worker:
    def __init__(self):
        import subprocess

        env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue", KERAS_BACKEND="torch")
        code = (f"import sys; sys.path.insert(0, {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))!r}); "
                f"sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
                "import test_fuzz_readers as t; t._serve()")
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        if _recv(self.proc.stdout.fileno(), 120) != "ready":
            self.close()
            raise RuntimeError("the fuzz worker did not start")

    def run(self, *args, sandbox, model_dir, **kw):
        _send(self.proc.stdin.fileno(), (args, kw, sandbox, model_dir))
        out = _recv(self.proc.stdout.fileno(), TIME_LIMIT + 30)
        if out is None:
            raise RuntimeError("the fuzz worker stopped answering")
        return out

    def close(self):
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except Exception:  # noqa: BLE001
            self.proc.kill()
            self.proc.wait()


_WORKER: list = []


def check(reader: str, outcome: dict, what="") -> dict:
    kind = outcome["kind"]
    STATS[reader][outcome.get("type", kind) if kind != "ok" else "ok"] += 1
    assert kind in ("ok", "typed"), f"{reader} {what}: {kind} {outcome.get('type')}: {outcome.get('msg')}\n{outcome.get('tb', '')}"
    assert outcome["elapsed"] < TIME_LIMIT, f"{reader} {what}: took {outcome['elapsed']:.1f} s"
    assert not outcome["opened_outside"], f"{reader} {what}: read files outside the model folder: {outcome['opened_outside']}"
    return outcome


def load_and_run(path, fmt=None, **kw):
    """The user's path: load, then run on a small default input; returns the output shape."""
    model = gru_engine.load(path) if fmt == "onnx" else converters.load_any(path, fmt, **kw)
    x = converters.default_input(model, batch=2, steps=3)
    y, _ = model.run(x)
    y = np.asarray(y)
    assert y.shape[0] == 2, y.shape
    return tuple(y.shape)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """``<sb>/model/`` holds the files under test; ``<sb>/secret*`` must never be read."""
    sb = tmp_path_factory.mktemp("fuzz_sandbox")
    (sb / "model").mkdir()
    return sb


def run_case(reader, sandbox, name, data: bytes, fmt=None, what="", **kw):
    path = sandbox / "model" / name
    path.write_bytes(data)
    try:
        return check(reader, _WORKER[0].run(str(path), fmt, sandbox=str(sandbox), model_dir=str(sandbox / "model"), **kw),
                     what)
    finally:
        path.unlink(missing_ok=True)


def _bytes_mutation():
    """(kind, params) for raw file damage: truncation, byte flips, a random insertion."""
    return st.one_of(
        st.tuples(st.just("cut"), st.floats(0.0, 1.0, exclude_max=True)),
        st.tuples(st.just("flip"), st.lists(st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(0, 255)),
                                            min_size=1, max_size=12)),
        st.tuples(st.just("insert"), st.tuples(st.floats(0.0, 1.0), st.binary(min_size=1, max_size=16))),
    )


def damage(data: bytes, mutation) -> bytes:
    kind, p = mutation
    if kind == "cut":
        return data[: int(len(data) * p)]
    if kind == "flip":
        d = bytearray(data)
        for pos, val in p:
            d[int(len(d) * pos)] = val
        return bytes(d)
    pos, chunk = p
    i = int(len(data) * pos)
    return data[:i] + chunk + data[i:]


@pytest.fixture(scope="module", autouse=True)
def _worker_and_report():
    """Start the worker (kernels compiled once there); print the outcome counts at the end."""
    t0 = time.perf_counter()
    _WORKER.append(Worker())
    yield
    _WORKER.pop().close()
    total = sum(sum(c.values()) for c in STATS.values())
    print(f"\nfuzz_readers: {total} cases in {time.perf_counter() - t0:.1f} s")
    for reader, c in sorted(STATS.items()):
        print(f"  {reader:14s} {sum(c.values()):5d}  " + ", ".join(f"{k}={v}" for k, v in sorted(c.items())))


# =========================================================================== ONNX


@pytest.fixture(scope="module")
def onnx_sources():
    rng = np.random.default_rng(1)
    g = GRU(W=rng.standard_normal((1, 24, 5)), R=rng.standard_normal((1, 24, 8))).astype(np.float32)
    own = gru_engine.save(Model((g, Dense(kernel=rng.standard_normal((8, 2)).astype(np.float32)))),
                          os.devnull)  # the engine's own file (metadata path)
    interp, interp2 = _fuzz_sources()  # graph-interpreter paths
    return [own, interp, interp2, gru_graph(B=rng.standard_normal((1, 24)).astype(np.float32))]


@given(src=st.integers(0, 3), mutation=_bytes_mutation())
@fuzz(120)
def test_onnx_damaged_bytes(onnx_sources, sandbox, src, mutation):
    data = damage(onnx_sources[src].SerializeToString(), mutation)
    run_case("onnx/bytes", sandbox, "m.onnx", data, "onnx", f"source {src} {mutation}")


_INTS = st.one_of(st.integers(-3, 8), st.sampled_from([2**31, 2**62, -(2**62), 10**9, 10**12]))
_FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -1.0, 1e30]))
_DIMS = st.lists(st.one_of(st.integers(-2, 30), st.sampled_from([0, 2**31, 2**40, 2**62, 10**12, -(2**62)])),
                 min_size=0, max_size=4)

_PROTO_EDIT = st.one_of(
    st.tuples(st.just("attr_int"), st.integers(0, 50), st.integers(0, 50), _INTS),
    st.tuples(st.just("attr_float"), st.integers(0, 50), st.integers(0, 50), _FLOATS),
    st.tuples(st.just("attr_ints"), st.integers(0, 50), st.integers(0, 50), st.lists(_INTS, max_size=5)),
    st.tuples(st.just("attr_str"), st.integers(0, 50), st.integers(0, 50),
              st.sampled_from(["", "Tanh", "reverse", "bidirectional", "x" * 1000, "\x00"])),
    st.tuples(st.just("init_dims"), st.integers(0, 50), _DIMS),
    st.tuples(st.just("init_raw"), st.integers(0, 50), st.one_of(st.integers(-64, 64), st.just(10**6))),
    st.tuples(st.just("init_type"), st.integers(0, 50), st.sampled_from(sorted(TensorProto.DataType.values()))),
    st.tuples(st.just("init_value"), st.integers(0, 50), st.floats(0, 1, exclude_max=True), _FLOATS),
    st.tuples(st.just("input_dims"), st.integers(0, 5), _DIMS),
    st.tuples(st.just("value_info"), st.integers(0, 50), _DIMS),
    st.tuples(st.just("input_elem"), st.integers(0, 5), st.sampled_from(sorted(TensorProto.DataType.values()))),
    st.tuples(st.just("metadata"), st.integers(0, 50), st.one_of(_INTS, _FLOATS, st.text(max_size=8),
                                                               st.none(), st.lists(_INTS, max_size=3))),
)


def _pick(seq, i):
    return seq[i % len(seq)] if len(seq) else None


def _set_dims(shape_dims, dims):
    del shape_dims[:]
    for d in dims:
        shape_dims.add().dim_value = d


def edit_proto(proto, edits):
    """A damaged copy of ``proto``: each edit changes one attribute, initializer, input type,
    value info or engine-metadata leaf. Edits that protobuf itself refuses are skipped."""
    p = onnx.ModelProto()
    p.CopyFrom(proto)
    g = p.graph
    for e in edits:
        kind = e[0]
        try:
            if kind.startswith("attr_"):
                node = _pick(g.node, e[1])
                attrs = [a for a in node.attribute] if node is not None else []
                a = _pick(attrs, e[2])
                if a is None:
                    continue
                if kind == "attr_int":
                    a.type, a.i = onnx.AttributeProto.INT, e[3]
                elif kind == "attr_float":
                    a.type, a.f = onnx.AttributeProto.FLOAT, e[3]
                elif kind == "attr_ints":
                    a.type = onnx.AttributeProto.INTS
                    del a.ints[:]
                    a.ints.extend(e[3])
                else:
                    a.type, a.s = onnx.AttributeProto.STRING, e[3].encode()
            elif kind.startswith("init_"):
                t = _pick(g.initializer, e[1])
                if t is None:
                    continue
                if kind == "init_dims":
                    del t.dims[:]
                    t.dims.extend(e[2])
                elif kind == "init_raw":
                    raw = t.raw_data if t.HasField("raw_data") else numpy_helper.to_array(t).tobytes()
                    n = e[2]
                    t.raw_data = raw[:n] if n < 0 else raw + b"\x00" * n
                    for f in ("float_data", "double_data", "int32_data", "int64_data"):
                        t.ClearField(f)
                elif kind == "init_type":
                    t.data_type = e[2]
                else:
                    a = numpy_helper.to_array(t).copy()
                    if a.size and a.dtype.kind in "fi":
                        flat = a.reshape(-1)
                        v = e[3]
                        flat[int(flat.size * e[2])] = v if a.dtype.kind == "f" else (0 if not np.isfinite(v) else int(np.clip(v, -2**31, 2**31 - 1)))
                        t.CopyFrom(numpy_helper.from_array(a, t.name))
            elif kind in ("input_dims", "input_elem"):
                vi = _pick(g.input, e[1])
                if vi is None:
                    continue
                if kind == "input_dims":
                    _set_dims(vi.type.tensor_type.shape.dim, e[2])
                else:
                    vi.type.tensor_type.elem_type = e[2]
            elif kind == "value_info":
                outs = [o for n in g.node for o in n.output]
                name = _pick(outs, e[1])
                if name is None:
                    continue
                vi = helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
                _set_dims(vi.type.tensor_type.shape.dim, e[2])
                g.value_info.append(vi)
            elif kind == "metadata":
                for prop in p.metadata_props:
                    if prop.key == "gru_engine.layers":
                        layers = json.loads(prop.value)
                        leaves = [(i, k) for i, lay in enumerate(layers) for k in lay if k not in ("kind", "arrays")]
                        if leaves:
                            i, k = leaves[e[1] % len(leaves)]
                            layers[i][k] = e[2] if not (isinstance(e[2], float) and not np.isfinite(e[2])) else str(e[2])
                            prop.value = json.dumps(layers)
        except (ValueError, TypeError, OverflowError, onnx.checker.ValidationError):
            continue  # protobuf / numpy refused the edit itself
    return p


@given(src=st.integers(0, 3), edits=st.lists(_PROTO_EDIT, min_size=1, max_size=3))
@fuzz(180)
@example(src=0, edits=[("init_dims", 0, [2**62, 2**62])])
@example(src=1, edits=[("input_dims", 0, [2**31, 2**31, 2**31])])
@example(src=3, edits=[("value_info", 0, [2**62, 2**62, 2**62])])
def test_onnx_edited_graph(onnx_sources, sandbox, src, edits):
    p = edit_proto(onnx_sources[src], edits)
    run_case("onnx/edits", sandbox, "m.onnx", p.SerializeToString(), "onnx", f"source {src} {edits}")


_LOCATIONS = st.sampled_from([
    "ext.data", "../secret", "../secret_ext", "sub/../../secret", "./../secret", "..", ".", "", "sub",
    "ABS_SECRET", "/dev/zero", "/proc/self/mem", "ext.data/..", "link_out", "nope.data", "ext.data\\..\\..\\secret",
])


@given(loc=_LOCATIONS, offset=st.one_of(st.none(), st.sampled_from(["0", "-1", "4", "x", str(2**62)])),
       length=st.one_of(st.none(), st.sampled_from(["0", "-5", "48", "1e3", str(2**62)])), which=st.integers(0, 2))
@fuzz(60)
@example(loc="../secret", offset=None, length=None, which=0)
@example(loc="ABS_SECRET", offset=None, length=None, which=0)
@example(loc="link_out", offset=None, length=None, which=0)
@example(loc="../secret", offset=None, length=str(2**62), which=0)  # used to stat it and report its size
@example(loc="../nope", offset=None, length=None, which=1)  # used to report whether it exists
def test_onnx_external_data_locations(sandbox, loc, offset, length, which):
    """External-data locations that escape the model's folder (``..``, absolute paths, a
    symlink to outside) are refused; none of the secrets' bytes are read."""
    md = sandbox / "model"
    rng = np.random.default_rng(2)
    m = gru_graph(H=4, I=3, W=rng.standard_normal((1, 12, 3)).astype(np.float32))
    onnx.save_model(m, str(md / "ext.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.data", size_threshold=0)
    data = (md / "ext.data").read_bytes()
    for name in ("secret", "secret_ext"):  # same bytes: a reader that follows the path would load fine
        (sandbox / name).write_bytes(data)
    if not (md / "link_out").exists():
        os.symlink(sandbox / "secret", md / "link_out")
    p = onnx.load(str(md / "ext.onnx"), load_external_data=False)
    t = p.graph.initializer[which % len(p.graph.initializer)]
    for ent in t.external_data:
        if ent.key == "location":
            ent.value = str(sandbox / "secret") if loc == "ABS_SECRET" else loc
        elif ent.key == "offset" and offset is not None:
            ent.value = offset
        elif ent.key == "length" and length is not None:
            ent.value = length
    out = run_case("onnx/external", sandbox, "trav.onnx", p.SerializeToString(), "onnx", f"{loc} {offset} {length}")
    if loc in ("../secret", "../secret_ext", "sub/../../secret", "./../secret", "ABS_SECRET", "link_out", "/dev/zero",
               "/proc/self/mem", "ext.data\\..\\..\\secret"):
        assert out["kind"] == "typed", f"external data at {loc!r} (outside the model folder) was loaded"
        assert "bytes" not in out["msg"], f"the message reveals the outside file's size: {out['msg']}"


# =========================================================================== Keras


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory):
    pytest.importorskip("h5py")
    pytest.importorskip("keras")
    import keras_models

    d = tmp_path_factory.mktemp("keras_src")
    model, _ = keras_models.build("seq_basic")
    paths = keras_models.save_all(model, str(d), "m")
    return {k: open(v, "rb").read() for k, v in paths.items()}


@given(which=st.sampled_from(["keras", "h5", "weights"]), mutation=_bytes_mutation())
@fuzz(110)
def test_keras_damaged_bytes(keras_files, sandbox, which, mutation):
    data = damage(keras_files[which], mutation)
    kw = {}
    if which == "weights":
        (sandbox / "model" / "m.json").write_bytes(keras_files["config"])
        kw["config"] = str(sandbox / "model" / "m.json")
    name = {"keras": "m.keras", "h5": "m.h5", "weights": "m.weights.h5"}[which]
    run_case(f"keras/{which}", sandbox, name, data, "keras", f"{mutation}", **kw)


def _json_leaves(obj, path=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _json_leaves(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _json_leaves(v, path + (i,))
    yield path


_JSON = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-3, 10**12), st.floats(allow_nan=False),
                               st.text(max_size=6)),
                     lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=5), c, max_size=3)),
                     max_leaves=6)


def _rezip(files: dict) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for n, d in files.items():
            z.writestr(n, d)
    return buf.getvalue()


def _zip_members(data):
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return {n: z.read(n) for n in z.namelist()}


@given(op=st.sampled_from(["leaf", "drop", "raw_config"]), i=st.integers(0, 10**6), value=_JSON,
       drop=st.sampled_from(["config.json", "model.weights.h5", "metadata.json"]),
       raw=st.sampled_from([b"", b"{", b"[]", b"null", b"\xff\xfe", b'{"class_name": 3}', b'{"config": []}']))
@fuzz(90)
@example(op="drop", i=0, value=None, drop="model.weights.h5", raw=b"")
@example(op="raw_config", i=0, value=None, drop="config.json", raw=b"\xff\xfe")
def test_keras_zip_edits(keras_files, sandbox, op, i, value, drop, raw):
    files = _zip_members(keras_files["keras"])
    if op == "drop":
        del files[drop]
    elif op == "raw_config":
        files["config.json"] = raw
    else:
        cfg = json.loads(files["config.json"])
        leaves = [p for p in _json_leaves(cfg) if p]
        path = leaves[i % len(leaves)]
        node = cfg
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value
        files["config.json"] = json.dumps(cfg).encode()
    run_case("keras/zip", sandbox, "m.keras", _rezip(files), "keras", f"{op} {i} {value!r} {drop} {raw!r}")


_H5_EDIT = st.one_of(
    st.tuples(st.just("shape"), st.integers(0, 50), st.lists(st.sampled_from([0, 1, 2, 3, 7, 10**5, 2**31, 2**40]),
                                                             max_size=3)),
    st.tuples(st.just("dtype"), st.integers(0, 50), st.sampled_from(["i1", "f2", "f8", "S3", "c8", "bool", "u8"])),
    st.tuples(st.just("delete"), st.integers(0, 50)),
    st.tuples(st.just("external"), st.integers(0, 50), st.sampled_from(["../secret_w", "SECRET_ABS"])),
    st.tuples(st.just("extlink"), st.integers(0, 50), st.sampled_from(["../secret.h5", "SECRET_ABS_H5"])),
)


def _h5_datasets(h5):
    out = []
    h5.visititems(lambda n, o: out.append(n) if hasattr(o, "shape") else None)
    return sorted(out)


def edit_h5(data: bytes, edits, sandbox) -> bytes:
    """A damaged copy of an HDF5 file: weight datasets reshaped (huge chunked shapes stay
    tiny on disk), retyped, deleted, moved to external storage or behind external links."""
    import h5py

    tmp = sandbox / "edit.h5"
    tmp.write_bytes(data)
    with h5py.File(tmp, "r+") as h:
        for e in edits:
            names = _h5_datasets(h)
            if not names:
                break
            name = names[e[1] % len(names)]
            try:
                old = np.asarray(h[name][()])
            except OSError:  # made external / linked by an earlier edit
                continue
            if e[0] == "delete":
                del h[name]
                continue
            del h[name]
            if e[0] == "shape":
                n = int(np.prod(e[2], dtype=object)) if e[2] else 1
                if n <= 1 << 16:
                    h.create_dataset(name, data=np.resize(old, e[2]).astype(old.dtype))
                else:  # declared huge, stored sparse (fill value): a few bytes on disk
                    h.create_dataset(name, shape=tuple(e[2]), dtype=old.dtype, chunks=(1,) * len(e[2]))
            elif e[0] == "dtype":
                h.create_dataset(name, data=old.astype(e[2]) if e[2] != "S3" else old.astype(str).astype("S3"))
            elif e[0] == "external":
                target = sandbox / "secret_w"
                target.write_bytes(old.astype(old.dtype).tobytes())
                loc = str(target) if e[2] == "SECRET_ABS" else e[2]
                h.create_dataset(name, shape=old.shape, dtype=old.dtype, external=[(loc, 0, old.nbytes)])
            else:
                target = sandbox / "secret.h5"
                with h5py.File(target, "a") as s:
                    if name not in s:
                        s.create_dataset(name, data=old)
                h[name] = h5py.ExternalLink(str(target) if e[2] == "SECRET_ABS_H5" else e[2], name)
    return tmp.read_bytes()


@given(which=st.sampled_from(["keras", "h5", "weights"]), edits=st.lists(_H5_EDIT, min_size=1, max_size=2))
@fuzz(40)
@example(which="weights", edits=[("shape", 0, [2**31, 2**31])])
@example(which="h5", edits=[("shape", 1, [10**5, 10**5])])
@example(which="weights", edits=[("external", 0, "../secret_w")])
@example(which="h5", edits=[("extlink", 0, "SECRET_ABS_H5")])
def test_keras_h5_edits(keras_files, sandbox, which, edits):
    kw = {}
    if which == "keras":
        files = _zip_members(keras_files["keras"])
        files["model.weights.h5"] = edit_h5(files["model.weights.h5"], edits, sandbox)
        data, name = _rezip(files), "m.keras"
    else:
        data, name = edit_h5(keras_files[which], edits, sandbox), f"m.{'weights.h5' if which == 'weights' else 'h5'}"
        if which == "weights":
            (sandbox / "model" / "m.json").write_bytes(keras_files["config"])
            kw["config"] = str(sandbox / "model" / "m.json")
    out = run_case(f"keras/h5edit", sandbox, name, data, "keras", f"{which} {edits}", **kw)
    if any(e[0] in ("external", "extlink") for e in edits):
        assert out["kind"] == "typed", f"weights stored outside the file were loaded: {which} {edits}"


def test_keras_zip_bomb(keras_files, sandbox):
    """A .keras whose model.weights.h5 inflates to 600 MB (the real weights + zero padding):
    read through a temporary file, within the 500 MB limit (it used to be inflated into memory:
    MemoryError); the padding does not matter, so the model loads and runs."""
    files = _zip_members(keras_files["keras"])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("config.json", files["config.json"])
        with z.open("model.weights.h5", "w", force_zip64=True) as f:
            f.write(files["model.weights.h5"])
            block = bytes(1 << 20)
            for _ in range(600):
                f.write(block)
    out = run_case("keras/zip", sandbox, "bomb.keras", buf.getvalue(), "keras", "zip bomb")
    assert out["kind"] == "ok", out


# =========================================================================== torch


@pytest.fixture(scope="module")
def torch_files():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    gru, lin = torch.nn.GRU(3, 4, batch_first=True), torch.nn.Linear(4, 2)
    state = {**{f"gru.{k}": v for k, v in gru.state_dict().items()}, **{f"head.{k}": v for k, v in lin.state_dict().items()}}
    out = {}
    for name, kw in (("zip", {}), ("legacy", {"_use_new_zipfile_serialization": False})):
        buf = io.BytesIO()
        torch.save(state, buf, **kw)
        out[name] = buf.getvalue()
    return out


@given(which=st.sampled_from(["zip", "legacy"]), mutation=_bytes_mutation())
@fuzz(110)
def test_torch_damaged_bytes(torch_files, sandbox, which, mutation):
    data = damage(torch_files[which], mutation)
    run_case(f"torch/{which}", sandbox, "m.pt", data, "torch", f"{mutation}")


class _Evil:
    """Unpickling calls ``fn(*args)``: with weights_only=False this would create the marker."""

    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _evil_calls(marker):
    import pathlib
    import subprocess

    return {
        "open": (open, (marker, "w")),
        "os.system": (os.system, (f"touch {marker}",)),
        "exec": (exec, (f"open({marker!r}, 'w').close()",)),
        "eval": (eval, (f"open({marker!r}, 'w')",)),
        "Path.touch": (pathlib.Path.touch, (pathlib.Path(marker),)),
        "Popen": (subprocess.Popen, (["touch", marker],)),
    }


@given(call=st.sampled_from(["open", "os.system", "exec", "eval", "Path.touch", "Popen"]),
       container=st.sampled_from(["zip", "legacy", "raw_pickle"]), where=st.sampled_from(["value", "top", "nested"]),
       protocol=st.integers(0, pickle.HIGHEST_PROTOCOL))
@fuzz(40)
@example(call="os.system", container="zip", where="value", protocol=2)
def test_torch_hostile_pickle(torch_files, sandbox, call, container, where, protocol):
    import torch

    marker = str(sandbox / "model" / "PWNED")
    if os.path.exists(marker):
        os.remove(marker)
    state = torch.load(io.BytesIO(torch_files["zip"]), weights_only=True)
    evil = _Evil(*_evil_calls(marker)[call])
    obj = {"value": {**state, "gru.evil": evil}, "top": evil,
           "nested": {"state_dict": state, "extra": [1, {"x": evil}]}}[where]
    buf = io.BytesIO()
    if container == "raw_pickle":
        pickle.dump(obj, buf, protocol=protocol)
    else:
        torch.save(obj, buf, pickle_protocol=max(protocol, 2), _use_new_zipfile_serialization=container == "zip")
    assert not os.path.exists(marker)
    out = run_case("torch/hostile", sandbox, "evil.pt", buf.getvalue(), "torch", f"{call} {container} {where}")
    time.sleep(0.05 if call == "Popen" else 0)
    assert not os.path.exists(marker), f"unpickling ran {call}: the marker file was created"
    assert out["kind"] == "typed" and "nothing was executed" in out["msg"], out

"""The ``gru-engine`` command line: info, run, validate (pass and fail exit codes), demo,
extension subcommands and one-line errors. Mostly through ``cli.main([...])`` in-process;
the ``python -m gru_engine`` entry point through a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import random_gru_weights, slow_without_jit

import gru_engine
from gru_engine import GRU, Dense, Embedding, Model, cli
from gru_engine import data as gdata

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = slow_without_jit


@pytest.fixture
def small_model(tmp_path):
    rng = np.random.default_rng(0)
    W1, R1, B1 = random_gru_weights(rng, 3, 5, 2)
    W2, R2, B2 = random_gru_weights(rng, 10, 5, 1)
    model = Model((GRU(W=W1, R=R1, B=B1, direction="bidirectional", name="enc"),
                   GRU(W=W2, R=R2, B=B2, linear_before_reset=1, name="dec"),
                   Dense(kernel=rng.standard_normal((5, 2)).astype(np.float32), activation="tanh", name="head")),
                  name="small")
    path = tmp_path / "small.onnx"
    gru_engine.save(model, path)
    return model, str(path)


def run_cli(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc, err, match):
    assert rc == 2
    lines = [ln for ln in err.strip().splitlines() if ln]
    assert len(lines) == 1 and lines[0].startswith("gru-engine: error: "), err
    assert "Traceback" not in err
    assert match in lines[0], lines[0]


# --------------------------------------------------------------------------- info


def test_info_prints_layers_shapes_and_parameter_count(capsys, small_model):
    model, path = small_model
    rc, out, _ = run_cli(capsys, "info", path)
    assert rc == 0
    assert "GRU(3->5, bidirectional, lbr=0)" in out and "GRU(10->5, forward, lbr=1)" in out
    assert "Dense(5->2, tanh)" in out
    assert f"{model.param_count():,d} parameters" in out
    assert "state h_n: (3, B, 5)" in out and "output (B, T, 2)" in out


def test_info_errors_are_one_line(capsys, tmp_path):
    rc, _, err = run_cli(capsys, "info", tmp_path / "missing.onnx")
    assert_one_line_error(rc, err, "must exist")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage that is not a protobuf model \xff\xff")
    rc, _, err = run_cli(capsys, "info", bad)
    assert_one_line_error(rc, err, "bad.onnx")


# --------------------------------------------------------------------------- run


def test_run_in_batches_matches_model_run(capsys, small_model, tmp_path):
    model, path = small_model
    rng = np.random.default_rng(1)
    x = rng.standard_normal((10, 6, 3)).astype(np.float32)
    lengths = rng.integers(0, 7, 10)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "l.npy", lengths)
    rc, _, err = run_cli(capsys, "run", path, "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy",
                         "--lengths", tmp_path / "l.npy", "--batch-size", 3, "--final-state", tmp_path / "h.npy")
    assert rc == 0, err
    assert "4/4 batches" in err and "100%" in err  # the progress bar's final line
    y = np.load(tmp_path / "y.npy")
    h = np.load(tmp_path / "h.npy")
    y_ref, h_ref = model.run(x, lengths=lengths)
    np.testing.assert_allclose(y, y_ref, atol=1e-6)
    np.testing.assert_allclose(h, h_ref, atol=1e-6)
    assert y.shape == (10, 6, 2) and h.shape == (3, 10, 5)
    # --quiet: no progress bar
    rc, _, err = run_cli(capsys, "run", path, "-i", tmp_path / "x.npy", "-o", tmp_path / "y2.npy", "-q")
    assert rc == 0 and err == ""
    np.testing.assert_allclose(np.load(tmp_path / "y2.npy"), model.run(x)[0], atol=1e-6)


def test_run_token_model(capsys, tmp_path):
    rng = np.random.default_rng(2)
    W, R, B = random_gru_weights(rng, 4, 3, 1)
    model = Model((Embedding(table=rng.standard_normal((9, 4)).astype(np.float32)), GRU(W=W, R=R, B=B, return_sequences=False)))
    gru_engine.save(model, tmp_path / "tok.onnx")
    tokens = rng.integers(0, 9, (5, 7))
    np.save(tmp_path / "t.npy", tokens)
    rc, _, err = run_cli(capsys, "run", tmp_path / "tok.onnx", "-i", tmp_path / "t.npy", "-o", tmp_path / "y.npy", "--batch-size", 2)
    assert rc == 0, err
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), model.run(tokens)[0], atol=1e-6)


def test_run_bad_inputs_are_one_line_errors(capsys, small_model, tmp_path):
    _, path = small_model
    out = tmp_path / "y.npy"
    np.save(tmp_path / "wrong.npy", np.zeros((2, 5, 4), np.float32))
    rc, _, err = run_cli(capsys, "run", path, "-i", tmp_path / "wrong.npy", "-o", out)
    assert_one_line_error(rc, err, "x must have shape (batch, seq_len, 3)")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    rc, _, err = run_cli(capsys, "run", path, "-i", tmp_path / "obj.npy", "-o", out)
    assert_one_line_error(rc, err, "no Python objects")
    np.savez(tmp_path / "x.npz", x=np.zeros((1, 2, 3)))
    rc, _, err = run_cli(capsys, "run", path, "-i", tmp_path / "x.npz", "-o", out)
    assert_one_line_error(rc, err, "got an .npz archive")
    np.save(tmp_path / "s.npy", np.array([["a", "b"]]))
    rc, _, err = run_cli(capsys, "run", path, "-i", tmp_path / "s.npy", "-o", out)
    assert_one_line_error(rc, err, "x must")
    np.save(tmp_path / "x.npy", np.zeros((4, 5, 3), np.float32))
    np.save(tmp_path / "l.npy", np.array([1.0, np.nan, 2.0, 3.0]))
    rc, _, err = run_cli(capsys, "run", path, "-i", tmp_path / "x.npy", "-o", out, "--lengths", tmp_path / "l.npy")
    assert_one_line_error(rc, err, "lengths must be finite")
    np.save(tmp_path / "l3.npy", np.array([1, 2, 3]))
    rc, _, err = run_cli(capsys, "run", path, "-i", tmp_path / "x.npy", "-o", out, "--lengths", tmp_path / "l3.npy")
    assert_one_line_error(rc, err, "--lengths must have shape (4,)")
    rc, _, err = run_cli(capsys, "run", path, "-i", tmp_path / "x.npy", "-o", out, "--batch-size", 0)
    assert_one_line_error(rc, err, "--batch-size must be >= 1")
    rc, _, err = run_cli(capsys, "run", path, "-i", tmp_path / "nothere.npy", "-o", out)
    assert_one_line_error(rc, err, "must exist")


# --------------------------------------------------------------------------- validate


def test_validate_passes_on_engine_file(capsys, small_model):
    _, path = small_model
    rc, out, _ = run_cli(capsys, "validate", path, "--batch", 3, "--steps", 40)
    assert rc == 0, out
    assert "PASS" in out
    lines = {ln.split()[0]: ln for ln in out.splitlines() if "max abs err" in ln}
    assert set(lines) == {"y", "h_n"}
    for ln in lines.values():
        err = float(ln.split("max abs err")[1].split()[0])
        assert 0 <= err <= 1e-5


def test_validate_fails_above_tolerance(capsys, small_model):
    """atol=1e-12 is below float32 rounding: the engine and onnxruntime differ by ~1e-7."""
    _, path = small_model
    rc, out, _ = run_cli(capsys, "validate", path, "--atol", 1e-12)
    assert rc == 1
    assert "FAIL" in out


def test_validate_given_inputs_npy_and_npz(capsys, small_model, tmp_path):
    model, path = small_model
    x = np.random.default_rng(3).standard_normal((2, 9, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    rc, out, _ = run_cli(capsys, "validate", path, "--input", tmp_path / "x.npy")
    assert rc == 0 and "given input x (2, 9, 3)" in out
    np.savez(tmp_path / "feeds.npz", x=x)
    rc, out, _ = run_cli(capsys, "validate", path, "--input", tmp_path / "feeds.npz")
    assert rc == 0 and "given inputs x (2, 9, 3)" in out
    np.savez(tmp_path / "wrong.npz", other=x)
    rc, _, err = run_cli(capsys, "validate", path, "--input", tmp_path / "wrong.npz")
    assert_one_line_error(rc, err, "missing ['x']")


def test_validate_bare_time_major_gru_graph(capsys, tmp_path):
    """A bare ONNX GRU node (X [T, N, I], outputs Y [T, D, N, H] and Y_h) with sequence_lens."""
    from onnx import TensorProto, helper, numpy_helper

    import onnx

    rng = np.random.default_rng(4)
    W, R, B = random_gru_weights(rng, 3, 4, 2)
    node = helper.make_node("GRU", ["X", "W", "R", "B", "L"], ["Y", "Y_h"], hidden_size=4,
                            direction="bidirectional", linear_before_reset=1)
    g = helper.make_graph(
        [node], "bare",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "N", 3]),
         helper.make_tensor_value_info("L", TensorProto.INT32, ["N"])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None), helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(R, "R"), numpy_helper.from_array(B, "B")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)]), tmp_path / "bare.onnx")
    rc, out, _ = run_cli(capsys, "validate", tmp_path / "bare.onnx", "--batch", 3, "--steps", 12)
    assert rc == 0, out
    assert "X (12, 3, 3)" in out and "L (3,)" in out
    assert "Y " in out and "Y_h" in out


def test_validate_float64_model_runs_its_float32_export(capsys, tmp_path):
    rng = np.random.default_rng(5)
    W, R, B = random_gru_weights(rng, 2, 3, 1, np.float64)
    gru_engine.save(Model((GRU(W=W, R=R, B=B),)), tmp_path / "m64.onnx")
    rc, out, _ = run_cli(capsys, "validate", tmp_path / "m64.onnx")
    assert rc == 0, out
    assert "float32 ONNX export" in out


def test_validate_torch_checkpoint(capsys, tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    gru = torch.nn.GRU(3, 4, num_layers=2, batch_first=True)
    torch.save(gru.state_dict(), tmp_path / "gru.pt")
    rc, out, err = run_cli(capsys, "validate", tmp_path / "gru.pt", "--against", "torch")
    assert rc == 0, out + err
    assert "PASS" in out
    # the same checkpoint against onnxruntime goes through the engine's ONNX export
    rc, out, err = run_cli(capsys, "validate", tmp_path / "gru.pt")
    assert rc == 0, out + err
    assert "ONNX export" in out


def test_compare_reports_shape_and_nan_mismatch(capsys):
    assert cli.compare("y", np.zeros((2, 3)), np.zeros((3, 2)))[0] == float("inf")
    assert cli.compare("y", np.array([np.nan, 1.0]), np.array([0.0, 1.0]))[0] == float("inf")
    assert cli.compare("y", np.array([np.nan, 1.0]), np.array([np.nan, 1.5])) == (0.5, 0.5 / 1.5)


# --------------------------------------------------------------------------- demo


def test_demo_prints_forecast_error_agreement_and_timing(capsys, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("matplotlib")
    png = tmp_path / "forecast.png"
    rc, out, err = run_cli(capsys, "demo", "--plot", png, "--repeats", 100)
    assert rc == 0, err
    rmse = {ln.split()[0]: float(ln.split()[-2]) for ln in out.splitlines() if ln.startswith(("  GRU", "  naive"))}
    assert rmse["GRU"] < rmse["naive:"]  # beats the naive last-value forecast on held-out data
    diff = float(out.split("agreement with onnxruntime (same file): max abs diff ")[1].split()[0])
    assert diff <= 1e-5
    assert "us/step in sequence" in out and "onnxruntime" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_data_is_packaged_and_small():
    d = gdata.load_demo_data()
    assert d["series"].shape == d["years"].shape and int(d["context"]) < len(d["series"])
    assert 300 < float(d["series"].min()) < float(d["series"].max()) < 400  # ppm
    assert os.path.getsize(gdata.path(gdata.DEMO_MODEL)) < 100_000
    model = gru_engine.load(gdata.path(gdata.DEMO_MODEL))
    assert model.input_size == 1 and model.output_size == 1 and model.output_is_sequence


def test_module_entry_point_subprocess(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "gru_engine", "info", gdata.path(gdata.DEMO_MODEL)],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "GRU(1->32, forward, lbr=1)" in r.stdout
    r = subprocess.run([sys.executable, "-m", "gru_engine", "run", "nope.onnx", "-i", "x.npy", "-o", "y.npy"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("gru-engine: error: ") and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "gru_engine"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and "usage: gru-engine" in r.stderr


# --------------------------------------------------------------------------- extensions


def test_subcommand_modules_are_optional_and_pluggable(capsys, tmp_path, monkeypatch):
    (tmp_path / "fake_cli_ext.py").write_text(textwrap.dedent("""
        from gru_engine.errors import InputShapeError

        def add_parser(sub):
            p = sub.add_parser("hello", help="say hello")
            p.add_argument("--fail", action="store_true")
            p.set_defaults(func=run)

        def run(args):
            if args.fail:
                raise InputShapeError("x must be nice,\\ngot something else")
            print("hello from an extension")
            return 3
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "SUBCOMMAND_MODULES", ["gru_engine.cli_does_not_exist", "fake_cli_ext"])
    rc, out, err = run_cli(capsys, "hello")
    assert rc == 3 and "hello from an extension" in out and err == ""
    rc, _, err = run_cli(capsys, "hello", "--fail")
    assert_one_line_error(rc, err, "x must be nice, got something else")


def test_demo_without_onnxruntime_or_matplotlib(capsys, tmp_path, monkeypatch):
    """The demo needs only the runtime dependencies: without onnxruntime it says so and
    skips the agreement line; --plot without matplotlib is a one-line error."""
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    rc, out, err = run_cli(capsys, "demo", "--repeats", 10)
    assert rc == 0, err
    assert "agreement with onnxruntime: skipped (onnxruntime is not installed" in out
    assert "RMSE" in out and "gru-engine " in out
    rc, out, err = run_cli(capsys, "demo", "--plot", tmp_path / "f.png")
    assert_one_line_error(rc, err, "--plot needs matplotlib: pip install 'gru-engine[plot]'")
    assert not (tmp_path / "f.png").exists()


def test_validate_and_info_keras_file(capsys, tmp_path):
    keras = pytest.importorskip("keras")
    pytest.importorskip("h5py")
    keras.utils.set_random_seed(0)
    km = keras.Sequential([keras.Input((None, 3)), keras.layers.GRU(4, return_sequences=True),
                           keras.layers.Dense(2, activation="sigmoid")])
    km.save(tmp_path / "m.keras")
    rc, out, err = run_cli(capsys, "validate", tmp_path / "m.keras", "--against", "keras")
    assert rc == 0, out + err
    assert "PASS" in out
    rc, out, err = run_cli(capsys, "info", tmp_path / "m.keras")
    assert rc == 0 and "GRU(3->4, forward, lbr=1)" in out and "Dense(4->2, sigmoid)" in out

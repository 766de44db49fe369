"""``gru-engine convert``: real files in, real files out, checked against the frameworks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
nn = torch.nn

import converters  # noqa: E402
from gru_engine import GRU, Dense, Model  # noqa: E402
from gru_engine.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def worst(out: str) -> float:
    line = [ln for ln in out.splitlines() if ln.startswith("worst error")][-1]
    return float(line.split()[2])


class Forecaster(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(12, 4)
        self.rnn = nn.GRU(4, 6, num_layers=2, batch_first=True, bidirectional=True)
        self.fc1 = nn.Linear(12, 5)
        self.fc2 = nn.Linear(5, 3)

    def forward(self, x):
        y, _ = self.rnn(self.embedding(x))
        return self.fc2(torch.tanh(self.fc1(y)))


def ort_run(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return sess.run(None, {name: x})[0]


def test_torch_checkpoint_to_onnx(tmp_path, capsys, rng):
    torch.manual_seed(0)
    m = Forecaster().eval()
    src = tmp_path / "forecaster.pt"
    torch.save({"epoch": 3, "model_state_dict": m.state_dict()}, src)
    dst = tmp_path / "forecaster.onnx"
    rc = main(["convert", str(src), "-o", str(dst), "--activations", "tanh,none"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "source (torch on forecaster.pt) y" in out and "destination (onnxruntime on forecaster.onnx) y" in out
    assert worst(out) < 1e-5
    # the ONNX file itself computes the torch module's outputs in onnxruntime
    x = rng.integers(0, 12, (2, 9))
    with torch.no_grad():
        ref = m(torch.from_numpy(x)).numpy()
    assert np.abs(ort_run(dst, x) - ref).max() < 1e-5
    # without the activations the checkpoint is refused (exit 2), naming the option
    rc = main(["convert", str(src), "-o", str(tmp_path / "x.onnx")])
    assert rc == 2 and "activations" in capsys.readouterr().err


def test_onnx_to_pt(tmp_path, capsys, rng):
    s = 0.5
    layers = (
        GRU(W=rng.uniform(-s, s, (2, 12, 3)), R=rng.uniform(-s, s, (2, 12, 4)), B=rng.uniform(-s, s, (2, 24)),
            direction="bidirectional", linear_before_reset=1),
        GRU(W=rng.uniform(-s, s, (1, 12, 8)), R=rng.uniform(-s, s, (1, 12, 4)), B=rng.uniform(-s, s, (1, 24)),
            linear_before_reset=1, return_sequences=False),
        Dense(kernel=rng.standard_normal((4, 2)), bias=rng.standard_normal(2), activation="sigmoid"),
    )
    model = Model(tuple(layer.astype(np.float32) for layer in layers))
    src = tmp_path / "model.onnx"
    converters.to_onnx(model, src)
    dst = tmp_path / "model.pt"
    rc = main(["convert", str(src), "-o", str(dst)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "source (onnxruntime on model.onnx)" in out and "destination (torch module loaded from model.pt)" in out
    assert worst(out) < 1e-5
    # the .pt is a plain state dict: it loads with weights_only into to_torch's module
    state = torch.load(dst, weights_only=True)
    module = converters.to_torch(model)
    module.load_state_dict(state)
    x = rng.uniform(-1, 1, (3, 5, 3)).astype(np.float32)
    with torch.no_grad():
        ty, _ = module(torch.from_numpy(x))
    assert np.abs(ty.numpy() - ort_run(src, x)).max() < 1e-5


def test_tolerance_failure_exits_1(tmp_path, capsys):
    torch.manual_seed(1)
    src = tmp_path / "g.pt"
    torch.save(nn.GRU(3, 4).state_dict(), src)
    rc = main(["convert", str(src), "-o", str(tmp_path / "g.onnx"), "--atol", "1e-12"])
    out = capsys.readouterr().out
    assert rc == 1 and "FAIL" in out and worst(out) > 1e-12


def test_from_override_and_prefix(tmp_path, capsys):
    torch.manual_seed(2)
    enc = nn.Module()
    enc.gru = nn.GRU(3, 4, num_layers=2)
    enc.norm = nn.LayerNorm(4)
    src = tmp_path / "weights.blob"
    torch.save(enc.state_dict(), src)
    rc = main(["convert", str(src), "-o", str(tmp_path / "g.onnx"), "--from", "torch", "--prefix", "gru"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert len(converters.from_onnx(tmp_path / "g.onnx").gru_layers) == 2
    rc = main(["convert", str(src), "-o", str(tmp_path / "h.onnx"), "--from", "torch"])
    assert rc == 2 and "norm.weight" in capsys.readouterr().err


def test_bad_inputs_exit_2(tmp_path, capsys):
    torch.manual_seed(3)
    src = tmp_path / "g.pt"
    torch.save(nn.GRU(3, 4).state_dict(), src)
    assert main(["convert", str(src), "-o", str(tmp_path / "g.txt")]) == 2
    assert "DST must end in .onnx, .pt or .pth" in capsys.readouterr().err
    trunc = tmp_path / "t.pt"
    trunc.write_bytes(src.read_bytes()[:100])
    assert main(["convert", str(trunc), "-o", str(tmp_path / "t.onnx")]) == 2
    assert "complete torch.save file" in capsys.readouterr().err
    assert not (tmp_path / "t.onnx").exists()


def test_keras_to_onnx_and_pt(tmp_path, capsys, rng):
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(4)
    km = keras.Sequential([
        keras.Input((None, 3)),
        keras.layers.GRU(5, return_sequences=True),
        keras.layers.GRU(4),
        keras.layers.Dense(2, activation="softmax"),
    ])
    src = tmp_path / "k.keras"
    km.save(src)
    for dst in ("k.onnx", "k.pt"):
        rc = main(["convert", str(src), "-o", str(tmp_path / dst)])
        out = capsys.readouterr().out
        assert rc == 0, out
        assert "source (keras on k.keras) y" in out
        assert worst(out) < 1e-5
    # detected by content when the extension says nothing; the same for a legacy .h5
    blob = tmp_path / "k.blob"
    blob.write_bytes(src.read_bytes())
    km.save(tmp_path / "k.h5")
    (tmp_path / "h5.blob").write_bytes((tmp_path / "k.h5").read_bytes())
    assert converters.detect_format(blob) == "keras" and converters.detect_format(tmp_path / "h5.blob") == "keras"
    x = rng.uniform(-1, 1, (2, 6, 3)).astype(np.float32)
    ref = keras.ops.convert_to_numpy(km(x))
    for p in (blob, tmp_path / "h5.blob"):
        assert np.abs(converters.load_any(p).run(x)[0] - ref).max() < 1e-5
    assert np.abs(ort_run(tmp_path / "k.onnx", x) - ref).max() < 1e-5
    module = converters.to_torch(converters.from_keras(src))
    module.load_state_dict(torch.load(tmp_path / "k.pt", weights_only=True))
    with torch.no_grad():
        assert np.abs(module(torch.from_numpy(x))[0].numpy() - ref).max() < 1e-5


def test_console_entry_point(tmp_path):
    torch.manual_seed(5)
    src = tmp_path / "g.pth"
    torch.save(nn.GRUCell(3, 4).state_dict(), src)
    r = subprocess.run([sys.executable, "-m", "gru_engine", "convert", str(src), "-o", str(tmp_path / "g.onnx")],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PASS" in r.stdout


def test_torch_exported_onnx_with_fixed_dims_to_pt(tmp_path, capsys, rng):
    """A time-major module exported by torch.onnx.export (static shapes) -> .pt, checked at the graph's dims."""
    from converters.torch_io import export_module_onnx

    torch.manual_seed(6)

    class TM(nn.Module):
        def __init__(self):
            super().__init__()
            self.g = nn.GRU(3, 5, num_layers=2, bidirectional=True)
            self.fc = nn.Linear(10, 2)

        def forward(self, x):
            y, h = self.g(x)
            return self.fc(y), h

    m = TM().eval()
    src = tmp_path / "tm.onnx"
    src.write_bytes(export_module_onnx(m, torch.randn(4, 2, 3)))
    dst = tmp_path / "tm.pt"
    rc = main(["convert", str(src), "-o", str(dst)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert worst(out) < 1e-5
    module = converters.to_torch(converters.from_onnx(src))
    module.load_state_dict(torch.load(dst, weights_only=True))
    x = rng.uniform(-1, 1, (3, 6, 3)).astype(np.float32)  # any shape in the engine / torch
    with torch.no_grad():
        ry, rh = m(torch.from_numpy(x.transpose(1, 0, 2).copy()))
        ty, th = module(torch.from_numpy(x))
    assert np.abs(ty.numpy() - ry.transpose(0, 1).numpy()).max() < 1e-5
    assert np.abs(th.numpy() - rh.numpy()).max() < 1e-5


def test_keras_weights_with_config_and_several_outputs(tmp_path, capsys, rng):
    """A bare .weights.h5 plus --config; a model with several outputs (return_state,
    merge_mode=None) is checked output by output against Keras and onnxruntime."""
    keras = pytest.importorskip("keras")
    L = keras.layers
    keras.utils.set_random_seed(5)
    inp = keras.Input((None, 3))
    s, h = L.GRU(5, return_sequences=True, return_state=True, name="enc")(inp)
    fwd, bwd = L.Bidirectional(L.GRU(4), merge_mode=None, name="bi")(s)
    km = keras.Model(inp, [fwd, bwd, h])
    weights, cfg = tmp_path / "m.weights.h5", tmp_path / "m.json"
    km.save_weights(weights)
    cfg.write_text(km.to_json())
    dst = tmp_path / "m.onnx"
    rc = main(["convert", str(weights), "-o", str(dst), "--config", str(cfg)])
    out = capsys.readouterr().out
    assert rc == 0, out
    for label in ("source (keras on m.weights.h5) bi:0", "source (keras on m.weights.h5) enc:1",
                  "destination (onnxruntime on m.onnx) output_2"):
        assert label in out, out
    assert worst(out) < 1e-5
    x = rng.uniform(-1, 1, (2, 6, 3)).astype(np.float32)
    ref = [keras.ops.convert_to_numpy(a) for a in km(x)]
    sess = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    got = sess.run(["output_0", "output_1", "output_2"], {"x": x})
    assert max(np.abs(g - r).max() for g, r in zip(got, ref)) < 1e-5
    assert main(["validate", str(weights), "--against", "keras", "--config", str(cfg)]) == 0
    assert "bi:1" in capsys.readouterr().out
    # without --config the weights-only file is refused by name; --config is for Keras sources only
    assert main(["convert", str(weights), "-o", str(tmp_path / "n.onnx")]) == 2
    assert "holds weights only" in capsys.readouterr().err
    assert main(["convert", str(dst), "-o", str(tmp_path / "n.pt"), "--config", str(cfg)]) == 2
    assert "--config applies to Keras files only" in capsys.readouterr().err

"""PyTorch in and out, against real torch modules saved to real files.

Worst errors are collected in WORST and printed at the end (``-s`` shows them)."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import converters  # noqa: E402
from converters import from_torch, to_torch  # noqa: E402
from gru_engine import GRU, Dense, Embedding, Model, ModelDefinitionError, ModelFileError, UnsupportedError  # noqa: E402

ATOL = 1e-5
WORST: dict[str, float] = {}


def check(kind, got, ref, atol=ATOL):
    got = np.asarray(got, np.float64)
    ref = np.asarray(ref.detach().numpy() if isinstance(ref, torch.Tensor) else ref, np.float64)
    assert got.shape == ref.shape, (kind, got.shape, ref.shape)
    err = float(np.abs(got - ref).max()) if got.size else 0.0
    WORST[kind] = max(WORST.get(kind, 0.0), err)
    assert err < atol, f"{kind}: max abs error {err:.3g}"


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    print("\nworst abs error per kind: " + ", ".join(f"{k} {v:.2e}" for k, v in sorted(WORST.items())))


def save(tmp_path, obj, name="model.pt") -> Path:
    p = tmp_path / name
    torch.save(obj, p)
    return p


def randn(rng, *shape):
    return rng.uniform(-1, 1, shape).astype(np.float32)


# --------------------------------------------------------------------------- nn.GRU / nn.GRUCell

GRU_CASES = [  # num_layers, bidirectional, batch_first, bias
    (1, False, False, True),
    (1, True, True, True),
    (2, False, True, False),
    (2, True, False, True),
    (3, False, False, True),
    (3, True, True, False),
]


@pytest.mark.parametrize("L,bidir,bf,bias", GRU_CASES, ids=[f"L{c[0]}-{'bi' if c[1] else 'uni'}-{'bf' if c[2] else 'tm'}-{'b' if c[3] else 'nob'}" for c in GRU_CASES])
def test_nn_gru(tmp_path, rng, L, bidir, bf, bias):
    torch.manual_seed(L + 10 * bidir + 100 * bf)
    gru = nn.GRU(3, 5, num_layers=L, bidirectional=bidir, batch_first=bf, bias=bias, dropout=0.3 if L > 1 else 0.0).eval()
    x = randn(rng, 2, 6, 3)
    xt = torch.from_numpy(x if bf else x.transpose(1, 0, 2).copy())
    with torch.no_grad():
        ry, rh = gru(xt)
    ry = ry if bf else ry.transpose(0, 1)
    path = save(tmp_path, gru.state_dict())
    for src in (gru, path):
        model = from_torch(src)
        assert len(model.gru_layers) == L
        assert all(g.linear_before_reset == 1 for g in model.gru_layers)
        y, h_n = model.run(x)
        check("nn.GRU", y, ry)
        check("nn.GRU h_n", h_n, rh)


def test_nn_gru_cell(tmp_path, rng):
    torch.manual_seed(1)
    for bias in (True, False):
        cell = nn.GRUCell(4, 6, bias=bias).eval()
        x = randn(rng, 3, 5, 4)
        h = torch.zeros(3, 6)
        ys = []
        with torch.no_grad():
            for t in range(5):
                h = cell(torch.from_numpy(x[:, t]), h)
                ys.append(h)
        ref = torch.stack(ys, 1)
        for src in (cell, save(tmp_path, cell.state_dict(), f"cell{bias}.pt")):
            y, h_n = from_torch(src).run(x)
            check("nn.GRUCell", y, ref)
            check("nn.GRUCell", h_n[0], h)


def test_validate_against_torch(tmp_path):
    torch.manual_seed(2)
    gru = nn.GRU(3, 4, num_layers=2, bidirectional=True, batch_first=True)
    path = save(tmp_path, {"epoch": 7, "state_dict": gru.state_dict()})
    rep = converters.validate_against(path, "torch")
    assert set(rep) == {"y", "h_n"} and all(r["ok"] for r in rep.values()), rep
    # a converted model with a wrong weight fails validation
    wrong = from_torch(path)
    g0 = wrong.layers[0]
    W = g0.W.copy()
    W[0, 0, 0] += 0.5
    bad = Model((GRU(W=W, R=g0.R, B=g0.B, direction=g0.direction, linear_before_reset=1),) + wrong.layers[1:])
    rep = converters.validate_against(path, "torch", model=bad)
    assert not rep["y"]["ok"] and rep["y"]["max_abs"] > 1e-3


# --------------------------------------------------------------------------- whole modules via example_input


class Tagger(nn.Module):
    """Embedding -> GRU -> Linear -> activation, per step or at the last step."""

    def __init__(self, vocab=11, emb=4, hidden=6, out=3, last=False, bidirectional=False, act="tanh"):
        super().__init__()
        self.emb = nn.Embedding(vocab, emb)
        self.gru = nn.GRU(emb, hidden, batch_first=True, bidirectional=bidirectional, num_layers=2)
        self.head = nn.Linear(hidden * (2 if bidirectional else 1), out)
        self.last = last
        self.act = act

    def forward(self, tokens):
        y, _ = self.gru(self.emb(tokens))
        if self.last:
            y = y[:, -1]
        y = self.head(y)
        return torch.sigmoid(y) if self.act == "sigmoid" else torch.tanh(y) if self.act == "tanh" else torch.relu(y)


class Regressor(nn.Module):
    """Float features -> GRU -> ReLU -> Linear on the last step."""

    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(3, 8, batch_first=True)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        y, h = self.gru(x)
        return self.fc(torch.relu(y[:, -1]))


MODULES = {
    "tagger-steps-tanh": lambda: Tagger(),
    "tagger-last-sigmoid": lambda: Tagger(last=True, act="sigmoid"),
    "tagger-bi-relu": lambda: Tagger(bidirectional=True, act="relu"),
    "regressor-last": lambda: Regressor(),
}


@pytest.mark.parametrize("name", list(MODULES))
def test_module_with_example_input(rng, name):
    torch.manual_seed(3)
    module = MODULES[name]().eval()
    if name.startswith("tagger"):
        x = rng.integers(0, 11, (2, 7))
        example = torch.from_numpy(rng.integers(0, 11, (1, 5)))
    else:
        x = randn(rng, 2, 7, 3)
        example = torch.from_numpy(randn(rng, 1, 5, 3))
    model = from_torch(module, example_input=example)
    with torch.no_grad():
        ref = module(torch.from_numpy(x))
    check("nn.Module via ONNX export", model.run(x)[0], ref)


def test_module_without_example_input_is_refused():
    with pytest.raises(ModelDefinitionError, match="example_input"):
        from_torch(Regressor())


# --------------------------------------------------------------------------- checkpoints


class Seq2Seq(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.embedding = nn.Embedding(9, 4)
        self.encoder.gru = nn.GRU(4, 5, batch_first=True, bidirectional=True)
        self.decoder = nn.Module()
        self.decoder.gru = nn.GRU(3, 5)
        self.decoder.norm = nn.LayerNorm(5)


def test_checkpoint_prefix(tmp_path, rng):
    torch.manual_seed(4)
    m = Seq2Seq().eval()
    path = save(tmp_path, {"model": m.state_dict(), "optimizer_step": 12})
    tokens = rng.integers(0, 9, (2, 6))
    with torch.no_grad():
        emb = m.encoder.embedding(torch.from_numpy(tokens))
        ry, rh = m.encoder.gru(emb)
    # "encoder." selects Embedding + GRU; the model takes token ids
    model = from_torch(path, prefix="encoder.")
    assert isinstance(model.layers[0], Embedding) and model.takes_tokens
    y, h_n = model.run(tokens)
    check("checkpoint prefix", y, ry)
    check("checkpoint prefix", h_n, rh)
    # "encoder.gru." selects the GRU alone
    model = from_torch(path, prefix="encoder.gru.")
    check("checkpoint prefix", model.run(emb.numpy())[0], ry)
    # without a prefix the decoder's LayerNorm (and its second GRU) cannot be placed
    with pytest.raises(UnsupportedError, match=r"decoder\.norm\.weight"):
        from_torch(path)
    with pytest.raises(ModelFileError, match="prefix 'nothere.' must match"):
        from_torch(path, prefix="nothere")


class Forecaster(nn.Module):
    def __init__(self, vocab=None):
        super().__init__()
        self.embedding = nn.Embedding(vocab, 4) if vocab else None
        self.rnn = nn.GRU(4 if vocab else 3, 6, num_layers=2, batch_first=True)
        self.fc1 = nn.Linear(6, 5)
        self.fc2 = nn.Linear(5, 2)

    def forward(self, x):
        if self.embedding is not None:
            x = self.embedding(x)
        y, _ = self.rnn(x)
        return self.fc2(torch.relu(self.fc1(y[:, -1])))


def test_checkpoint_head_last_step_and_activations(tmp_path, rng):
    torch.manual_seed(5)
    for vocab in (None, 13):
        m = Forecaster(vocab).eval()
        path = save(tmp_path, m.state_dict(), f"f{vocab}.pth")
        x = rng.integers(0, 13, (3, 8)) if vocab else randn(rng, 3, 8, 3)
        with torch.no_grad():
            ref = m(torch.from_numpy(x))
        with pytest.raises(UnsupportedError, match="activations"):
            from_torch(path, last_step=True)
        model = from_torch(path, last_step=True, activations=["relu", None])
        assert [type(layer).__name__ for layer in model.layers] == (["Embedding"] if vocab else []) + ["GRU", "GRU", "Dense", "Dense"]
        check("checkpoint + head", model.run(x)[0], ref)
        rep = converters.validate_against(path, "torch", last_step=True, activations=["relu", None])
        assert all(r["ok"] for r in rep.values()), rep


def test_checkpoint_chained_grus_and_cell(tmp_path, rng):
    torch.manual_seed(6)
    sd = {}
    g1 = nn.GRU(3, 4, bidirectional=True)
    g2 = nn.GRU(8, 5, bias=False)
    cell = nn.GRUCell(5, 2)
    for pfx, mod in (("a.", g1), ("b.", g2), ("c.", cell)):
        sd.update({pfx + k: v for k, v in mod.state_dict().items()})
    path = save(tmp_path, sd)
    model = from_torch(path)
    assert [g.hidden_size for g in model.gru_layers] == [4, 5, 2]
    rep = converters.validate_against(path, "torch")
    assert set(rep) == {"y", "h_n_0", "h_n_1", "h_n_2"} and all(r["ok"] for r in rep.values()), rep
    WORST["checkpoint chain"] = max(r["max_abs"] for r in rep.values())


def test_bad_checkpoints(tmp_path):
    torch.manual_seed(7)
    gru = nn.GRU(3, 4, num_layers=2)
    sd = gru.state_dict()
    # wrong shapes
    bad = dict(sd)
    bad["weight_hh_l1"] = torch.zeros(12, 5)
    with pytest.raises(ModelFileError, match=r"weight_hh_l1 must have shape \(12, 4\), got \(12, 5\)"):
        from_torch(save(tmp_path, bad, "shape.pt"))
    # missing key
    bad = dict(sd)
    del bad["bias_hh_l1"]
    with pytest.raises(ModelFileError, match="bias_hh_l1"):
        from_torch(save(tmp_path, bad, "missing.pt"))
    # unplaceable keys are all listed
    bad = dict(sd)
    bad["norm.weight"] = torch.ones(4)
    bad["norm.running_mean"] = torch.ones(4)
    with pytest.raises(UnsupportedError, match=r"norm\.weight \[4\], norm\.running_mean \[4\]"):
        from_torch(save(tmp_path, bad, "extra.pt"))
    # an LSTM is not a GRU
    with pytest.raises(UnsupportedError, match="LSTM"):
        from_torch(save(tmp_path, nn.LSTM(3, 4).state_dict(), "lstm.pt"))
    # no GRU at all
    with pytest.raises(UnsupportedError, match="no GRU parameters"):
        from_torch(save(tmp_path, nn.Linear(3, 4).state_dict(), "linear.pt"))
    # not a state dict
    with pytest.raises(ModelFileError, match="state dict"):
        from_torch(save(tmp_path, [1, 2, 3], "list.pt"))
    # truncated file
    good = save(tmp_path, sd, "good.pt")
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ModelFileError, match="complete torch.save file"):
        from_torch(trunc)
    with pytest.raises(ModelFileError, match="must be an existing file"):
        from_torch(tmp_path / "absent.pt")


class Evil:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.mark.parametrize("container", ["torch.save", "raw pickle"])
def test_malicious_pickle_is_refused_and_not_run(tmp_path, container):
    target = tmp_path / "pwned.txt"
    payload = {"state_dict": {"weight_ih_l0": torch.zeros(12, 3)}, "hook": Evil(target)}
    path = tmp_path / "evil.pt"
    if container == "torch.save":
        torch.save(payload, path)
        assert zipfile.is_zipfile(path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    assert not target.exists()
    with pytest.raises(ModelFileError, match="would run code"):
        from_torch(path)
    with pytest.raises(ModelFileError):
        converters.load_any(path)
    assert not target.exists()
    # the payload is real: an unrestricted unpickler would have run it
    pickle.loads(pickle.dumps(Evil(target)))
    assert target.exists()


# --------------------------------------------------------------------------- to_torch


def _random_model(rng, kind):
    s = 0.4
    I, H = 3, 5

    def gru(I, H, D=1, **kw):
        return GRU(W=rng.uniform(-s, s, (D, 3 * H, I)), R=rng.uniform(-s, s, (D, 3 * H, H)),
                   B=rng.uniform(-s, s, (D, 6 * H)), linear_before_reset=1, **kw)

    def f32(layers, **kw):
        return Model(tuple(layer.astype(np.float32) for layer in layers), **kw)

    if kind == "stack-uniform":
        return f32([gru(I, H), gru(H, H), gru(H, H)])
    if kind == "bi-stack-head":
        return f32([gru(I, H, 2, direction="bidirectional"), gru(2 * H, H, 2, direction="bidirectional", return_sequences=False),
                    Dense(kernel=rng.standard_normal((2 * H, 2)), bias=rng.standard_normal(2), activation="softmax")])
    if kind == "emb-mixed-sizes":
        return f32([Embedding(table=rng.standard_normal((10, 4))), gru(4, 6), gru(6, 3, direction="reverse"),
                    Dense(kernel=rng.standard_normal((3, 4)), activation="gelu")])
    if kind == "merge-sum-goback":
        return f32([gru(I, H, 2, direction="bidirectional", merge="sum", time_reversed_output=True),
                    Dense(kernel=rng.standard_normal((H, 3)), activation="elu", alpha=0.5)])
    raise KeyError(kind)


@pytest.mark.parametrize("kind", ["stack-uniform", "bi-stack-head", "emb-mixed-sizes", "merge-sum-goback"])
def test_to_torch_round_trip_through_onnx(tmp_path, rng, kind):
    """Model -> ONNX file -> from_onnx -> to_torch: torch matches the engine (and onnxruntime)."""
    model = _random_model(rng, kind)
    path = tmp_path / "m.onnx"
    converters.to_onnx(model, path)
    loaded = converters.from_onnx(path)
    module = to_torch(loaded)
    x = rng.integers(0, 10, (2, 6)) if loaded.takes_tokens else randn(rng, 2, 6, 3)
    y, h_n = loaded.run(x)
    with torch.no_grad():
        ty, th = module(torch.from_numpy(x))
    check("to_torch", ty, y)
    if isinstance(h_n, list):
        assert len(th) == len(h_n)
        for a, b in zip(th, h_n):
            check("to_torch h_n", a, b)
    else:
        check("to_torch h_n", th, h_n)
    if kind == "stack-uniform":  # one multi-layer nn.GRU
        assert isinstance(module.gru0, nn.GRU) and module.gru0.num_layers == 3
    # the state dict reloads through from_torch (linear heads: no activation after them)
    pt = tmp_path / "m.pt"
    torch.save(module.state_dict(), pt)
    if kind == "stack-uniform":
        check("to_torch -> .pt -> from_torch", from_torch(pt).run(x)[0], y)


def test_to_torch_initial_state(rng):
    model = _random_model(rng, "stack-uniform")
    x = randn(rng, 2, 4, 3)
    h0 = randn(rng, 3, 2, 5)
    y, h_n = model.run(x, initial_state=h0)
    with torch.no_grad():
        ty, th = to_torch(model)(torch.from_numpy(x), torch.from_numpy(h0))
    check("to_torch", ty, y)
    check("to_torch h_n", th, h_n)


def test_to_torch_refuses_what_torch_cannot_compute(rng):
    W, R = rng.uniform(-1, 1, (1, 9, 2)), rng.uniform(-1, 1, (1, 9, 3))
    with pytest.raises(UnsupportedError, match=r"layer 0 .*'enc'.*linear_before_reset must be 1"):
        to_torch(Model((GRU(W=W, R=R, linear_before_reset=0, name="enc"),)))
    with pytest.raises(UnsupportedError, match="activations must be Sigmoid, Tanh"):
        to_torch(Model((GRU(W=W, R=R, linear_before_reset=1, activations=("HardSigmoid", "Tanh")),)))
    with pytest.raises(UnsupportedError, match="clip"):
        to_torch(Model((GRU(W=W, R=R, linear_before_reset=1, clip=3.0),)))
    with pytest.raises(UnsupportedError, match="mask_zero"):
        to_torch(Model((Embedding(table=np.ones((4, 2)), mask_zero=True), GRU(W=W, R=R, linear_before_reset=1))))


# --------------------------------------------------------------------------- load_any


def test_load_any_detects_formats(tmp_path, rng):
    torch.manual_seed(8)
    gru = nn.GRU(3, 4, batch_first=True)
    x = randn(rng, 2, 5, 3)
    ref = from_torch(gru).run(x)[0]
    pt = save(tmp_path, gru.state_dict(), "weights.pt")
    odd = tmp_path / "weights.data"
    odd.write_bytes(pt.read_bytes())
    legacy = tmp_path / "legacy.weird"
    torch.save(gru.state_dict(), legacy, _use_new_zipfile_serialization=False)
    onnx_path = tmp_path / "m.model"
    converters.to_onnx(from_torch(gru), onnx_path)
    for p, fmt in ((pt, "torch"), (odd, "torch"), (legacy, "torch"), (onnx_path, "onnx")):
        assert converters.detect_format(p) == fmt, p
        check("load_any", converters.load_any(p).run(x)[0], ref)
    with pytest.raises(ModelFileError):
        converters.load_any(pt, fmt="onnx")
    junk = tmp_path / "junk.xyz"
    junk.write_bytes(b"hello world, not a model")
    with pytest.raises(ModelFileError, match="could not be recognised"):
        converters.load_any(junk)


def test_import_converters_imports_no_framework():
    import subprocess
    import sys

    code = "import sys, converters; converters.from_arrays; print(sorted(m for m in ('torch', 'keras', 'onnxruntime', 'tensorflow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1], check=True)
    assert out.stdout.strip() == "[]"


class Residual(nn.Module):
    """A residual add is not a chain of layers, so both exporters' graphs are refused."""

    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(3, 3, batch_first=True)

    def forward(self, x):
        return self.gru(x)[0] + x


def test_module_the_reader_cannot_place_is_refused_with_both_reasons():
    with pytest.raises(UnsupportedError, match=r"legacy from_onnx: .*Add.* \| dynamo from_onnx: .*Add"):
        from_torch(Residual(), example_input=torch.randn(1, 4, 3))


def test_time_major_module_runs_batch_first(rng):
    """batch_first=False modules take (T, B, F); the engine takes the same data batch-first."""
    torch.manual_seed(9)

    class TM(nn.Module):
        def __init__(self):
            super().__init__()
            self.g = nn.GRU(3, 5, num_layers=2)
            self.fc = nn.Linear(5, 2)

        def forward(self, x):
            return self.fc(self.g(x)[0])

    m = TM().eval()
    x = randn(rng, 2, 6, 3)
    model = from_torch(m, example_input=torch.randn(4, 1, 3))
    with torch.no_grad():
        ref = m(torch.from_numpy(x.transpose(1, 0, 2).copy())).transpose(0, 1)
    check("nn.Module via ONNX export", model.run(x)[0], ref)


def test_dtypes_kept_or_widened(tmp_path, rng):
    """float64 modules stay float64; fp16 / bf16 checkpoints compute in float32."""
    torch.manual_seed(10)
    g64 = nn.GRU(3, 4, batch_first=True, dtype=torch.float64)
    x = rng.uniform(-1, 1, (2, 5, 3))
    m64 = from_torch(g64)
    assert m64.dtype == np.float64
    with torch.no_grad():
        ref = g64(torch.from_numpy(x))[0]
    assert np.abs(m64.run(x)[0] - ref.numpy()).max() < 1e-12
    g = nn.GRU(3, 4, batch_first=True)
    for dt in (torch.float16, torch.bfloat16):
        half = {k: v.to(dt) for k, v in g.state_dict().items()}
        m = from_torch(save(tmp_path, half, f"{dt}.pt"))
        assert m.dtype == np.float32
        g.load_state_dict({k: v.float() for k, v in half.items()})
        with torch.no_grad():
            ref = g(torch.from_numpy(x.astype(np.float32)))[0]
        check("half checkpoint", m.run(x.astype(np.float32))[0], ref)


def test_to_torch_keras_go_backwards_layer(rng):
    """A reverse-only GRU with Keras go_backwards output order (time_reversed_output)."""
    s = 0.5
    for rs in (True, False):
        g = GRU(W=rng.uniform(-s, s, (1, 12, 3)), R=rng.uniform(-s, s, (1, 12, 4)), B=rng.uniform(-s, s, (1, 24)),
                direction="reverse", linear_before_reset=1, time_reversed_output=True, return_sequences=rs)
        model = Model((g.astype(np.float32),))
        x = randn(rng, 2, 6, 3)
        y, h_n = model.run(x)
        with torch.no_grad():
            ty, th = to_torch(model)(torch.from_numpy(x))
        check("to_torch", ty, y)
        check("to_torch h_n", th, h_n)


def test_keras_to_torch_round_trip(tmp_path, rng):
    """Keras file -> from_keras -> to_torch matches model.predict (no TensorFlow anywhere)."""
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(11)
    km = keras.Sequential([
        keras.Input((None,), dtype="int32"),
        keras.layers.Embedding(15, 4),
        keras.layers.Bidirectional(keras.layers.GRU(5, return_sequences=True), merge_mode="sum"),
        keras.layers.GRU(3, go_backwards=True, return_sequences=True),
        keras.layers.TimeDistributed(keras.layers.Dense(2)),
        keras.layers.Activation("tanh"),
    ])
    km.layers[0].set_weights([rng.standard_normal((15, 4)).astype(np.float32) * 2])  # Keras' init is +-0.05
    path = tmp_path / "k.keras"
    km.save(path)
    x = rng.integers(0, 15, (2, 7))
    ref = keras.ops.convert_to_numpy(km.predict(x, verbose=0))
    assert ref.std() > 0.05  # outputs that vary, so the comparison means something
    module = to_torch(converters.from_keras(path))
    with torch.no_grad():
        ty, _ = module(torch.from_numpy(x))
    check("keras -> to_torch", ty, ref)
    # reset_after=False has no nn.GRU equivalent: refused by name
    k0 = keras.Sequential([keras.Input((None, 3)), keras.layers.GRU(4, reset_after=False, name="old_gru")])
    k0.save(tmp_path / "k0.keras")
    with pytest.raises(UnsupportedError, match="old_gru.*linear_before_reset must be 1"):
        to_torch(converters.from_keras(tmp_path / "k0.keras"))


def test_validate_against_module_objects(rng):
    torch.manual_seed(12)
    rep = converters.validate_against(Tagger(last=True), "torch", x=rng.integers(0, 11, (2, 6)))
    assert set(rep) == {"y"} and rep["y"]["ok"], rep
    rep = converters.validate_against(nn.GRU(3, 4, num_layers=2), "torch")  # time-major module, default input
    assert rep["y"]["ok"] and rep["h_n"]["ok"], rep
    with pytest.raises(ModelDefinitionError, match="x must be given"):
        converters.validate_against(Tagger(), "torch")
    with pytest.raises(ModelDefinitionError, match="framework must be one of"):
        converters.validate_against(Tagger(), "tensorflow")


def test_module_with_h0_argument(rng):
    """forward(x, h0): the exported initial-state input becomes Model.run's initial_state."""
    torch.manual_seed(13)

    class WithState(nn.Module):
        def __init__(self):
            super().__init__()
            self.g = nn.GRU(3, 5, num_layers=2, batch_first=True)
            self.fc = nn.Linear(5, 2)

        def forward(self, x, h0):
            return self.fc(self.g(x, h0)[0])

    m = WithState().eval()
    model = from_torch(m, example_input=(torch.randn(1, 4, 3), torch.randn(2, 1, 5)))
    x, h0 = randn(rng, 2, 6, 3), randn(rng, 2, 2, 5)
    with torch.no_grad():
        ref = m(torch.from_numpy(x), torch.from_numpy(h0))
    check("nn.Module via ONNX export", model.run(x, initial_state=h0)[0], ref)

"""from_keras against real Keras 3 (torch backend): models saved to real files, converted
without Keras, run by the engine and compared with Keras' own ``predict`` (1e-5, float32).

Model builders and inputs live in ``keras_models.py``; every model is built and saved once
per module (``.keras``, legacy ``.h5``, ``.weights.h5`` + JSON config).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest

keras = pytest.importorskip("keras")
h5py = pytest.importorskip("h5py")

import keras_models as KM  # noqa: E402
from conftest import ATOL  # noqa: E402

from converters.keras_io import from_keras  # noqa: E402
from gru_engine.errors import ModelFileError, UnsupportedError  # noqa: E402

TOL = ATOL[np.float32]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
L = keras.layers

#: worst |engine - Keras| per (case, format), printed at the end of the module
WORST: dict = {}


@pytest.fixture(scope="module")
def kdir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("keras_models"))


@pytest.fixture(scope="module")
def saved(kdir):
    """case -> (keras model, paths, x, Keras prediction); built and saved once."""
    cache = {}

    def get(case):
        if case not in cache:
            m, kind = KM.build(case)
            paths = KM.save_all(m, kdir, case)
            x = KM.inputs_for(kind)
            cache[case] = (m, paths, x, KM.predict(m, x))
        return cache[case]

    yield get
    if WORST:
        (case, fmt), err = max(WORST.items(), key=lambda kv: kv[1])
        print(f"\nworst |engine - keras| over {len(WORST)} conversions: {err:.3g} ({case}, {fmt})")
        for kind in ("onnxruntime", "torch"):
            sub = {k: v for k, v in WORST.items() if k[1] == kind}
            if sub:
                (case, _), err = max(sub.items(), key=lambda kv: kv[1])
                print(f"worst |{kind} - keras| over {len(sub)} round trips: {err:.3g} ({case})")


def _max_err(got, ref, key) -> float:
    """Worst |got - ref| over one output or a list of them (a multi-output model)."""
    if isinstance(ref, list):
        assert isinstance(got, list) and len(got) == len(ref), f"{key}: {len(ref)} Keras outputs, got {type(got).__name__}"
        return max(_max_err(g, r, key) for g, r in zip(got, ref))
    got = np.asarray(got)
    assert got.shape == ref.shape, f"{key}: shape {got.shape} != Keras {ref.shape}"
    return float(np.abs(got.astype(np.float64) - ref).max())


def _err(model, x, y, key):
    err = _max_err(model(x), y, key)
    WORST[key] = max(err, WORST.get(key, 0.0))
    return err


# --------------------------------------------------------------------------- every layer kind / option


@pytest.mark.parametrize("case", list(KM.CASES))
def test_matches_keras_all_formats(saved, case):
    _m, paths, x, y = saved(case)
    for fmt, cfg in (("keras", None), ("h5", None), ("weights", paths["config"])):
        model = from_keras(paths[fmt], config=cfg)
        err = _err(model, x, y, (case, fmt))
        assert err <= TOL, f"{case} from {fmt}: max error {err:.3g} > {TOL}"


@pytest.mark.parametrize("case", ["seq_basic", "masking_post_padding", "embedding_mask_zero", "functional_return_state"])
def test_matches_reloaded_keras_model(saved, case):
    """The reference is also the saved file as Keras itself loads it."""
    _m, paths, x, _y = saved(case)
    loaded = keras.saving.load_model(paths["keras"], compile=False)
    y = KM.predict(loaded, x)
    err = _err(from_keras(paths["keras"]), x, y, (case, "keras-reloaded"))
    assert err <= TOL


def test_masks_are_exercised(saved):
    """The masked cases really depend on the mask: Keras' output at masked steps differs from
    running the same model with the padding treated as data."""
    m, _paths, x, y = saved("masking_bidirectional_sequences")
    # Bidirectional(return_sequences=True) writes zeros at masked steps, so the Dense head gives its bias.
    bias = m.layers[-1].get_weights()[1]
    np.testing.assert_allclose(y[1, 4:], np.broadcast_to(bias, y[1, 4:].shape), atol=1e-6)
    # Plain GRU: a masked step repeats the previous output.
    _m, _p, xe, ye = saved("masking_post_padding")
    model = from_keras(_p["keras"])
    assert model.layers[0].kind == "Masking"
    assert np.abs(ye[1] - ye[0]).max() > 1e-3


def test_nested_models_keep_the_mask(saved):
    """Keras propagates the mask out of a nested model: the last GRU repeats its output at
    the padded steps of row 1 (and the engine, which flattens nested models, does too)."""
    _m, paths, x, y = saved("nested_models")
    np.testing.assert_allclose(y[1, 4:], np.broadcast_to(y[1, 3], y[1, 4:].shape), atol=1e-7)
    model = from_keras(paths["h5"])
    assert [layer.name for layer in model.layers] == ["pad", "eg", "bi", "post", "top"]


def test_option_mapping(saved):
    """Spot checks of the canonical model the converter builds."""
    m = from_keras(saved("go_backwards")[1]["keras"])
    g0 = m.layers[0]
    assert g0.direction == "reverse" and g0.time_reversed_output and g0.linear_before_reset == 1
    m = from_keras(saved("reset_before_hard_sigmoid")[1]["h5"])
    g0 = m.layers[0]
    assert g0.linear_before_reset == 0 and g0.activations == ("HardSigmoid", "Tanh")
    assert g0.activation_alpha == pytest.approx((1 / 6,)) and g0.activation_beta == (0.5,)
    m = from_keras(saved("masking_bidirectional_sequences")[1]["keras"])
    assert m.layers[1].masked_output == "zero" and m.layers[1].merge == "ave"
    m = from_keras(saved("masking_bidirectional_last")[1]["keras"])
    assert m.layers[1].masked_output == "carry" and not m.layers[1].return_sequences
    m = from_keras(saved("embedding_mask_zero")[1]["keras"])
    assert m.takes_tokens and m.layers[0].mask_zero


def test_weights_with_config_variants(saved):
    _m, paths, x, y = saved("bidirectional_sum")
    with open(paths["config"]) as f:
        cfg = json.load(f)
    for variant in (cfg, json.dumps(cfg), paths["config"], paths["keras"], paths["h5"], cfg["config"]):
        assert _err(from_keras(paths["weights"], config=variant), x, y, ("bidirectional_sum", "weights+cfg")) <= TOL


def test_group_names_fallback_without_name_attributes(saved, kdir):
    """Files whose ``vars`` groups carry no ``name`` attribute: Keras' class+order naming."""
    _m, paths, x, y = saved("functional_masking")
    p = os.path.join(kdir, "noname.weights.h5")
    shutil.copy(paths["weights"], p)
    with h5py.File(p, "r+") as h:
        for g in h["layers"].values():
            if "vars" in g and "name" in g["vars"].attrs:
                del g["vars"].attrs["name"]
    assert _err(from_keras(p, config=paths["config"]), x, y, ("functional_masking", "no-names")) <= TOL


def test_keras2_style_inbound_nodes(saved):
    """The Keras 2 ``inbound_nodes`` form ``[[[layer, node, index, kwargs]]]`` is read too."""
    _m, paths, x, y = saved("functional_plain")
    with open(paths["config"]) as f:
        cfg = json.load(f)
    for layer in cfg["config"]["layers"]:
        old = []
        for node in layer["inbound_nodes"]:
            old.append([[*a["config"]["keras_history"], {}] for a in node["args"]])
        layer["inbound_nodes"] = old
        layer.pop("module", None)
    cfg["config"]["input_layers"] = [cfg["config"]["input_layers"]]
    cfg["config"]["output_layers"] = [cfg["config"]["output_layers"]]
    assert _err(from_keras(paths["weights"], config=cfg), x, y, ("functional_plain", "keras2-nodes")) <= TOL


def test_converts_without_keras(saved, kdir):
    """A fresh interpreter in which importing keras / tensorflow / torch fails."""
    _m, paths, x, y = saved("embedding_mask_zero")
    xin, yout = os.path.join(kdir, "x.npy"), os.path.join(kdir, "y.npy")
    np.save(xin, x)
    code = (
        "import sys\n"
        "for n in ('keras', 'tensorflow', 'torch'): sys.modules[n] = None\n"
        "import numpy as np\n"
        "from converters.keras_io import from_keras\n"
        "m = from_keras(sys.argv[1]); np.save(sys.argv[3], m(np.load(sys.argv[2])))\n"
        "m = from_keras(sys.argv[4], config=sys.argv[5]); assert np.abs(m(np.load(sys.argv[2])) - np.load(sys.argv[3])).max() == 0\n"
    )
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run(
        [sys.executable, "-c", code, paths["keras"], xin, yout, paths["weights"], paths["config"]],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert np.abs(np.load(yout) - y).max() <= TOL


def test_stateful_gru_first_call(kdir):
    """stateful=True: same weights; the first predict from zero state matches (the engine's
    Stream carries state across calls)."""
    KM._seed(3)
    m = keras.Sequential([keras.Input(batch_shape=(5, KM.T, KM.F)), L.GRU(4, stateful=True, return_sequences=True)])
    KM._randomise(m, 3)
    p = os.path.join(kdir, "stateful.keras")
    m.save(p)
    x = KM.inputs_for("float")
    y = KM.predict(m, x)
    assert _err(from_keras(p), x, y, ("stateful", "keras")) <= TOL


def test_custom_loss_in_compile_config_is_ignored(kdir):
    def my_loss(y_true, y_pred):
        return keras.ops.mean((y_true - y_pred) ** 4)

    KM._seed(4)
    m = keras.Sequential([keras.Input((KM.T, KM.F)), L.GRU(3), L.Dense(1)])
    m.compile(optimizer="adam", loss=my_loss)
    p = os.path.join(kdir, "custom_loss.keras")
    m.save(p)
    with zipfile.ZipFile(p) as z:
        assert "my_loss" in z.read("config.json").decode()
    with pytest.raises(Exception):  # Keras itself needs compile=False or the custom object
        keras.saving.load_model(p)
    x = KM.inputs_for("float")
    assert _err(from_keras(p), x, KM.predict(m, x), ("custom_loss", "keras")) <= TOL


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    "case", ["seq_basic", "reset_before_hard_sigmoid", "go_backwards", "bidirectional_mul",
             "masking_post_padding", "embedding_mask_zero", "functional_return_state",
             "sequential_return_state", "bidirectional_none_sequences", "bidirectional_none_states",
             "functional_state_outputs"]
)
def test_round_trip_onnx_onnxruntime(saved, kdir, case):
    """Keras -> gru_engine.save (ONNX) -> onnxruntime, compared with Keras."""
    ort = pytest.importorskip("onnxruntime")
    import gru_engine

    m, paths, x, _y = saved(case)
    # ONNX expresses masks as per-row lengths, so the inputs are padded at the end of rows only.
    x = KM.post_padded_only("tokens" if x.ndim == 2 else "float")
    y = KM.predict(m, x)
    model = from_keras(paths["keras"])
    out = os.path.join(kdir, f"{case}.onnx")
    gru_engine.save(model, out)
    sess = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    feed_x = x.astype(np.int64) if model.takes_tokens else x
    if model.outputs:  # the Keras outputs are graph outputs output_0, output_1, ...
        names = [f"output_{i}" for i in range(len(model.outputs))]
        assert names == [o.name for o in sess.get_outputs()][-len(names):]
        got = sess.run(names, {sess.get_inputs()[0].name: feed_x})
    else:
        got = sess.run(None, {sess.get_inputs()[0].name: feed_x})[0]
    err = _max_err(got, y, case)
    WORST[(case, "onnxruntime")] = err
    assert err <= TOL, f"{case}: onnxruntime vs Keras {err:.3g}"
    # and the engine reads its own file back
    assert _err(gru_engine.load(out), x, y, (case, "onnx-reload")) <= TOL


# --------------------------------------------------------------------------- unsupported models


def _save(model, kdir, name):
    p = os.path.join(kdir, name)
    model.save(p)
    return p


def test_lambda_rejected_by_name_nothing_executed(kdir):
    marker = os.path.join(kdir, "lambda_ran")
    m = keras.Sequential([keras.Input((KM.T, KM.F)), L.GRU(3, return_sequences=True),
                          L.Lambda(lambda t: t * 2.0, name="double_it"), L.Dense(1)])
    p = _save(m, kdir, "lambda.keras")
    assert not os.path.exists(marker)
    with pytest.raises(UnsupportedError, match=r"'double_it' \(Lambda\).*supported layers"):
        from_keras(p)


def test_custom_layer_rejected(kdir):
    @keras.saving.register_keras_serializable(package="gru_tests")
    class Scale(keras.layers.Layer):
        def call(self, x):
            return x * 3.0

    m = keras.Sequential([keras.Input((KM.T, KM.F)), Scale(name="my_scale"), L.GRU(3)])
    for ext in ("keras", "h5"):
        p = _save(m, kdir, f"custom.{ext}")
        with pytest.raises(UnsupportedError, match=r"'my_scale' \((gru_tests>)?Scale\)"):
            from_keras(p)


def test_bidirectional_merge_none_feeding_a_layer_rejected(kdir):
    inp = keras.Input((KM.T, KM.F))
    f, _b = L.Bidirectional(L.GRU(3), merge_mode=None, name="bi_none")(inp)
    p = _save(keras.Model(inp, L.Dense(2)(f)), kdir, "merge_none.keras")
    with pytest.raises(UnsupportedError, match=r"'bi_none' \(Bidirectional\): merge_mode=None.*last layer"):
        from_keras(p)
    f, b = L.Bidirectional(L.GRU(3, return_sequences=True), merge_mode=None, name="bi_none2")(inp)
    p = _save(keras.Model(inp, L.GRU(2)(b)), kdir, "merge_none_back.keras")
    with pytest.raises(UnsupportedError, match=r"'bi_none2' \(Bidirectional\): its output #1"):
        from_keras(p)


def test_state_wired_elsewhere_rejected(kdir):
    inp = keras.Input((KM.T, KM.F))
    _seq, state = L.GRU(3, return_sequences=True, return_state=True, name="g_state")(inp)
    p = _save(keras.Model(inp, L.Dense(2)(state)), kdir, "state_out.keras")
    with pytest.raises(UnsupportedError, match=r"'g_state' \(GRU\).*return_state"):
        from_keras(p)
    # A state that is a model output and also feeds a layer
    seq, state = L.GRU(3, return_sequences=True, return_state=True, name="g_state2")(inp)
    p = _save(keras.Model(inp, [L.GRU(2)(seq), L.Dense(2)(state)]), kdir, "state_out2.keras")
    with pytest.raises(UnsupportedError, match=r"branch|g_state2"):
        from_keras(p)
    # An intermediate layer's main output as a model output
    seq = L.GRU(3, return_sequences=True, name="g_mid")(inp)
    p = _save(keras.Model(inp, [L.GRU(2)(seq), seq]), kdir, "mid_out.keras")
    with pytest.raises(UnsupportedError, match=r"'g_mid', which other layers follow"):
        from_keras(p)
    # return_state on a Sequential model's inner layer: Keras passes a list on
    m = keras.Sequential([keras.Input((KM.T, KM.F)), L.GRU(3, return_sequences=True), L.GRU(2, name="g_last")])
    cfg = json.loads(m.to_json())
    cfg["config"]["layers"][1]["config"]["return_state"] = True
    p = os.path.join(kdir, "seq_inner_state.weights.h5")
    m.save_weights(p)
    with pytest.raises(UnsupportedError, match=r"return_state=True in a Sequential model"):
        from_keras(p, config=cfg)


def test_multi_output_model_spec(saved):
    """The outputs the converter records, and predict() vs run()."""
    _m, paths, x, y = saved("bidirectional_none_states")
    model = from_keras(paths["keras"])
    assert [o.describe() for o in model.outputs] == ["y[..., 0:3]", "y[..., 3:6]", "state of GRU 0", "state of GRU 0 reverse"]
    yy, h_n = model.run(x)
    assert yy.shape == (x.shape[0], 6)  # run(): the two directions concatenated
    got = model.predict(x)
    np.testing.assert_array_equal(got[3], h_n[1])
    assert "predict() output 3" in model.summary()
    _m, paths, x, y = saved("functional_state_outputs")
    model = from_keras(paths["keras"])
    # named outputs in Keras' order: sorted by name, as model.predict returns them
    assert [o.name for o in model.outputs] == ["h_back", "h_first", "h_fwd", "head"]
    assert [(o.kind, o.gru, o.direction) for o in model.outputs] == [("state", 1, 1), ("state", 0, 0), ("state", 1, 0),
                                                                     ("y", 0, 0)]


def test_unsupported_activation_and_branches_rejected(kdir):
    m = keras.Sequential([keras.Input((KM.T, KM.F)), L.GRU(3, activation="gelu", name="g_gelu")])
    with pytest.raises(UnsupportedError, match=r"'g_gelu' \(GRU\): activation='gelu'.*supported"):
        from_keras(_save(m, kdir, "gelu.keras"))
    a, b = keras.Input((KM.T, KM.F)), keras.Input((KM.T, KM.F))
    two = keras.Model([a, b], L.GRU(2)(L.Add()([a, b])))
    with pytest.raises(UnsupportedError, match="one input"):
        from_keras(_save(two, kdir, "two_inputs.keras"))
    inp = keras.Input((KM.T, KM.F))
    x = L.GRU(3, return_sequences=True)(inp)
    branch = keras.Model(inp, L.Concatenate(name="cat")([x, inp]))
    with pytest.raises(UnsupportedError, match="'cat'"):
        from_keras(_save(branch, kdir, "branch.keras"))


# --------------------------------------------------------------------------- bad files


def test_missing_and_garbage_files(kdir, saved):
    with pytest.raises(ModelFileError, match="does not exist"):
        from_keras(os.path.join(kdir, "nope.keras"))
    p = os.path.join(kdir, "garbage.keras")
    with open(p, "wb") as f:
        f.write(b"definitely not a model")
    with pytest.raises(ModelFileError, match="garbage.keras"):
        from_keras(p)
    _m, paths, _x, _y = saved("seq_basic")
    with pytest.raises(ModelFileError, match="weights only: pass its architecture"):
        from_keras(paths["weights"])


@pytest.mark.parametrize("fmt", ["keras", "h5", "weights"])
def test_truncated_files(saved, kdir, fmt):
    _m, paths, _x, _y = saved("bidirectional_concat")
    data = open(paths[fmt], "rb").read()
    for cut in (len(data) // 2, len(data) - 200):
        p = os.path.join(kdir, f"trunc_{cut}_{os.path.basename(paths[fmt])}")
        with open(p, "wb") as f:
            f.write(data[:cut])
        with pytest.raises(ModelFileError, match=os.path.basename(p).replace(".", r"\.")):
            from_keras(p, config=paths["config"] if fmt == "weights" else None)


def test_keras_archive_without_weights_or_bad_config(saved, kdir):
    _m, paths, _x, _y = saved("seq_basic")
    p = os.path.join(kdir, "noweights.keras")
    with zipfile.ZipFile(paths["keras"]) as zin, zipfile.ZipFile(p, "w") as zout:
        for n in zin.namelist():
            if n != "model.weights.h5":
                zout.writestr(n, zin.read(n))
    with pytest.raises(ModelFileError, match="noweights.keras.*model.weights.h5"):
        from_keras(p)
    p = os.path.join(kdir, "badjson.keras")
    with zipfile.ZipFile(paths["keras"]) as zin, zipfile.ZipFile(p, "w") as zout:
        for n in zin.namelist():
            zout.writestr(n, b"{not json" if n == "config.json" else zin.read(n))
    with pytest.raises(ModelFileError, match="config.json must be valid JSON"):
        from_keras(p)


def test_missing_layer_weights(saved, kdir):
    _m, paths, _x, _y = saved("seq_basic")
    p = os.path.join(kdir, "missing.weights.h5")
    shutil.copy(paths["weights"], p)
    with h5py.File(p, "r+") as h:
        del h["layers/gru_1"]
    with pytest.raises(ModelFileError, match=r"missing\.weights\.h5.*weights of layer 'gru_\d+' \(GRU\) not found"):
        from_keras(p, config=paths["config"])
    p = os.path.join(kdir, "missing.h5")
    shutil.copy(paths["h5"], p)
    with h5py.File(p, "r+") as h:
        name = [n for n in h["model_weights"] if n.startswith("dense")][0]
        del h["model_weights"][name]
    with pytest.raises(ModelFileError, match=r"weights of layer 'dense\w*' \(Dense\) not found"):
        from_keras(p)


def test_wrong_weight_shape(saved, kdir):
    _m, paths, _x, _y = saved("seq_basic")
    p = os.path.join(kdir, "wrongshape.weights.h5")
    shutil.copy(paths["weights"], p)
    with h5py.File(p, "r+") as h:
        del h["layers/gru/cell/vars/1"]
        h["layers/gru/cell/vars"].create_dataset("1", data=np.zeros((5, 14), np.float32))
    with pytest.raises(ModelFileError, match=r"tensor 'recurrent_kernel' must have shape \(5, 15\).*got \(5, 14\)"):
        from_keras(p, config=paths["config"])


def test_config_weights_mismatch(saved):
    _m, paths, _x, _y = saved("seq_basic")
    _m2, other, _x2, _y2 = saved("functional_plain")
    with pytest.raises(ModelFileError, match=r"not found|must have shape"):
        from_keras(paths["weights"], config=other["config"])
    with open(paths["config"]) as f:
        cfg = json.load(f)
    cfg["config"]["layers"][1]["config"]["units"] = 6
    with pytest.raises(ModelFileError, match=r"'kernel' must have shape \(3, 18\).*got \(3, 15\)"):
        from_keras(paths["weights"], config=cfg)


def test_layers_around_grus_and_masks(kdir):
    """Layers converted by converters.keras_layers plug into the chain; one that Keras lets
    drop a mask (Conv1D after Masking) is refused rather than run with the mask."""
    x = KM.inputs_for("float")
    KM._seed(5)
    m = keras.Sequential([keras.Input((KM.T, KM.F)), L.Masking(), L.GRU(3, return_sequences=True),
                          L.LayerNormalization(), L.GlobalAveragePooling1D(), L.Dense(2)])
    assert _err(from_keras(_save(m, kdir, "ln_pool.keras")), x, KM.predict(m, x), ("ln_pool", "keras")) <= TOL
    m = keras.Sequential([keras.Input((KM.T, KM.F)), L.Masking(), L.Conv1D(4, 3, padding="same", name="cv"), L.GRU(3)])
    with pytest.raises(UnsupportedError, match=r"'cv' \(Conv1D\) follows a mask"):
        from_keras(_save(m, kdir, "mask_conv.keras"))


@pytest.mark.parametrize("fmt", ["keras"])
def test_corrupted_bytes_give_typed_errors(saved, kdir, fmt):
    """Seeded byte flips anywhere in a .keras archive: a GRUEngineError (the zip CRCs catch
    them), never another exception. Bare HDF5 files are only tested truncated: libhdf5 itself
    can crash (segfault) on some flipped attribute bytes, before any Python code can check."""
    from gru_engine.errors import GRUEngineError

    _m, paths, _x, _y = saved("functional_return_state")
    data = open(paths[fmt], "rb").read()
    rng = np.random.default_rng(7)
    typed = 0
    for i in range(40):
        b = bytearray(data)
        for j in rng.integers(0, len(b), int(rng.choice([1, 8, 64]))):
            b[j] = int(rng.integers(0, 256))
        p = os.path.join(kdir, f"flip{i}_{os.path.basename(paths[fmt])}")
        with open(p, "wb") as f:
            f.write(b)
        try:
            from_keras(p, config=paths["config"] if fmt == "weights" else None)
        except GRUEngineError:
            typed += 1
    assert typed > 0


def test_malformed_config_entries_give_typed_errors(saved):
    """Seeded edits of a real config (wrong types, deleted keys): typed errors only."""
    from gru_engine.errors import GRUEngineError

    _m, paths, _x, _y = saved("functional_return_state")
    with open(paths["config"]) as f:
        cfg = json.load(f)

    def walk(o, p=()):
        items = o.items() if isinstance(o, dict) else enumerate(o) if isinstance(o, list) else ()
        for k, v in items:
            yield p + (k,)
            yield from walk(v, p + (k,))

    where = list(walk(cfg))
    rng = np.random.default_rng(11)
    for _ in range(150):
        c = json.loads(json.dumps(cfg))
        p = where[int(rng.integers(len(where)))]
        o = c
        for k in p[:-1]:
            o = o[k]
        if isinstance(o, dict) and rng.random() < 0.3:
            del o[p[-1]]
        else:
            o[p[-1]] = [None, 1, -1, "x", [], {}, [1, 2], 0.5, True][int(rng.integers(9))]
        try:
            from_keras(paths["weights"], config=c)
        except GRUEngineError:
            pass


@pytest.mark.parametrize("case", ["embedding_mask_zero", "functional_plain", "bidirectional_backward_layer"])
def test_keras2_dialect_legacy_h5(saved, kdir, case):
    """Legacy .h5 in the tf.keras 2.x dialect (see keras_models.as_keras2_h5)."""
    _m, paths, x, y = saved(case)
    p = os.path.join(kdir, f"{case}.k2.h5")
    KM.as_keras2_h5(paths["h5"], p)
    assert _err(from_keras(p), x, y, (case, "keras2-h5")) <= TOL


def test_hard_sigmoid_follows_the_writing_keras_version(saved, kdir):
    """Keras 3 hard_sigmoid is relu6(x + 3) / 6 (alpha 1/6); Keras 1/2 files used 0.2 x + 0.5."""
    _m, paths, _x, _y = saved("reset_before_hard_sigmoid")
    assert from_keras(paths["h5"]).layers[0].activation_alpha == pytest.approx((1 / 6,))
    assert from_keras(paths["h5"], keras_version="2.15.0").layers[0].activation_alpha == (0.2,)
    p = os.path.join(kdir, "hs.k2.h5")
    KM.as_keras2_h5(paths["h5"], p)
    g = from_keras(p).layers[0]
    assert g.activations == ("HardSigmoid", "Tanh") and g.activation_alpha == (0.2,) and g.activation_beta == (0.5,)
    assert from_keras(p, keras_version="3.15.1").layers[0].activation_alpha == pytest.approx((1 / 6,))


def test_initial_state_and_shared_layers_rejected(kdir):
    inp = keras.Input((KM.T, KM.F))
    h0 = L.Dense(3, name="h0")(L.GlobalAveragePooling1D()(inp))
    out = L.GRU(3, name="g_init")(inp, initial_state=[h0])
    with pytest.raises(UnsupportedError, match=r"'g_init' \(GRU\) receives a tensor as initial_state="):
        from_keras(_save(keras.Model(inp, out), kdir, "init_state.keras"))
    inp = keras.Input((KM.T, KM.F))
    shared = L.Dense(3, name="shared")
    out = L.GRU(2)(shared(shared(L.Dense(3)(inp))))
    with pytest.raises(UnsupportedError, match=r"'shared' \(Dense\) is called 2 times"):
        from_keras(_save(keras.Model(inp, out), kdir, "shared.keras"))


def test_keras2_files_without_reset_after_key(saved, kdir):
    """Keras 2.0-2.1 configs have no reset_after key: those GRUs reset before (lbr 0)."""
    _m, paths, x, y = saved("reset_before_hard_sigmoid")
    p = os.path.join(kdir, "old_k2.h5")
    KM.as_keras2_h5(paths["h5"], p)
    with h5py.File(p, "r+") as h:
        cfg = json.loads(h.attrs["model_config"])
        for layer in cfg["config"]["layers"]:
            layer["config"].pop("reset_after", None)
        h.attrs["model_config"] = json.dumps(cfg)
    model = from_keras(p, keras_version="3")  # Keras 3's hard_sigmoid, to compare with Keras 3
    assert [g.linear_before_reset for g in model.gru_layers] == [0, 0]
    assert _err(model, x, y, ("reset_before_hard_sigmoid", "keras2-no-reset_after")) <= TOL


def test_quantized_layer_rejected(kdir):
    m = keras.Sequential([keras.Input((KM.T, KM.F)), L.GRU(4), L.Dense(2, name="dq")])
    m.quantize("int8")
    with pytest.raises(UnsupportedError, match=r"'dq' \(Dense\): quantized layers.*int8"):
        from_keras(_save(m, kdir, "quantized.keras"))


def _torch_out(model, x):
    torch = pytest.importorskip("torch")
    from converters import to_torch

    module = to_torch(model).eval()
    with torch.no_grad():
        out = module.predict(torch.from_numpy(x.astype(np.int64) if model.takes_tokens else x))
    return [o.numpy() for o in out] if isinstance(out, list) else out.numpy()


@pytest.mark.parametrize("case", ["seq_basic", "embedding_no_mask", "bidirectional_torch", "bidirectional_none_torch"])
def test_round_trip_keras_to_torch(saved, kdir, case):
    """Keras -> engine -> converters.to_torch (nn.Module) with no TensorFlow, compared with Keras."""
    if case == "bidirectional_torch":  # PyTorch has no reset_after=False / hard_sigmoid GRU
        KM._seed(6)
        m = keras.Sequential([keras.Input((KM.T, KM.F)), L.Bidirectional(L.GRU(4, return_sequences=True), merge_mode="ave"),
                              L.Bidirectional(L.GRU(3)), L.Dense(2)])
        KM._randomise(m, 6)
        x = KM.inputs_for("float")
        y = KM.predict(m, x)
        path = _save(m, kdir, "bidirectional_torch.keras")
    elif case == "bidirectional_none_torch":  # several outputs: module.predict returns them all
        KM._seed(7)
        inp = keras.Input((KM.T, KM.F))
        s, h = L.GRU(4, return_sequences=True, return_state=True)(inp)
        outs = L.Bidirectional(L.GRU(3, return_state=True), merge_mode=None)(s)
        m = keras.Model(inp, [*outs, h])
        KM._randomise(m, 7)
        x = KM.inputs_for("float")
        y = KM.predict(m, x)
        assert len(y) == 5
        path = _save(m, kdir, "bidirectional_none_torch.keras")
    else:
        _m, paths, x, y = saved(case)
        path = paths["keras"]
    err = _max_err(_torch_out(from_keras(path), x), y, case)
    WORST[(case, "torch")] = err
    assert err <= TOL, f"{case}: to_torch vs Keras {err:.3g}"


def test_state_only_and_repeated_outputs(kdir):
    """A model whose only output is a GRU state, and one listing a state twice around a
    Dropout-ended chain: predict() returns what Keras returns, and so does onnxruntime."""
    ort = pytest.importorskip("onnxruntime")
    import gru_engine

    KM._seed(8)
    inp = keras.Input((KM.T, KM.F))
    _seq, h = L.GRU(4, return_state=True)(inp)
    s, h2 = L.GRU(3, return_sequences=True, return_state=True)(inp)
    x = KM.inputs_for("float")
    for name, km in (("state_only", keras.Model(inp, h)), ("repeated", keras.Model(inp, [h2, L.Dropout(0.3)(s), h2]))):
        KM._randomise(km, 8)
        y = KM.predict(km, x)
        model = from_keras(_save(km, kdir, f"{name}.keras"))
        assert _err(model, x, y, (name, "keras")) <= TOL
        out = os.path.join(kdir, f"{name}.onnx")
        gru_engine.save(model, out)
        sess = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
        got = sess.run([f"output_{i}" for i in range(len(model.outputs))], {"x": x})
        assert _max_err(got if isinstance(y, list) else got[0], y, name) <= TOL

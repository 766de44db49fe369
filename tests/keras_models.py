"""Real Keras 3 models for the converter tests: builders, inputs, and saving in every format.

Each builder returns an uncompiled Keras model with seeded weights; :func:`inputs_for` makes
inputs that exercise its masks (post-padding, pre-padding, a masked step in the middle).
Keras is imported lazily so that ``import keras_models`` is cheap.
"""

from __future__ import annotations

import json
import os

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "torch")

T = 7  # time steps of every test input
F = 3  # features of float inputs
V = 12  # vocabulary of token inputs


def _k():
    import keras  # noqa: PLC0415 - optional framework

    return keras


def _seed(seed: int):
    _k().utils.set_random_seed(seed)


def _randomise(model, seed: int, scale: float = 0.5):
    """Non-trivial biases (Keras initialises them to zero), so bias handling is tested."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        if "bias" in v.path:
            v.assign(np.asarray(v.numpy()) + rng.uniform(-scale, scale, tuple(v.shape)).astype(np.float32))
    return model


# --------------------------------------------------------------------------- builders
# Each returns (model, input kind): "float" (B, T, F) or "tokens" (B, T).


def seq_basic():
    k = _k()
    L = k.layers
    m = k.Sequential([k.Input((T, F)), L.GRU(5, return_sequences=True), L.GRU(4), L.Dense(2, activation="softmax")])
    return m, "float"


def seq_no_input_layer():
    k = _k()
    m = k.Sequential([k.layers.GRU(4, return_sequences=True), k.layers.Dense(3)])
    m.build((None, T, F))
    return m, "float"


def reset_before_hard_sigmoid():
    k = _k()
    L = k.layers
    m = k.Sequential([
        k.Input((T, F)),
        L.GRU(5, reset_after=False, recurrent_activation="hard_sigmoid", return_sequences=True),
        L.GRU(4, reset_after=False),
        L.Dense(3, activation="tanh"),
    ])
    return m, "float"


def gru_activations():
    k = _k()
    L = k.layers
    m = k.Sequential([
        k.Input((T, F)),
        L.GRU(4, activation="relu", return_sequences=True),
        L.GRU(4, activation="linear", recurrent_activation="hard_sigmoid", use_bias=False, return_sequences=True),
        L.GRU(4, activation="softsign", recurrent_activation="softplus", return_sequences=True, dropout=0.3,
              recurrent_dropout=0.2),
        L.GRU(3, activation="elu", recurrent_activation="sigmoid", return_sequences=True),
        L.GRU(3, activation="leaky_relu", reset_after=False),
    ])
    return m, "float"


def go_backwards():
    k = _k()
    L = k.layers
    m = k.Sequential([
        k.Input((T, F)),
        L.GRU(4, go_backwards=True, return_sequences=True),
        L.GRU(4, return_sequences=True),
        L.GRU(3, go_backwards=True, reset_after=False),
    ])
    return m, "float"


def bidirectional(merge):
    def build():
        k = _k()
        L = k.layers
        m = k.Sequential([
            k.Input((T, F)),
            L.Bidirectional(L.GRU(4, return_sequences=True), merge_mode=merge),
            L.Bidirectional(L.GRU(3, reset_after=False, recurrent_activation="hard_sigmoid"), merge_mode=merge),
            L.Dense(2),
        ])
        return m, "float"

    build.__name__ = f"bidirectional_{merge}"
    return build


def bidirectional_backward_layer():
    k = _k()
    L = k.layers
    back = L.GRU(4, activation="relu", go_backwards=True, return_sequences=True)
    m = k.Sequential([
        k.Input((T, F)),
        L.Bidirectional(L.GRU(4, return_sequences=True), backward_layer=back, merge_mode="ave"),
        L.TimeDistributed(L.Dense(2, activation="sigmoid")),
    ])
    return m, "float"


def rnn_gru_cell():
    k = _k()
    L = k.layers
    m = k.Sequential([
        k.Input((T, F)),
        L.Masking(0.0),
        L.RNN(L.GRUCell(4, reset_after=False, recurrent_activation="hard_sigmoid"), return_sequences=True),
        L.Bidirectional(L.RNN(L.GRUCell(3), return_sequences=True), merge_mode="sum"),
        L.RNN(L.GRUCell(3), go_backwards=True),
    ])
    return m, "float"


def masking_post_padding():
    k = _k()
    L = k.layers
    m = k.Sequential([
        k.Input((T, F)),
        L.Masking(0.0),
        L.GRU(4, return_sequences=True),
        L.Bidirectional(L.GRU(3, return_sequences=True)),
        L.Dense(4, activation="relu"),
        L.GRU(3, go_backwards=True, return_sequences=True),
        L.GRU(3, go_backwards=True),
    ])
    return m, "float"


def masking_bidirectional_last():
    k = _k()
    L = k.layers
    m = k.Sequential([
        k.Input((T, F)),
        L.Masking(0.0),
        L.Bidirectional(L.GRU(4, reset_after=False), merge_mode="sum"),
        L.Dense(2),
    ])
    return m, "float"


def masking_bidirectional_sequences():
    k = _k()
    L = k.layers
    m = k.Sequential([
        k.Input((T, F)),
        L.Masking(0.0),
        L.Bidirectional(L.GRU(3, return_sequences=True), merge_mode="ave"),
        L.Dense(2),
    ])
    return m, "float"


def embedding_mask_zero():
    k = _k()
    L = k.layers
    m = k.Sequential([
        k.Input((T,), dtype="int32"),
        L.Embedding(V, 4, mask_zero=True),
        L.GRU(5, return_sequences=True),
        L.TimeDistributed(L.Dense(3, activation="relu")),
        L.Bidirectional(L.GRU(3), merge_mode="concat"),
        L.Dense(2),
    ])
    return m, "tokens"


def embedding_no_mask():
    k = _k()
    L = k.layers
    m = k.Sequential([
        k.Input((T,), dtype="int32"),
        L.Embedding(V, 4),
        L.GRU(4, return_sequences=True, go_backwards=True),
        L.Dense(2),
    ])
    return m, "tokens"


def noop_and_activations():
    k = _k()
    L = k.layers
    m = k.Sequential([
        k.Input((T, F)),
        L.GaussianNoise(0.5),
        L.Dense(6, activation="gelu"),
        L.SpatialDropout1D(0.3),
        L.GRU(5, return_sequences=True),
        L.Dropout(0.5),
        L.GaussianDropout(0.3),
        L.AlphaDropout(0.2),
        L.Activation("swish"),
        L.Dense(4, activation="leaky_relu"),
        L.Dense(4, activation="selu"),
        L.Dense(4, activation="elu"),
        L.Activation("hard_sigmoid"),
        L.GRU(3),
        L.Dense(2, activation="softplus"),
    ])
    return m, "float"


def functional_return_state():
    k = _k()
    L = k.layers
    inp = k.Input((None,), dtype="int32")
    x = L.Embedding(V, 4, mask_zero=True)(inp)
    x, _state = L.GRU(4, return_sequences=True, return_state=True)(x)
    x = L.Dropout(0.2)(x)
    x, _f, _b = L.Bidirectional(L.GRU(3, return_state=True), merge_mode="mul")(x)
    out = L.Dense(2, activation="sigmoid")(x)
    return k.Model(inp, out), "tokens"


def sequential_return_state():
    """return_state on a Sequential model's last layer: Keras outputs (y, state)."""
    k = _k()
    L = k.layers
    m = k.Sequential([k.Input((T, F)), L.Masking(0.0), L.GRU(5, return_sequences=True), L.GRU(4, return_state=True)])
    return m, "float"


def bidirectional_none_sequences():
    """merge_mode=None on the last layer: Keras outputs the two directions' sequences."""
    k = _k()
    L = k.layers
    m = k.Sequential([
        k.Input((T, F)), L.Masking(0.0), L.GRU(5, return_sequences=True),
        L.Bidirectional(L.GRU(4, return_sequences=True, reset_after=False), merge_mode=None),
    ])
    return m, "float"


def bidirectional_none_states():
    """merge_mode=None with return_state: four outputs (forward, backward, their states)."""
    k = _k()
    L = k.layers
    inp = k.Input((None,), dtype="int32")
    x = L.Embedding(V, 4, mask_zero=True)(inp)
    outs = L.Bidirectional(L.GRU(3, return_state=True, recurrent_activation="hard_sigmoid"), merge_mode=None)(x)
    return k.Model(inp, outs), "tokens"


def functional_state_outputs():
    """Named (dict) outputs: a head on the sequence plus states of two GRU layers."""
    k = _k()
    L = k.layers
    inp = k.Input((T, F))
    x, h1 = L.GRU(5, return_sequences=True, return_state=True, go_backwards=True)(inp)
    x, hf, hb = L.Bidirectional(L.GRU(3, return_sequences=True, return_state=True), merge_mode="ave")(x)
    out = L.TimeDistributed(L.Dense(2, activation="tanh"))(x)
    return k.Model(inp, {"head": out, "h_first": h1, "h_back": hb, "h_fwd": hf}), "float"


def functional_masking():
    k = _k()
    L = k.layers
    inp = k.Input((T, F))
    x = L.Masking(0.0)(inp)
    x = L.Bidirectional(L.GRU(4, return_sequences=True))(x)
    x = L.TimeDistributed(L.Dense(3))(x)
    x = L.GRU(3, go_backwards=True, return_sequences=True)(x)
    out = L.Activation("tanh")(x)
    return k.Model(inp, out), "float"


def functional_plain():
    k = _k()
    L = k.layers
    inp = k.Input((T, F))
    x = L.GRU(5, return_sequences=True, reset_after=False)(inp)
    x = L.Bidirectional(L.GRU(4), merge_mode="concat")(x)
    out = L.Dense(3, activation="softmax")(x)
    return k.Model(inp, out), "float"


def nested_models():
    """A Functional model calling a nested Sequential (with the Masking) and a nested Functional."""
    k = _k()
    L = k.layers
    enc = k.Sequential([k.Input((T, F)), L.Masking(0.0, name="pad"), L.GRU(4, return_sequences=True, name="eg")], name="enc")
    sub_in = k.Input((T, 4))
    sx = L.Bidirectional(L.GRU(3, return_sequences=True), merge_mode="sum", name="bi")(sub_in)
    sub = k.Model(sub_in, L.Dense(2, name="post")(sx), name="subf")
    inp = k.Input((T, F))
    out = L.GRU(2, return_sequences=True, name="top")(sub(enc(inp)))
    return k.Model(inp, out), "float"


def sequential_nested():
    k = _k()
    L = k.layers
    enc = k.Sequential([k.Input((T,), dtype="int32"), L.Embedding(V, 4, mask_zero=True), L.GRU(4, return_sequences=True)],
                       name="encoder")
    return k.Sequential([enc, L.GRU(3, go_backwards=True), L.Dense(2)]), "tokens"


CASES = {
    f.__name__: f
    for f in [
        seq_basic, seq_no_input_layer, reset_before_hard_sigmoid, gru_activations, go_backwards,
        bidirectional("concat"), bidirectional("sum"), bidirectional("mul"), bidirectional("ave"),
        bidirectional_backward_layer, rnn_gru_cell, masking_post_padding, masking_bidirectional_last, masking_bidirectional_sequences,
        embedding_mask_zero, embedding_no_mask, noop_and_activations,
        functional_return_state, functional_masking, functional_plain, nested_models, sequential_nested,
        sequential_return_state, bidirectional_none_sequences, bidirectional_none_states, functional_state_outputs,
    ]
}


# --------------------------------------------------------------------------- inputs


def inputs_for(kind: str, seed: int = 0, batch: int = 5) -> np.ndarray:
    """Inputs with masks: row 1 post-padded, row 2 pre-padded, row 3 a masked step in the
    middle, row 4 fully padded past step 1 (float inputs pad with 0.0, token ids with 0)."""
    rng = np.random.default_rng(seed)
    if kind == "tokens":
        x = rng.integers(1, V, (batch, T)).astype(np.int32)
    else:
        x = rng.normal(0.0, 1.0, (batch, T, F)).astype(np.float32)
    x[1, 4:] = 0
    x[2, :2] = 0
    x[3, 3] = 0
    x[4, 1:] = 0
    return x


def post_padded_only(kind: str, seed: int = 1, batch: int = 5) -> np.ndarray:
    """Inputs whose masks are prefixes (padding only at the end of rows): what ONNX
    ``sequence_lens`` can express."""
    x = inputs_for(kind, seed, batch)
    fresh = inputs_for(kind, seed + 100, batch)
    x[2] = fresh[0]
    x[3] = fresh[0][::-1]
    return x


# --------------------------------------------------------------------------- building + saving


def build(case: str, seed: int = 0):
    _seed(seed)
    model, kind = CASES[case]()
    _randomise(model, seed)
    return model, kind


def save_all(model, directory: str, stem: str) -> dict:
    """Save ``model`` as ``.keras``, legacy ``.h5`` and ``.weights.h5`` + ``.json`` config."""
    paths = {
        "keras": os.path.join(directory, f"{stem}.keras"),
        "h5": os.path.join(directory, f"{stem}.h5"),
        "weights": os.path.join(directory, f"{stem}.weights.h5"),
        "config": os.path.join(directory, f"{stem}.json"),
    }
    model.save(paths["keras"])
    model.save(paths["h5"])  # Keras 3 still writes the legacy HDF5 format (with a warning)
    model.save_weights(paths["weights"])
    with open(paths["config"], "w") as f:
        json.dump(json.loads(model.to_json()), f)
    return paths


def predict(model, x):
    """Keras' prediction: an array, or a list of arrays for a model with several outputs
    (a dict of outputs in its order)."""
    y = model.predict(x, verbose=0)
    if isinstance(y, dict):
        y = list(y.values())
    if isinstance(y, (list, tuple)):
        return [np.asarray(a) for a in y]
    return np.asarray(y)


def as_keras2_h5(src: str, dst: str) -> None:
    """Rewrite a legacy ``.h5`` written by Keras 3 in the dialect of tf.keras 2.x files:
    ``keras_version`` 2.15.0, ``batch_input_shape`` on the first layer (no InputLayer in a
    Sequential), ``inbound_nodes`` as ``[[[layer, node, index, {}]]]`` and ``:0`` weight names.
    The weights themselves are unchanged, so Keras 3's predictions stay the reference."""
    import shutil

    import h5py  # noqa: PLC0415

    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as h:
        cfg = json.loads(h.attrs["model_config"])
        c = cfg["config"]
        if cfg["class_name"] == "Sequential":
            first, *rest = c["layers"]
            if first["class_name"] == "InputLayer":
                rest[0]["config"]["batch_input_shape"] = first["config"]["batch_shape"]
                c["layers"] = rest
        else:
            cfg["class_name"] = "Model"
            for layer in c["layers"]:
                lc = layer["config"]
                if "batch_shape" in lc:
                    lc["batch_input_shape"] = lc.pop("batch_shape")
                layer["inbound_nodes"] = [
                    [[*a["config"]["keras_history"], {}] for a in node["args"]] for node in layer["inbound_nodes"]
                ]
            c["input_layers"] = [c["input_layers"]]
            c["output_layers"] = [c["output_layers"]]
        h.attrs["model_config"] = json.dumps(cfg)
        h.attrs["keras_version"] = "2.15.0"
        mw = h["model_weights"]
        mw.attrs["keras_version"] = "2.15.0"
        for lname in mw:
            g = mw[lname]
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in g.attrs.get("weight_names", [])]
            for n in names:
                g.move(n, n + ":0")
            if names:
                g.attrs["weight_names"] = [(n + ":0").encode() for n in names]

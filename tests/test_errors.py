"""Bad inputs to ``Model.run`` and bad layer construction: typed errors from
``gru_engine.errors`` with messages of the form "<name> must <expectation>, got <actual>"."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import random_gru_weights

from gru_engine import (
    GRU,
    Activation,
    Dense,
    Embedding,
    GRUEngineError,
    InputShapeError,
    InputTypeError,
    Masking,
    Model,
    ModelDefinitionError,
    UnsupportedError,
)


@pytest.fixture
def model():
    rng = np.random.default_rng(0)
    W1, R1, B1 = random_gru_weights(rng, 3, 4, 2)
    W2, R2, B2 = random_gru_weights(rng, 8, 4, 1)
    return Model((GRU(W=W1, R=R1, B=B1, direction="bidirectional"), GRU(W=W2, R=R2, B=B2)))


@pytest.fixture
def token_model():
    rng = np.random.default_rng(1)
    W, R, B = random_gru_weights(rng, 2, 3, 1)
    return Model((Embedding(table=np.ones((5, 2), np.float32)), GRU(W=W, R=R, B=B)))


X = np.zeros((2, 5, 3), np.float32)


def test_hierarchy():
    for cls in (InputShapeError, InputTypeError, ModelDefinitionError, UnsupportedError):
        assert issubclass(cls, GRUEngineError)
    assert issubclass(InputShapeError, ValueError) and issubclass(InputTypeError, TypeError)
    assert issubclass(ModelDefinitionError, ValueError) and issubclass(UnsupportedError, NotImplementedError)


# --------------------------------------------------------------------------- run: x


@pytest.mark.parametrize("shape", [(5, 3), (3,), (1, 2, 5, 3), ()])
def test_x_wrong_ndim(model, shape):
    with pytest.raises(InputShapeError, match=r"x must have shape \(batch, seq_len, 3\), got"):
        model.run(np.zeros(shape, np.float32))


@pytest.mark.parametrize("features", [1, 2, 4])
def test_x_wrong_features(model, features):
    with pytest.raises(InputShapeError, match=rf"x must have shape \(batch, seq_len, 3\), got \(2, 5, {features}\)"):
        model.run(np.zeros((2, 5, features), np.float32))


@pytest.mark.parametrize(
    "x",
    [
        np.full((2, 5, 3), "a"),
        np.zeros((2, 5, 3), np.complex64),
        np.zeros((2, 5, 3), object),
        np.zeros((2, 5, 3), "datetime64[s]"),
    ],
    ids=["str", "complex", "object", "datetime"],
)
def test_x_bad_dtype(model, x):
    with pytest.raises(InputTypeError, match=r"x must be a floating array, got dtype"):
        model.run(x)


def test_x_ints_and_float64_are_converted(model):
    y_int, _ = model.run(np.ones((2, 5, 3), np.int64))
    y_f64, _ = model.run(np.ones((2, 5, 3), np.float64))
    assert y_int.dtype == np.float32 and np.array_equal(y_int, y_f64)


def test_nan_inputs_propagate_not_crash(model):
    x = X.copy()
    x[0, 2, 1] = np.nan
    y, h = model.run(x)
    assert np.isnan(y[0, 2:]).all() and np.isfinite(y[1]).all()


# --------------------------------------------------------------------------- run: lengths


@pytest.mark.parametrize("lengths", [[1.0, np.nan], [np.inf, 2.0]])
def test_lengths_nan_or_inf(model, lengths):
    with pytest.raises(InputShapeError, match="lengths must be finite integers, got"):
        model.run(X, lengths=np.array(lengths))


def test_lengths_fractional(model):
    with pytest.raises(InputShapeError, match="lengths must be integers, got"):
        model.run(X, lengths=np.array([1.5, 2.0]))


@pytest.mark.parametrize("lengths", [[6, 1], [-1, 2], [0, 100]])
def test_lengths_out_of_range(model, lengths):
    with pytest.raises(InputShapeError, match=r"lengths must lie in \[0, 5\] \(the sequence length\), got values in"):
        model.run(X, lengths=np.array(lengths))


@pytest.mark.parametrize("lengths", [[1, 2, 3], [[1, 2]], [3]])
def test_lengths_wrong_shape(model, lengths):
    with pytest.raises(InputShapeError, match=r"lengths must have shape \(2,\) \(one per batch row\), got"):
        model.run(X, lengths=np.array(lengths))


def test_lengths_bad_dtype(model):
    with pytest.raises(InputTypeError, match="lengths must be an integer array, got dtype"):
        model.run(X, lengths=np.array(["1", "2"]))


# --------------------------------------------------------------------------- run: initial_state


@pytest.mark.parametrize("shape", [(2, 2, 4), (3, 1, 4), (3, 2, 5), (3, 2)])
def test_initial_state_wrong_shape(model, shape):
    with pytest.raises(InputShapeError, match=r"initial_state must have shape \(num_layers\*num_directions=3, batch=2, hidden=4\), got"):
        model.run(X, initial_state=np.zeros(shape, np.float32))


def test_initial_state_list_forms(model):
    with pytest.raises(InputShapeError, match=r"initial_state must hold one array per GRU layer \(2\), got 1"):
        model.run(X, initial_state=[np.zeros((2, 2, 4))])
    with pytest.raises(InputShapeError, match=r"initial_state\[1\] must have shape \(1, 2, 4\), got \(2, 2, 4\)"):
        model.run(X, initial_state=[np.zeros((2, 2, 4)), np.zeros((2, 2, 4))])


def test_initial_state_bad_dtype(model):
    with pytest.raises(InputTypeError, match="initial_state must be a floating array, got dtype"):
        model.run(X, initial_state=np.zeros((3, 2, 4), np.complex128))


def test_initial_state_without_gru():
    m = Model((Dense(kernel=np.ones((3, 2), np.float32)),))
    with pytest.raises(InputShapeError, match="initial_state was given, but the model has no GRU layer"):
        m.run(X, initial_state=np.zeros((1, 2, 2)))


# --------------------------------------------------------------------------- run: tokens


@pytest.mark.parametrize("tokens", [[[0, 5]], [[-1, 2]], [[0, 1000000]]])
def test_tokens_out_of_range(token_model, tokens):
    with pytest.raises(InputShapeError, match=r"x holds token ids in \[.*\], outside the embedding's range \[0, 4\]"):
        token_model.run(np.array(tokens))


def test_tokens_non_integer(token_model):
    with pytest.raises(InputTypeError, match="x must hold integer token ids, got non-integer floats"):
        token_model.run(np.array([[0.5, 1.0]]))
    with pytest.raises(InputTypeError, match="x must hold integer token ids, got non-integer floats"):
        token_model.run(np.array([[np.nan, 1.0]]))
    with pytest.raises(InputTypeError, match="x must hold integer token ids, got dtype"):
        token_model.run(np.array([["a", "b"]]))


def test_tokens_wrong_ndim(token_model):
    with pytest.raises(InputShapeError, match=r"x must have shape \(batch, seq_len\) of token ids, got \(1, 2, 1\)"):
        token_model.run(np.zeros((1, 2, 1), np.int64))


# --------------------------------------------------------------------------- GRU construction


def gru_arrays(D=1, I=3, H=4):
    return random_gru_weights(np.random.default_rng(2), I, H, D)


def test_gru_bad_direction():
    W, R, B = gru_arrays()
    with pytest.raises(ModelDefinitionError, match=r"GRU layer 'g': direction must be one of \['forward', 'reverse', 'bidirectional'\], got 'backward'"):
        GRU(W=W, R=R, B=B, direction="backward", name="g")


def test_gru_shapes():
    W, R, B = gru_arrays()
    with pytest.raises(ModelDefinitionError, match=r"R must have shape \(num_directions=1, 3\*hidden_size, hidden_size\), got \(1, 12, 5\)"):
        GRU(W=W, R=np.zeros((1, 12, 5)), B=B)
    with pytest.raises(ModelDefinitionError, match=r"R must have shape \(num_directions=2, .*got \(1, 12, 4\)"):
        GRU(W=W, R=R, B=B, direction="bidirectional")
    with pytest.raises(ModelDefinitionError, match=r"W must have shape \(1, 12, input_size\), got \(1, 9, 3\)"):
        GRU(W=W[:, :9], R=R, B=B)
    with pytest.raises(ModelDefinitionError, match=r"W must have shape \(1, 12, input_size\), got \(12, 3\)"):
        GRU(W=W[0], R=R, B=B)
    with pytest.raises(ModelDefinitionError, match=r"GRU layer 'x': B must have shape \(1, 24\), got \(1, 12\)"):
        GRU(W=W, R=R, B=B[:, :12], name="x")
    with pytest.raises(ModelDefinitionError, match="W and R are required"):
        GRU(W=W)
    with pytest.raises(ModelDefinitionError, match="W must be a numeric array, got"):
        GRU(W=[["a"]], R=R)


@pytest.mark.parametrize("clip", [0, -1.0, float("nan"), float("inf")])
def test_gru_bad_clip(clip):
    W, R, B = gru_arrays()
    with pytest.raises(ModelDefinitionError, match="clip must be a positive finite number, got"):
        GRU(W=W, R=R, B=B, clip=clip)


def test_gru_bad_attributes():
    W, R, B = gru_arrays()
    with pytest.raises(ModelDefinitionError, match="linear_before_reset must be 0 or 1, got 2"):
        GRU(W=W, R=R, B=B, linear_before_reset=2)
    with pytest.raises(ModelDefinitionError, match=r"activations must list 2 names per direction \(2\), got 3"):
        GRU(W=W, R=R, B=B, activations=("Sigmoid", "Tanh", "Tanh"))
    with pytest.raises(UnsupportedError, match="activation 'Swish' is not an ONNX RNN activation; supported: Sigmoid"):
        GRU(W=W, R=R, B=B, activations=("Swish", "Tanh"))
    with pytest.raises(ModelDefinitionError, match=r"merge must be one of \('concat', 'sum', 'mul', 'ave'\), got 'max'"):
        GRU(W=W, R=R, B=B, merge="max")
    with pytest.raises(ModelDefinitionError, match="masked_output must be 'carry' or 'zero', got 'nan'"):
        GRU(W=W, R=R, B=B, masked_output="nan")


def test_gru_non_finite_weights():
    W, R, B = gru_arrays()
    W = W.copy()
    W[0, 0, 0] = np.nan
    with pytest.raises(ModelDefinitionError, match="W contains NaN or inf values"):
        GRU(W=W, R=R, B=B)


# --------------------------------------------------------------------------- other layers and models


def test_dense_construction():
    with pytest.raises(ModelDefinitionError, match=r"Dense layer 'd': kernel must have shape \(in_features, out_features\), got \(3,\)"):
        Dense(kernel=np.ones(3), name="d")
    with pytest.raises(ModelDefinitionError, match=r"bias must have shape \(2,\), got \(3,\)"):
        Dense(kernel=np.ones((3, 2)), bias=np.ones(3))
    with pytest.raises(UnsupportedError, match="activation 'mish' is not supported; supported: linear"):
        Dense(kernel=np.ones((3, 2)), activation="mish")
    with pytest.raises(UnsupportedError, match="activation 'bogus' is not supported"):
        Activation(activation="bogus")
    with pytest.raises(ModelDefinitionError, match="kernel is required"):
        Dense()


def test_embedding_construction():
    with pytest.raises(ModelDefinitionError, match=r"table must have shape \(num_embeddings, embedding_dim\), got \(4,\)"):
        Embedding(table=np.ones(4))
    with pytest.raises(ModelDefinitionError, match=r"table must have shape .*got \(0, 3\)"):
        Embedding(table=np.ones((0, 3)))


def test_model_construction():
    W, R, B = gru_arrays()
    gru = GRU(W=W, R=R, B=B)
    with pytest.raises(ModelDefinitionError, match="a model needs at least one layer"):
        Model(())
    with pytest.raises(ModelDefinitionError, match=r"layer 1 \(Dense\(5->2, linear\)\) expects 5 input features, the previous layer gives 4"):
        Model((gru, Dense(kernel=np.ones((5, 2), np.float32))))
    with pytest.raises(ModelDefinitionError, match="layer 1 must be a gru_engine layer spec, got dict"):
        Model((gru, {"kind": "Dense"}))
    with pytest.raises(ModelDefinitionError, match="Embedding layer 'e' must be the first layer, found at 1"):
        Model((gru, Embedding(table=np.ones((3, 4), np.float32), name="e")))
    last = GRU(W=W, R=R, B=B, return_sequences=False)
    W2, R2, B2 = gru_arrays(I=4)
    with pytest.raises(ModelDefinitionError, match="needs a sequence input, but the previous layer returns the last step only"):
        Model((last, GRU(W=W2, R=R2, B=B2)))
    with pytest.raises(ModelDefinitionError, match="all layer weights must share one dtype"):
        Model((gru, Dense(kernel=np.ones((4, 2), np.float64))))
    with pytest.raises(ModelDefinitionError, match="input_size is required"):
        Model((Masking(), gru))
    with pytest.raises(ModelDefinitionError, match="dtype must be float32 or float64, got float16"):
        Model((gru,)).astype(np.float16)


def test_output_specs_checked(model):
    """Model(outputs=...) names the bad entry; good specs select from run's (y, h_n)."""
    from gru_engine import Output

    bad = [
        (Output("y", 2, 9, name="wide"), r"output 0 'wide': features \[2, 9\) must lie within the model output's 4"),
        (Output("state", gru=2), r"output 0: GRU index 2 must be in \[0, 2\)"),
        (Output("state", gru=1, direction=1), r"output 0: direction 1 must be < 1 \(GRU layer 1\)"),
        (Output("h"), r"kind must be 'y' or 'state', got 'h'"),
    ]
    for spec, msg in bad:
        with pytest.raises(ModelDefinitionError, match=msg):
            Model(model.layers, outputs=(spec,))
    with pytest.raises(ModelDefinitionError, match="must be a gru_engine.model.Output"):
        Model(model.layers, outputs=("y",))
    m = Model(model.layers, outputs=(Output("y", 1, 3), Output("state", gru=0, direction=1), Output("state", gru=1)))
    x = np.random.default_rng(2).standard_normal((2, 5, 3)).astype(np.float32)
    y, h_n = m.run(x)
    a, b, c = m.predict(x)
    np.testing.assert_array_equal(a, y[..., 1:3])
    np.testing.assert_array_equal(b, h_n[1])
    np.testing.assert_array_equal(c, h_n[2])
    assert m.astype(np.float64).outputs == m.outputs
    single = Model(model.layers, outputs=(Output("state", gru=1),))
    np.testing.assert_array_equal(single(x), h_n[2])  # one output: an array, not a list

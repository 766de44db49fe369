"""Graphs written by ``torch.onnx.export`` (legacy ``dynamo=False`` and the dynamo exporter),
loaded by ``gru_engine.load`` / ``gru_engine.backend`` and compared with the torch modules
themselves (1e-5), at batch and time sizes other than the export example (dynamic axes).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
from torch import nn  # noqa: E402

import gru_engine  # noqa: E402
import gru_engine.backend as backend  # noqa: E402
from converters.onnx_io import from_onnx  # noqa: E402
from gru_engine import GRU, Dense  # noqa: E402

ATOL = 1e-5


class GRUOnly(nn.Module):
    def __init__(self, I=4, H=6, layers=1, bidirectional=False, batch_first=True, with_h0=False):
        super().__init__()
        self.gru = nn.GRU(I, H, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first)
        self.with_h0 = with_h0

    def forward(self, x, h0=None):
        return self.gru(x, h0) if self.with_h0 else self.gru(x)


class EmbedLast(nn.Module):
    """Embedding -> GRU -> Linear -> softmax of the last step."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(12, 5)
        self.gru = nn.GRU(5, 7, batch_first=True)
        self.lin = nn.Linear(7, 3)

    def forward(self, tokens):
        out, _ = self.gru(self.emb(tokens))
        return torch.softmax(self.lin(out[:, -1]), dim=-1)


class PerStepHead(nn.Module):
    """2-layer GRU -> Linear on every step -> activation."""

    def __init__(self, act):
        super().__init__()
        self.gru = nn.GRU(4, 6, num_layers=2, batch_first=True)
        self.lin = nn.Linear(6, 3)
        self.act = act

    def forward(self, x):
        out, h = self.gru(x)
        return self.act(self.lin(out)), h


class HnHead(nn.Module):
    """h_n[-1] (last layer) -> Linear -> sigmoid; or [h_n[-2], h_n[-1]] for bidirectional."""

    def __init__(self, bidirectional):
        super().__init__()
        self.bi = bidirectional
        self.gru = nn.GRU(4, 5, num_layers=2, batch_first=True, bidirectional=bidirectional)
        self.lin = nn.Linear(10 if bidirectional else 5, 2)

    def forward(self, x):
        _, h = self.gru(x)
        last = torch.cat([h[-2], h[-1]], dim=1) if self.bi else h[-1]
        return torch.sigmoid(self.lin(last))


class SliceKeep(nn.Module):
    """out[:, -1:, :] keeps a unit time axis; then Linear + LeakyReLU."""

    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(3, 4, batch_first=True)
        self.lin = nn.Linear(4, 2)

    def forward(self, x):
        out, _ = self.gru(x)
        return nn.functional.leaky_relu(self.lin(out[:, -1:, :]), 0.2)


def export(module, args, names, path, dynamo, dynamic, external=False):
    """Export with dynamic batch/time; `dynamic` maps input name -> {axis: label}.
    external: the dynamo exporter's default of weights in a separate ``.data`` file."""
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            pytest.importorskip("onnxscript")
            dims = {}
            shapes = {}
            for n in names:
                shapes[n] = {ax: dims.setdefault(lab, torch.export.Dim(lab, min=2, max=4096))
                             for ax, lab in dynamic.get(n, {}).items()}
            sig_names = list(__import__("inspect").signature(module.forward).parameters)
            dyn = {sig_names[i]: shapes[n] for i, n in enumerate(names)}
            torch.onnx.export(module, args, str(path), input_names=names, dynamo=True, dynamic_shapes=dyn,
                              external_data=external, verbose=False)
        else:
            torch.onnx.export(module, args, str(path), input_names=names, dynamo=False, dynamic_axes=dynamic)
    return path


def torch_outputs(module, args):
    with torch.no_grad():
        out = module(*args)
    out = out if isinstance(out, tuple) else (out,)
    return [o.numpy() for o in out]


def check(module, ex_args, run_args, names, dynamic, tmp_path, dynamo, external=False):
    path = export(module, ex_args, names, tmp_path / "m.onnx", dynamo, dynamic, external)
    ref = torch_outputs(module, run_args)
    got = backend.prepare(str(path)).run([a.numpy() for a in run_args])
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        assert g.shape == r.shape
        np.testing.assert_allclose(g, r, atol=ATOL, rtol=0)
    return path


EXPORTERS = [pytest.param(False, id="legacy"), pytest.param(True, id="dynamo")]


# The dynamo exporter takes seconds per module: it gets four configurations. With a time-major
# input plus h0 (2-True-False-True-True) it writes the example's batch and time sizes into a
# Reshape constant, so onnxruntime runs that graph at those sizes only; the engine keeps the axes
# dynamic and matches torch at other sizes.
@pytest.mark.parametrize("layers,bi,bf,h0,dynamo", [
    (1, False, True, False, False),
    (2, True, False, True, False),
    (2, False, True, True, False),
    (3, True, True, False, False),
    (2, True, True, True, True),
    (2, True, False, True, True),
    (3, True, True, False, True),
])
def test_nn_gru(layers, bi, bf, h0, dynamo, tmp_path):
    torch.manual_seed(layers * 4 + bi * 2 + bf)
    m = GRUOnly(layers=layers, bidirectional=bi, batch_first=bf, with_h0=h0)
    D = 2 if bi else 1

    def args(B, T):
        x = torch.randn(B, T, 4) if bf else torch.randn(T, B, 4)
        return (x, torch.randn(layers * D, B, 6)) if h0 else (x,)

    bt = {0: "batch", 1: "time"} if bf else {0: "time", 1: "batch"}
    dyn = {"x": bt, "h0": {1: "batch"}}
    names = ["x", "h0"] if h0 else ["x"]
    external = dynamo and layers == 3  # weights in m.onnx.data, read from next to the file
    path = check(m, args(3, 5), args(2, 9), names, {n: dyn[n] for n in names}, tmp_path, dynamo, external)
    assert (tmp_path / "m.onnx.data").exists() == external
    # the canonical model: batch-first in, PyTorch h_n out
    model, sig = from_onnx(path, return_signature=True)
    assert [type(layer) for layer in model.layers] == [GRU] * layers
    assert all(g.linear_before_reset == 1 for g in model.layers)
    assert sig.x_layout == ("btf" if bf else "tbf") and sig.initial_state == ("h0" if h0 else None)
    a = args(2, 7)
    x_bf = a[0] if bf else a[0].transpose(0, 1)
    y, h_n = model.run(x_bf.numpy(), initial_state=a[1].numpy() if h0 else None)
    ry, rh = torch_outputs(m, a)
    np.testing.assert_allclose(y, ry if bf else ry.transpose(1, 0, 2), atol=ATOL, rtol=0)
    np.testing.assert_allclose(h_n, rh, atol=ATOL, rtol=0)


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_embedding_gru_linear_last_step(dynamo, tmp_path):
    torch.manual_seed(0)
    m = EmbedLast()
    ex = (torch.randint(0, 12, (3, 5)),)
    run = (torch.randint(0, 12, (4, 11)),)
    path = check(m, ex, run, ["tokens"], {"tokens": {0: "batch", 1: "time"}}, tmp_path, dynamo)
    model = gru_engine.load(path)
    kinds = [layer.kind for layer in model.layers]
    assert kinds == ["Embedding", "GRU", "Dense"] and model.layers[-1].activation == "softmax"
    assert not model.layers[1].return_sequences and model.takes_tokens
    y, _ = model.run(run[0].numpy())
    np.testing.assert_allclose(y, torch_outputs(m, run)[0], atol=ATOL, rtol=0)


ACTS = [
    (nn.Tanh(), "tanh"), (nn.ReLU(), "relu"), (nn.GELU(), "gelu"), (nn.SiLU(), "swish"),
    (nn.ELU(0.7), "elu"), (nn.Softplus(), "softplus"), (nn.Hardsigmoid(), "hard_sigmoid"),
    (nn.GELU(approximate="tanh"), "gelu_tanh"), (nn.Softsign(), "softsign"), (nn.SELU(), "selu"),
]


@pytest.mark.parametrize("act,name,dynamo", [(a, n, False) for a, n in ACTS] + [
    (nn.GELU(), "gelu", True), (nn.SiLU(), "swish", True)], ids=lambda v: v if isinstance(v, str) else None)
def test_per_step_head_activations(act, name, dynamo, tmp_path):
    torch.manual_seed(1)
    m = PerStepHead(act)
    check(m, (torch.randn(3, 5, 4),), (torch.randn(2, 8, 4),), ["x"], {"x": {0: "batch", 1: "time"}}, tmp_path, dynamo)
    model = gru_engine.load(tmp_path / "m.onnx")
    assert isinstance(model.layers[-1], Dense) and model.layers[-1].activation == name


@pytest.mark.parametrize("bi,dynamo", [(False, False), (True, False), (True, True)])
def test_h_n_head(bi, dynamo, tmp_path):
    torch.manual_seed(2)
    m = HnHead(bi)
    check(m, (torch.randn(3, 5, 4),), (torch.randn(4, 9, 4),), ["x"], {"x": {0: "batch", 1: "time"}}, tmp_path, dynamo)
    model = gru_engine.load(tmp_path / "m.onnx")
    assert [layer.kind for layer in model.layers] == ["GRU", "GRU", "Dense"]
    assert not model.layers[1].return_sequences and model.layers[-1].activation == "sigmoid"


def test_slice_keeping_time_axis(tmp_path):
    torch.manual_seed(3)
    m = SliceKeep()
    check(m, (torch.randn(3, 5, 3),), (torch.randn(2, 6, 3),), ["x"], {"x": {0: "batch", 1: "time"}}, tmp_path, False)


def test_bidirectional_last_step_slice_is_refused(tmp_path):
    """out[:, -1] of a bidirectional GRU is not a final state: refused with a clear message."""

    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = nn.GRU(3, 4, batch_first=True, bidirectional=True)

        def forward(self, x):
            return self.gru(x)[0][:, -1]

    path = export(Bad(), (torch.randn(2, 5, 3),), ["x"], tmp_path / "bad.onnx", False, {"x": {0: "b", 1: "t"}})
    with pytest.raises(gru_engine.UnsupportedError, match="bidirectional GRU.*h_n"):
        gru_engine.load(path)


def test_gru_cell_loop_is_refused_with_op_names(tmp_path):
    """A GRUCell exports as MatMul/Split/... on (B, F) inputs: refused, naming the input."""

    class Cell(nn.Module):
        def __init__(self):
            super().__init__()
            self.cell = nn.GRUCell(3, 4)

        def forward(self, x, h):
            return self.cell(x, h)

    path = export(Cell(), (torch.randn(2, 3), torch.randn(2, 4)), ["x", "h"], tmp_path / "cell.onnx", False, {})
    with pytest.raises(gru_engine.UnsupportedError, match="input 'x' must have rank 3"):
        gru_engine.load(path)


class NoBiasHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(4, 5, num_layers=2, bias=False, batch_first=True, bidirectional=True)
        self.lin = nn.Linear(10, 3)

    def forward(self, x, h0):
        out, h = self.gru(x, h0)
        return torch.softmax(self.lin(out), dim=-1), h


@pytest.mark.parametrize("opset", [9, 11, 13])
def test_old_opsets_and_no_bias(opset, tmp_path):
    """Older opsets put axes / starts in attributes (Unsqueeze, Squeeze, Slice) and Softmax
    coerces to 2-D; bias=False GRUs export without B."""
    torch.manual_seed(opset)
    m = NoBiasHead().eval()
    path = tmp_path / "old.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (torch.randn(3, 5, 4), torch.randn(4, 3, 5)), str(path), input_names=["x", "h0"],
                          dynamo=False, opset_version=opset, dynamic_axes={"x": {0: "b", 1: "t"}, "h0": {1: "b"}})
    run = (torch.randn(2, 8, 4), torch.randn(4, 2, 5))
    ref = torch_outputs(m, run)
    got = backend.prepare(path).run([a.numpy() for a in run])
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, atol=ATOL, rtol=0)

"""Layers that describe themselves: output shape, FLOPs, a one-line description, a PyTorch twin.

The shapes are checked against a real forward pass, the FLOPs against the counting rules
written out by hand, the network's totals against what ``minicolor summary`` printed before
the layers counted for themselves, and the twins against minicolor's forward with the same
weights (where PyTorch is installed).
"""
import subprocess
import sys

import numpy as np
import pytest

from minicolor import cli, nn, tensor
from minicolor.models import ColorizationNet
from minicolor.tensor import no_grad
from minicolor.tools import bench
from minicolor.tools.summary import layer_table

from conftest import torch_or_skip

# (in, out, kernel, stride, padding, dilation, input shape): odd sizes, pairs, no padding, 1x1
CONVS = [
    (3, 5, 3, 2, 1, 1, (2, 3, 9, 7)),
    (2, 4, 3, 1, 2, 2, (1, 2, 7, 10)),
    (2, 3, (3, 1), (2, 1), (0, 1), (1, 3), (1, 2, 8, 5)),
    (4, 2, 1, 1, 0, 1, (3, 4, 5, 6)),
    (1, 2, 5, 3, 0, 1, (1, 1, 11, 13)),
]


def _conv(case, bias=True, rng=None):
    cin, cout, k, s, p, d, _ = case
    return nn.Conv2d(cin, cout, k, s, p, d, bias=bias, rng=rng or np.random.default_rng(0),
                     dtype=np.float64)


@pytest.mark.parametrize("case", CONVS)
@pytest.mark.parametrize("bias", [True, False])
def test_conv_output_shape_and_flops(case, bias, rng):
    conv = _conv(case, bias)
    shape = case[-1]
    with no_grad():
        y = conv(tensor(rng.standard_normal(shape)))
    assert conv.output_shape(shape) == y.shape
    kh, kw = conv.kernel_size
    assert conv.flops(shape) == y.size * (2 * case[0] * kh * kw + bias)


def test_conv_flops_by_hand():
    # 3 -> 5 channels, 3x3, stride 2, padding 1 on 9x7: outputs 5x4, 2 images
    assert nn.Conv2d(3, 5, 3, 2, 1).output_shape((2, 3, 9, 7)) == (2, 5, 5, 4)
    assert nn.Conv2d(3, 5, 3, 2, 1).flops((2, 3, 9, 7)) == 2 * 5 * 5 * 4 * (2 * 27 + 1)
    # dilation 2 spans 5 pixels: 7 + 2*2 - 5 + 1 = 7 rows, 10 + 4 - 5 + 1 = 10 columns
    assert nn.Conv2d(2, 4, 3, 1, 2, 2).output_shape((1, 2, 7, 10)) == (1, 4, 7, 10)


def test_conv_refuses_shapes_it_cannot_take():
    with pytest.raises(ValueError, match=r"expected an input of shape \(N, 3, H, W\), got \(1, 2, 8, 8\)"):
        nn.Conv2d(3, 4, 3).output_shape((1, 2, 8, 8))
    with pytest.raises(ValueError, match="spans more than the input"):
        nn.Conv2d(1, 1, 3, dilation=3).output_shape((1, 1, 5, 5))


@pytest.mark.parametrize("layer, shape, flops", [
    (nn.BatchNorm2d(3, dtype=np.float64), (2, 3, 5, 7), 2 * 2 * 3 * 5 * 7),
    (nn.ReLU(), (2, 3, 5, 7), 2 * 3 * 5 * 7),
    (nn.Upsample(2, "nearest"), (2, 3, 5, 7), 0),
    (nn.Upsample(3, "bilinear"), (1, 2, 5, 7), 7 * 1 * 2 * 15 * 21),
])
def test_other_layers_output_shape_and_flops(layer, shape, flops, rng):
    with no_grad():
        y = layer(tensor(rng.standard_normal(shape)))
    assert layer.output_shape(shape) == y.shape and layer.flops(shape) == flops


def test_descriptions():
    assert nn.Conv2d(3, 5, 3, 2, 1).describe() == "conv 3x3 s2 d1"
    assert nn.Conv2d(3, 5, 3, 1, 2, 2).describe() == "conv 3x3 s1 d2"
    assert nn.Conv2d(3, 5, (3, 1), (2, 1), 0, (1, 3)).describe() == "conv 3x1 s2x1 d1x3"
    assert nn.BatchNorm2d(3).describe() == "batchnorm" and nn.ReLU().describe() == "relu"
    assert nn.Upsample(4, "bilinear").describe() == "upsample x4 bilinear"
    assert ColorizationNet(2).describe() == "ColorizationNet width 2, regression head"


def _hooked_shapes(model, x):
    """{name: output shape} of every layer, from a real forward pass (hooks turn fusion off)."""
    shapes, removers = {}, []
    for name, module in model.named_modules():
        if not list(module.children()):
            hook = lambda m, inputs, out, name=name: shapes.__setitem__(name, tuple(out.shape))  # noqa: E731
            removers.append(module.register_forward_hook(hook))
    with no_grad():
        model.eval()(x)
    for remove in removers:
        remove()
    return shapes


def test_sequential_composes_its_layers(rng):
    seq = nn.Sequential(nn.Conv2d(1, 4, 3, 2, 1, dtype=np.float64), nn.ReLU(), nn.BatchNorm2d(4, dtype=np.float64),
                        nn.Sequential(nn.Upsample(2, "bilinear"), nn.Conv2d(4, 2, 1, dtype=np.float64)))
    shape = (2, 1, 9, 11)
    rows = list(seq.layers(shape))
    assert [r[0] for r in rows] == ["0", "1", "2", "3.0", "3.1"]
    assert {r[0]: r[3] for r in rows} == _hooked_shapes(seq, tensor(rng.standard_normal(shape)))
    assert seq.output_shape(shape) == (2, 2, 10, 12)
    assert seq.flops(shape) == sum(layer.flops(x) for _, layer, x, _ in rows)
    assert seq.flops(shape) == (2 * 4 * 5 * 6 * (2 * 9 + 1) + 2 * 4 * 5 * 6 * 3
                                + 7 * 2 * 4 * 10 * 12 + 2 * 2 * 10 * 12 * (2 * 4 + 1))


@pytest.mark.parametrize("head", ["regression", "classification"])
def test_network_layers_match_a_real_forward(head, rng):
    net = ColorizationNet(2, head=head)
    shape = (2, 1, 24, 16)
    rows = list(net.layers(shape))
    assert [r[0] for r in rows] == [name for name, m in net.named_modules() if not list(m.children())]
    assert {r[0]: r[3] for r in rows} == _hooked_shapes(net, tensor(np.zeros(shape, np.float32)))
    assert net.output_shape(shape) == (2, 2, 24, 16)
    with pytest.raises(ValueError, match="divisible by 8"):
        list(net.layers((1, 1, 20, 16)))


# ``minicolor summary``'s totals before the layers counted for themselves (its forward-hook
# version, main at 2d5761b): (width, head, size, batch) -> (FLOPs, of them in convs, parameters)
SUMMARY_TOTALS = {
    (16, "regression", 224, 1): (4_244_594_816, 4_238_623_872, 1_955_026),
    (64, "regression", 224, 1): (67_611_463_808, 67_589_687_424, 31_237_954),
    (16, "classification", 224, 1): (4_349_371_712, 4_343_400_768, 1_971_861),
    (2, "regression", 16, 3): (1_066_464, 1_045_632, 30_936),
    (4, "regression", 40, 2): (17_251_600, 17_122_800, 122_854),
}


@pytest.mark.parametrize("key", list(SUMMARY_TOTALS))
def test_network_flops_equal_the_summary_totals(key):
    width, head, size, batch = key
    net = ColorizationNet(width, head=head)
    rows = layer_table(net, size=size, batch=batch)
    flops, conv_flops, parameters = SUMMARY_TOTALS[key]
    assert net.flops((batch, 1, size, size)) == sum(r[4] for r in rows) == flops
    assert sum(r[4] for r in rows if r[1] == "Conv2d") == conv_flops
    assert sum(r[3] for r in rows) == net.num_parameters() == parameters


def test_summary_prints_the_total(capsys):
    assert cli.main(["summary", "--width", "16"]) == 0
    assert "1,955,026     4244.6" in capsys.readouterr().out


def test_conv_layers_come_from_the_layers_own_shapes():
    layers = ColorizationNet(4).conv_layers(batch=2, size=32)
    assert len(layers) == 23 and layers[0][0] == "group1.0" and layers[-1][0] == "head"
    assert [(x, y) for _, _, x, y in layers[:3]] == [
        ((2, 1, 32, 32), (2, 4, 32, 32)), ((2, 4, 32, 32), (2, 4, 16, 16)), ((2, 4, 16, 16), (2, 8, 16, 16))]
    assert layers[-4][2] == (2, 32, 8, 8)  # group8.1 after the nearest upsampling from 4x4


# --- the fusion rule, in one place --------------------------------------------------------------
def test_fused_children_are_what_forward_fuses(monkeypatch):
    seq = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(2), nn.ReLU(),
                        nn.Conv2d(2, 2, 1), nn.ReLU(), nn.BatchNorm2d(2))
    assert seq.fused_children() == ["1", "5"]
    fused = []
    monkeypatch.setattr(nn.BatchNorm2d, "after_relu", lambda self, x: fused.append(self) or x)
    seq(tensor(np.zeros((1, 1, 4, 4), np.float32)))
    assert fused == [seq[2], seq[6]]
    assert nn.fused_layers(nn.Sequential(nn.ReLU(), seq)) == {"1.1", "1.5"}
    monkeypatch.setattr(nn, "FUSE", False)
    assert seq.fused_children() == [] and nn.fused_layers(seq) == set()


# --- the bench leaves no layer out --------------------------------------------------------------
class Swish(nn.Module):
    """A layer that does not describe itself."""

    def forward(self, x):
        return x * (x > 0)


class NetWithSwish(ColorizationNet):
    def __init__(self, width=16, **kwargs):
        super().__init__(width, **kwargs)
        self.group1 = nn.Sequential(*self.group1, Swish())


def test_bench_refuses_a_module_that_does_not_describe_itself(monkeypatch, capsys):
    with pytest.raises(ValueError, match=r"group1\.5 \(Swish\) lacks output_shape, flops, to_torch"):
        bench.check_layers(NetWithSwish(2), twin=True)
    with pytest.raises(ValueError, match=r"group1\.5 \(Swish\) lacks output_shape, flops$"):
        bench.check_layers(NetWithSwish(2))
    bench.check_layers(ColorizationNet(2), twin=True)  # the network itself passes
    monkeypatch.setattr(bench, "ColorizationNet", NetWithSwish)
    timed = []
    monkeypatch.setattr(bench, "median_time", lambda *args: timed.append(args) or 1.0)
    assert cli.main(["bench", "--size", "16", "--widths", "2", "--batches", "1", "--no-torch",
                     "--overfit-steps", "0"]) == 1
    err = capsys.readouterr().err
    assert "NetWithSwish has modules that do not describe themselves" in err and "group1.5 (Swish)" in err
    assert not timed  # refused before anything ran


def test_a_container_must_say_its_order():
    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.ReLU(), nn.ReLU()

        def forward(self, x):
            return self.b(self.a(x))

    with pytest.raises(NotImplementedError, match="Pair .* does not say in which order"):
        Pair().flops((1, 1, 2, 2))
    with pytest.raises(ValueError, match=r"the model \(Pair\) lacks layers"):
        bench.check_layers(Pair())
    with pytest.raises(NotImplementedError, match="Swish has no PyTorch twin"):
        Swish().to_torch()


# --- the PyTorch twins ----------------------------------------------------------------------------------
def test_minicolor_does_not_import_torch():
    code = ("import sys, minicolor, minicolor.models, minicolor.cli, minicolor.tools.summary, "
            "minicolor.tools.profile, minicolor.tools.bench; print('torch' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "False"


@pytest.mark.parametrize("training", [True, False])
def test_layer_twins_compute_what_minicolor_computes(training, rng):
    torch = torch_or_skip()
    layers = [_conv(case, bias, rng) for case in CONVS for bias in (True, False)]
    shapes = [case[-1] for case in CONVS for _ in (True, False)]
    bn = nn.BatchNorm2d(3, momentum=0.2, eps=1e-3, dtype=np.float64)
    for array in (bn.weight.data, bn.bias.data, bn.running_mean, bn.running_var):
        array[...] = rng.uniform(0.5, 2, 3)
    layers += [bn, nn.ReLU(), nn.Upsample(2, "nearest"), nn.Upsample(3, "bilinear")]
    shapes += [(4, 3, 5, 6)] * 4
    for layer, shape in zip(layers, shapes):
        layer.train(training)
        twin = layer.to_torch()
        assert twin.training == training
        x = rng.standard_normal(shape)
        mine = layer(tensor(x)).data
        theirs = twin(torch.tensor(x)).detach().numpy()
        np.testing.assert_allclose(mine, theirs, rtol=1e-10, atol=1e-12, err_msg=layer.describe())
        # the same weights and buffers, also after the forward (batchnorm's running statistics)
        state = {k: v.numpy() for k, v in twin.state_dict().items() if k != "num_batches_tracked"}
        assert list(state) == list(layer.state_dict())
        for name, value in layer.state_dict().items():
            assert state[name].dtype == value.dtype
            np.testing.assert_allclose(value, state[name], rtol=1e-12, atol=1e-14, err_msg=name)


def test_network_twin_has_the_same_weights_and_output(rng):
    torch = torch_or_skip()
    net = ColorizationNet(2, seed=3, dtype=np.float64)
    for _, b in net.named_buffers():
        b[...] = rng.uniform(0.5, 1.5, b.shape)
    twin = net.to_torch()
    ours = net.state_dict()
    theirs = {k: v.numpy() for k, v in twin.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert sorted(theirs) == sorted(ours)  # the same names (ours lists the buffers last)
    for name in ours:
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
    x = rng.uniform(-0.5, 0.5, (2, 1, 16, 24))
    for mode in (True, False):
        net.train(mode)
        twin.train(mode)
        with no_grad():
            mine = net(tensor(x)).data
        np.testing.assert_allclose(mine, twin(torch.tensor(x)).detach().numpy(), rtol=1e-9, atol=1e-11)
    with pytest.raises(NotImplementedError, match="classification head has no PyTorch twin"):
        ColorizationNet(2, head="classification").to_torch()

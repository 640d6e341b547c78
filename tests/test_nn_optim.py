"""Modules, state dicts, optimizers (against PyTorch's formulas), and a tiny network that learns."""
import numpy as np
import pytest

from minicolor import functional as F
from minicolor import gradcheck, nn, optim, tensor

from conftest import torch_or_skip


def tiny_net(rng):
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, rng=rng), nn.ReLU(), nn.BatchNorm2d(4),
        nn.Conv2d(4, 4, 3, stride=2, padding=1, rng=rng), nn.ReLU(),
        nn.Upsample(2, "bilinear"), nn.Conv2d(4, 2, 1, rng=rng),
    )


def test_module_bookkeeping(rng):
    net = tiny_net(rng)
    names = [name for name, _ in net.named_parameters()]
    assert names == ["0.weight", "0.bias", "2.weight", "2.bias", "3.weight", "3.bias",
                     "6.weight", "6.bias"]
    assert net.num_parameters() == 4 * 9 + 4 + 4 + 4 + 4 * 4 * 9 + 4 + 4 * 2 + 2
    assert [name for name, _ in net.named_buffers()] == ["2.running_mean", "2.running_var"]
    net.eval()
    assert not net[2].training
    net.train()
    assert net[2].training
    assert "Conv2d(1, 4, kernel_size=3x3" in repr(net)


def test_state_dict_round_trip_and_errors(rng):
    a, b = tiny_net(rng), tiny_net(np.random.default_rng(99))
    a[2].running_mean[:] = 3.0
    b.load_state_dict(a.state_dict())
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        np.testing.assert_array_equal(x, y, err_msg=name)
    state = a.state_dict()
    state["0.weight"] = np.zeros((1, 1, 1, 1), np.float32)
    with pytest.raises(ValueError, match=r"0.weight has shape \(1, 1, 1, 1\) in the state"):
        b.load_state_dict(state)
    del state["0.weight"]
    with pytest.raises(KeyError, match="missing keys \\['0.weight'\\]"):
        b.load_state_dict(state)


def test_batchnorm_module_gradcheck(rng):
    bn = nn.BatchNorm2d(3, dtype=np.float64)
    x = tensor(rng.standard_normal((2, 3, 4, 4)), requires_grad=True)
    assert gradcheck(lambda x, w, b: bn(x), [x, bn.weight, bn.bias])


def test_conv_init_is_he_uniform(rng):
    conv = nn.Conv2d(64, 32, 3, rng=rng)
    bound = np.sqrt(6 / (64 * 9))
    w = conv.weight.data
    assert w.dtype == np.float32 and np.abs(w).max() <= bound
    assert abs(w.std() - bound / np.sqrt(3)) < 0.02 * bound
    assert not conv.bias.data.any()


def run_optimizer_against_torch(rng, make_mine, make_theirs, steps=5):
    torch = torch_or_skip()
    start = rng.standard_normal((3, 4))
    target = rng.standard_normal((3, 4))
    mine = nn.Parameter(start.copy())
    theirs = torch.tensor(start.copy(), requires_grad=True)
    opt_m, opt_t = make_mine([mine]), make_theirs(torch, [theirs])
    for _ in range(steps):
        opt_m.zero_grad()
        F.mse_loss(mine * mine, tensor(target)).backward()
        opt_m.step()
        opt_t.zero_grad()
        ((theirs * theirs - torch.tensor(target)) ** 2).mean().backward()
        opt_t.step()
    np.testing.assert_allclose(mine.data, theirs.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_adam_matches_pytorch(rng):
    run_optimizer_against_torch(rng, lambda p: optim.Adam(p, lr=0.1, weight_decay=0.01),
                                lambda torch, p: torch.optim.Adam(p, lr=0.1, weight_decay=0.01))


def test_sgd_momentum_matches_pytorch(rng):
    run_optimizer_against_torch(rng, lambda p: optim.SGD(p, lr=0.1, momentum=0.9),
                                lambda torch, p: torch.optim.SGD(p, lr=0.1, momentum=0.9))


def test_optimizer_state_round_trip(rng):
    p = nn.Parameter(rng.standard_normal(4))
    opt = optim.Adam([p], lr=0.1)
    p.grad = np.ones(4)
    opt.step()
    other = optim.Adam([p], lr=0.1)
    other.load_state_dict(opt.state_dict())
    assert other.t == 1
    np.testing.assert_array_equal(other.m[0], opt.m[0])
    with pytest.raises(ValueError, match="no parameters"):
        optim.SGD([], lr=0.1)


def test_tiny_network_learns(rng):
    """conv, batchnorm, relu, upsample and mse trained with Adam: loss falls at least 10x."""
    net = tiny_net(rng)
    x = tensor(rng.standard_normal((4, 1, 8, 8)).astype(np.float32))
    target = tensor(rng.standard_normal((4, 2, 8, 8)).astype(np.float32) * 0.5)
    target = tensor(F.upsample(tensor(target.data[:, :, ::2, ::2]), 2, "bilinear").data)
    opt = optim.Adam(net.parameters(), lr=0.02)
    losses = []
    for _ in range(200):
        opt.zero_grad()
        loss = F.mse_loss(net(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])

"""The fused kernels against their references, in Numba's CUDA simulator (no GPU needed).

Adam (kernels/adam.py, one kernel over every parameter) against optim.Adam's NumPy update;
batchnorm + ReLU (kernels/batchnorm.py) against the reference ReLU followed by the reference
batchnorm; the fused op's gradient numerically; and the network's launches per step.
"""
import sys

import numpy as np
import pytest

from minicolor import backend

try:
    backend.enable_simulator()
except backend.DeviceError as exc:  # numba.cuda already imported for a real GPU
    pytest.skip(str(exc), allow_module_level=True)

import minicolor.kernels as kernels  # noqa: E402
from minicolor import nn, optim  # noqa: E402

SHAPES = [(3, 4), (5,), (2, 3, 3, 3), (70,)]


@pytest.fixture(autouse=True, scope="module")
def simulator_settings():
    previous = sys.getswitchinterval()
    sys.setswitchinterval(5e-5)
    yield
    sys.setswitchinterval(previous)


def adam_pair(rng, dtype, **options):
    start = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    ref = [nn.Parameter(a.copy()) for a in start]
    fused = [nn.Parameter(a.copy(), device="sim") for a in start]
    return ref, optim.Adam(ref, **options), fused, optim.Adam(fused, **options)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_fused_adam_matches_reference(rng, dtype, weight_decay):
    ref, opt_ref, fused, opt_fused = adam_pair(rng, dtype, lr=0.05, weight_decay=weight_decay)
    assert opt_ref.flat.impl.__name__ == "minicolor.cpu.adam"  # the table's choice on cpu (the reference's bits)
    assert opt_fused.flat.impl.__name__ == "minicolor.kernels.adam"  # and on sim
    assert all(p.data.base is opt_fused.flat.param for p in fused)  # views into one buffer
    for step in range(5):
        grads = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
        for i, (a, b, g) in enumerate(zip(ref, fused, grads)):
            skip = step == 2 and i in (1, 2)  # parameters without a gradient are left alone
            a.grad = None if skip else g.copy()
            b.grad = None if skip else g.copy()
        opt_ref.step()
        opt_fused.step()
    assert opt_fused.t == opt_ref.t == 5
    for i, (a, b) in enumerate(zip(ref, fused)):
        # same arithmetic in the same order and dtype, the same C pow: equal to the last bit here
        # (a GPU may contract a * b + c into one FMA: equal to rounding there)
        np.testing.assert_array_equal(b.data, a.data, err_msg=i)
        np.testing.assert_array_equal(opt_fused.m[i], opt_ref.m[i])
        np.testing.assert_array_equal(opt_fused.v[i], opt_ref.v[i])
    assert not opt_fused.flat.param[opt_fused.flat.offsets[1] - 1]  # alignment gap stays zero


def test_fused_adam_state_round_trip(rng):
    _, _, fused, opt = adam_pair(rng, np.float32, lr=0.1)
    for p in fused:
        p.grad = np.ones(p.shape, np.float32)
    opt.step()
    state = opt.state_dict()
    assert int(state["t"]) == 1
    copies = [nn.Parameter(p.data.copy(), device="sim") for p in fused]
    other = optim.Adam(copies, lr=0.1)
    other.load_state_dict(state)
    assert other.t == 1
    for p, q in zip(fused, copies):
        p.grad = q.grad = np.full(p.shape, 0.5, np.float32)
    opt.step()
    other.step()
    for i, (p, q) in enumerate(zip(fused, copies)):
        np.testing.assert_array_equal(p.data, q.data, err_msg=i)
        np.testing.assert_array_equal(opt.m[i], other.m[i])


def test_replaced_parameter_data_is_taken_back(rng):
    _, _, fused, opt = adam_pair(rng, np.float32, lr=0.1)
    fused[0].data = np.zeros((3, 4), np.float32)  # e.g. a user's assignment
    for p in fused:
        p.grad = np.ones(p.shape, np.float32)
    opt.step()
    assert fused[0].data.base is opt.flat.param
    np.testing.assert_allclose(fused[0].data, -0.1, rtol=1e-6)  # first Adam step: -lr * sign(g)


def test_adam_step_is_two_launches(rng):
    _, _, fused, opt = adam_pair(rng, np.float32, lr=0.1)
    for p in fused:
        p.grad = np.ones(p.shape, np.float32)
    before = kernels.launch_count
    opt.step()
    assert kernels.launch_count - before == 2


# --- batchnorm + ReLU --------------------------------------------------------------------------
from minicolor import functional as F  # noqa: E402
from minicolor import gradcheck, tensor  # noqa: E402
from minicolor.kernels import batchnorm as k_batchnorm  # noqa: E402
from minicolor.reference import batchnorm as r_batchnorm  # noqa: E402


@pytest.mark.parametrize("one_kernel", [True, False])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 2, 3, 3)])
def test_fused_relu_batchnorm_kernels_match_reference(rng, shape, training, one_kernel, monkeypatch):
    """The fused kernels (one block per channel, or reductions and elementwise apart) against
    the reference ReLU followed by the reference batchnorm."""
    monkeypatch.setattr(k_batchnorm, "ONE_KERNEL_MAX", 10**9 if one_kernel else 0)
    c = shape[1]
    x = rng.standard_normal(shape)
    weight, bias = rng.standard_normal(c), rng.standard_normal(c)
    running = [rng.standard_normal(c), rng.uniform(0.5, 2, c)]
    ours_running = [a.copy() for a in running]
    kernels.POISON = True
    try:
        y, xhat, inv_std = k_batchnorm.forward(x, weight, bias, *ours_running, training, 0.1, 1e-5,
                                               relu=True)
        gy = rng.standard_normal(shape)
        grads = k_batchnorm.backward(gy, xhat, inv_std, weight, training, relu_input=x)
    finally:
        kernels.POISON = False
    relu_x = np.maximum(x, 0)
    y_ref, xhat_ref, inv_std_ref = r_batchnorm.forward(relu_x, weight, bias, *running, training,
                                                       0.1, 1e-5)
    np.testing.assert_allclose(y, y_ref, atol=1e-12)
    np.testing.assert_allclose(inv_std, inv_std_ref, rtol=1e-12)
    np.testing.assert_allclose(ours_running[0], running[0], atol=1e-12)
    np.testing.assert_allclose(ours_running[1], running[1], atol=1e-12)
    gx_bn, gw_ref, gb_ref = r_batchnorm.backward(gy, xhat_ref, inv_std_ref, weight, training)
    for ours, ref in zip(grads, (gx_bn * (x > 0), gw_ref, gb_ref)):
        np.testing.assert_allclose(ours, ref, atol=1e-12)
    assert (grads[0][x <= 0] == 0).all()


@pytest.mark.parametrize("device", ["cpu", "sim"])
@pytest.mark.parametrize("training", [True, False])
def test_relu_batch_norm_gradcheck(rng, device, training):
    shape, c = (2, 2, 3, 3), 2
    x = rng.standard_normal(shape)
    x[np.abs(x) < 1e-3] = 0.5  # keep finite differences away from the ReLU's kink
    inputs = [tensor(a, requires_grad=True, device=device)
              for a in (x, rng.standard_normal(c), rng.standard_normal(c))]
    rm, rv = np.zeros(c), np.ones(c)
    fn = lambda x, w, b: F.relu_batch_norm(x, w, b, rm.copy(), rv.copy(), training)  # noqa: E731
    assert gradcheck(fn, inputs)


def small_group(rng, dtype=np.float64):
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1, rng=rng, dtype=dtype), nn.ReLU(),
                         nn.Conv2d(3, 3, 3, padding=1, rng=rng, dtype=dtype), nn.ReLU(),
                         nn.BatchNorm2d(3, dtype=dtype))


@pytest.mark.parametrize("device", ["cpu", "sim"])
def test_sequential_fuses_relu_and_batchnorm(rng, device, monkeypatch):
    """conv, ReLU, conv, ReLU, batchnorm (a group of the network): the second ReLU and the
    batchnorm run as one op, with the same output, gradients and running estimates."""
    x = rng.standard_normal((2, 1, 4, 4))
    results = {}
    for fuse in (True, False):
        monkeypatch.setattr(nn, "FUSE", fuse)
        group = small_group(np.random.default_rng(5)).to(device)
        y = group(tensor(x, device=device))
        assert (y.creator.relu is True) == fuse
        (y * tensor(np.arange(y.size).reshape(y.shape) % 5, device=device)).sum().backward()
        results[fuse] = (y.data, [p.grad for p in group.parameters()], group[4].running_var.copy())
    np.testing.assert_allclose(results[True][0], results[False][0], atol=1e-12)
    for a, b in zip(results[True][1], results[False][1]):
        np.testing.assert_allclose(a, b, atol=1e-10)
    np.testing.assert_allclose(results[True][2], results[False][2], atol=1e-12)


def test_relu_with_a_hook_is_not_fused(rng):
    group = small_group(rng)
    seen = []
    group[3].register_forward_hook(lambda m, inputs, out: seen.append(out.data.min()))
    y = group(tensor(rng.standard_normal((2, 1, 4, 4))))
    assert len(seen) == 1 and seen[0] >= 0 and y.creator.relu is False


def batchnorm_through_both_ways(rng, shape, relu, monkeypatch):
    x, gy = rng.standard_normal(shape).astype(np.float32), rng.standard_normal(shape).astype(np.float32)
    c = shape[1]
    weight, bias = rng.standard_normal(c).astype(np.float32), rng.standard_normal(c).astype(np.float32)
    results = []
    for limit in (10**9, 0):
        monkeypatch.setattr(k_batchnorm, "ONE_KERNEL_MAX", limit)
        running = [np.zeros(c, np.float32), np.ones(c, np.float32)]
        y, xhat, inv_std = k_batchnorm.forward(x, weight, bias, *running, True, 0.1, 1e-5, relu=relu)
        grads = k_batchnorm.backward(gy, xhat, inv_std, weight, True, relu_input=x if relu else None)
        results.append([y, xhat, inv_std, *running, *grads])
    return results


@pytest.mark.parametrize("relu", [True, False])
def test_one_kernel_and_two_kernels_agree_bit_for_bit(rng, relu, monkeypatch):
    one, two = batchnorm_through_both_ways(rng, (2, 3, 5, 7), relu, monkeypatch)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("limit, per_layer", [(k_batchnorm.ONE_KERNEL_MAX, 2), (0, 6)])
def test_launches_per_network_step(limit, per_layer, monkeypatch):
    """One training step of the network: 2 batchnorm launches per batchnorm (small channels:
    one kernel per pass) or 6 (chunks, their merge, elementwise; each way), each with the ReLU
    before it fused in, and 2 for Adam (recorded, not run: the count does not depend on the data)."""
    from minicolor.kernels import adam as k_adam
    from minicolor.models import ColorizationNet

    monkeypatch.setattr(k_batchnorm, "ONE_KERNEL_MAX", limit)
    net = ColorizationNet(width=1).to("sim")
    opt = optim.Adam(net.parameters(), lr=1e-3)
    x = tensor(np.zeros((1, 1, 16, 16), np.float32), device="sim")
    y = tensor(np.zeros((1, 2, 16, 16), np.float32), device="sim")
    before = kernels.launch_count
    with np.errstate(all="ignore"), kernels.recording() as launches:
        loss, _ = net.loss(x, y)
        loss.backward()
        opt.step()
    assert kernels.launch_count - before == len(launches)
    batchnorm = [(kernel, args) for kernel, _, _, args in launches
                 if kernel.__module__ == k_batchnorm.__name__]
    assert len(batchnorm) == per_layer * 7
    relu = [args[8] if kernel is k_batchnorm._channel_forward else args[1] for kernel, args in batchnorm
            if kernel in (k_batchnorm._chunk_stats, k_batchnorm._channel_forward)]
    assert relu == [True] * 7  # relu=True: every batchnorm follows a ReLU
    assert [k for k, *_ in launches if k in (k_adam._advance, k_adam._update)] == [k_adam._advance,
                                                                                   k_adam._update]

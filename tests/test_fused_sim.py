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
from minicolor.tensor import Tensor  # noqa: E402

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
    assert opt_ref.flat is None and opt_fused.flat is not None
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

"""batch_norm, relu, upsample and mse_loss: gradient checks, oracles, PyTorch, errors."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minicolor import functional as F
from minicolor import gradcheck, tensor
from oracles import batchnorm_loop, upsample_loop

from conftest import torch_or_skip


def t64(rng, *shape, requires_grad=True):
    return tensor(rng.standard_normal(shape), requires_grad=requires_grad)


# --- batch_norm -------------------------------------------------------------------------------
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 2, 3, 3), (5, 1, 1, 2)])
def test_batchnorm_gradcheck(rng, training, shape):
    c = shape[1]
    rm, rv = rng.standard_normal(c), rng.uniform(0.5, 2, c)
    fn = lambda x, w, b: F.batch_norm(x, w, b, rm.copy(), rv.copy(), training)  # noqa: E731
    assert gradcheck(fn, [t64(rng, *shape), t64(rng, c), t64(rng, c)])


def test_batchnorm_forward_matches_loops(rng):
    x, w, b = rng.standard_normal((3, 4, 5, 6)), rng.standard_normal(4), rng.standard_normal(4)
    y = F.batch_norm(tensor(x), tensor(w), tensor(b), np.zeros(4), np.ones(4), True).data
    np.testing.assert_allclose(y, batchnorm_loop(x, w, b, 1e-5), atol=1e-10)


def test_batchnorm_running_stats_and_eval_match_pytorch(rng):
    torch = torch_or_skip()
    bn = torch.nn.BatchNorm2d(3, momentum=0.1, eps=1e-5).double()
    rm, rv = np.zeros(3), np.ones(3)
    w, b = tensor(np.ones(3)), tensor(np.zeros(3))
    for _ in range(3):
        x = rng.standard_normal((4, 3, 5, 5)) * 2 + 1
        mine = F.batch_norm(tensor(x), w, b, rm, rv, training=True).data
        theirs = bn.train()(torch.tensor(x)).detach().numpy()
        np.testing.assert_allclose(mine, theirs, atol=1e-10)
    np.testing.assert_allclose(rm, bn.running_mean.numpy(), atol=1e-12)
    np.testing.assert_allclose(rv, bn.running_var.numpy(), atol=1e-12)
    x = rng.standard_normal((2, 3, 4, 4))
    mine = F.batch_norm(tensor(x), w, b, rm, rv, training=False).data
    np.testing.assert_allclose(mine, bn.eval()(torch.tensor(x)).detach().numpy(), atol=1e-10)


def test_batchnorm_bad_input(rng):
    x = t64(rng, 2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"weight must have shape \(3,\)"):
        F.batch_norm(x, t64(rng, 2), t64(rng, 3), np.zeros(3), np.ones(3), True)
    with pytest.raises(ValueError, match="more than one value per channel"):
        F.batch_norm(t64(rng, 1, 3, 1, 1), t64(rng, 3), t64(rng, 3), np.zeros(3), np.ones(3), True)


# --- relu ---------------------------------------------------------------------------------------
def test_relu(rng):
    x = t64(rng, 2, 3, 4)
    x.data[np.abs(x.data) < 1e-3] = 0.5  # keep finite differences away from the kink
    assert gradcheck(F.relu, [x])
    np.testing.assert_array_equal(F.relu(x).data, np.where(x.data > 0, x.data, 0))


# --- upsample -----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
@pytest.mark.parametrize("shape, scale", [((2, 3, 3, 4), 2), ((1, 1, 5, 2), 4), ((1, 2, 1, 3), 3)])
def test_upsample_gradcheck_and_loops(rng, mode, shape, scale):
    x = t64(rng, *shape)
    assert gradcheck(lambda x: F.upsample(x, scale, mode), [x])
    np.testing.assert_allclose(F.upsample(x, scale, mode).data, upsample_loop(x.data, scale, mode),
                               atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(h=st.integers(1, 7), w=st.integers(1, 7), scale=st.integers(1, 4),
       mode=st.sampled_from(["nearest", "bilinear"]), seed=st.integers(0, 2**16))
def test_upsample_property(h, w, scale, mode, seed):
    x = np.random.default_rng(seed).standard_normal((1, 2, h, w))
    np.testing.assert_allclose(F.upsample(tensor(x), scale, mode).data,
                               upsample_loop(x, scale, mode), atol=1e-12)


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_upsample_matches_pytorch(rng, mode):
    torch = torch_or_skip()
    x = rng.standard_normal((2, 3, 5, 7))
    tx = torch.tensor(x, requires_grad=True)
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    ty = torch.nn.functional.interpolate(tx, scale_factor=4, mode=mode, **kwargs)
    gy = rng.standard_normal(tuple(ty.shape))
    ty.backward(torch.tensor(gy))
    mx = tensor(x, requires_grad=True)
    my = F.upsample(mx, 4, mode)
    my.backward(gy)
    np.testing.assert_allclose(my.data, ty.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(mx.grad, tx.grad.numpy(), atol=1e-12)


def test_upsample_bad_input(rng):
    with pytest.raises(ValueError, match="mode must be 'nearest' or 'bilinear', got 'cubic'"):
        F.upsample(t64(rng, 1, 1, 2, 2), 2, "cubic")
    with pytest.raises(ValueError, match="scale_factor must be a positive int, got 1.5"):
        F.upsample(t64(rng, 1, 1, 2, 2), 1.5)


# --- mse_loss -----------------------------------------------------------------------------------
def test_mse(rng):
    p, t = t64(rng, 2, 3, 4), t64(rng, 2, 3, 4, requires_grad=False)
    assert gradcheck(F.mse_loss, [p, t])
    np.testing.assert_allclose(F.mse_loss(p, t).data, ((p.data - t.data) ** 2).mean())
    with pytest.raises(ValueError, match=r"pred has shape \(2, 3, 4\) but target has \(2, 3\)"):
        F.mse_loss(p, t64(rng, 2, 3))

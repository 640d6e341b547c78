"""Zhang et al.'s classification head: bins, soft encoding, rebalancing, and the two new ops."""
import numpy as np
import pytest

from minicolor import functional as F
from minicolor import gradcheck, optim, quantize, tensor
from minicolor.color import normalize_ab
from minicolor.models import ColorizationNet
from minicolor.checkpoint import load_model, save_weights

from conftest import torch_or_skip


def test_gamut_bins():
    centers = quantize.gamut_bins()
    assert 240 < len(centers) < 320
    assert np.all(centers % 10 == 0)
    assert [0.0, 0.0] in centers.tolist()
    assert [100.0, -100.0] not in centers.tolist()  # no sRGB color is that saturated


def test_soft_encoding(rng):
    centers = quantize.gamut_bins()
    ab = rng.uniform(-40, 40, (2, 2, 3, 3))
    target = quantize.soft_encode(ab, centers)
    assert target.shape == (2, len(centers), 3, 3)
    np.testing.assert_allclose(target.sum(axis=1), 1.0, atol=1e-12)
    assert ((target > 0).sum(axis=1) == 5).all()
    exact = quantize.soft_encode(np.array([20.0, -30.0]).reshape(1, 2, 1, 1), centers)[0, :, 0, 0]
    assert centers[exact.argmax()].tolist() == [20.0, -30.0]
    neighbours = np.sort(exact)[-5:]  # the centre, then four at distance 10: exp(-100/50) = 0.135
    np.testing.assert_allclose(neighbours[:4] / neighbours[4], np.exp(-2), rtol=1e-9)


def test_rebalancing_weights():
    centers = quantize.gamut_bins()
    counts = np.zeros(len(centers))
    gray = np.flatnonzero((centers == 0).all(axis=1))[0]
    counts[gray] = 1000.0
    counts[:10] += 1.0
    w = quantize.rebalancing_weights(counts, centers)
    p = counts / counts.sum()
    d2 = ((centers[:, None] - centers[None]) ** 2).sum(-1)
    smoothed = np.exp(-d2 / 50) @ p
    smoothed /= smoothed.sum()
    assert (smoothed * w).sum() == pytest.approx(1.0)
    assert w[gray] < 1 < w[0]  # the common color weighs less, a rare one more


def test_cross_entropy_gradcheck(rng):
    logits = tensor(rng.standard_normal((2, 5, 3, 2)), requires_grad=True)
    target = rng.random((2, 5, 3, 2))
    target /= target.sum(axis=1, keepdims=True)
    weight = rng.uniform(0.5, 2, (2, 3, 2))
    assert gradcheck(lambda z: F.softmax_cross_entropy(z, target, weight), [logits])


def test_cross_entropy_matches_pytorch(rng):
    torch = torch_or_skip()
    logits = rng.standard_normal((2, 6, 4, 3))
    target = rng.random((2, 6, 4, 3))
    target /= target.sum(axis=1, keepdims=True)
    ours = F.softmax_cross_entropy(tensor(logits), target).item()
    theirs = torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor(target)).item()
    assert ours == pytest.approx(theirs, rel=1e-12)


def test_annealed_mean_gradcheck_and_limits(rng):
    centers = rng.uniform(-50, 50, (5, 2))
    logits = tensor(rng.standard_normal((2, 5, 2, 3)), requires_grad=True)
    assert gradcheck(lambda z: F.annealed_mean(z, centers, 0.38), [logits])
    mean = F.annealed_mean(logits, centers, 1.0).data  # T = 1: the plain expectation
    p = np.exp(logits.data) / np.exp(logits.data).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(mean, np.einsum("nqhw,qk->nkhw", p, centers), atol=1e-10)
    mode = F.annealed_mean(logits, centers, 1e-3).data  # T -> 0: the most likely bin
    np.testing.assert_allclose(mode, centers[logits.data.argmax(axis=1)].transpose(0, 3, 1, 2), atol=1e-6)


def test_bad_inputs(rng):
    logits = tensor(rng.standard_normal((1, 4, 2, 2)))
    with pytest.raises(ValueError, match="must both have shape"):
        F.softmax_cross_entropy(logits, np.ones((1, 3, 2, 2)))
    with pytest.raises(ValueError, match=r"expected \(1, 2, 2\)"):
        F.softmax_cross_entropy(logits, np.ones((1, 4, 2, 2)) / 4, np.ones((2, 2)))
    with pytest.raises(ValueError, match="for 3 bin centers"):
        F.annealed_mean(logits, np.zeros((3, 2)))
    with pytest.raises(ValueError, match="head must be one of"):
        ColorizationNet(2, head="cubist")


def test_classification_network_learns_and_round_trips(rng, tmp_path):
    net = ColorizationNet(width=2, head="classification", seed=0)
    l = tensor(rng.uniform(-0.5, 0.5, (2, 1, 16, 16)).astype(np.float32))
    ab_lab = np.zeros((2, 2, 16, 16), np.float32)
    ab_lab[0, 0], ab_lab[1, 1] = 40.0, -40.0  # one red photo, one blue
    ab = tensor(normalize_ab(ab_lab))
    weights = net.fit_class_weights([ab_lab])
    assert weights.shape == (len(net.bin_centers),)
    assert net(l).shape == (2, 2, 16, 16)
    opt = optim.Adam(net.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        opt.zero_grad()
        loss, mse = net.loss(l, ab)
        loss.backward()
        opt.step()
        first = first if first is not None else (loss.item(), mse.item())
    target, weight = net.classification_targets(ab.data)
    entropy = float((weight * -(target * np.log(np.where(target > 0, target, 1))).sum(1)).mean())
    assert loss.item() - entropy < (first[0] - entropy) / 2  # the cross-entropy's floor is entropy
    assert mse.item() < first[1] / 2
    path = save_weights(tmp_path / "w.npz", net)
    again = load_model(path)
    assert again.head_kind == "classification"
    np.testing.assert_array_equal(again.class_weights, net.class_weights)
    np.testing.assert_allclose(again.predict_ab(np.full((1, 16, 16), 50.0)),
                               net.predict_ab(np.full((1, 16, 16), 50.0)), atol=1e-5)

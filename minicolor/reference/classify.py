"""Colorization as classification (Zhang et al. 2016), the NumPy (xp) reference.

Regression with MSE predicts the *mean* of the plausible colors of a pixel; when a shirt may
be red or blue, the mean is gray, so MSE models paint photos brown and gray. Zhang et al.
instead predict a probability for each of Q color bins and pick a color from that
distribution. This file holds the two differentiable ops that needs:

softmax_cross_entropy(logits, target, weight)
    logits (N, Q, h, w), target (N, Q, h, w) a distribution per pixel (soft-encoded ab),
    weight (N, h, w) per-pixel class-rebalancing weights:
        loss = -sum_pixels weight * sum_q target_q * log softmax(logits)_q / pixels
        dloss/dlogits = weight * (softmax(logits) - target) / pixels      (as sum_q target_q = 1)

annealed_mean(logits, centers, T)
    the color of each pixel: the mean of the bin centers (Q, 2) under the distribution
    softmax(logits) sharpened by temperature T (0.38 in the paper: between the mean, T = 1,
    and the mode, T -> 0, which is vivid but noisy):
        p = softmax(logits / T),  ab = sum_q p_q * center_q
        dab_k/dlogits_q = p_q * (center_qk - ab_k) / T
Written against xp: the same code runs on NumPy and CuPy (these ops are cheap next to the
convolutions, so the GPU path uses them as they are).
"""
from ..backend import get_array_module


def softmax(x, axis=1):
    xp = get_array_module(x)
    e = xp.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax(x, axis=1):
    xp = get_array_module(x)
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))


def cross_entropy_forward(logits, target, weight):
    """Returns (loss as a 0-d array, probabilities for backward)."""
    xp = get_array_module(logits)
    pixels = weight.size
    per_pixel = -(target * log_softmax(logits)).sum(axis=1)  # (N, h, w)
    loss = (weight * per_pixel).sum() / pixels
    return xp.asarray(loss, dtype=logits.dtype), softmax(logits)


def cross_entropy_backward(g, probs, target, weight):
    pixels = weight.size
    return (probs - target) * (weight[:, None] * (g / pixels)).astype(probs.dtype)


def annealed_mean_forward(logits, centers, temperature):
    """Returns (ab (N, 2, h, w), p for backward)."""
    xp = get_array_module(logits)
    p = softmax(logits / temperature)
    ab = xp.einsum("nqhw,qk->nkhw", p, centers.astype(logits.dtype))
    return ab, p


def annealed_mean_backward(g, p, ab, centers, temperature):
    xp = get_array_module(g)
    centers = centers.astype(g.dtype)
    # sum_k g_k (center_qk - ab_k) = (g . center_q) - (g . ab), per pixel
    g_dot_center = xp.einsum("nkhw,qk->nqhw", g, centers)
    g_dot_ab = (g * ab).sum(axis=1, keepdims=True)
    return p * (g_dot_center - g_dot_ab) / temperature

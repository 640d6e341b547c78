"""The ab plane as Q color classes: bins, soft encoding and class rebalancing (Zhang et al. 2016).

bins          ab is cut into 10x10 squares centred on multiples of 10; a square is a class if
              some sRGB color falls in it. minicolor finds them itself: it converts a 64^3 grid
              of sRGB colors to Lab and keeps every square that is hit: 261 squares. (The
              paper counts 313; its gamut came from a looser test, and ours keeps only the
              squares that displayable colors actually reach.)
soft encoding a true ab value becomes a distribution over its 5 nearest bin centers, weighted by
              a Gaussian (sigma 5) of the distance: a softer target than one-hot, which tells
              the network that neighbouring bins are nearly as right.
rebalancing   natural photos are mostly unsaturated: without help, the network would learn that
              gray is always a safe bet. Each pixel's loss is weighted by the rarity of its
              color: w = ((1 - lambda) p~ + lambda / Q)^-1, with p~ the training set's bin
              frequencies smoothed by a Gaussian (sigma 5) and lambda = 0.5, scaled so that
              the expected weight over the training set is 1.
"""
import numpy as np

from .backend import get_array_module
from .color import rgb_to_lab

GRID = 10.0


def gamut_bins(grid=GRID, samples=64):
    """Centers (Q, 2) of the grid x grid ab squares that hold at least one sRGB color."""
    axis = np.linspace(0, 1, samples)
    rgb = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    ab = rgb_to_lab(rgb)[:, 1:]
    cells = np.unique(np.round(ab / grid).astype(np.int64), axis=0)
    return cells.astype(np.float64) * grid


def nearest_bins(ab, centers, k):
    """Indices (P, k) and squared distances (P, k) of the k nearest centers to ab (P, 2)."""
    xp = get_array_module(ab)
    centers = xp.asarray(centers, dtype=ab.dtype)
    d2 = ((ab[:, None, :] - centers[None, :, :]) ** 2).sum(-1)  # (P, Q)
    idx = xp.argpartition(d2, k - 1, axis=1)[:, :k] if k < centers.shape[0] else xp.argsort(d2, 1)
    return idx, xp.take_along_axis(d2, idx, axis=1)


def soft_encode(ab, centers, k=5, sigma=5.0):
    """ab (N, 2, h, w) in Lab units -> target distributions (N, Q, h, w)."""
    xp = get_array_module(ab)
    n, _, h, w = ab.shape
    flat = ab.transpose(0, 2, 3, 1).reshape(-1, 2)
    idx, d2 = nearest_bins(flat, centers, k)
    weights = xp.exp(-d2 / (2 * sigma**2))
    weights /= weights.sum(axis=1, keepdims=True)
    target = xp.zeros((flat.shape[0], centers.shape[0]), dtype=ab.dtype)
    xp.put_along_axis(target, idx, weights.astype(ab.dtype), axis=1)
    return target.reshape(n, h, w, -1).transpose(0, 3, 1, 2)


def bin_counts(ab, centers):
    """How many pixels of ab (N, 2, h, w) fall nearest to each bin: (Q,) floats."""
    flat = np.asarray(ab, np.float64).transpose(0, 2, 3, 1).reshape(-1, 2)
    idx, _ = nearest_bins(flat, centers, 1)
    return np.bincount(idx[:, 0], minlength=len(centers)).astype(np.float64)


def rebalancing_weights(counts, centers, lam=0.5, sigma=5.0):
    """Per-bin weights from bin counts (Q,): ((1 - lam) p~ + lam / Q)^-1, E_p~[w] = 1."""
    p = counts / counts.sum()
    d2 = ((centers[:, None, :] - centers[None, :, :]) ** 2).sum(-1)
    smoothed = np.exp(-d2 / (2 * sigma**2)) @ p
    smoothed /= smoothed.sum()
    w = 1.0 / ((1 - lam) * smoothed + lam / len(centers))
    return w / (smoothed * w).sum()

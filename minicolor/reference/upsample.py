"""upsample, the NumPy reference: nearest and bilinear, integer scale factors.

Both modes are linear maps applied separately to rows and columns, so we write each as a
small interpolation matrix A (out_size x in_size) and compute

    y  = A_h @ x @ A_w^T          forward, on the last two axes of (N, C, H, W)
    gx = A_h^T @ gy @ A_w         backward: the transpose of a linear map is its gradient

nearest:  output o copies input floor(o / s).
bilinear: PyTorch's align_corners=False: output o samples input coordinate
          (o + 0.5) / s - 0.5, clamped at 0, between its two neighbours (the upper one
          clamped at in_size - 1), weighted by distance.
kernels/upsample.py computes the same sums one output (or input) pixel per thread.
"""
import numpy as np

from ..backend import get_array_module


def source_coords(in_size, scale, mode):
    """For each output index: (lower input index, upper input index, weight of the upper)."""
    o = np.arange(in_size * scale)
    if mode == "nearest":
        lo = o // scale
        return lo, lo, np.zeros(len(o))
    src = np.maximum((o + 0.5) / scale - 0.5, 0.0)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, in_size - 1)
    return lo, hi, src - lo


def matrix(in_size, scale, mode, xp=np, dtype=np.float32):
    """The (in_size*scale, in_size) matrix that upsamples one axis."""
    lo, hi, frac = source_coords(in_size, scale, mode)
    a = np.zeros((in_size * scale, in_size))
    rows = np.arange(len(lo))
    np.add.at(a, (rows, lo), 1 - frac)
    np.add.at(a, (rows, hi), frac)
    return xp.asarray(a, dtype=dtype)


def forward(x, scale, mode):
    xp = get_array_module(x)
    a_h = matrix(x.shape[2], scale, mode, xp, x.dtype)
    a_w = matrix(x.shape[3], scale, mode, xp, x.dtype)
    return a_h @ x @ a_w.T


def backward(gy, x_shape, scale, mode):
    xp = get_array_module(gy)
    a_h = matrix(x_shape[2], scale, mode, xp, gy.dtype)
    a_w = matrix(x_shape[3], scale, mode, xp, gy.dtype)
    return a_h.T @ gy @ a_w

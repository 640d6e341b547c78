"""upsample, the fast CPU path: nearest and bilinear, integer scale factors.

Same functions, arguments and results as minicolor/reference/upsample.py, which writes each mode
as two small interpolation matrices, y = A_h @ x @ A_w^T: clear, but every output value then
costs a dot product over a whole input row and column (mostly zeros), and NumPy runs N*C pairs
of matrix products. Here, one image plane per loop turn, the planes spread over the cores:

    nearest   each input row is widened once and copied to its ``scale`` output rows; backward
              sums each scale x scale block
    bilinear  each output blends its two source rows and columns, from the same (lower, upper,
              weight) coordinates the reference builds its matrices from; backward adds each
              gradient back onto its sources, in a fixed order

Measured on one core, forward + backward (docs/cpu.md): the x2 nearest of group 8, 8.3 ms ->
5.2 ms at batch 16 and 128 px (128 x 16 x 16), 1.1 ms -> 0.5 ms at batch 1 and 224 px; the x4
bilinear head, 1.7 ms -> 1.5 ms at batch 16 (2 x 32 x 32), 0.67 ms -> 0.42 ms at batch 1.
"""
import numpy as np
from numba import njit, prange

from ..reference.upsample import source_coords
from . import threads


def _coords(size, scale, mode, dtype):
    lo, hi, frac = source_coords(size, scale, mode)
    return lo.astype(np.int64), hi.astype(np.int64), frac.astype(dtype)


@njit(parallel=True, cache=True)
def _forward(x, rows, cols, y):
    """y[oh, ow] = the two-by-two blend of x around (rows[.][oh], cols[.][ow]), per plane:
    first along each source row, then between the two rows."""
    n, c, h, w = x.shape
    lo_h, hi_h, fh = rows
    lo_w, hi_w, fw = cols
    one = x.dtype.type(1)
    for plane in prange(n * c):
        img, ch = plane // c, plane % c
        src, out = x[img, ch], y[img, ch]
        wide = np.empty((h, out.shape[1]), x.dtype)  # each source row, widened
        for r in range(h):
            for o in range(out.shape[1]):
                wide[r, o] = (one - fw[o]) * src[r, lo_w[o]] + fw[o] * src[r, hi_w[o]]
        for o in range(out.shape[0]):
            a, b, f = lo_h[o], hi_h[o], fh[o]
            for k in range(out.shape[1]):
                out[o, k] = (one - f) * wide[a, k] + f * wide[b, k]


@njit(parallel=True, cache=True)
def _backward(gy, rows, cols, gx):
    """The adjoint of _forward: each output gradient added back onto its sources."""
    n, c, h, w = gx.shape
    lo_h, hi_h, fh = rows
    lo_w, hi_w, fw = cols
    one = gy.dtype.type(1)
    for plane in prange(n * c):
        img, ch = plane // c, plane % c
        g, out = gy[img, ch], gx[img, ch]
        wide = np.zeros((h, g.shape[1]), gy.dtype)
        for o in range(g.shape[0]):
            a, b, f = lo_h[o], hi_h[o], fh[o]
            for k in range(g.shape[1]):
                wide[a, k] += (one - f) * g[o, k]
                wide[b, k] += f * g[o, k]
        out[:] = 0
        for r in range(h):
            for o in range(g.shape[1]):
                out[r, lo_w[o]] += (one - fw[o]) * wide[r, o]
                out[r, hi_w[o]] += fw[o] * wide[r, o]


@njit(parallel=True, cache=True)
def _nearest_forward(x, scale, y):
    """y[oh, ow] = x[oh // scale, ow // scale]: each input row widened once, then copied."""
    n, c, h, w = x.shape
    for plane in prange(n * c):
        img, ch = plane // c, plane % c
        for r in range(h):
            src, first = x[img, ch, r], y[img, ch, r * scale]
            for s in range(w):
                v = src[s]
                for k in range(scale):
                    first[s * scale + k] = v
            for k in range(1, scale):
                y[img, ch, r * scale + k] = first


@njit(parallel=True, cache=True)
def _nearest_backward(gy, scale, gx):
    """gx[i, j] = the sum of the scale x scale block of gy that copied it."""
    n, c, h, w = gx.shape
    for plane in prange(n * c):
        img, ch = plane // c, plane % c
        for r in range(h):
            out = gx[img, ch, r]
            out[:] = 0
            for k in range(scale):
                src = gy[img, ch, r * scale + k]
                for s in range(w):
                    for q in range(scale):
                        out[s] += src[s * scale + q]


def forward(x, scale, mode):
    threads.adapt()
    x = np.ascontiguousarray(x)
    n, c, h, w = x.shape
    y = np.empty((n, c, h * scale, w * scale), x.dtype)
    if mode == "nearest":
        _nearest_forward(x, scale, y)
    else:
        _forward(x, _coords(h, scale, mode, x.dtype), _coords(w, scale, mode, x.dtype), y)
    return y


def backward(gy, x_shape, scale, mode):
    threads.adapt()
    gy = np.ascontiguousarray(gy)
    gx = np.empty(x_shape, gy.dtype)
    if mode == "nearest":
        _nearest_backward(gy, scale, gx)
    else:
        _backward(gy, _coords(x_shape[2], scale, mode, gy.dtype), _coords(x_shape[3], scale, mode, gy.dtype), gx)
    return gx

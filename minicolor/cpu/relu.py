"""relu, the fast CPU path: max(x, 0) and its gradient, one compiled pass each.

Same functions, arguments and results (to the bit) as minicolor/reference/relu.py. There,
backward is two NumPy passes on one core: ``y > 0`` makes an array of booleans, and
``gy * mask`` reads it back. Here each pass reads its inputs once and writes its output once,
in fixed chunks of the flat array spread over the cores.

Measured on one (8, 16, 224, 224) activation (group1's size at batch 8), one thread, CPU time,
the best of 9 (`python examples/cpu_figures.py ops`, idle 2-core Xeon): forward 3.3 ms for the
reference, 2.3 here; backward 7.7 and 3.6.
"""
import numpy as np
from numba import njit, prange

from . import threads

CHUNK = 1 << 16  # elements per loop turn: 256 KB of float32, each turn's work in cache


@njit(parallel=True, cache=True)
def _forward(x, y):
    """y = x where x > 0 or x is NaN, else 0: np.maximum(x, 0) to the bit (-0.0 becomes 0.0)."""
    zero = x.dtype.type(0)
    for chunk in prange(-(-x.size // CHUNK)):
        src, dst = x[chunk * CHUNK:(chunk + 1) * CHUNK], y[chunk * CHUNK:(chunk + 1) * CHUNK]
        for k in range(src.size):
            v = src[k]
            dst[k] = v if v > zero or v != v else zero


@njit(parallel=True, cache=True)
def _backward(gy, y, gx):
    """gx = gy * (y > 0): gy times one or zero, as NumPy computes it (so -0.0 and NaN agree)."""
    zero, one = gy.dtype.type(0), gy.dtype.type(1)
    for chunk in prange(-(-gy.size // CHUNK)):
        lo, hi = chunk * CHUNK, (chunk + 1) * CHUNK
        g, out, mask = gy[lo:hi], gx[lo:hi], y[lo:hi]
        for k in range(g.size):
            out[k] = g[k] * (one if mask[k] > zero else zero)


def forward(x):
    threads.adapt()
    x = np.ascontiguousarray(x)
    y = np.empty_like(x)
    _forward(x.reshape(-1), y.reshape(-1))
    return y


def backward(gy, y):
    threads.adapt()
    gy = np.ascontiguousarray(gy)
    gx = np.empty_like(gy)
    _backward(gy.reshape(-1), np.ascontiguousarray(y).reshape(-1), gx.reshape(-1))
    return gx

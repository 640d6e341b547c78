"""upsample as Numba CUDA kernels: one thread per output value forward, per input value backward.

Read minicolor/reference/upsample.py first: there each mode is a small interpolation matrix per
axis. Here each thread works out its own row of those matrices with ``_source``: which input
indices (lo, hi) an output index reads along one axis, and the weight of hi.

forward   thread (n, c, oh, ow) reads the (up to) 2 x 2 inputs its output samples and blends them.
backward  thread (n, c, ih, iw) *gathers*: it visits every output that could have read its input
          pixel (within 2 scale steps along each axis), and adds gy times the weight it had.
          Gathering instead of scattering means no two threads write the same gx value, so no
          atomics are needed and the result is the same on every run.
No shared memory: each input value is read by at most 4 * scale^2 outputs, all close together,
so the GPU's caches already serve the reuse.
"""
import math

import numpy as np
from numba import cuda

from minicolor.backend import get_array_module
import minicolor.kernels as kernels
from minicolor.kernels import SIMULATOR

THREADS = 32 if SIMULATOR else 256  # threads per block (fewer Python threads in the simulator)


@cuda.jit(device=True)
def _source(o, n_in, scale, bilinear):
    """Along one axis, output index o reads inputs lo and hi; returns (lo, hi, weight of hi)."""
    if not bilinear:
        lo = o // scale
        return lo, lo, 0.0
    src = (o + 0.5) / scale - 0.5  # align_corners=False
    if src < 0.0:
        src = 0.0
    lo = int(math.floor(src))
    hi = min(lo + 1, n_in - 1)
    return lo, hi, src - lo


@cuda.jit(device=True)
def _weight(o, i, n_in, scale, bilinear):
    """The weight of input index i in output index o, along one axis."""
    lo, hi, frac = _source(o, n_in, scale, bilinear)
    w = 0.0
    if lo == i:
        w += 1.0 - frac
    if hi == i:
        w += frac
    return w


@cuda.jit
def _forward(x, y, scale, bilinear):
    h, w = x.shape[2], x.shape[3]
    ho, wo = y.shape[2], y.shape[3]
    for e in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        ow, oh = e % wo, (e // wo) % ho
        c, n = (e // (wo * ho)) % y.shape[1], e // (wo * ho * y.shape[1])
        r0, r1, fr = _source(oh, h, scale, bilinear)
        s0, s1, fs = _source(ow, w, scale, bilinear)
        top = x[n, c, r0, s0] * (1 - fs) + x[n, c, r0, s1] * fs
        bottom = x[n, c, r1, s0] * (1 - fs) + x[n, c, r1, s1] * fs
        y[n, c, oh, ow] = top * (1 - fr) + bottom * fr


@cuda.jit
def _backward(gy, gx, scale, bilinear):
    h, w = gx.shape[2], gx.shape[3]
    ho, wo = gy.shape[2], gy.shape[3]
    for e in range(cuda.grid(1), gx.size, cuda.gridsize(1)):
        iw, ih = e % w, (e // w) % h
        c, n = (e // (w * h)) % gx.shape[1], e // (w * h * gx.shape[1])
        total = 0.0
        for oh in range(max(0, (ih - 1) * scale), min(ho, (ih + 2) * scale)):
            wr = _weight(oh, ih, h, scale, bilinear)
            if wr != 0.0:
                for ow in range(max(0, (iw - 1) * scale), min(wo, (iw + 2) * scale)):
                    ws = _weight(ow, iw, w, scale, bilinear)
                    if ws != 0.0:
                        total += wr * ws * gy[n, c, oh, ow]
        gx[n, c, ih, iw] = total


def _grid(size):
    return min(math.ceil(size / THREADS), 65535)


def forward(x, scale, mode):
    xp = get_array_module(x)
    n, c, h, w = x.shape
    y = kernels.empty(xp, (n, c, h * scale, w * scale), x.dtype)
    kernels.launch(_forward, _grid(y.size), THREADS, x, y, scale, mode == "bilinear")
    return y


def backward(gy, x_shape, scale, mode):
    xp = get_array_module(gy)
    gx = kernels.empty(xp, x_shape, gy.dtype)
    kernels.launch(_backward, _grid(gx.size), THREADS, gy, gx, scale, mode == "bilinear")
    return gx


def examples(dtype, array=np.zeros):
    """Forward and backward in both modes: the kernel report's calls (see kernels/__init__.py)."""
    x, gy = array((2, 3, 4, 5), dtype), array((2, 3, 8, 10), dtype)
    return [(f"{mode} {step}", call) for mode in ("nearest", "bilinear")
            for step, call in (("forward", lambda m=mode: forward(x, 2, m)),
                               ("backward", lambda m=mode: backward(gy, x.shape, 2, m)))]

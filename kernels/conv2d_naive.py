"""conv2d, version "naive": one thread computes one output value (kernel1, in llm.c's terms).

Each kernel is the definition of its pass, written as a loop: a thread finds its output
element from its global index and sums the products that make it, reading every input
from global memory. No shared memory, no reuse between threads, no tiling: read it beside
minicolor/reference/conv2d.py, then read conv2d_tiled.py for what a fast kernel changes.

What it costs, and why (figures: docs/kernels.md, ``minicolor kernels``). A thread of
``forward`` does C*kh*kw multiply-adds with two global loads for each: 8 bytes (float32) per
multiply-add if every load went to memory, where an H100's memory delivers about 0.1 byte per
multiply-add it can do (3.35 TB/s against 33 trillion float32 multiply-adds a second). The
caches catch most of them, since neighbouring threads read neighbouring addresses (ow is the
fastest-moving index) and many threads read the same weights, but the load instructions stay:
in the machine code the inner loop spends 51 instructions per multiply-add, mostly 64-bit index
arithmetic of the 4-D arrays and the padding tests (the tiled kernels: 1.4). Its strengths are
elsewhere: every line is the formula, and it needs no tables, no padding and no tile shapes.
In the simulator, where every thread is a Python thread and a barrier costs a thread switch, it
is also the faster version (kernels/conv2d.py says by how much).

The geometry comes in as named scalars (Python ints, so int64 in the kernel), and the arrays
as 4-D (or 1-D) arrays whose shapes the kernels read: ``x.shape[1]`` is C, and so on.
"""
import math

import numpy as np
from numba import cuda

import minicolor.kernels as kernels
from minicolor.backend import get_array_module
from minicolor.kernels import SIMULATOR
from minicolor.kernels.conv2d import check_32bit, geometry, pass_examples

# Threads per block: with no shared memory any size works. In the simulator every thread past
# the last output is still a Python thread started and joined: small blocks waste fewer.
THREADS = 32 if SIMULATOR else 128


@cuda.jit(cache=True)
def forward_kernel(x, w, bias, has_bias, y,
                   stride_h, stride_w, pad_h, pad_w, dil_h, dil_w):
    """y[n, f, oh, ow] = bias[f] + sum over (c, i, j) of w[f, c, i, j] * x[n, c, ih, iw].

    x       (N, C, H, W) input
    w       (F, C, kh, kw) filters
    bias    (F,) bias, read only if has_bias
    y       (N, F, Ho, Wo) output: one thread per element
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w: the geometry; the tap (i, j) of output
            (oh, ow) reads input row ih = oh * stride_h - pad_h + i * dil_h (columns alike),
            and a row or column outside the image reads a zero (padding)
    """
    index = cuda.grid(1)
    n_count, f_count, out_h, out_w = y.shape
    if index >= n_count * f_count * out_h * out_w:
        return
    ow, oh = index % out_w, index // out_w % out_h  # ow moves fastest: neighbours read neighbours
    f, n = index // (out_w * out_h) % f_count, index // (out_w * out_h * f_count)
    c_count, height, width = x.shape[1], x.shape[2], x.shape[3]
    total = y.dtype.type(0)  # in the array's dtype: a float32 kernel adds in float32
    for c in range(c_count):
        for i in range(w.shape[2]):
            ih = oh * stride_h - pad_h + i * dil_h
            for j in range(w.shape[3]):
                iw = ow * stride_w - pad_w + j * dil_w
                if 0 <= ih < height and 0 <= iw < width:
                    total += w[f, c, i, j] * x[n, c, ih, iw]
    if has_bias:
        total += bias[f]
    y[n, f, oh, ow] = total


@cuda.jit(cache=True)
def grad_input_kernel(gy, w, gx,
                      stride_h, stride_w, pad_h, pad_w, dil_h, dil_w):
    """gx[n, c, ih, iw] = sum over (f, i, j) of w[f, c, i, j] * gy[n, f, oh, ow], over the
    taps (i, j) through which output (oh, ow) read input (ih, iw).

    gy      (N, F, Ho, Wo) gradient of the output
    w       (F, C, kh, kw) filters
    gx      (N, C, H, W) gradient of the input: one thread per element
    the geometry as in forward_kernel. Forward reads ih = oh * stride_h - pad_h + i * dil_h,
    so tap i reached (ih, ...) from oh = (ih + pad_h - i * dil_h) / stride_h if that is a
    whole number in 0 .. Ho-1; with stride 2, 3 of 4 taps are skipped by this test.
    """
    index = cuda.grid(1)
    n_count, c_count, height, width = gx.shape
    if index >= n_count * c_count * height * width:
        return
    iw, ih = index % width, index // width % height
    c, n = index // (width * height) % c_count, index // (width * height * c_count)
    f_count, out_h, out_w = gy.shape[1], gy.shape[2], gy.shape[3]
    total = gx.dtype.type(0)
    for i in range(w.shape[2]):
        row = ih + pad_h - i * dil_h  # = oh * stride_h, if tap i reached this row
        oh = row // stride_h
        if row < 0 or row % stride_h != 0 or oh >= out_h:
            continue
        for j in range(w.shape[3]):
            col = iw + pad_w - j * dil_w
            ow = col // stride_w
            if col < 0 or col % stride_w != 0 or ow >= out_w:
                continue
            for f in range(f_count):
                total += w[f, c, i, j] * gy[n, f, oh, ow]
    gx[n, c, ih, iw] = total


@cuda.jit(cache=True)
def grad_weight_kernel(gy, x, gw, gb,
                       stride_h, stride_w, pad_h, pad_w, dil_h, dil_w):
    """gw[f, c, i, j] = sum over (n, oh, ow) of gy[n, f, oh, ow] * x[n, c, ih, iw], and
    gb[f] = sum over (n, oh, ow) of gy[n, f, oh, ow]: one thread per element of gw, then
    one per element of gb (threads F*C*kh*kw .. F*C*kh*kw + F - 1).

    gy      (N, F, Ho, Wo) gradient of the output
    x       (N, C, H, W) input, as forward saw it
    gw      (F, C, kh, kw) gradient of the filters
    gb      (F,) gradient of the bias
    the geometry as in forward_kernel. Each thread sums N*Ho*Wo products: at batch 32 in the
    first group of the network, 1.6 million, one after the other. This is the pass where
    one thread per output parallelises worst (the tiled version splits the sum).
    """
    index = cuda.grid(1)
    f_count, c_count, k_h, k_w = gw.shape
    n_count, out_h, out_w = gy.shape[0], gy.shape[2], gy.shape[3]
    height, width = x.shape[2], x.shape[3]
    weights = f_count * c_count * k_h * k_w
    if index >= weights + f_count:
        return
    if index >= weights:  # a bias: the sum of its filter's output gradient
        f = index - weights
        total = gb.dtype.type(0)
        for n in range(n_count):
            for oh in range(out_h):
                for ow in range(out_w):
                    total += gy[n, f, oh, ow]
        gb[f] = total
        return
    j, i = index % k_w, index // k_w % k_h
    c, f = index // (k_w * k_h) % c_count, index // (k_w * k_h * c_count)
    total = gw.dtype.type(0)
    for n in range(n_count):
        for oh in range(out_h):
            ih = oh * stride_h - pad_h + i * dil_h
            if 0 <= ih < height:
                for ow in range(out_w):
                    iw = ow * stride_w - pad_w + j * dil_w
                    if 0 <= iw < width:
                        total += gy[n, f, oh, ow] * x[n, c, ih, iw]
    gw[f, c, i, j] = total


# --- the launchers: same functions, same arguments as reference/conv2d.py ---------------------------
def _blocks(count):
    return max(1, math.ceil(count / THREADS))


def forward(x, w, b, stride, padding, dilation):
    """y = conv2d(x, w) + b; returns (y, x): grad-weight re-reads x."""
    xp = get_array_module(x)
    g = geometry(x.shape, w.shape, stride, padding, dilation)
    x, w = xp.ascontiguousarray(x), xp.ascontiguousarray(w)  # C layout: one signature
    y = kernels.empty(xp, (g.n, g.f, g.ho, g.wo), x.dtype)
    check_32bit(x, y)
    bias = xp.ascontiguousarray(b) if b is not None else kernels.empty(xp, 1, x.dtype)  # (unread)
    kernels.launch(forward_kernel, _blocks(y.size), THREADS, x, w, bias, b is not None, y,
                   g.sh, g.sw, g.ph, g.pw, g.dh, g.dw)
    return y, x


def backward_data(gy, w, x_shape, stride, padding, dilation):
    """gx, the gradient for x."""
    xp = get_array_module(gy)
    g = geometry(x_shape, w.shape, stride, padding, dilation)
    gx = kernels.empty(xp, x_shape, gy.dtype)
    check_32bit(gy, gx)
    kernels.launch(grad_input_kernel, _blocks(gx.size), THREADS, xp.ascontiguousarray(gy),
                   xp.ascontiguousarray(w), gx, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw)
    return gx


def backward_weight(gy, x, w_shape, stride, padding, dilation):
    """(gw, gb), the gradients for w and b, from the x that ``forward`` returned."""
    xp = get_array_module(gy)
    g = geometry(x.shape, w_shape, stride, padding, dilation)
    gw = kernels.empty(xp, tuple(w_shape), gy.dtype)
    gb = kernels.empty(xp, (g.f,), gy.dtype)
    check_32bit(gy, x)
    kernels.launch(grad_weight_kernel, _blocks(gw.size + g.f), THREADS, xp.ascontiguousarray(gy),
                   xp.ascontiguousarray(x), gw, gb, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw)
    return gw, gb


def examples(dtype, array=np.zeros):
    """The three passes of one small layer (stride 2, padding 1): the kernel report's calls
    (see kernels/__init__.py). The naive kernels have no tile shapes: one layer reaches them."""
    return pass_examples("naive", "naive", (2, 3, 9, 8), (4, 3, 3, 3), 2, 1, dtype, array)

"""conv2d, the fast CPU path: Winograd for 3x3 stride-1 layers, one matrix product otherwise.

Same functions, arguments and results as minicolor/reference/conv2d.py (read that first), and
checked against it (tests/test_cpu_fast.py). What differs is how the work is done:

1. 3x3 kernels with stride 1 (most of the network's FLOPs) run Winograd's F(4x4, 3x3)
   (winograd.py): 36 multiplications per 16 outputs instead of 144, as 36 matrix products.
   Measured on one core (AVX-512) against the reference, forward + both backward passes of a
   128-channel 3x3 layer: 16x128x16x16 in 24 ms instead of 50; 1x128x28x28 in 6.5 instead of
   8.5 (docs/cpu.md).
2. Every other layer (stride 2, 1x1, the first layer's single channel) is im2col and ONE matrix
   product for the whole batch. The reference keeps the columns per image, (N, K, P), and
   NumPy runs N products of (F x K) @ (K x P), plus N products and a sum for grad-weight. Here
   the columns are (K, N*P): the whole batch side by side, so each pass is one product with N
   times more columns (y, gx and gw in one call each), and the only extra copies are the small
   transposes of y and gy between (N, F, P) and (F, N*P).
3. The gathers and scatters (im2col, col2im, the transposes) are compiled loops (Numba) that
   split the work over the cores by image plane, instead of NumPy slicing on one thread: the
   padding is never materialised, and col2im adds each plane's taps in a fixed order, so
   results do not depend on the number of threads.

``forward`` returns what ``backward_weight`` needs in ``saved``: the transformed input V for a
Winograd layer, the columns (K, N*P) otherwise.
"""
import numpy as np
from numba import njit, prange

from ..reference.conv2d import output_size
from . import threads, winograd

# Winograd pays once the channels are enough for its 36 products to outweigh its transforms
# (measured: see docs/cpu.md); below that, im2col and one product.
WINOGRAD_MIN_CHANNELS = 16


def uses_winograd(x_shape, w_shape, stride, padding, dilation):
    """Whether this layer runs Winograd's F(4x4, 3x3): 3x3, stride 1, enough channels, and
    padding at most 2 * dilation (so that grad-input is a Winograd convolution too)."""
    f, c, kh, kw = w_shape
    return ((kh, kw) == (3, 3) and tuple(stride) == (1, 1)
            and min(c, f) >= WINOGRAD_MIN_CHANNELS
            and all(0 <= p <= 2 * d for p, d in zip(padding, dilation)))


class Winograd:
    """What a Winograd layer's forward keeps for grad-weight: the transformed input V."""

    def __init__(self, V):
        self.V = V


# --- the compiled gathers and scatters --------------------------------------------------------------
@njit(cache=True, inline="always")
def _inside(offset, stride, size, out_size):
    """The outputs o (lo <= o < hi) whose input o * stride + offset lies in [0, size)."""
    lo = min(out_size, max(0, (stride - 1 - offset) // stride))
    hi = max(lo, min(out_size, (size - 1 - offset) // stride + 1))
    return lo, hi


@njit(parallel=True, cache=True)
def im2col(x, kh, kw, stride, padding, dilation, ho, wo, cols):
    """cols[(c, i, j), n*P + (oh, ow)] = x[n, c, oh*sh - ph + i*dh, ow*sw - pw + j*dw] (0 outside).

    One (row, image) pair of cols per loop turn, spread over the threads.
    """
    n, c, h, w = x.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    p = ho * wo
    for job in prange(c * kh * kw * n):
        row, img = job // n, job % n
        ch, i, j = row // (kh * kw), (row // kw) % kh, row % kw
        out = cols[row, img * p:(img + 1) * p]
        offset = j * dw - pw  # input column = ow * sw + offset
        lo, hi = _inside(offset, sw, w, wo)
        for oh in range(ho):
            ih = oh * sh - ph + i * dh
            line = out[oh * wo:(oh + 1) * wo]
            if ih < 0 or ih >= h:
                line[:] = 0
                continue
            line[:lo] = 0
            line[hi:] = 0
            src = x[img, ch, ih]
            for ow in range(lo, hi):
                line[ow] = src[ow * sw + offset]


@njit(parallel=True, cache=True)
def col2im(cols, kh, kw, stride, padding, dilation, ho, wo, gx):
    """The adjoint of im2col: gx[n, c] = the sum of every column entry that came from it.

    One image plane per loop turn: each plane is written by one thread, its taps added in a
    fixed order (i, j, oh, ow), so the sums do not depend on the number of threads.
    """
    n, c, h, w = gx.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    p = ho * wo
    for plane in prange(n * c):
        img, ch = plane // c, plane % c
        out = gx[img, ch]
        out[:] = 0
        for i in range(kh):
            for j in range(kw):
                src = cols[(ch * kh + i) * kw + j, img * p:(img + 1) * p]
                offset = j * dw - pw
                lo, hi = _inside(offset, sw, w, wo)
                for oh in range(ho):
                    ih = oh * sh - ph + i * dh
                    if ih < 0 or ih >= h:
                        continue
                    line = out[ih]
                    for ow in range(lo, hi):
                        line[ow * sw + offset] += src[oh * wo + ow]


@njit(parallel=True, cache=True)
def batch_to_columns(y, out):
    """out[f, n*P + p] = y[n, f, p]: (N, F, P) -> (F, N*P), one (image, channel) row a turn."""
    n, f, p = y.shape
    for job in prange(n * f):
        img, o = job // f, job % f
        out[o, img * p:(img + 1) * p] = y[img, o]


@njit(parallel=True, cache=True)
def columns_to_batch(Y, bias, out):
    """out[n, f, p] = Y[f, n*P + p] + bias[f]: (F, N*P) -> (N, F, P)."""
    n, f, p = out.shape
    for job in prange(n * f):
        img, o = job // f, job % f
        out[img, o] = Y[o, img * p:(img + 1) * p] + bias[o]


# --- the three passes -------------------------------------------------------------------------------
def _geometry(x_shape, w_shape, stride, padding, dilation):
    kh, kw = w_shape[2:]
    ho = output_size(x_shape[2], kh, stride[0], padding[0], dilation[0])
    wo = output_size(x_shape[3], kw, stride[1], padding[1], dilation[1])
    return kh, kw, tuple(stride), tuple(padding), tuple(dilation), ho, wo


def forward(x, w, b, stride, padding, dilation):
    """y = conv2d(x, w) + b. Returns (y, saved); keep saved for grad-weight."""
    threads.adapt()
    x = np.ascontiguousarray(x)
    if uses_winograd(x.shape, w.shape, stride, padding, dilation):
        y, V = winograd.conv(x, w, b, tuple(padding), tuple(dilation))
        return y, Winograd(V)
    n, c = x.shape[:2]
    f = w.shape[0]
    kh, kw, *geometry, ho, wo = _geometry(x.shape, w.shape, stride, padding, dilation)
    cols = np.empty((c * kh * kw, n * ho * wo), x.dtype)
    im2col(x, kh, kw, *geometry, ho, wo, cols)
    Y = w.reshape(f, -1) @ cols  # (F, K) @ (K, N*P): one product for the whole batch
    y = np.empty((n, f, ho * wo), x.dtype)
    columns_to_batch(Y, np.zeros(f, x.dtype) if b is None else b, y)
    return y.reshape(n, f, ho, wo), cols


def backward_data(gy, w, x_shape, stride, padding, dilation):
    """Gradient with respect to x."""
    threads.adapt()
    gy = np.ascontiguousarray(gy)
    if uses_winograd(x_shape, w.shape, stride, padding, dilation):
        return winograd.backward_data(gy, w, x_shape, tuple(padding), tuple(dilation))
    n, f = gy.shape[:2]
    kh, kw, *geometry, ho, wo = _geometry(x_shape, w.shape, stride, padding, dilation)
    gyc = np.empty((f, n * ho * wo), gy.dtype)
    batch_to_columns(gy.reshape(n, f, -1), gyc)
    gcols = w.reshape(f, -1).T @ gyc  # (K, F) @ (F, N*P)
    gx = np.empty(x_shape, gy.dtype)
    col2im(gcols, kh, kw, *geometry, ho, wo, gx)
    return gx


def backward_weight(gy, saved, w_shape, stride, padding, dilation):
    """Gradients with respect to w and b, from gy and what forward saved."""
    threads.adapt()
    gy = np.ascontiguousarray(gy)
    if isinstance(saved, Winograd):
        return winograd.backward_weight(gy, saved.V, w_shape, tuple(padding), tuple(dilation))
    n, f = gy.shape[:2]
    gyc = np.empty((f, n * gy.shape[2] * gy.shape[3]), gy.dtype)
    batch_to_columns(gy.reshape(n, f, -1), gyc)
    gw = gyc @ saved.T  # (F, N*P) @ (N*P, K): one product, summed over the batch inside it
    return gw.reshape(w_shape), gyc.sum(axis=1)

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

    One (row of cols, image) pair per loop turn, spread over the threads.
    """
    n, c, h, w = x.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    zero = x.dtype.type(0)
    for job in prange(c * kh * kw * n):
        row, img = job // n, job % n
        ch, i, j = row // (kh * kw), (row // kw) % kh, row % kw
        out = cols[row]
        offset = j * dw - pw  # input column = ow * sw + offset
        lo, hi = _inside(offset, sw, w, wo)
        for oh in range(ho):
            ih = oh * sh - ph + i * dh
            start = (img * ho + oh) * wo
            if ih < 0 or ih >= h:
                lo_row, hi_row = wo, wo  # the whole row is padding
            else:
                lo_row, hi_row = lo, hi
                src = x[img, ch, ih]
                for ow in range(lo, hi):
                    out[start + ow] = src[ow * sw + offset]
            for ow in range(lo_row):
                out[start + ow] = zero
            for ow in range(hi_row, wo):
                out[start + ow] = zero


@njit(parallel=True, cache=True)
def col2im(cols, kh, kw, stride, padding, dilation, ho, wo, gx):
    """The adjoint of im2col: gx[n, c] = the sum of every column entry that came from it.

    One image plane per loop turn: each plane is written by one thread, its taps added in a
    fixed order (i, j, oh, ow), so the sums do not depend on the number of threads.
    """
    n, c, h, w = gx.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    zero = gx.dtype.type(0)
    for plane in prange(n * c):
        img, ch = plane // c, plane % c
        out = gx[img, ch]
        for ih in range(h):
            for iw in range(w):
                out[ih, iw] = zero
        for i in range(kh):
            for j in range(kw):
                src = cols[(ch * kh + i) * kw + j]
                offset = j * dw - pw
                lo, hi = _inside(offset, sw, w, wo)
                for oh in range(ho):
                    ih = oh * sh - ph + i * dh
                    if 0 <= ih < h:
                        line = out[ih]
                        start = (img * ho + oh) * wo
                        for ow in range(lo, hi):
                            line[ow * sw + offset] += src[start + ow]


@njit(parallel=True, cache=True)
def batch_to_columns(y, out):
    """out[f, n*P + p] = y[n, f, p]: (N, F, P) -> (F, N*P), one (image, channel) row a turn."""
    n, f, p = y.shape
    for job in prange(n * f):
        img, o = job // f, job % f
        src, dst = y[img, o], out[o]
        for k in range(p):
            dst[img * p + k] = src[k]


@njit(parallel=True, cache=True)
def columns_to_batch(Y, bias, out):
    """out[n, f, p] = Y[f, n*P + p] + bias[f]: (F, N*P) -> (N, F, P)."""
    n, f, p = out.shape
    for job in prange(n * f):
        img, o = job // f, job % f
        src, dst, b = Y[o], out[img, o], bias[o]
        for k in range(p):
            dst[k] = src[img * p + k] + b


# --- the three passes -------------------------------------------------------------------------------
def _geometry(x_shape, w_shape, stride, padding, dilation):
    kh, kw = w_shape[2:]
    ho = output_size(x_shape[2], kh, stride[0], padding[0], dilation[0])
    wo = output_size(x_shape[3], kw, stride[1], padding[1], dilation[1])
    return kh, kw, tuple(stride), tuple(padding), tuple(dilation), ho, wo


def _pointwise(w_shape, stride, padding):
    """A 1x1 convolution with stride 1 and no padding: its columns are x itself."""
    return tuple(w_shape[2:]) == (1, 1) and tuple(stride) == (1, 1) and tuple(padding) == (0, 0)


def _to_columns(a):
    """(N, F, ...) -> (F, N*P): the batch side by side (a view when N is 1)."""
    n, f = a.shape[:2]
    if n == 1:
        return a.reshape(f, -1)
    out = np.empty((f, a.size // f), a.dtype)
    batch_to_columns(a.reshape(n, f, -1), out)
    return out


def _from_columns(Y, bias, shape):
    """(F, N*P) + bias -> shape (N, F, ...)."""
    out = np.empty((shape[0], shape[1], Y.shape[1] // shape[0]), Y.dtype)
    columns_to_batch(Y, np.zeros(shape[1], Y.dtype) if bias is None else bias, out)
    return out.reshape(shape)


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
    if _pointwise(w.shape, stride, padding):
        cols = _to_columns(x)
    else:
        cols = np.empty((c * kh * kw, n * ho * wo), x.dtype)
        im2col(x, kh, kw, *geometry, ho, wo, cols)
    Y = w.reshape(f, -1) @ cols  # (F, K) @ (K, N*P): one product for the whole batch
    return _from_columns(Y, b, (n, f, ho, wo)), cols


def backward_data(gy, w, x_shape, stride, padding, dilation):
    """Gradient with respect to x."""
    threads.adapt()
    gy = np.ascontiguousarray(gy)
    if uses_winograd(x_shape, w.shape, stride, padding, dilation):
        return winograd.backward_data(gy, w, x_shape, tuple(padding), tuple(dilation))
    f = gy.shape[1]
    kh, kw, *geometry, ho, wo = _geometry(x_shape, w.shape, stride, padding, dilation)
    gcols = w.reshape(f, -1).T @ _to_columns(gy)  # (K, F) @ (F, N*P)
    if _pointwise(w.shape, stride, padding):
        return _from_columns(gcols, None, tuple(x_shape))
    gx = np.empty(x_shape, gy.dtype)
    col2im(gcols, kh, kw, *geometry, ho, wo, gx)
    return gx


def backward_weight(gy, saved, w_shape, stride, padding, dilation):
    """Gradients with respect to w and b, from gy and what forward saved."""
    threads.adapt()
    gy = np.ascontiguousarray(gy)
    if isinstance(saved, Winograd):
        return winograd.backward_weight(gy, saved.V, w_shape, tuple(padding), tuple(dilation))
    gyc = _to_columns(gy)
    gw = gyc @ saved.T  # (F, N*P) @ (N*P, K): one product, summed over the batch inside it
    return gw.reshape(w_shape), gyc.sum(axis=1)

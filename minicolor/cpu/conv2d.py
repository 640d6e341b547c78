"""conv2d, the fast CPU path: Winograd for 3x3 stride-1 layers, one matrix product for the
strided ones, the reference for the rest.

Same functions, arguments and results as minicolor/reference/conv2d.py (read that first), and
checked against it (tests/test_cpu_fast.py). Each layer takes one of three routes, chosen from
its shapes alone (``route``), so that its three passes agree. Figures: one core, CPU time,
forward + both backward passes, width-16 layers at batch 16 and 128 px (docs/cpu.md):

"winograd"     3x3 kernels with stride 1 and at least 16 channels in and out: Winograd's
               F(4x4, 3x3) (winograd.py), 36 multiplications per 16 outputs instead of 144, as
               36 matrix products. group4.2 (128 -> 128, 16 x 16) in 31 ms instead of 77;
               group8.3 (64 -> 64, 32 x 32) 46 instead of 73; group2.0 (16 -> 32, 64 x 64) 53
               instead of 61 (in another run 81 against 65: at 16 channels it is close). With 8
               channels it was no faster than im2col, with 4 twice slower.
"one product"  other layers with a batch and at least 64 rows of columns (the stride-2 layers):
               im2col and ONE matrix product for the whole batch. The reference keeps the
               columns per image, (N, K, P), and NumPy runs N products of (F x K) @ (K x P),
               plus N products and a sum for grad-weight. Here the columns are (K, N*P), the
               batch side by side: each pass is one product with N times more columns, and the
               gathers and scatters are compiled loops over image planes. group1.2 (16 -> 16,
               stride 2) in 63 ms instead of 75.
"reference"    the rest: the first layer's single input channel, the 1x1 head, batch 1. There
               the one-product layout lost to the reference: its extra transposes of y and gy
               between (N, F, P) and (F, N*P) cost more than they save when the columns are
               few (group1.0: 42 ms instead of 23; the 1x1 head 1.8 instead of 0.3).

``forward`` returns what ``backward_weight`` needs in ``saved``: the transformed input V of a
Winograd layer, the columns otherwise.
"""
import numpy as np
from numba import njit, prange

from ..reference import conv2d as reference
from ..reference.conv2d import output_size
from . import products, threads, winograd

WINOGRAD_MIN_CHANNELS = 16  # see "winograd" above
ONE_PRODUCT_MIN_ROWS = 64  # see "one product" above


def route(x_shape, w_shape, stride, padding, dilation):
    """"winograd", "one product" or "reference" for a layer of these shapes (see above).

    Winograd also needs padding <= 2 * dilation, so that grad-input is a Winograd convolution.
    """
    f, c, kh, kw = w_shape
    if ((kh, kw) == (3, 3) and tuple(stride) == (1, 1) and min(c, f) >= WINOGRAD_MIN_CHANNELS
            and all(0 <= p <= 2 * d for p, d in zip(padding, dilation))):
        return "winograd"
    if x_shape[0] > 1 and c * kh * kw >= ONE_PRODUCT_MIN_ROWS:
        return "one product"
    return "reference"


class Winograd:
    """What a Winograd layer's forward keeps for grad-weight: the transformed input V."""

    def __init__(self, V):
        self.V = V


class OneProduct:
    """What a one-product layer's forward keeps for grad-weight: the columns (K, N*P)."""

    def __init__(self, cols):
        self.cols = cols


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


def _to_columns(a):
    """(N, F, ...) -> (F, N*P): the batch side by side."""
    n, f = a.shape[:2]
    out = np.empty((f, a.size // f), a.dtype)
    batch_to_columns(a.reshape(n, f, -1), out)
    return out


def forward(x, w, b, stride, padding, dilation):
    """y = conv2d(x, w) + b. Returns (y, saved); keep saved for grad-weight."""
    threads.adapt()
    x = np.ascontiguousarray(x)
    way = route(x.shape, w.shape, stride, padding, dilation)
    if way == "winograd":
        y, V = winograd.conv(x, w, b, tuple(padding), tuple(dilation))
        return y, Winograd(V)
    if way == "reference":
        return reference.forward(x, w, b, stride, padding, dilation)
    n, c = x.shape[:2]
    f = w.shape[0]
    kh, kw, *geometry, ho, wo = _geometry(x.shape, w.shape, stride, padding, dilation)
    cols = np.empty((c * kh * kw, n * ho * wo), x.dtype)
    im2col(x, kh, kw, *geometry, ho, wo, cols)
    Y = products.by_columns(w.reshape(f, -1), cols, pieces=n)  # (F, K) @ (K, N*P)
    y = np.empty((n, f, ho * wo), x.dtype)
    columns_to_batch(Y, np.zeros(f, x.dtype) if b is None else b, y)
    return y.reshape(n, f, ho, wo), OneProduct(cols)


def backward_data(gy, w, x_shape, stride, padding, dilation):
    """Gradient with respect to x."""
    threads.adapt()
    gy = np.ascontiguousarray(gy)
    way = route(x_shape, w.shape, stride, padding, dilation)
    if way == "winograd":
        return winograd.backward_data(gy, w, x_shape, tuple(padding), tuple(dilation))
    if way == "reference":
        return reference.backward_data(gy, w, x_shape, stride, padding, dilation)
    f = gy.shape[1]
    kh, kw, *geometry, ho, wo = _geometry(x_shape, w.shape, stride, padding, dilation)
    gcols = products.by_columns(w.reshape(f, -1).T, _to_columns(gy), pieces=gy.shape[0])  # (K, F) @ (F, N*P)
    gx = np.empty(x_shape, gy.dtype)
    col2im(gcols, kh, kw, *geometry, ho, wo, gx)
    return gx


def backward_weight(gy, saved, w_shape, stride, padding, dilation):
    """Gradients with respect to w and b, from gy and what forward saved."""
    threads.adapt()
    gy = np.ascontiguousarray(gy)
    if isinstance(saved, Winograd):
        return winograd.backward_weight(gy, saved.V, w_shape, tuple(padding), tuple(dilation))
    if not isinstance(saved, OneProduct):
        return reference.backward_weight(gy, saved, w_shape)
    gyc = _to_columns(gy)
    gw = products.by_columns(gyc, saved.cols.T, pieces=2)  # (F, N*P) @ (N*P, K): summed over the batch inside
    return gw.reshape(w_shape), gyc.sum(axis=1)

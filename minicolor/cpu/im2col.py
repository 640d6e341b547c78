"""conv2d by im2col, one band of output rows at a time: the fast path's route for every layer
that Winograd does not take (strides, the first layer's single input channel, the 1x1 head).

The reference (reference/conv2d.py) builds the columns of the whole batch, (N, K, P) with
K = C*kh*kw, and then multiplies. For the network's second layer at batch 8 (16 -> 16 channels,
stride 2, 224 px) that is 58 MB of columns: written once, read back by the product, kept for
grad-weight and read again there. Here each job takes one image and a band of its output rows,
few enough that their columns fit in a core's cache (BAND_BYTES), and does all the work for it:

    forward       cols = im2col(band)                (K, B)   B = rows * Wo
                  y[n][:, band] = w (F, K) @ cols + b          straight into y: no transposes
    grad-input    for a band of the INPUT's rows: the rows of gy that reach them,
                  gcols = w^T (K, F) @ gy[n][:, rows]  (K, B')
                  gx[n][:, band] = the entries of gcols that land in it (col2im)
    grad-weight   cols = im2col(band) again (cheaper than keeping it),
                  part[job] = gy[n][:, band] (F, B) @ cols^T (B, K);  gw = the sum of the parts

The jobs are shared out over the cores (products.share): each is a compiled gather or scatter
(Numba, ``nogil``) and one matrix product on one thread of OpenBLAS. Each job writes its own
rows of y or gx, or its own part of gw, and the parts are added in a fixed order, so the
results do not depend on the number of threads. A grad-input band recomputes the gy rows at
its edges that its neighbour needs too (one row in eight here), so that no two jobs write the
same pixel.

Measured (one thread, CPU time, the three passes together, the best of 9: `python
examples/cpu_figures.py ops`, idle 2-core Xeon), the second layer (16 -> 16, stride 2): at
batch 16 and 128 px 58.1 ms for the reference, 33.3 here; at batch 1 and 224 px 8.5 and 5.1.
The first layer (one input channel, batch 16): 14.1 and 13.0.
"""
import numpy as np
from numba import njit

from ..reference.conv2d import output_size
from . import products

BAND_BYTES = 512 * 1024  # the columns of one band: well inside a core's L2 cache


class Saved:
    """What forward keeps for grad-weight: x itself (the columns are built again)."""

    def __init__(self, x):
        self.x = x


@njit(cache=True, inline="always")
def _inside(offset, stride, size, out_size):
    """The outputs o (lo <= o < hi) whose input o * stride + offset lies in [0, size)."""
    lo = min(out_size, max(0, (stride - 1 - offset) // stride))
    hi = max(lo, min(out_size, (size - 1 - offset) // stride + 1))
    return lo, hi


@njit(nogil=True, cache=True, inline="always")
def _split(src, stride, out):
    """out[p, q] = src[q * stride + p]: a row split into its ``stride`` phases, so that every
    strided read below becomes a contiguous one. Stride 2 is written out: the compiler turns it
    into vector shuffles, 6x faster than the general loop (15.6 against 98 ns for a row of
    224 values, in cache)."""
    if stride == 1:
        line = out[0]
        for q in range(src.size):
            line[q] = src[q]
    elif stride == 2:
        even, odd = out[0], out[1]
        for q in range(src.size // 2):
            even[q] = src[2 * q]
            odd[q] = src[2 * q + 1]
        if src.size % 2:
            even[src.size // 2] = src[src.size - 1]
    else:
        for q in range(src.size):
            out[q % stride, q // stride] = src[q]


@njit(nogil=True, cache=True, inline="always")
def _merge(phases, stride, out):
    """The inverse of _split: out[q * stride + p] = phases[p, q]."""
    if stride == 1:
        line = phases[0]
        for q in range(out.size):
            out[q] = line[q]
    elif stride == 2:
        even, odd = phases[0], phases[1]
        for q in range(out.size // 2):
            out[2 * q] = even[q]
            out[2 * q + 1] = odd[q]
        if out.size % 2:
            out[out.size - 1] = even[out.size // 2]
    else:
        for q in range(out.size):
            out[q] = phases[q % stride, q // stride]


# The loops below index their rows only with a plain loop counter (``dst[k]``), after slicing
# (``dst = row[lo:hi]``). With an index like ``row[lo + k]`` Numba must allow for a negative
# index (Python's "from the end"), and that check stopped the compiler from using vector
# instructions: the same copy took 0.68 ns a value instead of 0.15.

@njit(nogil=True, cache=True)
def gather(x, img, kh, kw, stride, padding, dilation, first, last, cols):
    """cols[(c, i, j), oh - first, ow] = x[img, c, oh*sh - ph + i*dh, ow*sw - pw + j*dw] for
    the output rows first <= oh < last (0 where it reads the padding); cols is (K, rows, Wo)."""
    _, c, h, w = x.shape
    wo = cols.shape[2]
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    zero = x.dtype.type(0)
    phases = np.zeros((sw, -(-w // sw) + 1), x.dtype)
    for ch in range(c):
        for i in range(kh):
            for oh in range(first, last):
                ih = oh * sh - ph + i * dh
                inside = 0 <= ih < h
                if inside:
                    _split(x[img, ch, ih], sw, phases)
                for j in range(kw):
                    out = cols[(ch * kh + i) * kw + j, oh - first]
                    offset = j * dw - pw  # input column ow * sw + offset is phases[p, ow + shift]
                    p, shift = offset % sw, offset // sw
                    lo, hi = _inside(offset, sw, w, wo) if inside else (wo, wo)
                    dst, src = out[lo:hi], phases[p, lo + shift:hi + shift]
                    for k in range(hi - lo):
                        dst[k] = src[k]
                    for k in range(lo):
                        out[k] = zero
                    rest = out[hi:]
                    for k in range(wo - hi):
                        rest[k] = zero


@njit(nogil=True, cache=True)
def scatter(gcols, img, kh, kw, stride, padding, dilation, first, last, top, bottom, gx):
    """gx[img, :, top:bottom] = the sum of the entries of gcols (K, rows, Wo) (output rows
    first <= oh < last) that came from those rows: col2im, for one band of input rows. Each
    pixel adds its taps in the same order (i, j) whatever the band."""
    _, c, h, w = gx.shape
    wo = gcols.shape[2]
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    phases = np.empty((sw, -(-w // sw) + 1), gx.dtype)
    for ch in range(c):
        for ih in range(top, bottom):
            for p in range(sw):
                line = phases[p]
                for k in range(line.size):
                    line[k] = 0
            for i in range(kh):
                reach = ih + ph - i * dh  # = oh * sh for the output row oh that tap i reads ih from
                if reach % sh != 0 or not first <= reach // sh < last:
                    continue
                oh = reach // sh
                for j in range(kw):
                    offset = j * dw - pw
                    p, shift = offset % sw, offset // sw
                    lo, hi = _inside(offset, sw, w, wo)
                    dst = phases[p, lo + shift:hi + shift]
                    src = gcols[(ch * kh + i) * kw + j, oh - first, lo:hi]
                    for k in range(hi - lo):
                        dst[k] += src[k]
            _merge(phases, sw, gx[img, ch, ih])


def _bands(rows, per_band):
    return [(r, min(rows, r + per_band)) for r in range(0, rows, per_band)]


def _rows_per_band(k, wo, itemsize):
    return max(1, BAND_BYTES // (k * wo * itemsize))


def forward(x, w, b, stride, padding, dilation):
    n, c, h, width = x.shape
    f, _, kh, kw = w.shape
    k = c * kh * kw
    ho = output_size(h, kh, stride[0], padding[0], dilation[0])
    wo = output_size(width, kw, stride[1], padding[1], dilation[1])
    y = np.empty((n, f, ho * wo), x.dtype)
    weights = w.reshape(f, k)
    bias = None if b is None else b.reshape(f, 1)

    def job(img, first, last):
        cols = np.empty((k, last - first, wo), x.dtype)
        gather(x, img, kh, kw, stride, padding, dilation, first, last, cols)
        out = y[img, :, first * wo:last * wo]
        np.matmul(weights, cols.reshape(k, -1), out=out)
        if bias is not None:
            out += bias

    products.share([lambda img=img, band=band: job(img, *band)
                    for img in range(n) for band in _bands(ho, _rows_per_band(k, wo, x.itemsize))])
    return y.reshape(n, f, ho, wo), Saved(x)


def _reaching(top, bottom, kernel, stride, padding, dilation, out_size):
    """The output rows [first, last) that read some input row in [top, bottom)."""
    first = max(0, -(-(top + padding - dilation * (kernel - 1)) // stride))
    last = min(out_size, (bottom - 1 + padding) // stride + 1)
    return first, max(first, last)


def backward_data(gy, w, x_shape, stride, padding, dilation):
    n, c, h, width = x_shape
    f, _, kh, kw = w.shape
    k = c * kh * kw
    ho, wo = gy.shape[2:]
    gx = np.empty(x_shape, gy.dtype)
    weights_t = w.reshape(f, k).T
    flat = gy.reshape(n, f, ho * wo)
    per_band = max(1, _rows_per_band(k, wo, gy.itemsize) * stride[0])  # input rows per band

    def job(img, top, bottom):
        first, last = _reaching(top, bottom, kh, stride[0], padding[0], dilation[0], ho)
        gcols = np.matmul(weights_t, flat[img, :, first * wo:last * wo])
        scatter(gcols.reshape(k, last - first, wo), img, kh, kw, stride, padding, dilation, first, last,
                top, bottom, gx)

    products.share([lambda img=img, band=band: job(img, *band)
                    for img in range(n) for band in _bands(h, per_band)])
    return gx


def backward_weight(gy, saved, w_shape, stride, padding, dilation):
    x = saved.x
    n, c = x.shape[:2]
    f, _, kh, kw = w_shape
    k = c * kh * kw
    ho, wo = gy.shape[2:]
    flat = gy.reshape(n, f, ho * wo)
    bands = [(img, band) for img in range(n) for band in _bands(ho, _rows_per_band(k, wo, x.itemsize))]
    parts = np.empty((len(bands), f, k), gy.dtype)
    bias_parts = np.empty((len(bands), f))

    def job(index, img, first, last):
        cols = np.empty((k, last - first, wo), x.dtype)
        gather(x, img, kh, kw, stride, padding, dilation, first, last, cols)
        band = flat[img, :, first * wo:last * wo]
        np.matmul(band, cols.reshape(k, -1).T, out=parts[index])
        band.sum(axis=1, dtype=np.float64, out=bias_parts[index])

    products.share([lambda i=i, img=img, band=band: job(i, img, *band) for i, (img, band) in enumerate(bands)])
    return parts.sum(axis=0).reshape(w_shape), bias_parts.sum(axis=0).astype(gy.dtype)

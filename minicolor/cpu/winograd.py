"""Winograd's minimal filtering for 3x3 convolutions with stride 1 (Lavin & Gray 2016).

A 3x3 convolution computes each output from 9 inputs. Winograd's F(m x m, 3 x 3) computes a
whole m x m tile of outputs from the (m+2) x (m+2) tile of inputs under it with only
(m+2)^2 multiplications instead of 9 m^2, by moving both into a "transformed" space where the
convolution becomes an elementwise product:

    Y = A^T [ (G g G^T) * (B^T d B) ] A          (* elementwise; alpha = m + 2)

    g  3 x 3 filter        U = G g G^T      alpha x alpha   (transformed once per weight)
    d  alpha x alpha input  V = B^T d B      alpha x alpha   (transformed once per input tile)
    Y  m x m output         M = U * V, then A^T M A

With C input and F output channels the elementwise product sums over channels, so for each of
the alpha^2 positions (xi, nu) of the transformed tile it is one matrix product:

    M[xi,nu] (T x F) = V[xi,nu] (T x C) @ U[xi,nu]^T (C x F)   T = tiles over the whole batch

alpha^2 matrix products of F x C x T multiply-adds replace one of F x 9C x T m^2: with m = 4,
36 instead of 144 per tile, 4 times fewer. The transforms (B^T d B and A^T M A) are additions
and a few multiplications by small constants, done here as compiled loops.

What it costs in float32: the constants of F(4x4, 3x3) reach 8 (A) and 1/24 (G), so rounding
errors grow. Against the float64 reference the largest difference over the largest value is
about 1e-5 for a 128-channel layer, where im2col gives 5e-7 (tests/test_cpu_fast.py checks
< 1e-4, the GPU tests' tolerance, on every layer shape of the network; docs/winograd.md).

Dilation: a 3x3 convolution with dilation d reads every d-th pixel, so it is d^2 independent
stride-1 convolutions, one per "phase" (rows a, a+d, a+2d, ...; columns b, b+d, ...). The tiles
below are laid out phase by phase, and the gathers read with step d: nothing else changes.

The three passes of training:
    forward        y  = winograd(x, w)
    grad-input     gx = winograd(gy, w turned 180 degrees, in/out channels swapped,
                                 padding 2d - p): the adjoint of a stride-1 convolution is one
    grad-weight    gw = G^T [ sum over tiles of (A gY A^T) * V ] G    (the same algebra run
                   backwards: alpha^2 products V^T (C x T) @ dM (T x F); V is kept from forward)

Channels last: inside this file every image is held as (rows, columns, channels), so that the
innermost loops run over channels: the same arithmetic on 16 to 128 neighbouring values, which
the compiler turns into vector instructions. With the images as NCHW planes the loops ran over
the 16 to 49 tiles of a plane, gathered value by value: the transforms of a 128-channel layer
at batch 16 (16 x 16 pixels) took 8.0 ms, where the transposes in and out plus the transforms
now take 4.4 ms, and a training step at batch 16 and 128 px went from 1,209 to 692 ms (one
core). docs/winograd.md tells the story.
"""
import numpy as np
from numba import njit, prange

from . import products

# F(4x4, 3x3) with interpolation points 0, 1, -1, 2, -2 and infinity (Lavin & Gray, section 4.2).
BT = np.array([[4, 0, -5, 0, 1, 0],
               [0, -4, -4, 1, 1, 0],
               [0, 4, -4, -1, 1, 0],
               [0, -2, -1, 2, 1, 0],
               [0, 2, -1, -2, 1, 0],
               [0, 4, 0, -5, 0, 1]], dtype=np.float64)
G = np.array([[1 / 4, 0, 0],
              [-1 / 6, -1 / 6, -1 / 6],
              [-1 / 6, 1 / 6, -1 / 6],
              [1 / 24, 1 / 12, 1 / 6],
              [1 / 24, -1 / 12, 1 / 6],
              [0, 0, 1]], dtype=np.float64)
AT = np.array([[1, 1, 1, 1, 1, 0],
               [0, 1, -1, 2, -2, 0],
               [0, 1, 1, 4, 4, 0],
               [0, 1, -1, 8, -8, 1]], dtype=np.float64)
M_OUT, ALPHA = AT.shape  # 4 outputs per tile side, 6 inputs per tile side


class Tiles:
    """Where the tiles of one stride-1 3x3 convolution lie.

    Output row oh = a + d*(m*ti + r): phase a in [0, d), tile ti in [0, th), row r in [0, m);
    columns likewise. The rows of tiles start at output rows ``row_starts`` (a + d*m*ti, phase
    by phase) and the columns of tiles at ``col_starts``. An image has per_image = d^2 th tw
    tiles, numbered row of tiles by row of tiles; tile t of image n is row n*per_image + t of
    the transformed matrices. A tile starting at (row0, col0) has its output pixel (r, s) at
    (row0 + d*r, col0 + d*s) of the output, and its input pixel (u, v) at (row0 + d*u,
    col0 + d*v) of the input padded by p on each side. A padded image of ``rows`` x ``cols``
    holds every tile, partial ones too.
    """

    def __init__(self, x_shape, padding, dilation):
        self.n, self.c, self.h, self.w = x_shape
        (ph, pw), (dh, dw) = padding, dilation
        self.ho, self.wo = self.h + 2 * ph - 2 * dh, self.w + 2 * pw - 2 * dw
        th = -(-(-(-self.ho // dh)) // M_OUT)  # tiles per phase: ceil(ceil(ho / d) / m)
        tw = -(-(-(-self.wo // dw)) // M_OUT)
        self.rows, self.cols = dh * (M_OUT * th + 2), dw * (M_OUT * tw + 2)
        self.row_starts = np.array([a + dh * M_OUT * ti for a in range(dh) for ti in range(th)], np.int64)
        self.col_starts = np.array([b + dw * M_OUT * tj for b in range(dw) for tj in range(tw)], np.int64)
        self.per_image = len(self.row_starts) * len(self.col_starts)
        self.count = self.n * self.per_image


# --- the compiled loops -----------------------------------------------------------------------
# The transforms are the rows of B^T, A^T and A written out, so that the zeros of the matrices
# cost nothing and every intermediate stays in a register; each is applied to whole rows of
# channels at once. The constants 2, 4, 5 and 8 are made in the arrays' dtype
# (``x.dtype.type(4)``) before the loops: a float32 times a Python int is computed in float64,
# 3x slower here.
#
# Each loop turn is one row of tiles of one image, and the turns are spread over the threads.
# The images stay NCHW outside this file; a turn copies the few image rows under its row of
# tiles into a small buffer with the channels last (``band``: 6 rows of the input, or 4 of the
# output), which stays in the core's cache, and transforms the tiles from there.

@njit(cache=True, inline="always")
def _bt(d0, d1, d2, d3, d4, d5, two, four, five):
    """B^T d along one axis: 6 inputs of a tile row (or column) -> 6 transformed values."""
    return (four * d0 - five * d2 + d4,
            d3 + d4 - four * (d1 + d2),
            four * (d1 - d2) - d3 + d4,
            two * (d3 - d1) - d2 + d4,
            two * (d1 - d3) - d2 + d4,
            four * d1 - five * d3 + d5)


@njit(cache=True, inline="always")
def _at(m0, m1, m2, m3, m4, m5, two, four, eight):
    """A^T m along one axis: 6 transformed values -> 4 outputs."""
    return (m0 + m1 + m2 + m3 + m4,
            m1 - m2 + two * (m3 - m4),
            m1 + m2 + four * (m3 + m4),
            m1 - m2 + eight * (m3 - m4) + m5)


@njit(cache=True, inline="always")
def _a(g0, g1, g2, g3, two, four, eight):
    """A g along one axis (the adjoint of A^T): 4 output gradients -> 6 transformed values."""
    return (g0,
            g0 + g1 + g2 + g3,
            g0 - g1 + g2 - g3,
            g0 + two * g1 + four * g2 + eight * g3,
            g0 - two * g1 + four * g2 - eight * g3,
            g3)


@njit(cache=True, inline="always")
def _b(y0, y1, y2, y3, y4, y5, two, four, five):
    """B y along one axis (the adjoint of B^T): 6 transformed gradients -> 6 input gradients."""
    return (four * y0,
            four * (y2 - y1) + two * (y4 - y3) + four * y5,
            -(five * y0 + four * (y1 + y2) + y3 + y4),
            y1 - y2 + two * (y3 - y4) - five * y5,
            y0 + y1 + y2 + y3 + y4,
            y5)


@njit(cache=True, inline="always")
def _row_channels_last(x, img, row, line, left):
    """line[left + s, c] = x[img, c, row, s]: one image row turned channels last, in blocks of
    8 channels x 8 pixels, so that each write is 8 neighbouring values (one at a time, with
    8 to 128 channels between them, the same copy was 2 to 3 times slower)."""
    c, w = x.shape[1], x.shape[3]
    for c0 in range(0, c - c % 8, 8):
        for s in range(w):
            dst = line[left + s, c0:c0 + 8]
            for b in range(8):
                dst[b] = x[img, c0 + b, row, s]
    for ch in range(c - c % 8, c):
        src = x[img, ch, row]
        for s in range(w):
            line[left + s, ch] = src[s]


@njit(cache=True, inline="always")
def _row_channels_first(line, bias, y, img, row):
    """y[img, f, row, s] = line[s, f] + bias[f]: the way back, in the same blocks."""
    f, w = y.shape[1], y.shape[3]
    for f0 in range(0, f - f % 8, 8):
        for b in range(8):
            dst, add = y[img, f0 + b, row], bias[f0 + b]
            for s in range(w):
                dst[s] = line[s, f0 + b] + add
    for o in range(f - f % 8, f):
        dst, add = y[img, o, row], bias[o]
        for s in range(w):
            dst[s] = line[s, o] + add


@njit(cache=True, inline="always")
def _add_row_channels_first(line, left, gx, img, row):
    """gx[img, c, row, s] += line[left + s, c]: a band row added back into an NCHW image."""
    c, w = gx.shape[1], gx.shape[3]
    for c0 in range(0, c - c % 8, 8):
        for b in range(8):
            dst, src = gx[img, c0 + b, row], line[left:left + w]
            for s in range(w):
                dst[s] += src[s, c0 + b]
    for ch in range(c - c % 8, c):
        dst, src = gx[img, ch, row], line[left:left + w]
        for s in range(w):
            dst[s] += src[s, ch]


@njit(cache=True, inline="always")
def _rows_channels_last(x, img, first, step, left, band):
    """band[u, left + s, c] = x[img, c, first + step*u, s]; zeros where the row is outside x
    and in the columns around it."""
    _, c, h, w = x.shape
    zero = x.dtype.type(0)
    for u in range(band.shape[0]):
        row = first + step * u
        line = band[u]
        if row < 0 or row >= h:
            line[:, :] = zero
            continue
        line[:left, :] = zero
        line[left + w:, :] = zero
        _row_channels_last(x, img, row, line, left)


@njit(parallel=True, cache=True)
def input_transform(x, padding, dilation, row_starts, col_starts, cols, V):
    """V[(i, j), tile, c] = (B^T d B)[i, j] for every 6 x 6 tile d of x (N, C, H, W) padded with
    zeros: first down the columns of the tile, then along its rows."""
    n, c = x.shape[:2]
    (ph, pw), (dh, dw) = padding, dilation
    rows_of_tiles, per_row = row_starts.shape[0], col_starts.shape[0]
    two, four, five = x.dtype.type(2), x.dtype.type(4), x.dtype.type(5)
    for job in prange(n * rows_of_tiles):
        img, ti = job // rows_of_tiles, job % rows_of_tiles
        band = np.empty((6, cols, c), x.dtype)  # the 6 padded input rows under this row of tiles
        _rows_channels_last(x, img, row_starts[ti] - ph, dh, pw, band)
        half = np.empty((6, 6, c), x.dtype)  # B^T d
        for tj in range(per_row):
            t, q = job * per_row + tj, col_starts[tj]
            for v in range(6):
                col = q + dw * v
                d0, d1, d2, d3, d4, d5 = band[0, col], band[1, col], band[2, col], band[3, col], band[4, col], band[5, col]
                h0, h1, h2, h3, h4, h5 = half[0, v], half[1, v], half[2, v], half[3, v], half[4, v], half[5, v]
                for ch in range(c):
                    e0, e1, e2, e3, e4, e5 = _bt(d0[ch], d1[ch], d2[ch], d3[ch], d4[ch], d5[ch], two, four, five)
                    h0[ch], h1[ch], h2[ch], h3[ch], h4[ch], h5[ch] = e0, e1, e2, e3, e4, e5
            for i in range(6):  # (B^T d) B, straight into V
                a0, a1, a2, a3, a4, a5 = half[i, 0], half[i, 1], half[i, 2], half[i, 3], half[i, 4], half[i, 5]
                o0, o1, o2 = V[6 * i, t], V[6 * i + 1, t], V[6 * i + 2, t]
                o3, o4, o5 = V[6 * i + 3, t], V[6 * i + 4, t], V[6 * i + 5, t]
                for ch in range(c):
                    e0, e1, e2, e3, e4, e5 = _bt(a0[ch], a1[ch], a2[ch], a3[ch], a4[ch], a5[ch], two, four, five)
                    o0[ch], o1[ch], o2[ch], o3[ch], o4[ch], o5[ch] = e0, e1, e2, e3, e4, e5


@njit(parallel=True, cache=True)
def input_transform_adjoint(dV, padding, dilation, row_starts, per_phase, col_starts, cols, sweep, gx):
    """gx[n, c] += B dV B^T of every tile, put back where the tile's 6 x 6 inputs came from (the
    adjoint of input_transform), for the rows of tiles whose number within their phase has the
    parity ``sweep``. Two neighbouring rows of tiles share 2 input rows; within one sweep no two
    share any, so the turns never write the same pixel, and each pixel adds its tiles in the
    same order whatever the thread count. Padding is dropped."""
    n, c, h, w = gx.shape
    (ph, pw), (dh, dw) = padding, dilation
    rows_of_tiles, per_row = row_starts.shape[0], col_starts.shape[0]
    two, four, five = dV.dtype.type(2), dV.dtype.type(4), dV.dtype.type(5)
    for job in prange(n * rows_of_tiles):
        img, ti = job // rows_of_tiles, job % rows_of_tiles
        if (ti % per_phase) % 2 != sweep:
            continue
        band = np.zeros((6, cols, c), dV.dtype)  # the 6 padded input rows under this row of tiles
        half = np.empty((6, 6, c), dV.dtype)  # dV B^T
        for tj in range(per_row):
            t, q = job * per_row + tj, col_starts[tj]
            for i in range(6):  # along the rows of the transformed tile
                a0, a1, a2 = dV[6 * i, t], dV[6 * i + 1, t], dV[6 * i + 2, t]
                a3, a4, a5 = dV[6 * i + 3, t], dV[6 * i + 4, t], dV[6 * i + 5, t]
                h0, h1, h2, h3, h4, h5 = half[i, 0], half[i, 1], half[i, 2], half[i, 3], half[i, 4], half[i, 5]
                for ch in range(c):
                    e0, e1, e2, e3, e4, e5 = _b(a0[ch], a1[ch], a2[ch], a3[ch], a4[ch], a5[ch], two, four, five)
                    h0[ch], h1[ch], h2[ch], h3[ch], h4[ch], h5[ch] = e0, e1, e2, e3, e4, e5
            for v in range(6):  # then down its columns, added into the band
                col = q + dw * v
                m0, m1, m2, m3, m4, m5 = half[0, v], half[1, v], half[2, v], half[3, v], half[4, v], half[5, v]
                d0, d1, d2, d3, d4, d5 = band[0, col], band[1, col], band[2, col], band[3, col], band[4, col], band[5, col]
                for ch in range(c):
                    e0, e1, e2, e3, e4, e5 = _b(m0[ch], m1[ch], m2[ch], m3[ch], m4[ch], m5[ch], two, four, five)
                    d0[ch] += e0
                    d1[ch] += e1
                    d2[ch] += e2
                    d3[ch] += e3
                    d4[ch] += e4
                    d5[ch] += e5
        for u in range(6):  # the band back into gx, padding dropped
            row = row_starts[ti] + dh * u - ph
            if 0 <= row < h:
                _add_row_channels_first(band[u], pw, gx, img, row)


@njit(parallel=True, cache=True)
def output_transform(M, bias, dilation, row_starts, col_starts, cols, y):
    """y[n, f, row0 + d*r, col0 + d*s] = (A^T M A)[r, s] + bias[f] for every tile: along the
    rows of the transformed tile, then down its columns, into a band of 4 output rows with the
    channels last, then out to y (N, F, Ho, Wo). Tiles do not overlap in the output."""
    n, f, ho, wo = y.shape
    dh, dw = dilation
    rows_of_tiles, per_row = row_starts.shape[0], col_starts.shape[0]
    two, four, eight = M.dtype.type(2), M.dtype.type(4), M.dtype.type(8)
    for job in prange(n * rows_of_tiles):
        img, ti = job // rows_of_tiles, job % rows_of_tiles
        band = np.empty((4, cols, f), M.dtype)  # the 4 output rows of this row of tiles
        half = np.empty((6, 4, f), M.dtype)  # M A
        for tj in range(per_row):
            t, q = job * per_row + tj, col_starts[tj]
            for i in range(6):
                m0, m1, m2 = M[6 * i, t], M[6 * i + 1, t], M[6 * i + 2, t]
                m3, m4, m5 = M[6 * i + 3, t], M[6 * i + 4, t], M[6 * i + 5, t]
                h0, h1, h2, h3 = half[i, 0], half[i, 1], half[i, 2], half[i, 3]
                for o in range(f):
                    e0, e1, e2, e3 = _at(m0[o], m1[o], m2[o], m3[o], m4[o], m5[o], two, four, eight)
                    h0[o], h1[o], h2[o], h3[o] = e0, e1, e2, e3
            for s in range(4):  # A^T (M A), each column of outputs to its pixel
                col = q + dw * s
                a0, a1, a2, a3, a4, a5 = half[0, s], half[1, s], half[2, s], half[3, s], half[4, s], half[5, s]
                y0, y1, y2, y3 = band[0, col], band[1, col], band[2, col], band[3, col]
                for o in range(f):
                    e0, e1, e2, e3 = _at(a0[o], a1[o], a2[o], a3[o], a4[o], a5[o], two, four, eight)
                    y0[o], y1[o], y2[o], y3[o] = e0, e1, e2, e3
        for r in range(4):  # the band out to y, channels first, plus the bias
            row = row_starts[ti] + dh * r
            if row < ho:
                _row_channels_first(band[r], bias, y, img, row)


@njit(parallel=True, cache=True)
def output_transform_adjoint(gy, dilation, row_starts, col_starts, cols, dM, sums):
    """dM[(i, j), tile, f] = (A gY A^T)[i, j]: gY the 4 x 4 tile of the output gradient
    gy (N, F, Ho, Wo), zeros outside it. And sums[turn, f], the sum of the turn's gy (in
    float64), for the bias gradient: every pixel of gy lies in one row of tiles."""
    n, f = gy.shape[:2]
    dh, dw = dilation
    rows_of_tiles, per_row = row_starts.shape[0], col_starts.shape[0]
    two, four, eight = gy.dtype.type(2), gy.dtype.type(4), gy.dtype.type(8)
    for job in prange(n * rows_of_tiles):
        img, ti = job // rows_of_tiles, job % rows_of_tiles
        band = np.empty((4, cols, f), gy.dtype)  # the 4 rows of gy under this row of tiles
        _rows_channels_last(gy, img, row_starts[ti], dh, 0, band)
        total = sums[job]
        total[:] = 0.0
        for r in range(4):
            for col in range(cols):
                line = band[r, col]
                for o in range(f):
                    total[o] += line[o]
        half = np.empty((6, 4, f), gy.dtype)  # A gY
        for tj in range(per_row):
            t, q = job * per_row + tj, col_starts[tj]
            for s in range(4):
                col = q + dw * s
                g0, g1, g2, g3 = band[0, col], band[1, col], band[2, col], band[3, col]
                h0, h1, h2, h3, h4, h5 = half[0, s], half[1, s], half[2, s], half[3, s], half[4, s], half[5, s]
                for o in range(f):
                    e0, e1, e2, e3, e4, e5 = _a(g0[o], g1[o], g2[o], g3[o], two, four, eight)
                    h0[o], h1[o], h2[o], h3[o], h4[o], h5[o] = e0, e1, e2, e3, e4, e5
            for i in range(6):  # (A gY) A^T, straight into dM
                a0, a1, a2, a3 = half[i, 0], half[i, 1], half[i, 2], half[i, 3]
                o0, o1, o2 = dM[6 * i, t], dM[6 * i + 1, t], dM[6 * i + 2, t]
                o3, o4, o5 = dM[6 * i + 3, t], dM[6 * i + 4, t], dM[6 * i + 5, t]
                for o in range(f):
                    e0, e1, e2, e3, e4, e5 = _a(a0[o], a1[o], a2[o], a3[o], two, four, eight)
                    o0[o], o1[o], o2[o], o3[o], o4[o], o5[o] = e0, e1, e2, e3, e4, e5


@njit(cache=True, inline="always")
def _g(g0, g1, g2, k):
    """G g along one axis: 3 filter taps -> 6 transformed values (k: G's constants 1/4, 1/6,
    1/12 and 1/24 in the filters' dtype)."""
    quarter, sixth, twelfth, twentyfourth = k
    return (quarter * g0,
            -sixth * (g0 + g1 + g2),
            -sixth * (g0 - g1 + g2),
            twentyfourth * g0 + twelfth * g1 + sixth * g2,
            twentyfourth * g0 - twelfth * g1 + sixth * g2,
            g2)


@njit(cache=True, inline="always")
def _gt(m0, m1, m2, m3, m4, m5, k):
    """G^T m along one axis (the adjoint of G): 6 transformed values -> 3 filter taps."""
    quarter, sixth, twelfth, twentyfourth = k
    return (quarter * m0 - sixth * (m1 + m2) + twentyfourth * (m3 + m4),
            sixth * (m2 - m1) + twelfth * (m3 - m4),
            sixth * (m3 + m4 - m1 - m2) + m5)


@njit(cache=True, inline="always")
def _g_planes(a0, a1, a2, o0, o1, o2, o3, o4, o5, k):
    """o_j[p] = (G (a0[p], a1[p], a2[p]))[j] along whole planes: 3 in, 6 out."""
    for p in range(o0.shape[0]):
        e0, e1, e2, e3, e4, e5 = _g(a0[p], a1[p], a2[p], k)
        o0[p], o1[p], o2[p], o3[p], o4[p], o5[p] = e0, e1, e2, e3, e4, e5


@njit(cache=True, inline="always")
def _gt_planes(m0, m1, m2, m3, m4, m5, o0, o1, o2, k):
    """o_a[p] = (G^T (m0[p], ..., m5[p]))[a] along whole planes: 6 in, 3 out."""
    for p in range(o0.shape[0]):
        e0, e1, e2 = _gt(m0[p], m1[p], m2[p], m3[p], m4[p], m5[p], k)
        o0[p], o1[p], o2[p] = e0, e1, e2


FILTERS_PER_TURN = 512  # a turn's 18 planes of G g stay in the core's L1 cache (36 kB in float32)


@njit(parallel=True, cache=True)
def _filters(w, U):
    """U[6 i + j, p] = (G g G^T)[i, j] for the filters g[a, b] = w[p, 3 a + b] (w: (F*C, 9)):
    down the columns of every filter (G g), then along the rows of G g, for a block of filters
    at a time, so that each inner loop runs along planes doing the same arithmetic on
    neighbouring filters (vector instructions)."""
    count = w.shape[0]
    k = w.dtype.type(1 / 4), w.dtype.type(1 / 6), w.dtype.type(1 / 12), w.dtype.type(1 / 24)
    for turn in prange(-(-count // FILTERS_PER_TURN)):
        lo = turn * FILTERS_PER_TURN
        hi = min(count, lo + FILTERS_PER_TURN)
        half = np.empty((6, 3, hi - lo), w.dtype)  # G g
        for b in range(3):
            _g_planes(w[lo:hi, b], w[lo:hi, 3 + b], w[lo:hi, 6 + b],
                      half[0, b], half[1, b], half[2, b], half[3, b], half[4, b], half[5, b], k)
        for i in range(6):
            _g_planes(half[i, 0], half[i, 1], half[i, 2],
                      U[6 * i, lo:hi], U[6 * i + 1, lo:hi], U[6 * i + 2, lo:hi],
                      U[6 * i + 3, lo:hi], U[6 * i + 4, lo:hi], U[6 * i + 5, lo:hi], k)


@njit(parallel=True, cache=True)
def _filters_adjoint(dU, gw):
    """gw[p, 3 a + b] = (G^T dU[:, p] G)[a, b] for every filter p: the adjoint of _filters, its
    two steps in the other order, along the rows of each 6 x 6 of dU (dU G), then down the
    columns."""
    count = dU.shape[1]
    k = dU.dtype.type(1 / 4), dU.dtype.type(1 / 6), dU.dtype.type(1 / 12), dU.dtype.type(1 / 24)
    for turn in prange(-(-count // FILTERS_PER_TURN)):
        lo = turn * FILTERS_PER_TURN
        hi = min(count, lo + FILTERS_PER_TURN)
        half = np.empty((6, 3, hi - lo), dU.dtype)  # dU G
        for i in range(6):
            _gt_planes(dU[6 * i, lo:hi], dU[6 * i + 1, lo:hi], dU[6 * i + 2, lo:hi],
                       dU[6 * i + 3, lo:hi], dU[6 * i + 4, lo:hi], dU[6 * i + 5, lo:hi],
                       half[i, 0], half[i, 1], half[i, 2], k)
        for b in range(3):
            _gt_planes(half[0, b], half[1, b], half[2, b], half[3, b], half[4, b], half[5, b],
                       gw[lo:hi, b], gw[lo:hi, 3 + b], gw[lo:hi, 6 + b], k)


def weight_transform(w):
    """U[(i, j), f, c] = (G g G^T)[i, j] for each 3x3 filter g = w[f, c].

    A compiled loop applies G down the columns of the filters, then along the rows, over
    blocks of filters. 128 x 128 filters in float32, two threads, the best of 100: 0.22 ms,
    where the product kron(G, G) (36 x 9) @ the filters as columns (9 x F*C), cut in four over
    the threads, took 0.26 to 0.34 ms (a product with 9 terms is mostly OpenBLAS packing its
    operands; `python examples/cpu_figures.py small`, docs/cpu.md)."""
    f, c = w.shape[:2]
    U = np.empty((ALPHA * ALPHA, f * c), w.dtype)
    _filters(np.ascontiguousarray(w).reshape(f * c, 9), U)
    return U.reshape(ALPHA * ALPHA, f, c)


def weight_transform_adjoint(dU):
    """gw[f, c] = G^T dU[:, f, c] G for every filter (dU (36, F, C) -> gw (F, C, 3, 3)): the
    adjoint of weight_transform. 0.14 to 0.15 ms for 128 x 128 filters, where the product
    (F*C x 36) @ kron(G, G), cut in four, took 0.27 to 0.30 ms (as weight_transform's)."""
    _, f, c = dU.shape
    gw = np.empty((f, c, 3, 3), dU.dtype)
    _filters_adjoint(np.ascontiguousarray(dU).reshape(ALPHA * ALPHA, f * c), gw.reshape(f * c, 9))
    return gw


# --- the three passes ---------------------------------------------------------------------------
class Saved:
    """What forward keeps for the backward passes: the transformed input V (for grad-weight) and
    the transformed filters U (for grad-input); grad-input leaves the transformed output
    gradient dM and the bias gradient gb here for grad-weight, with the gy they came from."""

    def __init__(self, V, U):
        self.V, self.U = V, U
        self.dM, self.gb, self.dM_of = None, None, None


def conv(x, w, b, padding, dilation):
    """y = conv2d(x, w) + b for a 3x3 kernel, stride 1. Returns (y, Saved(V, U))."""
    tiles = Tiles(x.shape, padding, dilation)
    f = w.shape[0]
    V = np.empty((ALPHA * ALPHA, tiles.count, tiles.c), x.dtype)
    input_transform(x, tuple(padding), tuple(dilation), tiles.row_starts, tiles.col_starts, tiles.cols, V)
    U = weight_transform(w)  # (alpha^2, F, C)
    M = products.stacked(V, U.transpose(0, 2, 1))  # alpha^2 products (T x C) @ (C x F)
    y = np.empty((tiles.n, f, tiles.ho, tiles.wo), x.dtype)
    output_transform(M, np.zeros(f, x.dtype) if b is None else b, tuple(dilation),
                     tiles.row_starts, tiles.col_starts, tiles.cols, y)
    return y, Saved(V, U)


def _output_gradient(gy, saved, c, padding, dilation):
    """(tiles, dM): the tiles of the forward pass, and dM = A gY A^T for each of them; made once
    per gy and kept in ``saved`` for the second backward pass."""
    (ph, pw), (dh, dw) = padding, dilation
    n, f, ho, wo = gy.shape
    tiles = Tiles((n, c, ho - 2 * ph + 2 * dh, wo - 2 * pw + 2 * dw), padding, dilation)
    if saved.dM_of is not gy:
        saved.dM = np.empty((ALPHA * ALPHA, tiles.count, f), gy.dtype)
        sums = np.empty((n * len(tiles.row_starts), f))
        output_transform_adjoint(gy, tuple(dilation), tiles.row_starts, tiles.col_starts, tiles.cols,
                                 saved.dM, sums)
        saved.gb = sums.sum(axis=0).astype(gy.dtype)  # the parts added in a fixed order
        saved.dM_of = gy
    return tiles, saved.dM


def backward_data(gy, saved, x_shape, padding, dilation):
    """gx: the forward pass run backwards, gx = B [ (A gY A^T) U^T ] B^T, reusing the forward's U.

    The forward pass is y = A^T [ (V U) ] A with V = B^T x B, all linear; its adjoint takes the
    transformed output gradient dM = A gY A^T (which grad-weight needs too), multiplies by U^T
    (36 products (T x F) @ (F x C)) and brings each tile back with B ... B^T, adding up where
    the tiles overlap."""
    tiles, dM = _output_gradient(gy, saved, x_shape[1], padding, dilation)
    dV = products.stacked(dM, saved.U)  # alpha^2 products (T x F) @ (F x C)
    gx = np.zeros(x_shape, gy.dtype)
    per_phase = len(tiles.row_starts) // dilation[0]
    for sweep in (0, 1):
        input_transform_adjoint(dV, tuple(padding), tuple(dilation), tiles.row_starts, per_phase,
                                tiles.col_starts, tiles.cols, sweep, gx)
    return gx


def backward_weight(gy, saved, w_shape, padding, dilation):
    """(gw, gb) from gy and what forward kept: gw = G^T [ sum over tiles of V^T dM ] G."""
    _, dM = _output_gradient(gy, saved, w_shape[1], padding, dilation)
    dU = products.stacked(dM.transpose(0, 2, 1), saved.V)  # alpha^2 products (F x T) @ (T x C)
    return weight_transform_adjoint(dU), saved.gb

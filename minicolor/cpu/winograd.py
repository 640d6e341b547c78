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

    M[xi,nu] (T x F) = V[xi,nu] (T x C) @ U[xi,nu] (C x F)     T = tiles over the whole batch

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
    columns likewise. An image has per_image = d^2 th tw tiles, numbered phase by phase; tile t
    of image n is row n*per_image + t of the transformed matrices. Tile t starts at row
    row0[t] = a + d*m*ti and column col0[t]: its output pixel (r, s) is (row0 + d*r,
    col0 + d*s) of the output, and its input pixel (u, v) is (row0 + d*u, col0 + d*v) of the
    input padded by p on each side. A padded image of ``rows`` x ``cols`` holds every tile,
    partial ones too.
    """

    def __init__(self, x_shape, padding, dilation):
        self.n, self.c, self.h, self.w = x_shape
        (ph, pw), (dh, dw) = padding, dilation
        self.ho, self.wo = self.h + 2 * ph - 2 * dh, self.w + 2 * pw - 2 * dw
        th = -(-(-(-self.ho // dh)) // M_OUT)  # tiles per phase: ceil(ceil(ho / d) / m)
        tw = -(-(-(-self.wo // dw)) // M_OUT)
        self.rows, self.cols = dh * (M_OUT * th + 2), dw * (M_OUT * tw + 2)
        starts_h = [a + dh * M_OUT * ti for a in range(dh) for ti in range(th)]
        starts_w = [b + dw * M_OUT * tj for b in range(dw) for tj in range(tw)]
        self.row0 = np.repeat(starts_h, len(starts_w)).astype(np.int64)
        self.col0 = np.tile(starts_w, len(starts_h)).astype(np.int64)
        self.per_image = len(self.row0)
        self.count = self.n * self.per_image


# --- the compiled loops -----------------------------------------------------------------------
# The transforms are the rows of B^T, A^T and A written out, so that the zeros of the matrices
# cost nothing and every intermediate stays in a register; each is applied to whole rows of
# channels at once. The constants 2, 4, 5 and 8 are made in the arrays' dtype
# (``x.dtype.type(4)``) before the loops: a float32 times a Python int is computed in float64,
# 3x slower here. The tiles (each image's, then the next image's) are spread over the threads.

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


@njit(parallel=True, cache=True)
def channels_last(x, top, left, out):
    """out[n, top + r, left + s, c] = x[n, c, r, s]; the rest of out is left as it is (zeros)."""
    n, c, h, w = x.shape
    for job in prange(n * h):
        img, r = job // h, job % h
        row = out[img, top + r]
        for ch in range(c):
            src = x[img, ch, r]
            for s in range(w):
                row[left + s, ch] = src[s]


@njit(parallel=True, cache=True)
def channels_first(y_last, bias, y):
    """y[n, f, r, s] = y_last[n, r, s, f] + bias[f]."""
    n, f, ho, wo = y.shape
    for job in prange(n * f):
        img, o = job // f, job % f
        b = bias[o]
        for r in range(ho):
            src, dst = y_last[img, r], y[img, o, r]
            for s in range(wo):
                dst[s] = src[s, o] + b


@njit(parallel=True, cache=True)
def input_transform(padded, row0, col0, dilation, V):
    """V[(i, j), tile, c] = (B^T d B)[i, j] for every 6 x 6 tile d of the padded input
    (n, rows, cols, c): first down the columns of the tile, then along its rows."""
    n, _, _, c = padded.shape
    dh, dw = dilation
    tiles = row0.shape[0]
    two, four, five = padded.dtype.type(2), padded.dtype.type(4), padded.dtype.type(5)
    for job in prange(n * tiles):
        img, t = job // tiles, job % tiles
        r, q = row0[t], col0[t]
        half = np.empty((6, 6, c), padded.dtype)  # B^T d
        for v in range(6):
            col = q + dw * v
            d0, d1, d2 = padded[img, r, col], padded[img, r + dh, col], padded[img, r + 2 * dh, col]
            d3, d4, d5 = padded[img, r + 3 * dh, col], padded[img, r + 4 * dh, col], padded[img, r + 5 * dh, col]
            h0, h1, h2, h3, h4, h5 = half[0, v], half[1, v], half[2, v], half[3, v], half[4, v], half[5, v]
            for ch in range(c):
                e0, e1, e2, e3, e4, e5 = _bt(d0[ch], d1[ch], d2[ch], d3[ch], d4[ch], d5[ch], two, four, five)
                h0[ch], h1[ch], h2[ch], h3[ch], h4[ch], h5[ch] = e0, e1, e2, e3, e4, e5
        for i in range(6):  # (B^T d) B, straight into V
            a0, a1, a2, a3, a4, a5 = half[i, 0], half[i, 1], half[i, 2], half[i, 3], half[i, 4], half[i, 5]
            o0, o1, o2 = V[6 * i, job], V[6 * i + 1, job], V[6 * i + 2, job]
            o3, o4, o5 = V[6 * i + 3, job], V[6 * i + 4, job], V[6 * i + 5, job]
            for ch in range(c):
                e0, e1, e2, e3, e4, e5 = _bt(a0[ch], a1[ch], a2[ch], a3[ch], a4[ch], a5[ch], two, four, five)
                o0[ch], o1[ch], o2[ch], o3[ch], o4[ch], o5[ch] = e0, e1, e2, e3, e4, e5


@njit(parallel=True, cache=True)
def output_transform(M, row0, col0, dilation, y_last):
    """y_last[n, row0 + d*r, col0 + d*s, f] = (A^T M A)[r, s] for every tile: along the rows of
    the transformed tile, then down its columns. Tiles do not overlap in the output."""
    f = M.shape[2]
    dh, dw = dilation
    tiles = row0.shape[0]
    two, four, eight = M.dtype.type(2), M.dtype.type(4), M.dtype.type(8)
    for job in prange(M.shape[1]):
        img, t = job // tiles, job % tiles
        r, q = row0[t], col0[t]
        half = np.empty((6, 4, f), M.dtype)  # M A
        for i in range(6):
            m0, m1, m2 = M[6 * i, job], M[6 * i + 1, job], M[6 * i + 2, job]
            m3, m4, m5 = M[6 * i + 3, job], M[6 * i + 4, job], M[6 * i + 5, job]
            h0, h1, h2, h3 = half[i, 0], half[i, 1], half[i, 2], half[i, 3]
            for o in range(f):
                e0, e1, e2, e3 = _at(m0[o], m1[o], m2[o], m3[o], m4[o], m5[o], two, four, eight)
                h0[o], h1[o], h2[o], h3[o] = e0, e1, e2, e3
        for s in range(4):  # A^T (M A), each row of outputs to its pixel
            col = q + dw * s
            a0, a1, a2, a3, a4, a5 = half[0, s], half[1, s], half[2, s], half[3, s], half[4, s], half[5, s]
            y0, y1 = y_last[img, r, col], y_last[img, r + dh, col]
            y2, y3 = y_last[img, r + 2 * dh, col], y_last[img, r + 3 * dh, col]
            for o in range(f):
                e0, e1, e2, e3 = _at(a0[o], a1[o], a2[o], a3[o], a4[o], a5[o], two, four, eight)
                y0[o], y1[o], y2[o], y3[o] = e0, e1, e2, e3


@njit(parallel=True, cache=True)
def output_transform_adjoint(g_last, row0, col0, dilation, dM):
    """dM[(i, j), tile, f] = (A gY A^T)[i, j]: gY the 4 x 4 tile of the output gradient
    (n, rows, cols, f), zeros outside it."""
    n, _, _, f = g_last.shape
    dh, dw = dilation
    tiles = row0.shape[0]
    two, four, eight = g_last.dtype.type(2), g_last.dtype.type(4), g_last.dtype.type(8)
    for job in prange(n * tiles):
        img, t = job // tiles, job % tiles
        r, q = row0[t], col0[t]
        half = np.empty((6, 4, f), g_last.dtype)  # A gY
        for s in range(4):
            col = q + dw * s
            g0, g1 = g_last[img, r, col], g_last[img, r + dh, col]
            g2, g3 = g_last[img, r + 2 * dh, col], g_last[img, r + 3 * dh, col]
            h0, h1, h2, h3, h4, h5 = half[0, s], half[1, s], half[2, s], half[3, s], half[4, s], half[5, s]
            for o in range(f):
                e0, e1, e2, e3, e4, e5 = _a(g0[o], g1[o], g2[o], g3[o], two, four, eight)
                h0[o], h1[o], h2[o], h3[o], h4[o], h5[o] = e0, e1, e2, e3, e4, e5
        for i in range(6):  # (A gY) A^T, straight into dM
            a0, a1, a2, a3 = half[i, 0], half[i, 1], half[i, 2], half[i, 3]
            o0, o1, o2 = dM[6 * i, job], dM[6 * i + 1, job], dM[6 * i + 2, job]
            o3, o4, o5 = dM[6 * i + 3, job], dM[6 * i + 4, job], dM[6 * i + 5, job]
            for o in range(f):
                e0, e1, e2, e3, e4, e5 = _a(a0[o], a1[o], a2[o], a3[o], two, four, eight)
                o0[o], o1[o], o2[o], o3[o], o4[o], o5[o] = e0, e1, e2, e3, e4, e5


def _pieces(columns):
    """Into how many products the weight transform's is cut: 4 when it is large."""
    return 4 if columns >= 4096 else 1


def weight_transform(w):
    """U[(i, j), c, f] = (G g G^T)[i, j] for each 3x3 filter g = w[f, c].

    Each of the 36 entries of G g G^T is a fixed combination of the 9 entries of g, so all of U
    is one small matrix product: kron(G, G) (36 x 9) @ the filters as columns (9 x C*F).
    """
    f, c = w.shape[:2]
    columns = w.transpose(2, 3, 1, 0).reshape(9, c * f)  # (a, b) x (c, f)
    return products.by_columns(np.kron(G, G).astype(w.dtype), columns, pieces=_pieces(c * f)).reshape(ALPHA * ALPHA, c, f)


def weight_transform_adjoint(dU, w_shape):
    """gw[f, c] = G^T dU[f, c] G for every filter: the transpose of weight_transform's product."""
    f, c = w_shape[:2]
    columns = products.by_columns(np.kron(G, G).T.astype(dU.dtype), dU.reshape(ALPHA * ALPHA, c * f),
                                  pieces=_pieces(c * f))  # (9, C*F)
    return np.ascontiguousarray(columns.reshape(3, 3, c, f).transpose(3, 2, 0, 1))


# --- the three passes ---------------------------------------------------------------------------
def conv(x, w, b, padding, dilation):
    """y = conv2d(x, w) + b for a 3x3 kernel, stride 1. Returns (y, V): V for grad-weight."""
    tiles = Tiles(x.shape, padding, dilation)
    f = w.shape[0]
    padded = np.zeros((tiles.n, tiles.rows, tiles.cols, tiles.c), x.dtype)
    channels_last(x, padding[0], padding[1], padded)
    V = np.empty((ALPHA * ALPHA, tiles.count, tiles.c), x.dtype)
    input_transform(padded, tiles.row0, tiles.col0, dilation, V)
    M = products.stacked(V, weight_transform(w))  # alpha^2 products (T x C) @ (C x F)
    y_last = np.empty((tiles.n, tiles.rows, tiles.cols, f), x.dtype)
    output_transform(M, tiles.row0, tiles.col0, dilation, y_last)
    y = np.empty((tiles.n, f, tiles.ho, tiles.wo), x.dtype)
    channels_first(y_last, np.zeros(f, x.dtype) if b is None else b, y)
    return y, V


def backward_data(gy, w, x_shape, padding, dilation):
    """gx: the stride-1 convolution of gy with w turned 180 degrees, channels swapped."""
    (ph, pw), (dh, dw) = padding, dilation
    flipped = w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)
    gx, _ = conv(gy, flipped, None, (2 * dh - ph, 2 * dw - pw), dilation)
    assert gx.shape == tuple(x_shape), (gx.shape, x_shape)
    return gx


def backward_weight(gy, V, w_shape, padding, dilation):
    """(gw, gb) from gy and the V that forward kept."""
    f, c = w_shape[:2]
    (ph, pw), (dh, dw) = padding, dilation
    n, _, ho, wo = gy.shape
    tiles = Tiles((n, c, ho - 2 * ph + 2 * dh, wo - 2 * pw + 2 * dw), padding, dilation)
    g_last = np.zeros((n, tiles.rows, tiles.cols, f), gy.dtype)
    channels_last(gy, 0, 0, g_last)
    dM = np.empty((ALPHA * ALPHA, tiles.count, f), gy.dtype)
    output_transform_adjoint(g_last, tiles.row0, tiles.col0, dilation, dM)
    dU = products.stacked(V.transpose(0, 2, 1), dM)  # alpha^2 products (C x T) @ (T x F): (alpha^2, C, F)
    return weight_transform_adjoint(dU, w_shape), gy.sum(axis=(0, 2, 3))

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

    M[xi,nu] (F x T) = U[xi,nu] (F x C) @ V[xi,nu] (C x T)     T = tiles over the whole batch

alpha^2 matrix products of F x C x T multiply-adds replace one of F x 9C x T m^2: with m = 4,
36 instead of 144 per tile, 4 times fewer. The transforms (B^T d B and A^T M A) are additions
and a few multiplications by small constants, done here as compiled loops.

What it costs in float32: the constants of F(4x4, 3x3) reach 8 (A) and 1/24 (G), so rounding
errors grow a little. Against the float64 reference the largest difference over the largest
value is about 1e-6 to 5e-6 (tests/test_cpu_fast.py checks < 1e-4, the GPU tests' tolerance,
on every layer shape of the network; docs/winograd.md has the figures).

Dilation: a 3x3 convolution with dilation d reads every d-th pixel, so it is d^2 independent
stride-1 convolutions, one per "phase" (rows a, a+d, a+2d, ...; columns b, b+d, ...). The tiles
below are laid out phase by phase, and the gathers read with step d: nothing else changes.

The three passes of training:
    forward        y  = winograd(x, w)
    grad-input     gx = winograd(gy, w turned 180 degrees, in/out channels swapped,
                                 padding 2d - p): the adjoint of a stride-1 convolution is one
    grad-weight    gw = G^T [ sum over tiles of (A gY A^T) * V ] G    (the same algebra run
                   backwards: alpha^2 products dM (F x T) @ V^T (T x C); V is kept from forward)
"""
import numpy as np
from numba import njit, prange

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
    of image n is column n*per_image + t of the transformed matrices. Tile t starts at row
    row0[t] = a + d*m*ti and column col0[t]: its output pixel (r, s) is (row0 + d*r,
    col0 + d*s) of the output, and its input pixel (u, v) is (row0 + d*u, col0 + d*v) of the
    input padded by p on each side. A padded plane of ``rows`` x ``cols`` holds every tile,
    partial ones too; ``offset[t]`` is where tile t starts in it, counted flat.
    """

    def __init__(self, x_shape, padding, dilation):
        self.n, self.c, self.h, self.w = x_shape
        (ph, pw), (dh, dw) = padding, dilation
        self.ho, self.wo = self.h + 2 * ph - 2 * dh, self.w + 2 * pw - 2 * dw
        th = -(-(-(-self.ho // dh)) // M_OUT)  # tiles per phase: ceil(ceil(ho / d) / m)
        tw = -(-(-(-self.wo // dw)) // M_OUT)
        self.rows, self.cols = dh * (M_OUT * th + 2), dw * (M_OUT * tw + 2)
        row0 = [a + dh * M_OUT * ti for a in range(dh) for ti in range(th)]
        col0 = [b + dw * M_OUT * tj for b in range(dw) for tj in range(tw)]
        # unsigned, so that the compiled loops index without testing for negative indices
        self.offset = np.add.outer(np.array(row0) * self.cols, col0).ravel().astype(np.uint64)
        self.per_image = len(self.offset)
        self.count = self.n * self.per_image
        self.planes_in = self.n * self.c

    def group(self, planes):
        """Planes per group: enough for GROUP_TILES tiles (see below)."""
        return max(1, min(planes, -(-GROUP_TILES // self.per_image)))


# --- the compiled loops -----------------------------------------------------------------------
# Each spreads groups of image planes (one image, one channel each) over the threads. Within a
# group the loops run over all the group's tiles at once (the innermost loop is over tiles t):
# the same arithmetic on neighbouring tiles, which the compiler turns into vector instructions.
# A group holds at least GROUP_TILES tiles, because the compiler's vector loops take 64 floats
# a turn and run what is left one float at a time: one 28 x 28 plane has only 49 tiles.
# Tiles are gathered from, and scattered to, a zero-padded copy of each plane, so that no loop
# tests whether a pixel lies inside the image.
#
# The transforms are the rows of B^T, A^T and A written out, so that the zeros of the matrices
# cost nothing and every intermediate stays in a register. The constants 2, 4, 5 and 8 are made
# in the arrays' dtype (``x.dtype.type(4)``) before the loops: a float32 times a Python int is
# computed in float64, 3x slower here.
GROUP_TILES = 256


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
def _group_offsets(tiles, count, first, plane_size, offset):
    """Flat offsets of every tile of ``count`` planes laid one after another."""
    where = np.empty(count * tiles, np.uint64)
    for p in range(count):
        for t in range(tiles):
            where[p * tiles + t] = offset[t] + np.uint64(p * plane_size)
    return where


@njit(parallel=True, cache=True)
def input_transform(x, offset, rows, cols, padding, dilation, per_group, V):
    """V[(i, j), c, tile] = (B^T d B)[i, j] for every 6 x 6 input tile d of x (zeros outside x)."""
    n, c, h, w = x.shape
    (ph, pw), (dh, dw) = padding, dilation
    tiles = offset.shape[0]
    step = np.uint64(dh * cols)  # from one row of a tile to the next, in the flat padded plane
    two, four, five = x.dtype.type(2), x.dtype.type(4), x.dtype.type(5)
    for group in prange((n * c + per_group - 1) // per_group):
        first = group * per_group
        count = min(per_group, n * c - first)
        padded = np.zeros((count, rows, cols), x.dtype)
        for p in range(count):
            padded[p, ph:ph + h, pw:pw + w] = x[(first + p) // c, (first + p) % c]
        flat = padded.ravel()
        where = _group_offsets(tiles, count, first, rows * cols, offset)
        size = count * tiles
        half = np.empty((6, 6, size), x.dtype)  # B^T d: the columns transformed
        for v in range(6):
            shift = np.uint64(dw * v)
            for t in range(size):
                at = where[t] + shift
                e = _bt(flat[at], flat[at + step], flat[at + 2 * step], flat[at + 3 * step],
                        flat[at + 4 * step], flat[at + 5 * step], two, four, five)
                for i in range(6):
                    half[i, v, t] = e[i]
        out = np.empty((6, 6, size), x.dtype)  # (B^T d) B: the rows too
        for i in range(6):
            for t in range(size):
                e = _bt(half[i, 0, t], half[i, 1, t], half[i, 2, t], half[i, 3, t],
                        half[i, 4, t], half[i, 5, t], two, four, five)
                for j in range(6):
                    out[i, j, t] = e[j]
        for p in range(count):
            img, ch = (first + p) // c, (first + p) % c
            for i in range(6):
                for j in range(6):
                    V[6 * i + j, ch, img * tiles:(img + 1) * tiles] = out[i, j, p * tiles:(p + 1) * tiles]


@njit(parallel=True, cache=True)
def output_transform(M, bias, offset, rows, cols, dilation, per_group, y):
    """y[n, f] = A^T M A for every tile, plus bias[f]."""
    n, f, ho, wo = y.shape
    dh, dw = dilation
    tiles = offset.shape[0]
    step = np.uint64(dh * cols)
    two, four, eight = y.dtype.type(2), y.dtype.type(4), y.dtype.type(8)
    for group in prange((n * f + per_group - 1) // per_group):
        first = group * per_group
        count = min(per_group, n * f - first)
        size = count * tiles
        mt = np.empty((6, 6, size), y.dtype)
        for p in range(count):
            img, o = (first + p) // f, (first + p) % f
            for ij in range(36):
                mt[ij // 6, ij % 6, p * tiles:(p + 1) * tiles] = M[ij, o, img * tiles:(img + 1) * tiles]
        half = np.empty((6, 4, size), y.dtype)  # M A: the rows transformed
        for i in range(6):
            for t in range(size):
                e = _at(mt[i, 0, t], mt[i, 1, t], mt[i, 2, t], mt[i, 3, t], mt[i, 4, t], mt[i, 5, t], two, four, eight)
                for s in range(4):
                    half[i, s, t] = e[s]
        padded = np.empty((count, rows, cols), y.dtype)
        flat = padded.ravel()
        where = _group_offsets(tiles, count, first, rows * cols, offset)
        for s in range(4):  # A^T (M A): the columns too, each value scattered to its pixel
            shift = np.uint64(dw * s)
            for t in range(size):
                e = _at(half[0, s, t], half[1, s, t], half[2, s, t], half[3, s, t], half[4, s, t],
                        half[5, s, t], two, four, eight)
                at = where[t] + shift
                flat[at] = e[0]
                flat[at + step] = e[1]
                flat[at + 2 * step] = e[2]
                flat[at + 3 * step] = e[3]
        for p in range(count):
            img, o = (first + p) // f, (first + p) % f
            b = bias[o]
            for r in range(ho):
                for s in range(wo):
                    y[img, o, r, s] = padded[p, r, s] + b


@njit(parallel=True, cache=True)
def output_transform_adjoint(gy, offset, rows, cols, dilation, per_group, dM):
    """dM[(i, j), f, tile] = (A gY A^T)[i, j]: gY the 4 x 4 tile of gy (zeros outside gy)."""
    n, f, ho, wo = gy.shape
    dh, dw = dilation
    tiles = offset.shape[0]
    step = np.uint64(dh * cols)
    two, four, eight = gy.dtype.type(2), gy.dtype.type(4), gy.dtype.type(8)
    for group in prange((n * f + per_group - 1) // per_group):
        first = group * per_group
        count = min(per_group, n * f - first)
        padded = np.zeros((count, rows, cols), gy.dtype)
        for p in range(count):
            padded[p, :ho, :wo] = gy[(first + p) // f, (first + p) % f]
        flat = padded.ravel()
        where = _group_offsets(tiles, count, first, rows * cols, offset)
        size = count * tiles
        half = np.empty((6, 4, size), gy.dtype)  # A gY: the columns transformed
        for s in range(4):
            shift = np.uint64(dw * s)
            for t in range(size):
                at = where[t] + shift
                e = _a(flat[at], flat[at + step], flat[at + 2 * step], flat[at + 3 * step], two, four, eight)
                for i in range(6):
                    half[i, s, t] = e[i]
        out = np.empty((6, 6, size), gy.dtype)  # (A gY) A^T: the rows too
        for i in range(6):
            for t in range(size):
                e = _a(half[i, 0, t], half[i, 1, t], half[i, 2, t], half[i, 3, t], two, four, eight)
                for j in range(6):
                    out[i, j, t] = e[j]
        for p in range(count):
            img, o = (first + p) // f, (first + p) % f
            for i in range(6):
                for j in range(6):
                    dM[6 * i + j, o, img * tiles:(img + 1) * tiles] = out[i, j, p * tiles:(p + 1) * tiles]


@njit(parallel=True, cache=True)
def weight_transform(w, G):
    """U[(i, j), f, c] = (G g G^T)[i, j] for each 3x3 filter g = w[f, c].

    The innermost loops run over input channels c, so that U is written contiguously.
    """
    f, c, k, _ = w.shape
    alpha = G.shape[0]
    U = np.empty((alpha * alpha, f, c), w.dtype)
    for o in prange(f):
        tmp = np.zeros((alpha, k, c), w.dtype)  # G g, for every c
        for i in range(alpha):
            for a in range(k):
                coef = G[i, a]
                if coef != 0:
                    for b in range(k):
                        for ch in range(c):
                            tmp[i, b, ch] += coef * w[o, ch, a, b]
        for i in range(alpha):
            for j in range(alpha):
                row = U[i * alpha + j, o]
                row[:] = 0
                for b in range(k):
                    coef = G[j, b]
                    if coef != 0:
                        for ch in range(c):
                            row[ch] += coef * tmp[i, b, ch]
    return U


@njit(parallel=True, cache=True)
def weight_transform_adjoint(dU, G, gw):
    """gw[f, c] = G^T dU[f, c] G: the 3x3 gradient of each filter from its alpha x alpha one."""
    f, c, k, _ = gw.shape
    alpha = G.shape[0]
    for o in prange(f):
        tmp = np.zeros((k, alpha, c), gw.dtype)  # G^T dU, for every c
        for a in range(k):
            for i in range(alpha):
                coef = G[i, a]
                if coef != 0:
                    for j in range(alpha):
                        row = dU[i * alpha + j, o]
                        for ch in range(c):
                            tmp[a, j, ch] += coef * row[ch]
        out = np.zeros((k, k, c), gw.dtype)
        for a in range(k):
            for b in range(k):
                for j in range(alpha):
                    coef = G[j, b]
                    if coef != 0:
                        for ch in range(c):
                            out[a, b, ch] += coef * tmp[a, j, ch]
        for ch in range(c):
            for a in range(k):
                for b in range(k):
                    gw[o, ch, a, b] = out[a, b, ch]


# --- the three passes ---------------------------------------------------------------------------
def conv(x, w, b, padding, dilation):
    """y = conv2d(x, w) + b for a 3x3 kernel, stride 1. Returns (y, V): V for grad-weight."""
    tiles = Tiles(x.shape, padding, dilation)
    where = (tiles.offset, tiles.rows, tiles.cols)
    V = np.empty((ALPHA * ALPHA, tiles.c, tiles.count), x.dtype)
    input_transform(x, *where, padding, dilation, tiles.group(tiles.n * tiles.c), V)
    M = np.matmul(weight_transform(w, G.astype(w.dtype)), V)  # alpha^2 products (F x C) @ (C x T)
    f = w.shape[0]
    y = np.empty((tiles.n, f, tiles.ho, tiles.wo), x.dtype)
    bias = np.zeros(f, x.dtype) if b is None else b
    output_transform(M, bias, *where, dilation, tiles.group(tiles.n * f), y)
    return y, V


def backward_data(gy, w, x_shape, padding, dilation):
    """gx: the stride-1 convolution of gy with w turned 180 degrees, channels swapped."""
    (ph, pw), (dh, dw) = padding, dilation
    flipped = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
    gx, _ = conv(gy, flipped, None, (2 * dh - ph, 2 * dw - pw), dilation)
    assert gx.shape == tuple(x_shape), (gx.shape, x_shape)
    return gx


def backward_weight(gy, V, w_shape, padding, dilation):
    """(gw, gb) from gy and the V that forward kept."""
    f, c = w_shape[:2]
    (ph, pw), (dh, dw) = padding, dilation
    n, _, ho, wo = gy.shape
    tiles = Tiles((n, c, ho - 2 * ph + 2 * dh, wo - 2 * pw + 2 * dw), padding, dilation)
    dM = np.empty((ALPHA * ALPHA, f, tiles.count), gy.dtype)
    output_transform_adjoint(gy, tiles.offset, tiles.rows, tiles.cols, dilation,
                             tiles.group(n * f), dM)
    dU = np.matmul(dM, V.transpose(0, 2, 1))  # alpha^2 products (F x T) @ (T x C): (alpha^2, F, C)
    gw = np.empty(w_shape, gy.dtype)
    weight_transform_adjoint(dU, G.astype(gy.dtype), gw)
    return gw, gy.sum(axis=(0, 2, 3))

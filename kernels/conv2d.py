"""conv2d as Numba CUDA kernels: three passes, one tiled matrix product.

Read minicolor/reference/conv2d.py first: there, each pass of a convolution is one matrix
product over an im2col buffer. Here the same three products run on the GPU *without*
building that buffer: each thread block computes one tile of the product and gathers the
matrix entries it needs straight from the NCHW tensors ("implicit GEMM").

    pass          C (M x Ncols)         = A (M x K)      @ B (K x Ncols)
    forward       y      (F x N*Ho*Wo)    w (F x C*kh*kw)   cols of x
    grad-input    gx     (C x N*H*W)      w^T rearranged    gy, gathered per input pixel
    grad-weight   gw     (F x C*kh*kw)    gy (F x N*Ho*Wo)  cols of x, transposed

So the whole file is one kernel template, ``_tiled_matmul``, and for each pass three small
device functions that say where an entry of A or B comes from and where a result goes.

How one block computes its BM x BN tile of C (BM = BN = 64, 256 threads):

    for each slice of BK = 8 along the reduction axis K:
        all 256 threads copy the BM x BK slice of A and the BK x BN slice of B from global
        memory into shared memory (2 entries each), computing each entry's source address;
        entries outside the matrices or inside the zero padding become 0
        syncthreads  (the tiles are complete)
        each thread multiplies its TM x TN = 4 x 4 micro-tile: per k, 4 values of A and 4 of B
        into registers, 16 multiply-adds into 16 accumulators (register blocking: 8 shared
        reads feed 16 FLOP pairs, instead of 2 reads per pair)
        syncthreads  (everyone is done with the tiles before they are overwritten)
    each thread writes its 16 results

Thread (ty, tx) of the 16 x 16 grid owns rows ty, ty+16, ty+32, ty+48 and columns tx, tx+16,
... of the tile: neighbouring threads read neighbouring shared-memory words (no bank
conflicts) and write neighbouring output pixels (coalesced stores).

Why shared memory: each entry of an A tile is used by 16 threads' columns, each entry of
a B tile by 16 rows; loading it once per block instead of once per use divides global
memory traffic by 16. Why register blocking: shared memory is fast but not free; reusing
each loaded value 4 times from a register lets the multiply-adds, not the loads, set the pace.

grad-weight reduces over N*Ho*Wo (hundreds of thousands) but produces a small F x C*kh*kw
matrix: too few tiles to fill the GPU. It is "split-K": grid axis z cuts the reduction into
``splits`` ranges, each block writes a partial tile, and the partials are summed after.

``conv2d_naive`` (one thread per output, no shared memory) is the readable first version,
kept as a comparison point; it is about 20x slower than the tiled kernels on a GPU.
"""
import functools
import math

import numba
import numpy as np
from numba import cuda

from minicolor.backend import get_array_module
import minicolor.kernels as kernels
from minicolor.kernels import SIMULATOR
from minicolor.kernels.reduce import block_sum

BM, BN, BK = 64, 64, 8  # tile of C per block; slice of the reduction per stage
TM, TN = 4, 4  # micro-tile per thread
BIAS_THREADS = 128
if SIMULATOR:  # the same kernels with 4 x 4 threads on 8 x 8 tiles: tiny tests, many tiles
    BM, BN, BK, TM, TN, BIAS_THREADS = 8, 8, 4, 2, 2, 16
ROWS, COLS = BM // TM, BN // TN  # 16 x 16 threads
A_ROWS = BM + 1  # shared-array shapes must be module-level constants on a real GPU
THREADS = ROWS * COLS


# --- where the entries come from --------------------------------------------------------------
# ``g`` is the geometry tuple: (N, C, H, W, F, KH, KW, HO, WO, SH, SW, PH, PW, DH, DW)
@cuda.jit(device=True)
def _output_pixel(p, g):
    """Column p of an N*Ho*Wo-wide matrix -> output pixel (n, oh, ow)."""
    hw = g[7] * g[8]
    n, q = p // hw, p % hw
    return n, q // g[8], q % g[8]


@cuda.jit(device=True)
def _x_col(x, k, p, g):
    """Entry (k, p) of im2col(x): k = (c, i, j) of the kernel, p = (n, oh, ow) of the output."""
    kk = g[5] * g[6]
    c, r = k // kk, k % kk
    i, j = r // g[6], r % g[6]
    n, oh, ow = _output_pixel(p, g)
    ih = oh * g[9] - g[11] + i * g[13]
    iw = ow * g[10] - g[12] + j * g[14]
    if ih < 0 or ih >= g[2] or iw < 0 or iw >= g[3]:
        return 0.0  # zero padding
    return x[n, c, ih, iw]


@cuda.jit(device=True)
def _gy_at(gy, f, p, g):
    """Entry (f, p) of gy seen as an F x N*Ho*Wo matrix."""
    n, oh, ow = _output_pixel(p, g)
    return gy[n, f, oh, ow]


# forward: y = w (F x K) @ cols (K x P)
@cuda.jit(device=True)
def _fwd_a(w, f, k, g):
    return w[f, k]


@cuda.jit(device=True)
def _fwd_b(x, k, p, g):
    return _x_col(x, k, p, g)


@cuda.jit(device=True)
def _fwd_store(y, bias, f, p, split, value, g):
    n, oh, ow = _output_pixel(p, g)
    y[n, f, oh, ow] = value + bias[f]


# grad-input: gx (C x N*H*W) = wt (C x F*kh*kw) @ gy gathered (F*kh*kw x N*H*W)
@cuda.jit(device=True)
def _bwd_data_a(w, c, k, g):
    kk = g[5] * g[6]
    f, r = k // kk, k % kk
    return w[f, c, r // g[6], r % g[6]]


@cuda.jit(device=True)
def _bwd_data_b(gy, k, q, g):
    """gy at the output pixel that kernel tap k = (f, i, j) maps onto input pixel q = (n, ih, iw)."""
    kk = g[5] * g[6]
    f, r = k // kk, k % kk
    i, j = r // g[6], r % g[6]
    hw = g[2] * g[3]
    n, s = q // hw, q % hw
    th = s // g[3] + g[11] - i * g[13]  # = oh * stride_h if this tap touches the pixel
    tw = s % g[3] + g[12] - j * g[14]
    if th < 0 or tw < 0 or th % g[9] != 0 or tw % g[10] != 0:
        return 0.0
    oh, ow = th // g[9], tw // g[10]
    if oh >= g[7] or ow >= g[8]:
        return 0.0
    return gy[n, f, oh, ow]


@cuda.jit(device=True)
def _bwd_data_store(gx, unused, c, q, split, value, g):
    hw = g[2] * g[3]
    n, s = q // hw, q % hw
    gx[n, c, s // g[3], s % g[3]] = value


# grad-weight: gw (F x K) = gy (F x P) @ cols^T (P x K), one partial per split of P
@cuda.jit(device=True)
def _bwd_weight_a(gy, f, p, g):
    return _gy_at(gy, f, p, g)


@cuda.jit(device=True)
def _bwd_weight_b(x, p, k, g):
    return _x_col(x, k, p, g)


@cuda.jit(device=True)
def _bwd_weight_store(partial, unused, f, k, split, value, g):
    partial[split, f, k] = value


# --- the one kernel template ----------------------------------------------------------------------
def _tiled_matmul(load_a, load_b, store, dtype):
    """Compile C = A @ B for one pass; load_a/load_b/store are the pass's device functions.

    Launch with grid (ceil(Ncols / BN), ceil(M / BM), splits) and THREADS threads per block;
    block z reduces over K range [z * k_per_split, (z + 1) * k_per_split).
    """
    nb_dtype = numba.from_dtype(np.dtype(dtype))

    @cuda.jit
    def kernel(a_src, b_src, out, extra, m, ncols, k_total, k_per_split, g):
        a_tile = cuda.shared.array((BK, A_ROWS), nb_dtype)  # +1: no bank conflicts when filling
        b_tile = cuda.shared.array((BK, BN), nb_dtype)
        acc = cuda.local.array((TM, TN), nb_dtype)
        a_reg = cuda.local.array(TM, nb_dtype)
        b_reg = cuda.local.array(TN, nb_dtype)
        tid = cuda.threadIdx.x
        ty, tx = tid // COLS, tid % COLS
        row0, col0 = cuda.blockIdx.y * BM, cuda.blockIdx.x * BN
        k_begin = cuda.blockIdx.z * k_per_split
        k_end = min(k_total, k_begin + k_per_split)
        for i in range(TM):
            for j in range(TN):
                acc[i, j] = 0.0
        for k0 in range(k_begin, k_end, BK):
            for e in range(tid, BM * BK, THREADS):  # A slice: consecutive threads, consecutive k
                r, kk = e // BK, e % BK
                value = 0.0
                if row0 + r < m and k0 + kk < k_end:
                    value = load_a(a_src, row0 + r, k0 + kk, g)
                a_tile[kk, r] = value
            for e in range(tid, BK * BN, THREADS):  # B slice: consecutive threads, consecutive columns
                kk, c = e // BN, e % BN
                value = 0.0
                if col0 + c < ncols and k0 + kk < k_end:
                    value = load_b(b_src, k0 + kk, col0 + c, g)
                b_tile[kk, c] = value
            cuda.syncthreads()
            for kk in range(BK):
                for i in range(TM):
                    a_reg[i] = a_tile[kk, ty + i * ROWS]
                for j in range(TN):
                    b_reg[j] = b_tile[kk, tx + j * COLS]
                for i in range(TM):
                    for j in range(TN):
                        acc[i, j] += a_reg[i] * b_reg[j]
            cuda.syncthreads()
        for i in range(TM):
            for j in range(TN):
                row, col = row0 + ty + i * ROWS, col0 + tx + j * COLS
                if row < m and col < ncols:
                    store(out, extra, row, col, cuda.blockIdx.z, acc[i, j], g)

    return kernel


@functools.lru_cache(maxsize=None)
def _kernels(dtype):
    return {
        "forward": _tiled_matmul(_fwd_a, _fwd_b, _fwd_store, dtype),
        "backward_data": _tiled_matmul(_bwd_data_a, _bwd_data_b, _bwd_data_store, dtype),
        "backward_weight": _tiled_matmul(_bwd_weight_a, _bwd_weight_b, _bwd_weight_store, dtype),
    }


@cuda.jit
def _bias_grad(gy, gb, n, f_count, hw):
    """gb[f] = sum of gy[:, f]: one block per channel f; each thread sums a strided share of
    the channel's N*Ho*Wo values in a register, then the block adds its partial sums in
    shared memory (reduce.block_sum), and thread 0 writes the total."""
    partial = cuda.shared.array(BIAS_THREADS, numba.float64)
    f, tid = cuda.blockIdx.x, cuda.threadIdx.x
    total = 0.0
    for e in range(tid, n * hw, BIAS_THREADS):
        q = e % hw
        total += gy[e // hw, f, q // gy.shape[3], q % gy.shape[3]]
    total = block_sum(partial, total)
    if tid == 0:
        gb[f] = total


@cuda.jit
def conv2d_naive(x, w, y, g):
    """The readable first version: one thread per output value y[n, f, oh, ow], looping over
    all C*kh*kw taps and reading x and w straight from global memory (no reuse at all)."""
    idx = cuda.grid(1)
    n_, c_, h_, w_, f_, kh, kw, ho, wo = g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8]
    if idx >= n_ * f_ * ho * wo:
        return
    ow, oh = idx % wo, (idx // wo) % ho
    f, n = (idx // (wo * ho)) % f_, idx // (wo * ho * f_)
    total = 0.0
    for c in range(c_):
        for i in range(kh):
            for j in range(kw):
                ih = oh * g[9] - g[11] + i * g[13]
                iw = ow * g[10] - g[12] + j * g[14]
                if 0 <= ih < h_ and 0 <= iw < w_:
                    total += x[n, c, ih, iw] * w[f, c, i, j]
    y[n, f, oh, ow] = total


# --- host side: shapes, grids, launches -----------------------------------------------------------
def geometry(x_shape, w_shape, stride, padding, dilation):
    n, c, h, w = x_shape
    f, _, kh, kw = w_shape
    ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return tuple(int(v) for v in (n, c, h, w, f, kh, kw, ho, wo, *stride, *padding, *dilation))


def _split(k_total, splits):
    """(values per split, rounded to whole BK slices; the number of splits that leaves)."""
    k_per_split = max(BK, math.ceil(k_total / splits / BK) * BK)
    return k_per_split, math.ceil(k_total / k_per_split)


def _launch(kernel, a, b, out, extra, m, ncols, k_total, g, splits=1):
    k_per_split, splits = _split(k_total, splits)
    grid = (math.ceil(ncols / BN), math.ceil(m / BM), splits)
    kernels.launch(kernel, grid, THREADS, a, b, out, extra, m, ncols, k_total, k_per_split, g)


def forward(x, w, b, stride, padding, dilation):
    """Same as reference.conv2d.forward; returns (y, x): grad-weight re-gathers from x."""
    xp = get_array_module(x)
    g = geometry(x.shape, w.shape, stride, padding, dilation)
    n, c, _, _, f, kh, kw, ho, wo = g[:9]
    y = kernels.empty(xp, (n, f, ho, wo), x.dtype)
    bias = b if b is not None else xp.zeros(f, dtype=x.dtype)
    _launch(_kernels(x.dtype)["forward"], xp.ascontiguousarray(w).reshape(f, -1), x, y, bias,
            f, n * ho * wo, c * kh * kw, g)
    return y, x


def backward_data(gy, w, x_shape, stride, padding, dilation):
    xp = get_array_module(gy)
    g = geometry(x_shape, w.shape, stride, padding, dilation)
    n, c, h, wd, f, kh, kw = g[:7]
    gx = kernels.empty(xp, x_shape, gy.dtype)
    unused = kernels.empty(xp, 1, gy.dtype)  # (not gx twice: the simulator copies each argument back)
    _launch(_kernels(gy.dtype)["backward_data"], w, gy, gx, unused, c, n * h * wd, f * kh * kw, g)
    return gx


def backward_weight(gy, x, w_shape, stride, padding, dilation, splits=None):
    """Gradients for w and b; ``splits`` (default: by size) cuts the reduction for split-K."""
    xp = get_array_module(gy)
    g = geometry(x.shape, w_shape, stride, padding, dilation)
    n, c, _, _, f, kh, kw, ho, wo = g[:9]
    p, k = n * ho * wo, c * kh * kw
    if splits is None:  # enough blocks to fill a GPU, each still reducing >= 2048 values
        tiles = math.ceil(f / BM) * math.ceil(k / BN)
        splits = max(1, min(math.ceil(264 / tiles), p // 2048))
    partial = kernels.empty(xp, (_split(p, splits)[1], f, k), gy.dtype)
    unused = kernels.empty(xp, 1, gy.dtype)
    _launch(_kernels(gy.dtype)["backward_weight"], gy, x, partial, unused, f, k, p, g, splits)
    gb = kernels.empty(xp, f, gy.dtype)
    kernels.launch(_bias_grad, f, BIAS_THREADS, gy, gb, n, f, ho * wo)
    return partial.sum(axis=0).reshape(w_shape), gb


def forward_naive(x, w, b, stride, padding, dilation):
    """The naive kernel, for comparison (no bias: it is added here)."""
    xp = get_array_module(x)
    g = geometry(x.shape, w.shape, stride, padding, dilation)
    n, _, _, _, f, _, _, ho, wo = g[:9]
    y = kernels.empty(xp, (n, f, ho, wo), x.dtype)
    kernels.launch(conv2d_naive, math.ceil(y.size / 128), 128, x, w, y, g)
    if b is not None:
        y += b.reshape(1, f, 1, 1)
    return y

"""conv2d as Numba CUDA kernels: three passes, two tiled matrix-product kernels.

Read minicolor/reference/conv2d.py first: there, each pass of a convolution is one matrix
product over an im2col buffer. Here the same products run on the GPU *without* building
that buffer: each thread block computes one tile of the product and gathers the matrix
entries it needs straight from the NCHW tensors ("implicit GEMM").

    pass          C (M x Ncols)           = A^T (M x K)       @ B (K x Ncols)
    forward       y   (F x N*Ho*Wo)         w (F x C*kh*kw)     im2col(x), gathered
    grad-input    gx  (C x N*H*W)           w rearranged        gy at the pixels each tap reaches
    grad-weight   [gw|gb] (F x C*kh*kw+1)   gy (F x N*Ho*Wo)    [im2col(x)^T | 1]

Forward and grad-input are the *same* kernel, ``gather_gemm``: both gather B from a 4-D
tensor through a small per-launch table of taps (``_forward_taps``, ``_backward_data_plan``).
grad-weight reduces over pixels instead of taps and has its own kernel, ``weight_gemm``,
which also produces the bias gradient as one extra column of ones. Both kernels share the
structure below.

How one block computes its BM x BN tile of C (BM = BN = 128, 256 threads, float32):

    once per tile: each thread decodes the columns it will copy (output pixel -> image,
        row, column; or filter and tap -> offset) into registers: no division per value
    for s in 0 .. slices:                              (two shared buffers, s % 2 and the other)
        start the global loads of slice s (BK = 8 rows of A and of B) into registers
        multiply slice s - 1, from the other shared buffer   (the loads are in flight meanwhile:
        store the registers into shared buffer s % 2          "double buffering")
        syncthreads                                           (one barrier per slice)
    each thread writes its 8 x 8 results

The multiply of one slice, per thread and per step kk of the 8: read 8 values of A and 8
of B from shared memory (four 16-byte vector loads), then 64 multiply-adds into 64
accumulators held in registers ("register blocking": 16 reads feed 64 FMAs). Thread
(ty, tx) of the 16 x 16 thread grid owns rows ty*4 .. ty*4+3 and 64+ty*4 .. 64+ty*4+3 of
the tile, and the same pattern of columns: four consecutive values make one vector load.

What each choice saves (static figures from ptxas/nvdisasm for sm_90: docs/kernels.md):
- 1-D shared arrays indexed with unsigned 32-bit offsets, micro-tile loops with constant
  trip counts, two steps of a slice per loop iteration: every shared-memory address is a
  base register plus a constant, and the inner loop is 128 FFMA in 146 instructions.
- Per-tile decoding and the tap tables: the reduction loop does no integer division.
- Zero-padded A (rows up to a whole slice, columns up to a whole tile) and out-of-range
  "sentinel" taps: the loads of A need no bounds checks at all.
- Phases in grad-input: a stride-2 layer's gx splits into 4 interleaved sub-images, each
  reached by a fixed subset of the taps; one sub-problem per phase does no zero taps.
- Split-K in grad-weight: the reduction over pixels is cut into ranges, one per block
  along grid axis z, so a small F x K output still fills the GPU; partials are summed.
- The bias gradient as a column of ones in grad-weight: no bias kernel, no second pass over gy.

Small layers (the first conv with one input channel, the 2-channel regression head) have
few rows M: they use a thin 32 x 128 tile, so a block does not multiply mostly zero rows;
a product with few columns (the first conv's grad-weight: 9 taps + bias) uses a 32 x 32 tile.

Shared and local array sizes must be compile-time constants on a GPU (the simulator accepts
anything). Here they are computed in the Python function that builds each kernel
(``_gather_gemm``, ``_weight_gemm``) and captured by the kernel, which Numba freezes like a
module-level constant; an expression such as ``BM + 1`` inside the kernel would not compile.

``conv2d_naive`` (one thread per output, no shared memory) is the readable first version,
kept as a comparison point.
"""
import functools
import inspect
import math

import numba
import numpy as np
from numba import cuda

from minicolor.backend import get_array_module
import minicolor.kernels as kernels
from minicolor.kernels import SIMULATOR

u32 = numba.uint32  # array offsets: unsigned (no negative-index handling), 32-bit (cheap)
if SIMULATOR:  # numba.uint32(-1) raises in Python; on a GPU it wraps to 2**32 - 1, as here
    def u32(value):
        return np.uint32(int(value) & 0xFFFFFFFF)

# Tile shapes, (BM, BN, BK, TM, TN, VEC): a block computes BM x BN of C, walking the reduction
# BK rows at a time; each thread owns TM x TN results, read from shared memory VEC at a time.
WIDE = (128, 128, 8, 8, 8, 4)  # float32, big layers: 256 threads, 8 x 8 results each
WIDE64 = (64, 64, 8, 4, 4, 4)  # float64: 64 double accumulators would not fit in registers
THIN = (32, 128, 8, 4, 4, 4)  # M <= 32 rows (first layer, head): 256 threads, 4 x 4 each
SMALL = (32, 32, 8, 2, 2, 2)  # <= 32 columns (the first layer's grad-weight: 9 taps + bias)
if SIMULATOR:  # the same kernels with 16 threads on tiny tiles: small tests, many tiles
    WIDE = WIDE64 = (8, 8, 4, 2, 2, 2)
    THIN = (4, 16, 4, 2, 2, 2)
    SMALL = (4, 4, 4, 1, 1, 1)
PAD = 4  # shared rows are BM + PAD long: no bank conflicts in weight_gemm's stores, 16-byte aligned
OUTSIDE = -(1 << 20)  # a row offset that puts a tap far outside every image: it loads a zero
THREADS = {t: (t[0] // t[3]) * (t[1] // t[4]) for t in (WIDE, WIDE64, THIN, SMALL)}  # threads per block


def _jit_options(threads):
    """Launch bounds: at most ``threads`` per block and 2 blocks per SM, so ptxas keeps to 128
    registers a thread (weight_gemm would take 152 and fit 1 block). Not in the simulator, nor
    in the CUDA target built into numba (without the numba-cuda package), which lacks them."""
    if SIMULATOR or "launch_bounds" not in inspect.signature(cuda.jit).parameters:
        return {}
    return {"launch_bounds": (threads, 2)}


def _tiles(m, n, dtype):
    """The tile shape for a product C with m rows and n columns: no block multiplies mostly zeros."""
    if n <= SMALL[1]:
        return SMALL
    if m <= THIN[0]:
        return THIN
    return WIDE if np.dtype(dtype) == np.float32 else WIDE64


# --- the inner product of one slice, shared by both kernels ---------------------------------------
def _slice_multiplier(tiles, real):
    """Device function: acc += (BK x TM slice of A)^T (BK x TN slice of B) for one thread.

    ``a_sh`` / ``b_sh`` hold BK rows of BM + PAD (BN + PAD) values; ``a_at`` / ``b_at`` point
    at this thread's first value in row 0 and move down one row per step. In each step the
    thread reads TM values of A and TN of B into registers (VEC consecutive values at a time:
    one 16-byte LDS.128 for float32) and does TM * TN multiply-adds with them.

    The loops over the micro-tile have compile-time trip counts and constant offsets, so LLVM
    unrolls them completely. It does not unroll the loop over the BK steps (a body of 64 FFMA
    is too big for its heuristics), and a loop iteration costs about 10 instructions of
    counting, addressing and branching: hence two steps per iteration, written out as an
    inner loop of 2 that LLVM does unroll. For the 128 x 128 float32 tile that takes the loop
    from 78 instructions per 64 FFMA (82%) to 146 per 128 (88%); an inner loop of 4 or 8 is
    not unrolled. (The 2 x 2 body of the 32 x 32 tile is small: there LLVM unrolls all 8.)
    """
    bm, bn, bk, tm, tn, vec = tiles
    a_stride, b_stride = bm + PAD, bn + PAD
    a_group, b_group = (bm // tm) * vec, (bn // tn) * vec  # distance between a thread's groups

    @cuda.jit(device=True)
    def multiply_slice(a_sh, b_sh, a_at, b_at, acc, a_reg, b_reg):
        for _ in range(bk // 2):
            for _ in range(2):  # two steps per iteration of the loop above (see the docstring)
                for g in range(tm // vec):
                    for v in range(vec):
                        a_reg[g * vec + v] = a_sh[a_at + u32(g * a_group + v)]
                for g in range(tn // vec):
                    for v in range(vec):
                        b_reg[g * vec + v] = b_sh[b_at + u32(g * b_group + v)]
                a_at += u32(a_stride)
                b_at += u32(b_stride)
                for i in range(tm):
                    for j in range(tn):
                        acc[i * tn + j] += a_reg[i] * b_reg[j]

    return multiply_slice


# --- forward and grad-input: gather B through a tap table ----------------------------------------
@functools.lru_cache(maxsize=None)
def _gather_gemm(dtype, tiles):
    """Compile ``gather_gemm`` for one dtype and tile shape (see the kernel's docstring)."""
    real = numba.from_dtype(np.dtype(dtype))
    bm, bn, bk, tm, tn, vec = tiles
    rows, cols = bm // tm, bn // tn  # thread grid
    threads = rows * cols
    a_loads, b_loads = bk * bm // threads, bk * bn // threads  # values each thread copies per slice
    a_step, b_step = threads // bm, threads // bn  # slice rows between them
    a_stride, b_stride = bm + PAD, bn + PAD
    a_size, b_size = 2 * bk * a_stride, 2 * bk * b_stride  # two buffers
    acc_size, a_reg_size, b_reg_size = tm * tn, tm, tn
    multiply_slice = _slice_multiplier(tiles, real)

    @cuda.jit(**_jit_options(threads))
    def gather_gemm(a, b, out, bias, taps, phases, g):
        """C = A^T @ B for one phase (grid axis z) of forward or grad-input.

        a      (K_all x M_pad) flat: the rows of A^T, every phase's rows one after the other,
               zero-padded to whole slices and to whole tiles of columns (so: no checks)
        b      the tensor B is gathered from, flat: x (forward) or gy (grad-input)
        taps   (K_all x 3) flat int32: for row k of B, (offset, dr, dc): the value for the
               column whose pixel starts at (r0, c0) is b[pixel + offset] if 0 <= r0 + dr < HB
               and 0 <= c0 + dc < WB, else 0 (zero padding; OUTSIDE rows always give 0)
        phases (phases x 6) int32: first tap row, rows (a multiple of BK), and the phase's
               column grid: U x V pixels per image, written to out row u * OSU + OU, column
               v * OSV + OV
        g      (M, M_pad, N, HB, WB, B image size, SU, RU, SV, RV, OH, OW, OSU, OSV, use bias):
               column (n, u, v) reads B around (r0, c0) = (u * SU + RU, v * SV + RV)
        """
        a_sh = cuda.shared.array(a_size, real)
        b_sh = cuda.shared.array(b_size, real)
        acc = cuda.local.array(acc_size, real)
        a_reg = cuda.local.array(a_reg_size, real)
        b_reg = cuda.local.array(b_reg_size, real)
        a_next = cuda.local.array(a_loads, real)
        b_next = cuda.local.array(b_loads, real)
        m_count, m_pad, n_img, hb, wb, b_img = g[0], g[1], g[2], g[3], g[4], g[5]
        phase = cuda.blockIdx.z
        tap0, k_rows = phases[phase, 0], phases[phase, 1]
        u_count, v_count, ou, ov = phases[phase, 2], phases[phase, 3], phases[phase, 4], phases[phase, 5]
        ncols = n_img * u_count * v_count
        row0, col0 = cuda.blockIdx.y * bm, cuda.blockIdx.x * bn
        if col0 >= ncols:  # this phase has fewer columns than the largest one
            return
        tid = cuda.threadIdx.x

        # Once per tile. A: this thread copies column row0 + tid % BM, slice rows tid // BM + r * a_step.
        a_off = u32((tap0 + tid // bm) * m_pad + row0 + tid % bm)
        # B: column col0 + tid % BN; decode its pixel (n, u, v) -> where its window starts.
        col = col0 + tid % bn
        n, q = col // (u_count * v_count), col % (u_count * v_count)
        r0 = (q // v_count) * g[6] + g[7]
        c0 = (q % v_count) * g[8] + g[9]
        if col >= ncols:
            r0 = OUTSIDE  # a column past the end loads zeros
        pixel = n * b_img + r0 * wb + c0  # may be negative (padding): only used when inside
        tap = u32((tap0 + tid // bn) * 3)

        for i in range(acc_size):
            acc[i] = 0.0
        a_at, b_at = u32((tid // bm) * a_stride + tid % bm), u32((tid // bn) * b_stride + tid % bn)
        ty, tx = u32(tid // cols), u32(tid % cols)
        slices = k_rows // bk
        for s in range(slices + 1):
            buf = u32(s % 2)
            if s < slices:  # global loads of slice s: in flight during the multiply of slice s - 1
                for r in range(a_loads):
                    a_next[r] = a[a_off + u32(r * a_step * m_pad)]
                for r in range(b_loads):
                    t = tap + u32(r * b_step * 3)
                    rr, cc = r0 + taps[t + u32(1)], c0 + taps[t + u32(2)]
                    b_next[r] = 0.0
                    if u32(rr) < u32(hb) and u32(cc) < u32(wb):  # 0 <= rr < hb: negative rr wraps to >= 2**31
                        b_next[r] = b[u32(pixel + taps[t])]
                a_off += u32(bk * m_pad)
                tap += u32(bk * 3)
            if s > 0:  # multiply slice s - 1, from the buffer written in the previous step
                other = u32(1) - buf
                multiply_slice(a_sh, b_sh, other * u32(bk * a_stride) + ty * u32(vec),
                               other * u32(bk * b_stride) + tx * u32(vec), acc, a_reg, b_reg)
            if s < slices:  # nobody reads this buffer now: the barrier below ended its last use
                for r in range(a_loads):
                    a_sh[buf * u32(bk * a_stride) + a_at + u32(r * a_step * a_stride)] = a_next[r]
                for r in range(b_loads):
                    b_sh[buf * u32(bk * b_stride) + b_at + u32(r * b_step * b_stride)] = b_next[r]
            cuda.syncthreads()

        # Write the results: out[n, m, u * OSU + OU, v * OSV + OV] (+ bias[m]).
        oh, ow = g[10], g[11]
        for j in range(tn):
            col = col0 + (j // vec) * (cols * vec) + tx * vec + j % vec
            if col < ncols:
                n, q = col // (u_count * v_count), col % (u_count * v_count)
                spot = n * m_count * oh * ow + ((q // v_count) * g[12] + ou) * ow + (q % v_count) * g[13] + ov
                for i in range(tm):
                    m = row0 + (i // vec) * (rows * vec) + ty * vec + i % vec
                    if m < m_count:
                        value = acc[i * tn + j]
                        if g[14]:
                            value += bias[m]
                        out[spot + m * oh * ow] = value

    gather_gemm.tiles = tiles  # for the kernel report (minicolor/kernel_report.py): BK, TM, TN
    return gather_gemm


# --- grad-weight (and grad-bias): reduce over pixels, split-K -------------------------------------
@functools.lru_cache(maxsize=None)
def _weight_gemm(dtype, tiles):
    """Compile ``weight_gemm`` for one dtype and tile shape (see the kernel's docstring)."""
    real = numba.from_dtype(np.dtype(dtype))
    bm, bn, bk, tm, tn, vec = tiles
    rows, cols = bm // tm, bn // tn
    threads = rows * cols
    col_step = threads // bk  # tile columns between a thread's loads
    a_loads, b_loads = bm // col_step, bn // col_step
    a_stride, b_stride = bm + PAD, bn + PAD
    a_size, b_size = 2 * bk * a_stride, 2 * bk * b_stride
    acc_size, a_reg_size, b_reg_size = tm * tn, tm, tn
    multiply_slice = _slice_multiplier(tiles, real)

    @cuda.jit(**_jit_options(threads))
    def weight_gemm(gy, x, partial, taps, g):
        """partial[z] = gy (F x P) @ [im2col(x)^T | 1] (P x K+1) over block z's range of pixels.

        Column K of the result is the bias gradient: its B column is all ones, so the bias
        gradient costs no kernel launch of its own. The reduction runs over output pixels
        p = (n, oh, ow); in each slice of BK pixels thread t copies pixel t % BK, for the A
        columns (filters) and B columns (taps) t // BK + r * (threads / BK): one pixel decode
        (two 32-bit divisions) per thread per slice, and 8 consecutive threads read 8
        consecutive pixels. The filters' offsets f * Ho*Wo are computed once per tile; the
        taps' (offset, dr, dc) are read from the table in every slice (cached in L1), which
        keeps 12 registers free: 128 registers, 2 blocks per SM.

        taps   (K + 1 x 3) int32 flat: the forward tap table of x, then one OUTSIDE row
        g      (N, C, H, W, F, Ho, Wo, SH, SW, PH, PW, K, pixels per split)
        """
        a_sh = cuda.shared.array(a_size, real)
        b_sh = cuda.shared.array(b_size, real)
        acc = cuda.local.array(acc_size, real)
        a_reg = cuda.local.array(a_reg_size, real)
        b_reg = cuda.local.array(b_reg_size, real)
        a_next = cuda.local.array(a_loads, real)
        b_next = cuda.local.array(b_loads, real)
        f_off = cuda.local.array(a_loads, numba.uint32)
        f_ok = cuda.local.array(a_loads, numba.boolean)
        t_at = cuda.local.array(b_loads, numba.uint32)
        t_one = cuda.local.array(b_loads, real)
        c_count, h, w, f_count, ho, wo = g[1], g[2], g[3], g[4], g[5], g[6]
        k_total, per_split = g[11], g[12]
        hw_out = ho * wo
        p_total = g[0] * hw_out
        p_begin = cuda.blockIdx.z * per_split
        p_end = min(p_total, p_begin + per_split)
        row0, col0 = cuda.blockIdx.y * bm, cuda.blockIdx.x * bn
        tid = cuda.threadIdx.x
        kk = tid % bk  # the pixel of each slice this thread copies

        # Once per tile: where this thread's columns live.
        for r in range(a_loads):
            f = row0 + tid // bk + r * col_step
            f_ok[r] = f < f_count
            f_off[r] = u32(min(f, f_count - 1) * hw_out)
        for r in range(b_loads):
            k = col0 + tid // bk + r * col_step
            t_at[r] = u32(3 * min(k, k_total))  # row K of the table is an OUTSIDE tap
            t_one[r] = 1.0 if k == k_total else 0.0  # the bias column: ones

        for i in range(acc_size):
            acc[i] = 0.0
        a_at, b_at = u32(kk * a_stride + tid // bk), u32(kk * b_stride + tid // bk)
        ty, tx = u32(tid // cols), u32(tid % cols)
        slices = (p_end - p_begin + bk - 1) // bk
        for s in range(slices + 1):
            buf = u32(s % 2)
            if s < slices:  # global loads of slice s (stored after the multiply of slice s - 1)
                p = p_begin + s * bk + kk
                n, q = numba.int32(u32(p) // u32(hw_out)), u32(p) % u32(hw_out)  # 32-bit division: cheaper
                oh, ow = numba.int32(q // u32(wo)), numba.int32(q % u32(wo))
                gy_at = u32(n * f_count * hw_out + q)
                r0, c0 = oh * g[7] - g[9], ow * g[8] - g[10]
                if p >= p_end:
                    r0, gy_at = OUTSIDE, u32(0)
                x_at = n * c_count * h * w + r0 * w + c0
                for r in range(a_loads):
                    a_next[r] = 0.0
                    if f_ok[r] and p < p_end:
                        a_next[r] = gy[gy_at + f_off[r]]
                for r in range(b_loads):
                    t = t_at[r]  # the tap table is small: these loads hit the L1 cache
                    rr, cc = r0 + taps[t + u32(1)], c0 + taps[t + u32(2)]
                    b_next[r] = t_one[r]
                    if u32(rr) < u32(h) and u32(cc) < u32(w):  # 0 <= rr < h, one unsigned comparison
                        b_next[r] = x[u32(x_at + taps[t])]
            if s > 0:
                other = u32(1) - buf
                multiply_slice(a_sh, b_sh, other * u32(bk * a_stride) + ty * u32(vec),
                               other * u32(bk * b_stride) + tx * u32(vec), acc, a_reg, b_reg)
            if s < slices:
                for r in range(a_loads):
                    a_sh[buf * u32(bk * a_stride) + a_at + u32(r * col_step)] = a_next[r]
                for r in range(b_loads):
                    b_sh[buf * u32(bk * b_stride) + b_at + u32(r * col_step)] = b_next[r]
            cuda.syncthreads()

        out_cols = k_total + 1
        for i in range(tm):
            f = row0 + (i // vec) * (rows * vec) + ty * vec + i % vec
            if f < f_count:
                for j in range(tn):
                    k = col0 + (j // vec) * (cols * vec) + tx * vec + j % vec
                    if k < out_cols:
                        partial[(cuda.blockIdx.z * f_count + f) * out_cols + k] = acc[i * tn + j]

    weight_gemm.tiles = tiles  # for the kernel report
    return weight_gemm


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


# --- host side: tables, shapes, grids, launches ---------------------------------------------------
def geometry(x_shape, w_shape, stride, padding, dilation):
    n, c, h, w = x_shape
    f, _, kh, kw = w_shape
    ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return tuple(int(v) for v in (n, c, h, w, f, kh, kw, ho, wo, *stride, *padding, *dilation))


def _round_up(value, multiple):
    return -(-value // multiple) * multiple


def _check_32bit(*arrays):
    for a in arrays:
        if a.size >= 2**31:
            raise ValueError(f"conv2d kernels: arrays must have fewer than 2**31 elements (32-bit offsets), "
                             f"got shape {tuple(a.shape)}")


def _forward_taps(g):
    """The tap table of x, one row (offset, dr, dc) per row k = (c, i, j) of im2col(x)."""
    _, c, h, w, _, kh, kw = g[:7]
    dh, dw = g[13], g[14]
    cc, ii, jj = np.meshgrid(np.arange(c), np.arange(kh) * dh, np.arange(kw) * dw, indexing="ij")
    return np.stack([cc * h * w + ii * w + jj, ii, jj], axis=-1).reshape(-1, 3)


def _pad_taps(taps, bk):
    """Append OUTSIDE taps up to a whole slice: padding rows load zeros without a check."""
    extra = _round_up(len(taps), bk) - len(taps)
    return np.concatenate([taps, np.tile([[0, OUTSIDE, 0]], (extra, 1))]).astype(np.int32)


def _backward_data_plan(g, bk):
    """grad-input, split by stride phase: per phase, its taps and which rows of w they use.

    Input row ih is reached by kernel row i from output row oh = (ih + ph - i*dh) / sh, which
    must be a whole number: so the rows ih with (ih + ph) % sh == rh (phase rh) are reached
    exactly by the kernel rows i with (i * dh) % sh == rh, from oh = a + shift(i) when
    ih = start + a * sh. The same holds for columns. One phase (rh, rw) is then a matrix
    product with K = F * (its taps): no tap ever lands between two outputs (a zero).

    Returns (taps (rows x 3), a_rows (rows,) index into w as (kh*kw*F) rows of C, -1 = padding,
    phases (sh*sw x 6)): see gather_gemm.
    """
    _, _, h, w, f, kh, kw, ho, wo, sh, sw, ph, pw, dh, dw = g
    taps, a_rows, phases = [], [], []

    def axis_phase(r, size, stride, pad, dil, k):
        start = (r - pad) % stride
        shifts = [(i, (start + pad - i * dil) // stride) for i in range(k) if (i * dil) % stride == r]
        return start, len(range(start, size, stride)), shifts

    for rh in range(sh):
        start_h, count_h, shifts_h = axis_phase(rh, h, sh, ph, dh, kh)
        for rw in range(sw):
            start_w, count_w, shifts_w = axis_phase(rw, w, sw, pw, dw, kw)
            first = len(taps)
            for i, dr in shifts_h:
                for j, dc in shifts_w:
                    for fi in range(f):
                        taps.append((fi * ho * wo + dr * wo + dc, dr, dc))
                        a_rows.append((i * kw + j) * f + fi)
            extra = _round_up(len(taps) - first, bk) - (len(taps) - first)
            taps += [(0, OUTSIDE, 0)] * extra
            a_rows += [-1] * extra
            phases.append((first, len(taps) - first, count_h, count_w, start_h, start_w))
    return (np.array(taps, np.int32).reshape(-1, 3), np.array(a_rows, np.int64),
            np.array(phases, np.int32))


@functools.lru_cache(maxsize=64)
def _tables(kind, g, bk, xp):
    """The per-launch tables, built once per geometry and kept on the device (xp: numpy or cupy)."""
    if kind == "forward":  # one phase: all of y
        taps = _pad_taps(_forward_taps(g), bk)
        return xp.asarray(taps.ravel()), xp.asarray(np.array([[0, len(taps), g[7], g[8], 0, 0]], np.int32))
    if kind == "weight":  # one OUTSIDE row after the last tap, for the bias column and beyond
        taps = _forward_taps(g)
        return xp.asarray(_pad_taps(taps, len(taps) + 1).ravel())
    taps, a_rows, phases = _backward_data_plan(g, bk)
    valid = np.flatnonzero(a_rows >= 0)
    return xp.asarray(taps.ravel()), xp.asarray(valid), xp.asarray(a_rows[valid]), xp.asarray(phases)


def forward(x, w, b, stride, padding, dilation):
    """Same as reference.conv2d.forward; returns (y, x): grad-weight re-gathers from x."""
    xp = get_array_module(x)
    g = geometry(x.shape, w.shape, stride, padding, dilation)
    n, c, h, wd, f, kh, kw, ho, wo, sh, sw, ph, pw = g[:13]
    tiles = _tiles(f, n * ho * wo, x.dtype)
    bm, bn, bk = tiles[:3]
    k, m_pad = c * kh * kw, _round_up(f, bm)
    a = xp.zeros((_round_up(k, bk), m_pad), dtype=x.dtype)  # A^T = w as (K x F), zero-padded
    a[:k, :f] = w.reshape(f, k).T
    taps, phases = _tables("forward", g, bk, xp)
    y = kernels.empty(xp, (n, f, ho, wo), x.dtype)
    _check_32bit(x, y)
    bias = xp.ascontiguousarray(b) if b is not None else kernels.empty(xp, 1, x.dtype)  # (unread)
    params = (f, m_pad, n, h, wd, c * h * wd, sh, -ph, sw, -pw, ho, wo, 1, 1, int(b is not None))
    grid = (math.ceil(n * ho * wo / bn), m_pad // bm, 1)
    kernel = _gather_gemm(x.dtype, tiles)
    kernels.launch(kernel, grid, THREADS[tiles], a.reshape(-1), xp.ascontiguousarray(x).ravel(),
                   y.reshape(-1), bias, taps, phases, params)
    return y, x


def backward_data(gy, w, x_shape, stride, padding, dilation):
    """gx, one sub-problem per stride phase (grid axis z): see _backward_data_plan."""
    xp = get_array_module(gy)
    g = geometry(x_shape, w.shape, stride, padding, dilation)
    n, c, h, wd, f, kh, kw, ho, wo, sh, sw = g[:11]
    most_columns = n * math.ceil(h / sh) * math.ceil(wd / sw)  # in the largest phase
    tiles = _tiles(c, most_columns, gy.dtype)
    bm, bn, bk = tiles[:3]
    taps, valid, a_rows, phases = _tables("backward_data", g, bk, xp)
    m_pad = _round_up(c, bm)
    a = xp.zeros((taps.size // 3, m_pad), dtype=gy.dtype)  # rows of w^T for every phase's taps
    a[valid, :c] = xp.ascontiguousarray(w.transpose(2, 3, 0, 1)).reshape(kh * kw * f, c)[a_rows]
    gx = kernels.empty(xp, x_shape, gy.dtype)
    _check_32bit(gx, gy)
    unused = kernels.empty(xp, 1, gy.dtype)  # no bias (not gx twice: the simulator copies arguments back)
    params = (c, m_pad, n, ho, wo, f * ho * wo, 1, 0, 1, 0, h, wd, sh, sw, 0)
    grid = (math.ceil(most_columns / bn), m_pad // bm, sh * sw)
    kernel = _gather_gemm(gy.dtype, tiles)
    kernels.launch(kernel, grid, THREADS[tiles], a.reshape(-1), xp.ascontiguousarray(gy).ravel(),
                   gx.reshape(-1), unused, taps, phases, params)
    return gx


def backward_weight(gy, x, w_shape, stride, padding, dilation, splits=None):
    """Gradients for w and b, from one kernel; ``splits`` (default: by size) cuts the reduction."""
    xp = get_array_module(gy)
    g = geometry(x.shape, w_shape, stride, padding, dilation)
    n, c, h, wd, f, kh, kw, ho, wo, sh, sw, ph, pw = g[:13]
    p, k = n * ho * wo, c * kh * kw
    tiles = _tiles(f, k + 1, gy.dtype)
    bm, bn, bk = tiles[:3]
    if splits is None:  # enough blocks to fill an H100 (2 per SM on 132 SMs), each reducing >= 512 pixels
        tiles_count = math.ceil(f / bm) * math.ceil((k + 1) / bn)
        splits = max(1, min(math.ceil(264 / tiles_count), p // 512))
    per_split = _round_up(math.ceil(p / splits), bk)
    splits = math.ceil(p / per_split)
    partial = kernels.empty(xp, (splits, f, k + 1), gy.dtype)
    _check_32bit(gy, x, partial)
    params = (n, c, h, wd, f, ho, wo, sh, sw, ph, pw, k, per_split)
    grid = (math.ceil((k + 1) / bn), math.ceil(f / bm), splits)
    kernel = _weight_gemm(gy.dtype, tiles)
    kernels.launch(kernel, grid, THREADS[tiles], xp.ascontiguousarray(gy).ravel(),
                   xp.ascontiguousarray(x).ravel(), partial.reshape(-1), _tables("weight", g, bk, xp), params)
    total = partial[0] if splits == 1 else partial.sum(axis=0)
    return xp.ascontiguousarray(total[:, :k]).reshape(w_shape), xp.ascontiguousarray(total[:, k])


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

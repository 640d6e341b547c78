"""conv2d, version "tiled": every pass as one tiled matrix product (implicit GEMM).

Read conv2d_naive.py first: there one thread computes one output and reads every input it
needs from global memory, 8 bytes per multiply-add. Here a block of 256 threads computes a
128 x 128 tile of a matrix product C = A^T @ B, copying slices of A and B into shared memory
once and using each copied value 128 times from there; each thread keeps its 8 x 8 results
in registers. The matrices are those of minicolor/reference/conv2d.py, but the im2col buffer
is never built: the block gathers the entries of B it needs straight from the NCHW tensors.

    pass          C (M x Ncols)           = A^T (M x K)       @ B (K x Ncols)         kernel
    forward       y   (F x N*Ho*Wo)         w (F x C*kh*kw)     im2col(x), gathered     gather_gemm
    grad-input    gx  (C x N*H*W)           w rearranged        gy where each tap lands gather_gemm
    grad-weight   [gw|gb] (F x C*kh*kw+1)   gy (F x N*Ho*Wo)    [im2col(x)^T | 1]       weight_gemm

Forward and grad-input are the same kernel, ``gather_gemm``: both gather B from a 4-D tensor
through a small table of taps built once per geometry on the host. grad-weight reduces over
pixels instead of taps and has its own kernel, ``weight_gemm``. Both run the same loop:

    once per tile: each thread decodes the columns it copies (pixel -> image, row, column)
    for s in 0 .. slices:                      (two shared buffers: s % 2 and the other)
        start the global loads of slice s (BK = 8 rows of A and of B) into registers
        multiply slice s - 1 from the other buffer (the loads are in flight meanwhile)
        store the registers into buffer s % 2
        syncthreads                            (one barrier per slice)
    each thread writes its 8 x 8 results

What each idea saves: static figures of ``minicolor kernels`` (ptxas and nvdisasm for sm_90,
float32, 128 x 128 tile); docs/kernels.md has the tables and the steps that led to them.
- Shared memory and register blocking: per step of a slice a thread reads 8 values of A and 8
  of B (four 16-byte loads) and does 64 multiply-adds; the naive kernel does 2 global loads
  per multiply-add. Inner loop: 128 FFMA in 146 instructions (87.7%).
- Two steps of a slice per loop iteration: the loop overhead is paid half as often (the
  inner loop went from 82% to 88% FFMA).
- Per-tile decoding and the tap tables: no integer division in the reduction loop (the first
  tiled version spent 12.6 instructions per multiply-add, mostly on 64-bit division).
- 1-D shared arrays with unsigned 32-bit offsets: every shared address is a register plus a
  constant (2-D signed indexing made the inner loop 34% FFMA).
- Zero-padded A and out-of-range "sentinel" taps: no bounds checks in the loads of A.
- Stride phases in grad-input: a stride-2 layer's gx splits into 4 sub-images, each reached by
  a fixed subset of the taps; no multiply-add on a tap that lands between two outputs (3 of 4
  of them with stride 2).
- Split-K in grad-weight: the reduction over pixels is cut into ranges, one per block along
  grid axis z, so a small F x K output still fills the GPU.
- The bias gradient as a column of ones in grad-weight: no bias kernel, no second pass over gy.
- Write-out through constant indices: the 64 accumulators stay in registers to the end
  (indexing them with a loop variable put them in a 256-byte stack frame in local memory).

Tile shapes (``choose_tile``): 128 x 128 for big products; 64 x 64 in float64 (64 double
accumulators do not fit in registers) and in float32 when 128 x 128 tiles would leave the
GPU's 132 SMs mostly idle (the late layers at batch 1); 32 x 128 for products with few rows
(the first conv, the regression head), 32 x 32 for few columns (the first conv's grad-weight).

Shared and local array sizes must be compile-time constants on a GPU (the simulator accepts
anything). They are computed in the Python function that builds each kernel (``_gather_gemm``,
``_weight_gemm``) and captured by the kernel, which Numba freezes like a module-level
constant; an expression such as ``BM + 1`` inside the kernel would not compile.
"""
import functools
import inspect
import math
from typing import NamedTuple

import numba
import numpy as np
from numba import cuda

import minicolor.kernels as kernels
from minicolor.backend import get_array_module
from minicolor.kernels import SIMULATOR
from minicolor.kernels.conv2d import check_32bit, geometry, pass_examples

u32 = numba.uint32  # array offsets: unsigned (no negative-index handling), 32-bit (cheap)
if SIMULATOR:  # numba.uint32(-1) raises in Python; on a GPU it wraps to 2**32 - 1, as here
    def u32(value):
        return np.uint32(int(value) & 0xFFFFFFFF)


class Tile(NamedTuple):
    """A block computes bm x bn of C, walking the reduction bk rows (a slice) at a time; each
    thread owns tm x tn results, read from shared memory vec values at a time."""
    bm: int
    bn: int
    bk: int
    tm: int
    tn: int
    vec: int

    @property
    def threads(self):
        return (self.bm // self.tm) * (self.bn // self.tn)


WIDE = Tile(128, 128, 8, 8, 8, 4)  # float32, big products: 256 threads, 8 x 8 results each
MEDIUM = Tile(64, 64, 8, 4, 4, 4)  # float64 always; float32 when WIDE gives too few blocks
THIN = Tile(32, 128, 8, 4, 4, 4)  # M <= 32 rows (first layer, head): 256 threads, 4 x 4 each
SMALL = Tile(32, 32, 8, 2, 2, 2)  # <= 32 columns (the first layer's grad-weight: 9 taps + bias)
if SIMULATOR:  # the same kernels with 16 threads on tiny tiles: small tests, many tiles
    WIDE = MEDIUM = Tile(8, 8, 4, 2, 2, 2)
    THIN = Tile(4, 16, 4, 2, 2, 2)
    SMALL = Tile(4, 4, 4, 1, 1, 1)
PAD = 4  # shared rows are BM + PAD long: no bank conflicts in weight_gemm's stores, 16-byte aligned
OUTSIDE = -(1 << 20)  # a row offset that puts a tap far outside every image: it loads a zero
SMS = 132  # streaming multiprocessors of an H100 or H200


def choose_tile(m, n, dtype, phases=1):
    """The tile for a product C with m rows and n columns, in ``phases`` independent parts
    (grad-input's stride phases; None: the launcher splits the reduction to fill the GPU).

    No block multiplies mostly zeros (THIN, SMALL), and the GPU gets at least one block per
    SM where the product allows: at batch 1, a 28 x 28 x 512 layer of the width-64 network
    has 4 x 7 = 28 blocks of 128 x 128 on 132 SMs, and 8 x 13 = 104 of 64 x 64.
    """
    if n <= SMALL.bn:
        return SMALL
    if m <= THIN.bm:
        return THIN
    if np.dtype(dtype) != np.float32:
        return MEDIUM

    def blocks(tile):
        return math.ceil(m / tile.bm) * math.ceil(n / tile.bn) * phases

    return WIDE if phases is None or blocks(WIDE) >= SMS else MEDIUM


def _jit_options(tile):
    """On-disk cache (``cache=True``: a process loads the compiled kernel instead of compiling
    it again) and launch bounds: at most ``tile.threads`` per block and 2 blocks per SM, so
    ptxas keeps to 128 registers a thread (weight_gemm would take 152 and fit 1 block). No
    launch bounds in the simulator, nor in the CUDA target built into numba (without the
    numba-cuda package), which lacks them."""
    if SIMULATOR or "launch_bounds" not in inspect.signature(cuda.jit).parameters:
        return {"cache": True}
    return {"cache": True, "launch_bounds": (tile.threads, 2)}


# --- device functions shared by both kernels ------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _tile_pieces(tile):
    """The device functions both kernels of one tile shape call: multiply a slice, zero the results."""
    bm, bn, bk, tm, tn, vec = tile
    a_stride, b_stride = bm + PAD, bn + PAD
    a_group, b_group = (bm // tm) * vec, (bn // tn) * vec  # distance between a thread's groups

    @cuda.jit(device=True)
    def multiply_slice(a_sh, b_sh, a_at, b_at, acc, a_reg, b_reg):
        """acc += (BK x TM slice of A)^T (BK x TN slice of B), for one thread.

        ``a_at`` / ``b_at`` point at this thread's first value in row 0 of the slice and move
        down one row per step. Per step the thread reads TM values of A and TN of B into
        registers (VEC consecutive values at a time: one 16-byte LDS.128 in float32) and does
        TM * TN multiply-adds with them ("register blocking": 16 reads feed 64 FMAs).

        The loops over the micro-tile have constant trip counts and offsets, so LLVM unrolls
        them completely. It does not unroll the loop over the BK steps (a body of 64 FFMA is
        too big for its heuristics), and each iteration costs about 10 instructions of
        counting, addressing and branching: hence two steps per iteration, written as an
        inner loop of 2 that LLVM does unroll. For the 128 x 128 tile that takes the loop from
        78 instructions per 64 FFMA (82%) to 146 per 128 (88%); an inner loop of 4 or 8 is
        not unrolled. (The 2 x 2 body of the 32 x 32 tile is small: there LLVM unrolls all 8.)
        """
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

    @cuda.jit(device=True)
    def zero(acc):
        for i in range(tm * tn):
            acc[i] = 0.0

    return multiply_slice, zero


# --- forward and grad-input: gather B through a tap table ----------------------------------------
@functools.lru_cache(maxsize=None)
def _gather_gemm(dtype, tile):
    """Build ``gather_gemm`` for one dtype and tile shape (see the kernel's docstring)."""
    real = numba.from_dtype(np.dtype(dtype))
    bm, bn, bk, tm, tn, vec = tile
    rows, cols = bm // tm, bn // tn  # the thread grid
    threads = rows * cols
    a_loads, b_loads = bk * bm // threads, bk * bn // threads  # values each thread copies per slice
    a_step, b_step = threads // bm, threads // bn  # slice rows between them
    a_stride, b_stride = bm + PAD, bn + PAD
    a_size, b_size = 2 * bk * a_stride, 2 * bk * b_stride  # two buffers each
    acc_size = tm * tn
    multiply_slice, zero = _tile_pieces(tile)

    @cuda.jit(device=True)
    def gather_b(b, taps, tap, r0, c0, pixel, b_height, b_width, b_next):
        """Load this thread's values of B for one slice: for each slice row it copies, the
        tap (offset, dr, dc) says where the value is, relative to the column's pixel; a tap
        outside the image (padding, or an OUTSIDE row) loads a zero."""
        for r in range(b_loads):
            t = tap + u32(r * b_step * 3)
            row, col = r0 + taps[t + u32(1)], c0 + taps[t + u32(2)]
            b_next[r] = 0.0
            if u32(row) < u32(b_height) and u32(col) < u32(b_width):  # a negative row wraps past 2**31
                b_next[r] = b[u32(pixel + taps[t])]

    @cuda.jit(device=True)
    def write_tile(out, bias, acc, row0, col0, ty, tx, ncols, u_count, v_count, ou, ov, m_count,
                   out_height, out_width, out_row_step, out_col_step, has_bias):
        """out[n, m, u * out_row_step + ou, v * out_col_step + ov] = result (+ bias[m]).

        The columns are decoded first, into ``spots``; the loops that read ``acc`` then only add
        and store, so LLVM unrolls them and every index into ``acc`` is a constant: the results
        stay in registers. With the decoding inside the loop over columns, that loop was too
        big to unroll, and the 64 results of the 128 x 128 tile went to a 256-byte stack frame
        in local memory (48 STL.128 and 16 LDL per tile).
        """
        plane = out_height * out_width
        spots = cuda.local.array(tn, numba.int64)  # where column j of this thread's results goes
        for j in range(tn):
            col = col0 + (j // vec) * (cols * vec) + tx * vec + j % vec
            n, q = col // (u_count * v_count), col % (u_count * v_count)
            spots[j] = (n * m_count * plane + ((q // v_count) * out_row_step + ou) * out_width
                        + (q % v_count) * out_col_step + ov)
            if col >= ncols:
                spots[j] = -1  # past the last column: not written
        for i in range(tm):  # these loops only add and store: LLVM unrolls them, every acc index is constant
            m = row0 + (i // vec) * (rows * vec) + ty * vec + i % vec
            if m < m_count:
                add = bias[m] if has_bias else out.dtype.type(0)
                for j in range(tn):
                    if spots[j] >= 0:
                        out[spots[j] + m * plane] = acc[i * tn + j] + add

    @cuda.jit(**_jit_options(tile))
    def gather_gemm(a, b, out, bias, taps, phases,
                    m_count,         # rows of C: output channels (F forward, C grad-input)
                    m_pad,           # row length of a: m_count rounded up to whole tiles
                    images,          # N
                    b_height,        # height of the tensor B is gathered from (x: H, gy: Ho)
                    b_width,         # its width
                    b_image,         # values per image of that tensor (channels x height x width)
                    row_step,        # column (n, u, v) reads B around row u * row_step + row_shift
                    row_shift,       #   (forward: stride_h and -pad_h; grad-input: 1 and 0)
                    col_step,        # ... and column v * col_step + col_shift
                    col_shift,       #   (forward: stride_w and -pad_w; grad-input: 1 and 0)
                    out_height,      # height of the output tensor (y: Ho, gx: H)
                    out_width,       # its width
                    out_row_step,    # column (n, u, v) writes output row u * out_row_step + ou
                    out_col_step,    # ... and output column v * out_col_step + ov
                    has_bias):       # add bias[m] to row m (forward)
        """C = A^T @ B for one phase (grid axis z) of forward or grad-input.

        a      (K_all x m_pad) flat: the rows of A^T, every phase's rows one after the other,
               zero-padded to whole slices and to whole tiles of columns (so: no checks)
        b      the tensor B is gathered from, flat: x (forward) or gy (grad-input)
        out    the output tensor, flat: y (forward) or gx (grad-input)
        bias   (m_count,) read only if has_bias
        taps   (K_all x 3) flat int32: for row k of B, (offset, dr, dc): the value for the
               column whose window starts at (r0, c0) is b[pixel + offset] if 0 <= r0 + dr <
               b_height and 0 <= c0 + dc < b_width, else 0 (zero padding; OUTSIDE rows give 0)
        phases (phases x 6) int32: first tap row, rows (a multiple of BK), and the phase's
               grid of columns: U x V pixels per image, written at offsets (ou, ov)
        """
        a_sh = cuda.shared.array(a_size, real)
        b_sh = cuda.shared.array(b_size, real)
        acc = cuda.local.array(acc_size, real)
        a_reg = cuda.local.array(tm, real)
        b_reg = cuda.local.array(tn, real)
        a_next = cuda.local.array(a_loads, real)
        b_next = cuda.local.array(b_loads, real)
        phase = cuda.blockIdx.z
        tap0, k_rows = phases[phase, 0], phases[phase, 1]
        u_count, v_count, ou, ov = phases[phase, 2], phases[phase, 3], phases[phase, 4], phases[phase, 5]
        ncols = images * u_count * v_count
        row0, col0 = cuda.blockIdx.y * bm, cuda.blockIdx.x * bn
        if col0 >= ncols:  # this phase has fewer columns than the largest one
            return
        tid = cuda.threadIdx.x

        # Once per tile. A: this thread copies column row0 + tid % BM, slice rows tid // BM + r * a_step.
        a_off = u32((tap0 + tid // bm) * m_pad + row0 + tid % bm)
        # B: column col0 + tid % BN; decode its pixel (n, u, v) -> where its window starts.
        col = col0 + tid % bn
        n, q = col // (u_count * v_count), col % (u_count * v_count)
        r0 = (q // v_count) * row_step + row_shift
        c0 = (q % v_count) * col_step + col_shift
        if col >= ncols:
            r0 = OUTSIDE  # a column past the end loads zeros
        pixel = n * b_image + r0 * b_width + c0  # may be negative (padding): only used when inside
        tap = u32((tap0 + tid // bn) * 3)

        zero(acc)
        a_at, b_at = u32((tid // bm) * a_stride + tid % bm), u32((tid // bn) * b_stride + tid % bn)
        ty, tx = u32(tid // cols), u32(tid % cols)
        slices = k_rows // bk
        for s in range(slices + 1):
            buf = u32(s % 2)
            if s < slices:  # global loads of slice s: in flight during the multiply of slice s - 1
                for r in range(a_loads):
                    a_next[r] = a[a_off + u32(r * a_step * m_pad)]
                gather_b(b, taps, tap, r0, c0, pixel, b_height, b_width, b_next)
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

        write_tile(out, bias, acc, row0, col0, ty, tx, ncols, u_count, v_count, ou, ov, m_count,
                   out_height, out_width, out_row_step, out_col_step, has_bias)

    gather_gemm.tiles = tile  # for the kernel report (minicolor/tools/kernel_report.py): BK, TM, TN
    return gather_gemm


# --- grad-weight (and grad-bias): reduce over pixels, split-K -------------------------------------
@functools.lru_cache(maxsize=None)
def _weight_gemm(dtype, tile):
    """Build ``weight_gemm`` for one dtype and tile shape (see the kernel's docstring)."""
    real = numba.from_dtype(np.dtype(dtype))
    bm, bn, bk, tm, tn, vec = tile
    rows, cols = bm // tm, bn // tn
    threads = rows * cols
    col_step = threads // bk  # tile columns between a thread's loads
    a_loads, b_loads = bm // col_step, bn // col_step
    a_stride, b_stride = bm + PAD, bn + PAD
    a_size, b_size = 2 * bk * a_stride, 2 * bk * b_stride
    acc_size = tm * tn
    multiply_slice, zero = _tile_pieces(tile)

    @cuda.jit(device=True)
    def write_tile(partial, acc, row0, col0, ty, tx, f_count, out_cols):
        """partial[z, f, k] = result, for the rows f < F and columns k < K + 1 of this tile."""
        for i in range(tm):
            f = row0 + (i // vec) * (rows * vec) + ty * vec + i % vec
            if f < f_count:
                for j in range(tn):
                    k = col0 + (j // vec) * (cols * vec) + tx * vec + j % vec
                    if k < out_cols:
                        partial[(cuda.blockIdx.z * f_count + f) * out_cols + k] = acc[i * tn + j]

    @cuda.jit(**_jit_options(tile))
    def weight_gemm(gy, x, partial, taps,
                    x_image,         # C * H * W: values per image of x
                    height,          # H, of x
                    width,           # W
                    filters,         # F
                    out_height,      # Ho, of gy
                    out_width,       # Wo
                    stride_h,        # forward's stride and zero padding: output pixel (oh, ow)
                    stride_w,        #   read input rows from oh * stride_h - pad_h
                    pad_h,           #   and input columns from ow * stride_w - pad_w
                    pad_w,           #   (the taps add the dilated kernel offsets)
                    k_total,         # C * kh * kw: the columns of gw (then one of gb)
                    pixels,          # N * Ho * Wo: the length of the reduction
                    per_split):      # pixels reduced by one block (grid axis z picks the range)
        """partial[z] = gy (F x P) @ [im2col(x)^T | 1] (P x K+1) over block z's range of pixels.

        gy      (N, F, Ho, Wo) flat
        x       (N, C, H, W) flat
        partial (splits x F x K+1) flat: one partial [gw | gb] per split, summed on the host
        taps    (K + 1 x 3) int32 flat: the forward tap table of x, then one OUTSIDE row

        Column K of the result is the bias gradient: its B column is all ones, so the bias
        gradient costs no kernel launch of its own. In each slice of BK pixels thread t copies
        pixel t % BK, for the A columns (filters) and B columns (taps) t // BK + r * (threads
        / BK): one pixel decode (two 32-bit divisions) per thread per slice, and 8 consecutive
        threads read 8 consecutive pixels. The filters' offsets f * Ho*Wo are computed once per
        tile; the taps' (offset, dr, dc) are read from the table in every slice (cached in L1),
        which keeps 12 registers free: 128 registers, 2 blocks per SM.
        """
        a_sh = cuda.shared.array(a_size, real)
        b_sh = cuda.shared.array(b_size, real)
        acc = cuda.local.array(acc_size, real)
        a_reg = cuda.local.array(tm, real)
        b_reg = cuda.local.array(tn, real)
        a_next = cuda.local.array(a_loads, real)
        b_next = cuda.local.array(b_loads, real)
        f_off = cuda.local.array(a_loads, numba.uint32)
        f_ok = cuda.local.array(a_loads, numba.boolean)
        t_at = cuda.local.array(b_loads, numba.uint32)
        t_one = cuda.local.array(b_loads, real)
        hw_out = out_height * out_width
        p_begin = cuda.blockIdx.z * per_split
        p_end = min(pixels, p_begin + per_split)
        row0, col0 = cuda.blockIdx.y * bm, cuda.blockIdx.x * bn
        tid = cuda.threadIdx.x
        kk = tid % bk  # the pixel of each slice this thread copies

        # Once per tile: where this thread's columns live.
        for r in range(a_loads):
            f = row0 + tid // bk + r * col_step
            f_ok[r] = f < filters
            f_off[r] = u32(min(f, filters - 1) * hw_out)
        for r in range(b_loads):
            k = col0 + tid // bk + r * col_step
            t_at[r] = u32(3 * min(k, k_total))  # row K of the table is an OUTSIDE tap
            t_one[r] = 1.0 if k == k_total else 0.0  # the bias column: ones

        zero(acc)
        a_at, b_at = u32(kk * a_stride + tid // bk), u32(kk * b_stride + tid // bk)
        ty, tx = u32(tid // cols), u32(tid % cols)
        slices = (p_end - p_begin + bk - 1) // bk
        for s in range(slices + 1):
            buf = u32(s % 2)
            if s < slices:  # global loads of slice s (stored after the multiply of slice s - 1)
                p = p_begin + s * bk + kk
                n, q = numba.int32(u32(p) // u32(hw_out)), u32(p) % u32(hw_out)  # 32-bit division: cheaper
                oh, ow = numba.int32(q // u32(out_width)), numba.int32(q % u32(out_width))
                gy_at = u32(n * filters * hw_out + q)
                r0, c0 = oh * stride_h - pad_h, ow * stride_w - pad_w
                if p >= p_end:
                    r0, gy_at = OUTSIDE, u32(0)
                x_at = n * x_image + r0 * width + c0
                for r in range(a_loads):
                    a_next[r] = 0.0
                    if f_ok[r] and p < p_end:
                        a_next[r] = gy[gy_at + f_off[r]]
                for r in range(b_loads):
                    t = t_at[r]  # the tap table is small: these loads hit the L1 cache
                    row, col = r0 + taps[t + u32(1)], c0 + taps[t + u32(2)]
                    b_next[r] = t_one[r]
                    if u32(row) < u32(height) and u32(col) < u32(width):  # one unsigned comparison each
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

        write_tile(partial, acc, row0, col0, ty, tx, filters, k_total + 1)

    weight_gemm.tiles = tile  # for the kernel report
    return weight_gemm


# --- host side: the tap tables ----------------------------------------------------------------------
def _round_up(value, multiple):
    return -(-value // multiple) * multiple


def _forward_taps(g):
    """The tap table of x, one row (offset, dr, dc) per row k = (c, i, j) of im2col(x)."""
    cc, ii, jj = np.meshgrid(np.arange(g.c), np.arange(g.kh) * g.dh, np.arange(g.kw) * g.dw, indexing="ij")
    return np.stack([cc * g.h * g.w + ii * g.w + jj, ii, jj], axis=-1).reshape(-1, 3)


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
    taps, a_rows, phases = [], [], []

    def axis_phase(r, size, stride, pad, dil, k):
        start = (r - pad) % stride
        shifts = [(i, (start + pad - i * dil) // stride) for i in range(k) if (i * dil) % stride == r]
        return start, len(range(start, size, stride)), shifts

    for rh in range(g.sh):
        start_h, count_h, shifts_h = axis_phase(rh, g.h, g.sh, g.ph, g.dh, g.kh)
        for rw in range(g.sw):
            start_w, count_w, shifts_w = axis_phase(rw, g.w, g.sw, g.pw, g.dw, g.kw)
            first = len(taps)
            for i, dr in shifts_h:
                for j, dc in shifts_w:
                    for fi in range(g.f):
                        taps.append((fi * g.ho * g.wo + dr * g.wo + dc, dr, dc))
                        a_rows.append((i * g.kw + j) * g.f + fi)
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
        return xp.asarray(taps.ravel()), xp.asarray(np.array([[0, len(taps), g.ho, g.wo, 0, 0]], np.int32))
    if kind == "weight":  # one OUTSIDE row after the last tap, for the bias column and beyond
        taps = _forward_taps(g)
        return xp.asarray(_pad_taps(taps, len(taps) + 1).ravel())
    taps, a_rows, phases = _backward_data_plan(g, bk)
    valid = np.flatnonzero(a_rows >= 0)
    return xp.asarray(taps.ravel()), xp.asarray(valid), xp.asarray(a_rows[valid]), xp.asarray(phases)


# --- the launchers: same functions, same arguments as reference/conv2d.py ---------------------------
class Plan(NamedTuple):
    """How one pass is launched: its tile, its grid (column tiles, row tiles, phases or splits)."""
    tile: Tile
    grid: tuple
    per_split: int = 0  # grad-weight: pixels reduced by each block along grid axis z

    @property
    def blocks(self):
        return math.prod(self.grid)


def plan(conv_pass, g, dtype, splits=None):
    """The Plan of ``conv_pass`` ("forward", "grad-input" or "grad-weight") for Geometry g.

    grad-weight's ``splits`` (default: by size) cuts its reduction over N*Ho*Wo pixels into
    ranges: enough blocks to fill the GPU (2 per SM), each reducing at least 512 pixels.
    """
    if conv_pass == "forward":  # C = y: F rows, N*Ho*Wo columns
        tile = choose_tile(g.f, g.n * g.ho * g.wo, dtype)
        return Plan(tile, (math.ceil(g.n * g.ho * g.wo / tile.bn), math.ceil(g.f / tile.bm), 1))
    if conv_pass == "grad-input":  # C = gx: C rows; sh*sw phases of at most this many columns each
        columns = g.n * math.ceil(g.h / g.sh) * math.ceil(g.w / g.sw)
        tile = choose_tile(g.c, columns, dtype, phases=g.sh * g.sw)
        return Plan(tile, (math.ceil(columns / tile.bn), math.ceil(g.c / tile.bm), g.sh * g.sw))
    if conv_pass != "grad-weight":
        raise ValueError(f"conv_pass must be forward, grad-input or grad-weight, got {conv_pass!r}")
    pixels, k = g.n * g.ho * g.wo, g.c * g.kh * g.kw  # C = [gw | gb]: F rows, K + 1 columns
    tile = choose_tile(g.f, k + 1, dtype, phases=None)  # split-K fills the GPU
    tiles = (math.ceil((k + 1) / tile.bn), math.ceil(g.f / tile.bm))
    if splits is None:
        splits = max(1, min(math.ceil(2 * SMS / math.prod(tiles)), pixels // 512))
    per_split = _round_up(math.ceil(pixels / splits), tile.bk)
    return Plan(tile, (*tiles, math.ceil(pixels / per_split)), per_split)


def forward(x, w, b, stride, padding, dilation):
    """y = conv2d(x, w) + b; returns (y, x): grad-weight re-gathers from x."""
    xp = get_array_module(x)
    g = geometry(x.shape, w.shape, stride, padding, dilation)
    tile, grid, _ = plan("forward", g, x.dtype)
    k, m_pad = g.c * g.kh * g.kw, grid[1] * tile.bm
    a = xp.zeros((_round_up(k, tile.bk), m_pad), dtype=x.dtype)  # A^T = w as (K x F), zero-padded
    a[:k, :g.f] = w.reshape(g.f, k).T
    taps, phases = _tables("forward", g, tile.bk, xp)
    y = kernels.empty(xp, (g.n, g.f, g.ho, g.wo), x.dtype)
    check_32bit(x, y)
    bias = xp.ascontiguousarray(b) if b is not None else kernels.empty(xp, 1, x.dtype)  # (unread)
    kernels.launch(_gather_gemm(x.dtype, tile), grid, tile.threads,
                   a.reshape(-1), xp.ascontiguousarray(x).ravel(), y.reshape(-1), bias, taps, phases,
                   g.f, m_pad, g.n, g.h, g.w, g.c * g.h * g.w,
                   g.sh, -g.ph, g.sw, -g.pw,  # column (n, oh, ow) reads x around (oh * sh - ph, ow * sw - pw)
                   g.ho, g.wo, 1, 1, b is not None)
    return y, x


def backward_data(gy, w, x_shape, stride, padding, dilation):
    """gx, one sub-problem per stride phase (grid axis z): see _backward_data_plan."""
    xp = get_array_module(gy)
    g = geometry(x_shape, w.shape, stride, padding, dilation)
    tile, grid, _ = plan("grad-input", g, gy.dtype)
    taps, valid, a_rows, phases = _tables("backward_data", g, tile.bk, xp)
    m_pad = grid[1] * tile.bm
    a = xp.zeros((taps.size // 3, m_pad), dtype=gy.dtype)  # rows of w^T for every phase's taps
    a[valid, :g.c] = xp.ascontiguousarray(w.transpose(2, 3, 0, 1)).reshape(g.kh * g.kw * g.f, g.c)[a_rows]
    gx = kernels.empty(xp, tuple(x_shape), gy.dtype)
    check_32bit(gx, gy)
    unused = kernels.empty(xp, 1, gy.dtype)  # no bias (not gx twice: the simulator copies arguments back)
    kernels.launch(_gather_gemm(gy.dtype, tile), grid, tile.threads,
                   a.reshape(-1), xp.ascontiguousarray(gy).ravel(), gx.reshape(-1), unused, taps, phases,
                   g.c, m_pad, g.n, g.ho, g.wo, g.f * g.ho * g.wo,
                   1, 0, 1, 0,  # column (n, u, v) of a phase reads gy around (u, v); the taps shift it
                   g.h, g.w, g.sh, g.sw, False)
    return gx


def backward_weight(gy, x, w_shape, stride, padding, dilation, splits=None):
    """Gradients for w and b, from one kernel; ``splits`` (default: by size) cuts the reduction."""
    xp = get_array_module(gy)
    g = geometry(x.shape, w_shape, stride, padding, dilation)
    tile, grid, per_split = plan("grad-weight", g, gy.dtype, splits)
    k = g.c * g.kh * g.kw
    partial = kernels.empty(xp, (grid[2], g.f, k + 1), gy.dtype)
    check_32bit(gy, x, partial)
    kernels.launch(_weight_gemm(gy.dtype, tile), grid, tile.threads,
                   xp.ascontiguousarray(gy).ravel(), xp.ascontiguousarray(x).ravel(), partial.reshape(-1),
                   _tables("weight", g, tile.bk, xp),
                   g.c * g.h * g.w, g.h, g.w, g.f, g.ho, g.wo, g.sh, g.sw, g.ph, g.pw, k,
                   g.n * g.ho * g.wo, per_split)
    total = partial[0] if grid[2] == 1 else partial.sum(axis=0)
    return xp.ascontiguousarray(total[:, :k]).reshape(w_shape), xp.ascontiguousarray(total[:, k])


# Conv layers whose three passes reach every tile shape of ``choose_tile``, for ``examples``:
# name: (x shape, w shape, stride, padding). The comments say which tile each pass gets
# (float64: 64 x 64 where float32 gets 128 x 128). The kernel report only records their launches,
# never runs them, so "big" may be big: it needs 132 blocks of 128 x 128 to get that tile.
EXAMPLE_LAYERS = {
    "big": ((2, 64, 192, 192), (64, 64, 3, 3), 2, 1),  # all three 128 x 128; grad-input in 4
    # stride phases, grad-weight split in 3 along K (``splits=3``)
    "late": ((1, 128, 14, 14), (128, 128, 3, 3), 1, 1),  # forward, grad-input 64 x 64 (2 blocks
    # of 128 x 128 would leave 130 SMs idle); grad-weight 128 x 128 (split-K fills the GPU)
    "first": ((2, 1, 9, 9), (16, 1, 3, 3), 1, 1),  # forward, grad-input 32 x 128; grad-weight
    # (9 taps + bias = 10 columns) 32 x 32
    "head": ((2, 64, 9, 9), (2, 64, 1, 1), 1, 0),  # forward, grad-weight 32 x 128 (2 filters)
    "tiny": ((1, 8, 4, 4), (8, 8, 3, 3), 1, 1),  # forward, grad-input 32 x 32 (16 pixels)
}


def examples(dtype, array=np.zeros):
    """The three passes of each layer of EXAMPLE_LAYERS: every tile shape of both kernels, the
    kernel report's calls (see kernels/__init__.py)."""
    calls = []
    for layer, (x_shape, w_shape, stride, padding) in EXAMPLE_LAYERS.items():
        calls += pass_examples("tiled", layer, x_shape, w_shape, stride, padding, dtype, array,
                               splits=3 if layer == "big" else None)
    return calls

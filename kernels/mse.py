"""mse_loss as Numba CUDA kernels: a block-wise sum of squares, and an elementwise gradient.

Read minicolor/reference/mse.py first.

forward   each thread squares the differences of a strided share of the values (writing the
          differences out for backward) and sums them in a register; each block adds its
          threads' sums in shared memory (reduce.block_sum) and writes one partial sum;
          the few hundred partial sums are added on the host side with xp.sum.
backward  one thread per value: gpred = 2 * diff / n * g (g stays on the device: no host sync).
"""
import math

import numba
import numpy as np
from numba import cuda

from minicolor.backend import get_array_module
import minicolor.kernels as kernels
from minicolor.kernels import SIMULATOR
from minicolor.kernels.reduce import block_sum

THREADS = 32 if SIMULATOR else 256  # threads per block (fewer Python threads in the simulator)
MAX_BLOCKS = 256


@cuda.jit
def _forward(pred, target, diff, partial_sums):
    partial = cuda.shared.array(THREADS, numba.float64)
    tid = cuda.threadIdx.x
    total = 0.0
    for e in range(cuda.grid(1), pred.size, cuda.gridsize(1)):
        d = pred[e] - target[e]
        diff[e] = d
        total += d * d
    total = block_sum(partial, total)
    if tid == 0:
        partial_sums[cuda.blockIdx.x] = total


@cuda.jit
def _backward(diff, g, grad):
    scale = g[0] * 2.0 / diff.size
    for e in range(cuda.grid(1), diff.size, cuda.gridsize(1)):
        grad[e] = diff[e] * scale


def forward(pred, target):
    """Same contract as reference.mse.forward: (loss as a 0-d array, diff)."""
    xp = get_array_module(pred)
    flat_pred = xp.ascontiguousarray(pred).reshape(-1)
    flat_target = xp.ascontiguousarray(target, dtype=pred.dtype).reshape(-1)
    diff = kernels.empty(xp, flat_pred.shape, flat_pred.dtype)
    blocks = min(math.ceil(flat_pred.size / THREADS), MAX_BLOCKS)
    partial_sums = kernels.empty(xp, blocks, xp.float64)
    kernels.launch(_forward, blocks, THREADS, flat_pred, flat_target, diff, partial_sums)
    loss = (partial_sums.sum() / flat_pred.size).astype(pred.dtype)
    return xp.asarray(loss), diff.reshape(pred.shape)


def backward(g, diff):
    xp = get_array_module(diff)
    flat = diff.reshape(-1)
    grad = kernels.empty(xp, flat.shape, flat.dtype)
    g = xp.asarray(g, dtype=diff.dtype).reshape(1)
    kernels.launch(_backward, min(math.ceil(flat.size / THREADS), 65535), THREADS, flat, g, grad)
    return grad.reshape(diff.shape)


def examples(dtype, array=np.zeros):
    """Forward and backward: the kernel report's calls (see kernels/__init__.py)."""
    pred = array((2, 2, 4, 4), dtype)
    return [("forward", lambda: forward(pred, pred)), ("backward", lambda: backward(1.0, pred))]

"""leaky_relu as Numba CUDA kernels: one thread per element, in a grid-stride loop.

Read minicolor/reference/leaky_relu.py first: forward and backward are each one ``where``
there. Here each is a kernel in which a thread computes one element (of y forward, of gx
backward), the way the reference's ``where`` does for all of them at once:

    forward   y[e]  = x[e]  if x[e] > 0 else x[e] * negative_slope
    backward  gx[e] = gy[e] if x[e] > 0 else gy[e] * negative_slope

**Grid-stride loop.** A launch starts ``blocks x THREADS`` threads; thread number ``e`` =
``cuda.grid(1)`` takes element e, then e + (the number of threads of the whole grid,
``cuda.gridsize(1)``), and so on until the end of the array. So any number of blocks covers
any size: the launchers cap the grid at MAX_BLOCKS (4,096 blocks of 256 threads: about four
times as many threads as an H100 holds at once) rather than start one thread per element of a
large tensor.

The launchers pass the arrays flat (one index per element, whatever the tensor's shape), and
the slope as a NumPy scalar of x's dtype, so that a float32 tensor is computed in float32
with the slope rounded as the reference's NumPy rounds it: the two agree to the last bit.
"""
import math

import numpy as np
from numba import cuda

import minicolor.kernels as kernels
from minicolor.backend import get_array_module
from minicolor.kernels import SIMULATOR

THREADS = 32 if SIMULATOR else 256  # threads per block (fewer Python threads in the simulator)
MAX_BLOCKS = 64 if SIMULATOR else 4096  # the grid's cap: the loop strides over the rest


@cuda.jit
def _forward(x, y, negative_slope):
    # x               the input, flat (one value per element)
    # y               the output, flat, same size: written here
    # negative_slope  a scalar of x's dtype: the share let through below zero
    for e in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        value = x[e]
        y[e] = value if value > 0 else value * negative_slope


@cuda.jit
def _backward(gy, x, gx, negative_slope):
    # gy              the gradient for y, flat
    # x               the input forward saw, flat: which side of zero each element was on
    # gx              the gradient for x, flat, same size: written here
    # negative_slope  a scalar of gy's dtype
    for e in range(cuda.grid(1), gy.size, cuda.gridsize(1)):
        gx[e] = gy[e] if x[e] > 0 else gy[e] * negative_slope


def _blocks(size):
    """Blocks of THREADS threads for ``size`` elements: one thread each, up to MAX_BLOCKS."""
    return max(1, min(math.ceil(size / THREADS), MAX_BLOCKS))


def forward(x, negative_slope=0.01):
    """Same as reference.leaky_relu.forward: y, of x's shape and dtype."""
    xp = get_array_module(x)
    flat_x = xp.ascontiguousarray(x).reshape(-1)
    y = kernels.empty(xp, flat_x.shape, x.dtype)
    kernels.launch(_forward, _blocks(y.size), THREADS, flat_x, y, x.dtype.type(negative_slope))
    return y.reshape(x.shape)


def backward(gy, x, negative_slope=0.01):
    """Same as reference.leaky_relu.backward: gx, of gy's shape and dtype."""
    xp = get_array_module(gy)
    flat_gy = xp.ascontiguousarray(gy).reshape(-1)
    flat_x = xp.ascontiguousarray(x).reshape(-1)
    gx = kernels.empty(xp, flat_gy.shape, gy.dtype)
    kernels.launch(_backward, _blocks(gx.size), THREADS, flat_gy, flat_x, gx,
                   gy.dtype.type(negative_slope))
    return gx.reshape(gy.shape)


def examples(dtype, array=np.zeros):
    """Small calls of the launchers above that, between them, launch every kernel of this file,
    on arrays made by ``array(shape, dtype)``: the kernel report (``minicolor kernels``) finds
    them by this name, records their launches (nothing runs) and compiles each kernel for an
    H100 with the argument types it had (see kernels/__init__.py)."""
    x = array((2, 3, 4, 5), dtype)
    return [("forward", lambda: forward(x)), ("backward", lambda: backward(x, x))]

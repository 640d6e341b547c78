"""The one reduction the kernels share: a block-wide sum in shared memory.

Each thread brings one value (usually the sum of its strided share of the data). They are
written to a shared array with one slot per thread; then, for stride = blockDim/2, /4, ..., 1,
threads below the stride add the slot ``stride`` above their own onto it, with a syncthreads
after each halving. After log2(blockDim) steps slot 0 holds the block's total. No atomics:
the order of additions is fixed, so the result is the same on every run.
Used by batchnorm.py (per-channel statistics), conv2d.py (grad-bias) and mse.py (the loss).
"""
from numba import cuda


@cuda.jit(device=True)
def block_sum(partial, value):
    """Sum ``value`` over the block's threads (blockDim.x a power of two, ``partial`` one
    shared slot per thread); every thread gets the total."""
    tid = cuda.threadIdx.x
    partial[tid] = value
    cuda.syncthreads()
    stride = cuda.blockDim.x // 2
    while stride > 0:
        if tid < stride:
            partial[tid] += partial[tid + stride]
        cuda.syncthreads()
        stride //= 2
    total = partial[0]
    cuda.syncthreads()  # everyone has read slot 0 before the slots are used again
    return total

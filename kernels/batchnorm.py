"""batch_norm as Numba CUDA kernels: per-channel reductions in shared memory, then elementwise.

Read minicolor/reference/batchnorm.py first. Batchnorm is two kinds of work:

    reductions   per channel, over N*H*W values: the mean and variance (forward), and the
                 sums of gy and gy*xhat (backward)
    elementwise  y = xhat * weight + bias  and  gx = (gy - ...) * inv_std * weight

Reductions: one block per channel. Each of the block's 256 threads walks a strided share of
the channel's values and sums them in a register; then ``reduce.block_sum`` adds the 256
partial sums in shared memory by halving: threads 0..127 add the upper half onto the lower,
then 0..63, ..., until slot 0 holds the channel's total (8 steps, a syncthreads after each).
No atomics: every value is read once and every addition is ordered, so results do not depend
on scheduling. Forward runs two such reductions in one kernel: first the mean, then the
variance as the mean of (x - mean)^2 (more accurate in float32 than E[x^2] - mean^2).

Elementwise kernels use one thread per value (a grid-stride loop).

ReLU fused in (``relu=True``): the network applies ReLU right before each batchnorm (conv,
ReLU, ..., conv, ReLU, batchnorm in every group), so these kernels can take the ReLU's *input*
and apply max(x, 0) as they read it: the ReLU's output is never written or read back, and
backward multiplies by the ReLU's mask (x > 0) as it writes gx. That saves the ReLU's own
passes over the tensor (one CuPy kernel forward, two backward) and one activation-sized
buffer per group. The statistics kernel also writes inv_std = 1 / sqrt(var + eps), which
used to take four small CuPy kernels per batchnorm.
"""
import math

import numba
from numba import cuda

from minicolor.backend import get_array_module
import minicolor.kernels as kernels
from minicolor.kernels import SIMULATOR
from minicolor.kernels.reduce import block_sum

THREADS = 32 if SIMULATOR else 256  # threads per block (fewer Python threads in the simulator)


@cuda.jit(device=True)
def _read(x, n, c, h, w, relu):
    """x[n, c, h, w], or max(x[n, c, h, w], 0) when the ReLU is fused in."""
    value = x[n, c, h, w]
    if relu and value < 0:
        value -= value  # 0 in x's dtype (a literal 0 would make the float32 arithmetic float64)
    return value


@cuda.jit
def _stats(x, mean, var, inv_std, running_mean, running_var, momentum, eps, relu):
    """Block c: mean, biased variance and inv_std of channel c (of relu(x) when ``relu``);
    thread 0 writes them and updates the running estimates."""
    partial = cuda.shared.array(THREADS, numba.float64)
    c, tid = cuda.blockIdx.x, cuda.threadIdx.x
    n, hw, w = x.shape[0], x.shape[2] * x.shape[3], x.shape[3]
    m = n * hw
    total = 0.0
    for e in range(tid, m, THREADS):
        q = e % hw
        total += _read(x, e // hw, c, q // w, q % w, relu)
    mu = block_sum(partial, total) / m
    total = 0.0
    for e in range(tid, m, THREADS):
        q = e % hw
        d = _read(x, e // hw, c, q // w, q % w, relu) - mu
        total += d * d
    sigma2 = block_sum(partial, total) / m
    if tid == 0:  # the running estimates move towards mu and the *unbiased* variance
        mean[c] = mu
        var[c] = sigma2
        inv_std[c] = 1 / math.sqrt(var[c] + eps)  # from var in x's dtype, as the reference does
        running_mean[c] = (1 - momentum) * running_mean[c] + momentum * mu
        running_var[c] = (1 - momentum) * running_var[c] + momentum * sigma2 * m / (m - 1)


@cuda.jit
def _normalize(x, mean, inv_std, weight, bias, relu, y, xhat):
    """One thread per value: xhat = (x - mean) * inv_std (x: relu(x) when ``relu``);
    y = xhat * weight + bias."""
    c_count, hw = x.shape[1], x.shape[2] * x.shape[3]
    for e in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        c = (e // hw) % c_count
        n, q = e // (hw * c_count), e % hw
        h, w = q // x.shape[3], q % x.shape[3]
        value = (_read(x, n, c, h, w, relu) - mean[c]) * inv_std[c]
        xhat[n, c, h, w] = value
        y[n, c, h, w] = value * weight[c] + bias[c]


@cuda.jit
def _grad_sums(gy, xhat, gweight, gbias):
    """Block c: gbias[c] = sum(gy), gweight[c] = sum(gy * xhat) over channel c."""
    partial = cuda.shared.array(THREADS, numba.float64)
    c, tid = cuda.blockIdx.x, cuda.threadIdx.x
    n, hw, w = gy.shape[0], gy.shape[2] * gy.shape[3], gy.shape[3]
    sum_gy = 0.0
    sum_gy_xhat = 0.0
    for e in range(tid, n * hw, THREADS):
        q = e % hw
        g = gy[e // hw, c, q // w, q % w]
        sum_gy += g
        sum_gy_xhat += g * xhat[e // hw, c, q // w, q % w]
    total_gy = block_sum(partial, sum_gy)
    total_gy_xhat = block_sum(partial, sum_gy_xhat)
    if tid == 0:
        gbias[c] = total_gy
        gweight[c] = total_gy_xhat


@cuda.jit
def _grad_input(gy, xhat, inv_std, weight, gweight, gbias, training, relu, x, gx):
    """One thread per value: gx = (gy - [mean(gy) + xhat * mean(gy * xhat)]) * inv_std * weight,
    and 0 where x <= 0 when ``relu`` (the ReLU's gradient; x is its input)."""
    c_count, hw = gy.shape[1], gy.shape[2] * gy.shape[3]
    m = gy.size // c_count
    for e in range(cuda.grid(1), gy.size, cuda.gridsize(1)):
        c = (e // hw) % c_count
        n, q = e // (hw * c_count), e % hw
        h, w = q // gy.shape[3], q % gy.shape[3]
        g = gy[n, c, h, w]
        if training:
            g = g - gbias[c] / m - xhat[n, c, h, w] * gweight[c] / m
        g = g * inv_std[c] * weight[c]
        if relu and not x[n, c, h, w] > 0:
            g = g * 0  # as the reference's gx * (x > 0): 0, and NaN stays NaN
        gx[n, c, h, w] = g


def _elementwise_grid(size):
    return min(math.ceil(size / THREADS), 65535)


def forward(x, weight, bias, running_mean, running_var, training, momentum, eps, relu=False):
    """Same contract as reference.batchnorm.forward: (y, xhat, inv_std); of relu(x) when ``relu``."""
    xp = get_array_module(x)
    c = x.shape[1]
    if training:
        mean = kernels.empty(xp, c, x.dtype)
        var = kernels.empty(xp, c, x.dtype)
        inv_std = kernels.empty(xp, c, x.dtype)
        kernels.launch(_stats, c, THREADS, x, mean, var, inv_std, running_mean, running_var,
                       momentum, eps, relu)
    else:
        mean = running_mean.astype(x.dtype, copy=False)
        inv_std = (1 / xp.sqrt(running_var + eps)).astype(x.dtype)
    y = kernels.empty(xp, x.shape, x.dtype)
    xhat = kernels.empty(xp, x.shape, x.dtype)
    kernels.launch(_normalize, _elementwise_grid(x.size), THREADS,
                   x, mean, inv_std, weight, bias, relu, y, xhat)
    return y, xhat, inv_std


def backward(gy, xhat, inv_std, weight, training, relu_input=None):
    """Same contract as reference.batchnorm.backward: (gx, gweight, gbias). With ``relu_input``
    (the x given to forward with relu=True), gx is the gradient with respect to it."""
    xp = get_array_module(gy)
    c = gy.shape[1]
    gweight = kernels.empty(xp, c, gy.dtype)
    gbias = kernels.empty(xp, c, gy.dtype)
    kernels.launch(_grad_sums, c, THREADS, gy, xhat, gweight, gbias)
    gx = kernels.empty(xp, gy.shape, gy.dtype)
    relu = relu_input is not None
    kernels.launch(_grad_input, _elementwise_grid(gy.size), THREADS, gy, xhat, inv_std, weight,
                   gweight, gbias, bool(training), relu, relu_input if relu else xhat, gx)
    return gx, gweight, gbias

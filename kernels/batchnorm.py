"""batch_norm as Numba CUDA kernels: per-channel reductions in shared memory, then elementwise.

Read minicolor/reference/batchnorm.py first. Batchnorm is two kinds of work:

    reductions   per channel, over N*H*W values: the mean and variance (forward), and the
                 sums of gy and gy*xhat (backward)
    elementwise  y = xhat * weight + bias  and  gx = (gy - ...) * inv_std * weight

Every tensor reaches the kernels as an (N, C, H*W) view: a *plane* is one image's channel,
H*W values in a row, so no thread ever divides to find a value's row and column.

Reductions: one block per channel. Each of the block's 256 threads walks a strided share of
the channel's values (plane by plane) and sums them in a register; then ``reduce.block_sum``
adds the 256 partial sums in shared memory by halving: threads 0..127 add the upper half onto
the lower, then 0..63, ..., until slot 0 holds the channel's total (8 steps, a syncthreads
after each). No atomics: every value is read once and every addition is ordered, so results do
not depend on scheduling. Forward runs two such reductions in one kernel: first the mean, then
the variance as the mean of (x - mean)^2 (more accurate in float32 than E[x^2] - mean^2).

Elementwise: a 2-D grid, blockIdx.y picks the plane (so each block knows its channel with one
division), and the threads of blockIdx.x walk the plane's values.

Small channels, one kernel: when a channel has at most ONE_KERNEL_MAX values, the block that
reduced it goes on to the elementwise pass for its own channel (a syncthreads in between, so
every thread sees the statistics thread 0 wrote). That is one launch instead of two per pass,
at the price of less parallelism in the elementwise part, which small channels do not need:
at width 16 and batch 1 it takes six of the seven batchnorms from 4 launches a step to 2.
Both ways run the same device functions, so they give the same numbers bit for bit.

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
ONE_KERNEL_MAX = 4096  # values per channel up to which one block per channel does everything
MAX_GRID = 65535  # blocks along one grid axis (grid-stride loops cover the rest)


# --- device functions: the arithmetic, shared by the one-kernel and the two-kernel way ------------
@cuda.jit(device=True)
def _read(x, n, c, p, relu):
    """x[n, c, p], or max(x[n, c, p], 0) when the ReLU is fused in."""
    value = x[n, c, p]
    if relu and value < 0:
        value -= value  # 0 in x's dtype (a literal 0 would make the float32 arithmetic float64)
    return value


@cuda.jit(device=True)
def _channel_stats(x, c, relu, partial):
    """(mean, biased variance) of channel c, summed by the whole block."""
    tid = cuda.threadIdx.x
    n_count, plane = x.shape[0], x.shape[2]
    total = 0.0
    for n in range(n_count):
        for p in range(tid, plane, cuda.blockDim.x):
            total += _read(x, n, c, p, relu)
    mu = block_sum(partial, total) / (n_count * plane)
    total = 0.0
    for n in range(n_count):
        for p in range(tid, plane, cuda.blockDim.x):
            d = _read(x, n, c, p, relu) - mu
            total += d * d
    return mu, block_sum(partial, total) / (n_count * plane)


@cuda.jit(device=True)
def _store_stats(c, mu, sigma2, m, mean, var, inv_std, running_mean, running_var, momentum, eps):
    """Thread 0: the channel's statistics, and the running estimates moved towards mu and
    the *unbiased* variance."""
    mean[c] = mu
    var[c] = sigma2
    inv_std[c] = 1 / math.sqrt(var[c] + eps)  # from var in x's dtype, as the reference does
    running_mean[c] = (1 - momentum) * running_mean[c] + momentum * mu
    running_var[c] = (1 - momentum) * running_var[c] + momentum * sigma2 * m / (m - 1)


@cuda.jit(device=True)
def _normalize_value(x, mean, inv_std, weight, bias, relu, y, xhat, n, c, p):
    """xhat = (x - mean) * inv_std; y = xhat * weight + bias, for one value."""
    value = (_read(x, n, c, p, relu) - mean[c]) * inv_std[c]
    xhat[n, c, p] = value
    y[n, c, p] = value * weight[c] + bias[c]


@cuda.jit(device=True)
def _channel_sums(gy, xhat, c, partial):
    """(sum of gy, sum of gy * xhat) over channel c, summed by the whole block."""
    tid = cuda.threadIdx.x
    sum_gy = 0.0
    sum_gy_xhat = 0.0
    for n in range(gy.shape[0]):
        for p in range(tid, gy.shape[2], cuda.blockDim.x):
            g = gy[n, c, p]
            sum_gy += g
            sum_gy_xhat += g * xhat[n, c, p]
    return block_sum(partial, sum_gy), block_sum(partial, sum_gy_xhat)


@cuda.jit(device=True)
def _input_gradient(gy, xhat, inv_std, weight, gweight, gbias, training, relu, x, gx, n, c, p):
    """gx = (gy - [mean(gy) + xhat * mean(gy * xhat)]) * inv_std * weight for one value, and 0
    where x <= 0 when ``relu`` (the ReLU's gradient; x is its input)."""
    m = gy.shape[0] * gy.shape[2]
    g = gy[n, c, p]
    if training:
        g = g - gbias[c] / m - xhat[n, c, p] * gweight[c] / m
    g = g * inv_std[c] * weight[c]
    if relu and not x[n, c, p] > 0:
        g = g * 0  # as the reference's gx * (x > 0): 0, and NaN stays NaN
    gx[n, c, p] = g


# --- kernels ------------------------------------------------------------------------------------
@cuda.jit
def _stats(x, mean, var, inv_std, running_mean, running_var, momentum, eps, relu):
    """Block c: mean, biased variance and inv_std of channel c (of relu(x) when ``relu``);
    thread 0 writes them and updates the running estimates."""
    partial = cuda.shared.array(THREADS, numba.float64)
    c = cuda.blockIdx.x
    mu, sigma2 = _channel_stats(x, c, relu, partial)
    if cuda.threadIdx.x == 0:
        _store_stats(c, mu, sigma2, x.shape[0] * x.shape[2], mean, var, inv_std, running_mean,
                     running_var, momentum, eps)


@cuda.jit
def _normalize(x, mean, inv_std, weight, bias, relu, y, xhat):
    """Plane blockIdx.y (and every gridDim.y-th after it): its values, strided over the
    threads of blockIdx.x, normalised (x: relu(x) when ``relu``)."""
    c_count, plane = x.shape[1], x.shape[2]
    start, stride = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x, cuda.gridDim.x * cuda.blockDim.x
    for plane_index in range(cuda.blockIdx.y, x.shape[0] * c_count, cuda.gridDim.y):
        n, c = plane_index // c_count, plane_index % c_count
        for p in range(start, plane, stride):
            _normalize_value(x, mean, inv_std, weight, bias, relu, y, xhat, n, c, p)


@cuda.jit
def _channel_forward(x, mean, var, inv_std, running_mean, running_var, momentum, eps, relu,
                     weight, bias, y, xhat):
    """Block c does all of channel c: the statistics (as ``_stats``), a syncthreads, then the
    channel's values normalised (as ``_normalize``)."""
    partial = cuda.shared.array(THREADS, numba.float64)
    c, tid = cuda.blockIdx.x, cuda.threadIdx.x
    mu, sigma2 = _channel_stats(x, c, relu, partial)
    if tid == 0:
        _store_stats(c, mu, sigma2, x.shape[0] * x.shape[2], mean, var, inv_std, running_mean,
                     running_var, momentum, eps)
    cuda.syncthreads()  # mean[c] and inv_std[c] are written before anyone reads them
    for n in range(x.shape[0]):
        for p in range(tid, x.shape[2], cuda.blockDim.x):
            _normalize_value(x, mean, inv_std, weight, bias, relu, y, xhat, n, c, p)


@cuda.jit
def _grad_sums(gy, xhat, gweight, gbias):
    """Block c: gbias[c] = sum(gy), gweight[c] = sum(gy * xhat) over channel c."""
    partial = cuda.shared.array(THREADS, numba.float64)
    c = cuda.blockIdx.x
    total_gy, total_gy_xhat = _channel_sums(gy, xhat, c, partial)
    if cuda.threadIdx.x == 0:
        gbias[c] = total_gy
        gweight[c] = total_gy_xhat


@cuda.jit
def _grad_input(gy, xhat, inv_std, weight, gweight, gbias, training, relu, x, gx):
    """Plane blockIdx.y (and every gridDim.y-th after it): gx for its values (see
    ``_input_gradient``), strided over the threads of blockIdx.x."""
    c_count, plane = gy.shape[1], gy.shape[2]
    start, stride = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x, cuda.gridDim.x * cuda.blockDim.x
    for plane_index in range(cuda.blockIdx.y, gy.shape[0] * c_count, cuda.gridDim.y):
        n, c = plane_index // c_count, plane_index % c_count
        for p in range(start, plane, stride):
            _input_gradient(gy, xhat, inv_std, weight, gweight, gbias, training, relu, x, gx, n, c, p)


@cuda.jit
def _channel_backward(gy, xhat, inv_std, weight, training, relu, x, gweight, gbias, gx):
    """Block c does all of channel c: the sums (as ``_grad_sums``), a syncthreads, then gx for
    the channel's values (as ``_grad_input``)."""
    partial = cuda.shared.array(THREADS, numba.float64)
    c, tid = cuda.blockIdx.x, cuda.threadIdx.x
    total_gy, total_gy_xhat = _channel_sums(gy, xhat, c, partial)
    if tid == 0:
        gbias[c] = total_gy
        gweight[c] = total_gy_xhat
    cuda.syncthreads()  # gbias[c] and gweight[c] are written before anyone reads them
    for n in range(gy.shape[0]):
        for p in range(tid, gy.shape[2], cuda.blockDim.x):
            _input_gradient(gy, xhat, inv_std, weight, gweight, gbias, training, relu, x, gx, n, c, p)


# --- launchers ----------------------------------------------------------------------------------
def _planes(a):
    """The (N, C, H*W) view of an NCHW array."""
    return a.reshape(a.shape[0], a.shape[1], -1)


def _plane_grid(shape):
    """(blocks along a plane, planes) for the elementwise kernels on an (N, C, H*W) array."""
    return (min(math.ceil(shape[2] / THREADS), MAX_GRID), min(shape[0] * shape[1], MAX_GRID))


def _one_kernel(shape):
    return shape[0] * shape[2] * shape[3] <= ONE_KERNEL_MAX


def forward(x, weight, bias, running_mean, running_var, training, momentum, eps, relu=False):
    """Same contract as reference.batchnorm.forward: (y, xhat, inv_std); of relu(x) when ``relu``."""
    xp = get_array_module(x)
    c = x.shape[1]
    x3 = _planes(x)
    y = kernels.empty(xp, x3.shape, x.dtype)
    xhat = kernels.empty(xp, x3.shape, x.dtype)
    if training:
        mean = kernels.empty(xp, c, x.dtype)
        var = kernels.empty(xp, c, x.dtype)
        inv_std = kernels.empty(xp, c, x.dtype)
        stats = (mean, var, inv_std, running_mean, running_var, momentum, eps, relu)
        if _one_kernel(x.shape):
            kernels.launch(_channel_forward, c, THREADS, x3, *stats, weight, bias, y, xhat)
            return y.reshape(x.shape), xhat.reshape(x.shape), inv_std
        kernels.launch(_stats, c, THREADS, x3, *stats)
    else:
        mean = running_mean.astype(x.dtype, copy=False)
        inv_std = (1 / xp.sqrt(running_var + eps)).astype(x.dtype)
    kernels.launch(_normalize, _plane_grid(x3.shape), THREADS,
                   x3, mean, inv_std, weight, bias, relu, y, xhat)
    return y.reshape(x.shape), xhat.reshape(x.shape), inv_std


def backward(gy, xhat, inv_std, weight, training, relu_input=None):
    """Same contract as reference.batchnorm.backward: (gx, gweight, gbias). With ``relu_input``
    (the x given to forward with relu=True), gx is the gradient with respect to it."""
    xp = get_array_module(gy)
    c = gy.shape[1]
    gy3, xhat3 = _planes(gy), _planes(xhat)
    gweight = kernels.empty(xp, c, gy.dtype)
    gbias = kernels.empty(xp, c, gy.dtype)
    gx = kernels.empty(xp, gy3.shape, gy.dtype)
    relu = relu_input is not None
    x3 = _planes(relu_input) if relu else xhat3  # (not read unless relu)
    if _one_kernel(gy.shape):
        kernels.launch(_channel_backward, c, THREADS, gy3, xhat3, inv_std, weight, bool(training),
                       relu, x3, gweight, gbias, gx)
    else:
        kernels.launch(_grad_sums, c, THREADS, gy3, xhat3, gweight, gbias)
        kernels.launch(_grad_input, _plane_grid(gy3.shape), THREADS, gy3, xhat3, inv_std, weight,
                       gweight, gbias, bool(training), relu, x3, gx)
    return gx.reshape(gy.shape), gweight, gbias

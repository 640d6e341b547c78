"""batch_norm as Numba CUDA kernels: per-channel reductions split over blocks, then elementwise.

Read minicolor/reference/batchnorm.py first. Batchnorm is two kinds of work:

    reductions   per channel, over its m = N*H*W values: the mean and variance (forward), and
                 the sums of gy and gy*xhat (backward)
    elementwise  y = xhat * weight + bias  and  gx = (gy - ...) * inv_std * weight

Every tensor reaches the kernels as an (N, C, H*W) view: a *plane* is one image's channel,
H*W values in a row, so no thread divides to find a value's row and column.

Reductions, in chunks. A channel's m values, taken plane after plane, are cut into chunks of
CHUNK values (16 per thread; the last chunk may be shorter). One block reduces one chunk: each
thread sums a strided share in a float64 register, then ``reduce.block_sum`` adds the block's
partial sums in shared memory by halving. At batch 32 the first batchnorm has 16 channels of
401,408 values: one block per channel was 16 blocks on 132 SMs, each reading 1.6 MB twice;
in chunks it is 98 x 16 = 1,568 blocks of 4,096 values, enough to keep every SM busy.

    forward    a chunk's block works out the chunk's mean and M2 = sum of (value - mean)^2
               (a second pass over its 16 values per thread, which are still in the cache),
               and writes them to a small float64 buffer; then one thread per channel merges
               its chunks, in chunk order, with Chan's formula for two sets of values
               (n = na + nb, delta = mean_b - mean_a: mean = mean_a + delta * nb / n,
               M2 = M2_a + M2_b + delta^2 * na * nb / n), and writes the statistics.
               (Not E[x^2] - mean^2: in float32 that loses most digits when the mean is large.)
    backward   a chunk's block sums gy and gy * xhat over the chunk; one thread per channel adds
               the chunks' sums, in chunk order.

No atomics: every addition happens in an order fixed by the shapes alone, so a result is the
same bit for bit from run to run, and does not depend on how many blocks the GPU runs at once.

Elementwise: a 2-D grid, blockIdx.y picks the plane (so each block knows its channel with one
division), and the threads of blockIdx.x walk the plane's values.

Small channels, one kernel: when a channel has at most ONE_KERNEL_MAX values (one chunk), one
block per channel does everything: it reduces the channel (chunk by chunk, merged in the same
order with the same formulas), then, after a syncthreads, does the elementwise pass for its own
channel. One launch per pass instead of three, at the price of less parallelism in the
elementwise part, which small channels do not need: at width 16 and batch 1, six of the seven
batchnorms are done in 2 launches a step. Both ways do the same arithmetic in the same order:
the same numbers bit for bit in the simulator (on a GPU, unless the compiler contracts an FMA
differently in the two kernels).

ReLU fused in (``relu=True``): the network applies ReLU right before each batchnorm (conv,
ReLU, ..., conv, ReLU, batchnorm in every group), so these kernels can take the ReLU's *input*
and apply max(x, 0) as they read it: the ReLU's output is never written or read back, and
backward multiplies by the ReLU's mask (x > 0) as it writes gx. That saves the ReLU's own
passes over the tensor (one CuPy kernel forward, two backward) and one activation-sized
buffer per group. The statistics also give inv_std = 1 / sqrt(var + eps), which used to take
four small CuPy kernels per batchnorm.

Rounding, against the reference. Everything after the sums is the reference's arithmetic in the
reference's order and in x's dtype: inv_std = 1 / sqrt(var + eps), the running estimates,
xhat, y and gx, with eps, momentum, 1 - momentum and m / (m - 1) rounded to x's dtype as NumPy
rounds a Python float that meets an array (``_typed``: a bare literal or a float64 argument
would turn float32 arithmetic into float64, rounded once at the end: other bits). The sums are
where the two differ on purpose: the kernels add float32 values in float64 and round the mean,
the variance and the two gradient sums to x's dtype once, where NumPy adds in float32 in its
own (pairwise) order. No parallel reduction can follow NumPy's order, and float64 sums are the
more accurate, so float32 results differ from the reference by rounding (about 1e-7 relative),
and are equal to it whenever the sums are exact in both. On a GPU the compiler may also contract
a multiply and an add into one FMA (one rounding instead of two).
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
CHUNK = 16 * THREADS  # values of one channel that one block reduces: 16 per thread
ONE_KERNEL_MAX = CHUNK  # values per channel up to which one block per channel does everything
MAX_GRID = 65535  # blocks along one grid axis (grid-stride loops cover the rest)


# --- device functions: the arithmetic, shared by the one-kernel and the split way ---------------
@cuda.jit(device=True)
def _typed(like, value):
    """``value`` rounded to the dtype of the array ``like``, as NumPy rounds a Python float that
    meets an array of that dtype (keeps float32 arithmetic float32)."""
    return like.dtype.type(value)


@cuda.jit(device=True)
def _read(x, n, c, p, relu):
    """x[n, c, p], or max(x[n, c, p], 0) when the ReLU is fused in (NaN stays NaN, as in
    np.maximum; -inf becomes 0)."""
    value = x[n, c, p]
    if relu and value < 0:
        value = _typed(x, 0)
    return value


@cuda.jit(device=True)
def _chunk_moments(x, c, k, relu, partial):
    """(count, mean, M2) of chunk k of channel c (of relu(x) when ``relu``), summed by the whole
    block: values ``k * CHUNK`` up to ``(k + 1) * CHUNK`` of the channel, plane after plane."""
    tid, plane = cuda.threadIdx.x, x.shape[2]
    first = k * CHUNK
    last = min(first + CHUNK, x.shape[0] * plane)
    total = 0.0
    for n in range(first // plane, (last + plane - 1) // plane):
        for p in range(max(first - n * plane, 0) + tid, min(last - n * plane, plane), cuda.blockDim.x):
            total += _read(x, n, c, p, relu)
    count = last - first
    mean = block_sum(partial, total) / count
    total = 0.0
    for n in range(first // plane, (last + plane - 1) // plane):
        for p in range(max(first - n * plane, 0) + tid, min(last - n * plane, plane), cuda.blockDim.x):
            d = _read(x, n, c, p, relu) - mean
            total += d * d
    return count, mean, block_sum(partial, total)


@cuda.jit(device=True)
def _merge(count_a, mean_a, m2_a, count_b, mean_b, m2_b):
    """Count, mean and M2 of two sets of values, from those of each (Chan, Golub and LeVeque).
    Merging into an empty set (count_a = 0) gives set b exactly."""
    count = count_a + count_b
    delta = mean_b - mean_a
    share = count_b / count
    return count, mean_a + delta * share, m2_a + m2_b + delta * delta * count_a * share


@cuda.jit(device=True)
def _chunk_count(k, m):
    """Values in chunk k of a channel of m values."""
    return min((k + 1) * CHUNK, m) - k * CHUNK


@cuda.jit(device=True)
def _store_stats(c, mu, sigma2, m, mean, var, inv_std, running_mean, running_var, momentum, eps):
    """One thread: the channel's statistics (mu and sigma2 in float64, rounded here once), and
    the running estimates moved towards the mean and the *unbiased* variance, in x's dtype and
    the reference's order (see the module docstring, "Rounding")."""
    mean[c] = mu
    var[c] = sigma2
    inv_std[c] = _typed(var, 1) / math.sqrt(var[c] + _typed(var, eps))
    keep, take = _typed(var, 1.0 - momentum), _typed(var, momentum)
    running_mean[c] = running_mean[c] * keep + take * mean[c]
    running_var[c] = running_var[c] * keep + take * var[c] * _typed(var, m / (m - 1))


@cuda.jit(device=True)
def _normalize_value(x, mean, inv_std, weight, bias, relu, y, xhat, n, c, p):
    """xhat = (x - mean) * inv_std; y = xhat * weight + bias, for one value."""
    value = (_read(x, n, c, p, relu) - mean[c]) * inv_std[c]
    xhat[n, c, p] = value
    y[n, c, p] = value * weight[c] + bias[c]


@cuda.jit(device=True)
def _chunk_sums(gy, xhat, c, k, partial):
    """(sum of gy, sum of gy * xhat) over chunk k of channel c, summed by the whole block."""
    tid, plane = cuda.threadIdx.x, gy.shape[2]
    first = k * CHUNK
    last = min(first + CHUNK, gy.shape[0] * plane)
    sum_gy = 0.0
    sum_gy_xhat = 0.0
    for n in range(first // plane, (last + plane - 1) // plane):
        for p in range(max(first - n * plane, 0) + tid, min(last - n * plane, plane), cuda.blockDim.x):
            g = gy[n, c, p]
            sum_gy += g
            sum_gy_xhat += g * xhat[n, c, p]
    return block_sum(partial, sum_gy), block_sum(partial, sum_gy_xhat)


@cuda.jit(device=True)
def _input_gradient(gy, xhat, inv_std, weight, gweight, gbias, training, relu, x, gx, n, c, p):
    """gx = (gy - [mean(gy) + xhat * mean(gy * xhat)]) * (inv_std * weight) for one value, and
    0 where x <= 0 when ``relu`` (the ReLU's gradient; x is its input)."""
    m = _typed(gy, gy.shape[0] * gy.shape[2])
    g = gy[n, c, p]
    if training:
        g = g - gbias[c] / m - xhat[n, c, p] * (gweight[c] / m)
    g = g * (inv_std[c] * weight[c])
    if relu and not x[n, c, p] > 0:
        g = g * _typed(gy, 0)  # as the reference's gx * (x > 0): 0, and NaN stays NaN
    gx[n, c, p] = g


# --- kernels: forward ---------------------------------------------------------------------------
@cuda.jit
def _chunk_stats(x, relu, partial_stats):
    """Block (k, c): mean and M2 of chunk k of channel c into partial_stats[0 and 1, c, k]."""
    partial = cuda.shared.array(THREADS, numba.float64)
    k, c = cuda.blockIdx.x, cuda.blockIdx.y
    _, mu, m2 = _chunk_moments(x, c, k, relu, partial)
    if cuda.threadIdx.x == 0:
        partial_stats[0, c, k] = mu
        partial_stats[1, c, k] = m2


@cuda.jit
def _combine_stats(partial_stats, m, mean, var, inv_std, running_mean, running_var, momentum, eps):
    """Thread c: channel c's chunks merged in chunk order (as ``_channel_forward`` merges them),
    then its statistics stored."""
    c = cuda.grid(1)
    if c >= mean.size:
        return
    count, mu, m2 = 0, 0.0, 0.0
    for k in range(partial_stats.shape[2]):
        count, mu, m2 = _merge(count, mu, m2, _chunk_count(k, m), partial_stats[0, c, k],
                               partial_stats[1, c, k])
    _store_stats(c, mu, m2 / count, count, mean, var, inv_std, running_mean, running_var,
                 momentum, eps)


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
    """Block c does all of channel c: its chunks' moments merged in order (as ``_chunk_stats``
    and ``_combine_stats``), a syncthreads, then the channel's values normalised."""
    partial = cuda.shared.array(THREADS, numba.float64)
    c, tid = cuda.blockIdx.x, cuda.threadIdx.x
    m = x.shape[0] * x.shape[2]
    count, mu, m2 = 0, 0.0, 0.0
    for k in range((m + CHUNK - 1) // CHUNK):
        count_k, mu_k, m2_k = _chunk_moments(x, c, k, relu, partial)
        count, mu, m2 = _merge(count, mu, m2, count_k, mu_k, m2_k)
    if tid == 0:
        _store_stats(c, mu, m2 / count, count, mean, var, inv_std, running_mean, running_var,
                     momentum, eps)
    cuda.syncthreads()  # mean[c] and inv_std[c] are written before anyone reads them
    for n in range(x.shape[0]):
        for p in range(tid, x.shape[2], cuda.blockDim.x):
            _normalize_value(x, mean, inv_std, weight, bias, relu, y, xhat, n, c, p)


# --- kernels: backward --------------------------------------------------------------------------
@cuda.jit
def _chunk_grad_sums(gy, xhat, partial_sums):
    """Block (k, c): the sums of gy and gy * xhat over chunk k of channel c into
    partial_sums[0 and 1, c, k]."""
    partial = cuda.shared.array(THREADS, numba.float64)
    k, c = cuda.blockIdx.x, cuda.blockIdx.y
    sum_gy, sum_gy_xhat = _chunk_sums(gy, xhat, c, k, partial)
    if cuda.threadIdx.x == 0:
        partial_sums[0, c, k] = sum_gy
        partial_sums[1, c, k] = sum_gy_xhat


@cuda.jit
def _combine_sums(partial_sums, gweight, gbias):
    """Thread c: gbias[c] = sum of gy, gweight[c] = sum of gy * xhat, the chunks added in order."""
    c = cuda.grid(1)
    if c >= gbias.size:
        return
    total_gy = 0.0
    total_gy_xhat = 0.0
    for k in range(partial_sums.shape[2]):
        total_gy += partial_sums[0, c, k]
        total_gy_xhat += partial_sums[1, c, k]
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
    """Block c does all of channel c: its chunks' sums added in order (as ``_chunk_grad_sums``
    and ``_combine_sums``), a syncthreads, then gx for the channel's values."""
    partial = cuda.shared.array(THREADS, numba.float64)
    c, tid = cuda.blockIdx.x, cuda.threadIdx.x
    total_gy = 0.0
    total_gy_xhat = 0.0
    for k in range((gy.shape[0] * gy.shape[2] + CHUNK - 1) // CHUNK):
        sum_gy, sum_gy_xhat = _chunk_sums(gy, xhat, c, k, partial)
        total_gy += sum_gy
        total_gy_xhat += sum_gy_xhat
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


def _values_per_channel(shape):
    return shape[0] * shape[2] * shape[3]


def _chunks(m):
    """Chunks of CHUNK values in a channel of m values (the last may be shorter)."""
    return math.ceil(m / CHUNK)


def forward(x, weight, bias, running_mean, running_var, training, momentum, eps, relu=False):
    """Same contract as reference.batchnorm.forward: (y, xhat, inv_std); of relu(x) when ``relu``."""
    xp = get_array_module(x)
    c, m = x.shape[1], _values_per_channel(x.shape)
    x3 = _planes(x)
    y = kernels.empty(xp, x3.shape, x.dtype)
    xhat = kernels.empty(xp, x3.shape, x.dtype)
    if training:
        mean = kernels.empty(xp, c, x.dtype)
        var = kernels.empty(xp, c, x.dtype)
        inv_std = kernels.empty(xp, c, x.dtype)
        stats = (mean, var, inv_std, running_mean, running_var, momentum, eps)
        if m <= ONE_KERNEL_MAX:
            kernels.launch(_channel_forward, c, THREADS, x3, *stats, relu, weight, bias, y, xhat)
            return y.reshape(x.shape), xhat.reshape(x.shape), inv_std
        partial_stats = kernels.empty(xp, (2, c, _chunks(m)), xp.float64)
        kernels.launch(_chunk_stats, (_chunks(m), c), THREADS, x3, relu, partial_stats)
        kernels.launch(_combine_stats, math.ceil(c / THREADS), THREADS, partial_stats, m, *stats)
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
    c, m = gy.shape[1], _values_per_channel(gy.shape)
    gy3, xhat3 = _planes(gy), _planes(xhat)
    gweight = kernels.empty(xp, c, gy.dtype)
    gbias = kernels.empty(xp, c, gy.dtype)
    gx = kernels.empty(xp, gy3.shape, gy.dtype)
    relu = relu_input is not None
    x3 = _planes(relu_input) if relu else xhat3  # (not read unless relu)
    if m <= ONE_KERNEL_MAX:
        kernels.launch(_channel_backward, c, THREADS, gy3, xhat3, inv_std, weight, bool(training),
                       relu, x3, gweight, gbias, gx)
    else:
        partial_sums = kernels.empty(xp, (2, c, _chunks(m)), xp.float64)
        kernels.launch(_chunk_grad_sums, (_chunks(m), c), THREADS, gy3, xhat3, partial_sums)
        kernels.launch(_combine_sums, math.ceil(c / THREADS), THREADS, partial_sums, gweight, gbias)
        kernels.launch(_grad_input, _plane_grid(gy3.shape), THREADS, gy3, xhat3, inv_std, weight,
                       gweight, gbias, bool(training), relu, x3, gx)
    return gx.reshape(gy.shape), gweight, gbias


def examples(dtype, array=np.zeros):
    """Forward and backward, fused ReLU on, training and eval, on a small batch (one kernel a
    pass) and a large one (statistics in chunks, then the elementwise kernels): every kernel
    here, for the kernel report (see kernels/__init__.py)."""
    c = array(3, dtype)
    calls = []
    for size, x in (("small", array((2, 3, 4, 5), dtype)), ("large", array((2, 3, 64, 64), dtype))):
        for mode, training in (("train", True), ("eval", False)):
            calls.append((f"{size} {mode} forward", lambda x=x, t=training: forward(
                x, c, c, c.copy(), c.copy(), t, 0.1, 1e-5, relu=True)))
            calls.append((f"{size} {mode} backward", lambda x=x, t=training: backward(
                x, x, c, c, t, relu_input=x)))
    return calls

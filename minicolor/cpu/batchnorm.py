"""batch_norm (and the fused ReLU + batch_norm), the fast CPU path.

Same functions, arguments and results as minicolor/reference/batchnorm.py (read that first for
the formulas). The reference makes a NumPy temporary for every step of the formula: relu(x),
x - mean, the products, the masks; each is a pass over the whole activation on one thread.
Here one compiled loop per channel does each pass, the channels spread over the cores:

    forward    mean (one pass over relu(x)), variance (a second), then xhat and y together
    backward   the sums of gy and gy * xhat (one pass), then gx, masked by x > 0 (a second)

The ReLU never makes an array of its own: it is applied where x is read. Each channel's sums
run in float64 on one thread in a fixed order, so results do not depend on the thread count.
Measured on the network's first batchnorm at batch 16 and 128 px (16 x 16 x 64 x 64), one core:
forward with the ReLU 7.1 ms -> 3.1 ms, backward 6.0 ms -> 2.3 ms (docs/cpu.md).
"""
import numpy as np
from numba import njit, prange

from . import threads


@njit(parallel=True, cache=True)
def _statistics(x, relu, mean, var):
    """Per channel: the mean and the biased variance of x (of relu(x) with ``relu``)."""
    n, c = x.shape[:2]
    m = x.size // c
    zero = x.dtype.type(0)
    for ch in prange(c):
        total = 0.0
        for img in range(n):
            for v in x[img, ch].ravel():
                if relu and v < zero:
                    v = zero
                total += v
        mu = total / m
        squares = 0.0
        for img in range(n):
            for v in x[img, ch].ravel():
                if relu and v < zero:
                    v = zero
                squares += (v - mu) * (v - mu)
        mean[ch] = mu
        var[ch] = squares / m


@njit(parallel=True, cache=True)
def _normalize(x, relu, mean, inv_std, weight, bias, y, xhat):
    """xhat = (x - mean) * inv_std and y = xhat * weight + bias, per channel."""
    n, c = x.shape[:2]
    zero = x.dtype.type(0)  # a 0 of x's dtype: with a Python 0 the arithmetic would be float64
    for job in prange(n * c):
        img, ch = job // c, job % c
        mu, s, w, b = mean[ch], inv_std[ch], weight[ch], bias[ch]
        src, xh, out = x[img, ch].ravel(), xhat[img, ch].ravel(), y[img, ch].ravel()
        for k in range(src.size):
            v = src[k]
            if relu and v < zero:
                v = zero
            h = (v - mu) * s
            xh[k] = h
            out[k] = h * w + b


def forward(x, weight, bias, running_mean, running_var, training, momentum, eps, relu=False):
    """Returns (y, xhat, inv_std); updates running_mean and running_var in place when training.
    With ``relu``, all of it for relu(x) = max(x, 0)."""
    threads.adapt()
    x = np.ascontiguousarray(x)
    c = x.shape[1]
    if training:
        m = x.size // c
        mean, var = np.empty(c), np.empty(c)
        _statistics(x, relu, mean, var)
        running_mean *= 1 - momentum
        running_mean += momentum * mean
        running_var *= 1 - momentum
        running_var += momentum * var * (m / (m - 1))
        mean, var = mean.astype(x.dtype), var.astype(x.dtype)
    else:
        mean, var = running_mean, running_var
    inv_std = (1 / np.sqrt(var + eps)).astype(x.dtype)
    y, xhat = np.empty_like(x), np.empty_like(x)
    _normalize(x, relu, mean.astype(x.dtype), inv_std, weight, bias, y, xhat)
    return y, xhat, inv_std


@njit(parallel=True, cache=True)
def _sums(gy, xhat, gbias, gweight):
    """Per channel: sum of gy and sum of gy * xhat over (N, H, W)."""
    n, c = gy.shape[:2]
    for ch in prange(c):
        sum_g, sum_gx = 0.0, 0.0
        for img in range(n):
            g, h = gy[img, ch].ravel(), xhat[img, ch].ravel()
            for k in range(g.size):
                sum_g += g[k]
                sum_gx += g[k] * h[k]
        gbias[ch] = sum_g
        gweight[ch] = sum_gx


@njit(parallel=True, cache=True)
def _grad_input(gy, xhat, scale, mean_g, mean_gx, relu_input, gx):
    """gx = (gy - mean_g - xhat * mean_gx) * scale, times (relu_input > 0) if it has any rows.

    In eval mode mean_g and mean_gx are zero: gx = gy * scale.
    """
    n, c = gy.shape[:2]
    masked = relu_input.shape[0] > 0
    zero = gy.dtype.type(0)
    for job in prange(n * c):
        img, ch = job // c, job % c
        a, b, s = mean_g[ch], mean_gx[ch], scale[ch]
        g, h, out = gy[img, ch].ravel(), xhat[img, ch].ravel(), gx[img, ch].ravel()
        if masked:
            x = relu_input[img, ch].ravel()
            for k in range(g.size):
                out[k] = (g[k] - a - h[k] * b) * s if x[k] > zero else zero
        else:
            for k in range(g.size):
                out[k] = (g[k] - a - h[k] * b) * s


def backward(gy, xhat, inv_std, weight, training, relu_input=None):
    """Returns (gx, gweight, gbias); gx with respect to ``relu_input`` when it is given (the x
    of forward with relu=True)."""
    threads.adapt()
    gy = np.ascontiguousarray(gy)
    c = gy.shape[1]
    sums = np.empty(c), np.empty(c)
    _sums(gy, xhat, *sums)
    gbias, gweight = (s.astype(gy.dtype) for s in sums)
    scale = (inv_std * weight).astype(gy.dtype)
    if training:
        m = gy.size // c
        mean_g, mean_gx = (gbias / m).astype(gy.dtype), (gweight / m).astype(gy.dtype)
    else:
        mean_g = mean_gx = np.zeros(c, gy.dtype)
    mask = np.empty((0,) + gy.shape[1:], gy.dtype) if relu_input is None else np.ascontiguousarray(relu_input)
    gx = np.empty_like(gy)
    _grad_input(gy, xhat, scale, mean_g, mean_gx, mask, gx)
    return gx, gweight, gbias

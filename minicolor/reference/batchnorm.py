"""batch_norm, the NumPy reference (per channel of NCHW, PyTorch's semantics).

Training:  mean and biased variance over (N, H, W) of each channel normalise x:
               xhat = (x - mean) / sqrt(var + eps),   y = weight * xhat + bias
           and the running estimates move towards them, with the *unbiased* variance:
               running_mean = (1 - momentum) * running_mean + momentum * mean
               running_var  = (1 - momentum) * running_var  + momentum * var * m / (m - 1)
           (m = N*H*W values per channel).
Eval:      the running estimates take the place of mean and var, and nothing is updated.

Backward in training mode, with g = dL/dxhat = dL/dy * weight and sums over (N, H, W):
    dL/dx = (g - mean(g) - xhat * mean(g * xhat)) / sqrt(var + eps)
because mean and var depend on x too. In eval mode they are constants: dL/dx = g / sqrt(...).
kernels/batchnorm.py computes the same sums with shared-memory reductions.

ReLU fused in: the network applies ReLU right before each batchnorm, so ``forward(...,
relu=True)`` normalises relu(x), and ``backward(..., relu_input=x)`` returns the gradient with
respect to that x: batchnorm's gx times the ReLU's mask (x > 0). Here that is literally the two
ops one after the other (the definition the fused kernels are checked against).
"""
from ..backend import get_array_module

AXES = (0, 2, 3)  # every axis but the channel


def _per_channel(v):
    return v.reshape(1, -1, 1, 1)


def forward(x, weight, bias, running_mean, running_var, training, momentum, eps, relu=False):
    """Returns (y, xhat, inv_std); updates running_mean and running_var in place when training.
    With ``relu``, all of it for relu(x) = max(x, 0)."""
    xp = get_array_module(x)
    if relu:
        x = xp.maximum(x, 0)
    if training:
        m = x.size // x.shape[1]
        mean = x.mean(axis=AXES)
        var = x.var(axis=AXES)
        running_mean *= 1 - momentum
        running_mean += momentum * mean
        running_var *= 1 - momentum
        running_var += momentum * var * (m / (m - 1))
    else:
        mean, var = running_mean, running_var
    inv_std = (1 / xp.sqrt(var + eps)).astype(x.dtype)
    xhat = (x - _per_channel(mean.astype(x.dtype))) * _per_channel(inv_std)
    y = xhat * _per_channel(weight) + _per_channel(bias)
    return y, xhat, inv_std


def backward(gy, xhat, inv_std, weight, training, relu_input=None):
    """Returns (gx, gweight, gbias); gx with respect to ``relu_input`` when it is given (the x
    of forward with relu=True)."""
    gx, gweight, gbias = _backward(gy, xhat, inv_std, weight, training)
    if relu_input is not None:
        gx = gx * (relu_input > 0)
    return gx, gweight, gbias


def _backward(gy, xhat, inv_std, weight, training):
    gweight = (gy * xhat).sum(axis=AXES)
    gbias = gy.sum(axis=AXES)
    scale = inv_std * weight
    if not training:
        return gy * _per_channel(scale), gweight, gbias
    m = gy.size // gy.shape[1]
    # mean(g) and mean(g * xhat) per channel, written with gy's sums (g = gy * weight)
    gx = gy - _per_channel(gbias / m) - xhat * _per_channel(gweight / m)
    return gx * _per_channel(scale), gweight, gbias

"""mse_loss, the NumPy reference: mean((pred - target)^2) and its gradient 2 (pred - target) / n."""


from ..backend import get_array_module


def forward(pred, target):
    """Returns (loss as a 0-d array, diff); backward needs only diff."""
    xp = get_array_module(pred)
    diff = pred - target
    return xp.asarray((diff * diff).mean()), diff


def backward(g, diff):
    """g is dL/dloss (a scalar array); returns dL/dpred."""
    return diff * (g * (2.0 / diff.size)).astype(diff.dtype)

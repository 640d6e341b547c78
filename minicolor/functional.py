"""Differentiable layers as functions: conv2d, batch_norm, relu, leaky_relu, upsample, mse_loss,
and the fused relu_batch_norm (a ReLU feeding a batchnorm, as one op).

Each layer is a ``Function`` whose forward and backward call an implementation of the same
arithmetic, which ``backend.implementation(op, device)`` picks from the device of the input
(backend.py holds the table, the one place that chooses):

    minicolor/reference/<op>.py   NumPy, written against xp: the oracle (every op has one)
    minicolor/cpu/<op>.py         the fast CPU path: compiled Numba loops, Winograd ("cpu";
                                  MINICOLOR_CPU=reference runs the references there instead)
    kernels/<op>.py               hand-written Numba CUDA kernels ("cuda", "sim")

All expose the same functions with the same arguments, so the Function reads the same
whichever runs. The public functions check their arguments first and say what was
expected and what was given.
"""
import numbers

from . import backend
from .backend import implementation
from .reference.conv2d import output_size
from .tensor import Function, Tensor


# --- conv2d ----------------------------------------------------------------------------
class Conv2d(Function):
    def __init__(self, stride, padding, dilation):
        self.stride, self.padding, self.dilation = stride, padding, dilation

    def forward(self, x, w, b=None):
        self.impl = implementation("conv2d", self.device)
        self.x_shape, self.w_shape, self.has_bias = x.shape, w.shape, b is not None
        self.w = w
        y, self.saved = self.impl.forward(x, w, b, self.stride, self.padding, self.dilation)
        return y

    def backward(self, gy):
        geometry = (self.stride, self.padding, self.dilation)
        x, w = self.inputs[0], self.inputs[1]
        gx = (self.impl.backward_data(gy, self.w, self.x_shape, *geometry, saved=self.saved)
              if x.requires_grad else None)
        gw = gb = None
        if w.requires_grad or (self.has_bias and self.inputs[2].requires_grad):
            gw, gb = self.impl.backward_weight(gy, self.saved, self.w_shape, *geometry)
        return (gx, gw, gb) if self.has_bias else (gx, gw)


def _pair(value, name, minimum):
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) for v in pair):
        raise TypeError(f"conv2d: {name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"conv2d: {name} must be >= {minimum}, got {value!r}")
    return pair


def _check_float(t, op, name):
    if t.dtype.kind != "f":
        raise TypeError(f"{op}: {name} must be float32 or float64, got dtype {t.dtype}")


def conv2d(x, w, b=None, stride=1, padding=0, dilation=1):
    """2-D convolution (cross-correlation, as in PyTorch) of NCHW ``x`` with ``w`` (F, C, kh, kw).

    stride, padding (zeros) and dilation are ints or (height, width) pairs.
    """
    stride = _pair(stride, "stride", 1)
    padding = _pair(padding, "padding", 0)
    dilation = _pair(dilation, "dilation", 1)
    if x.ndim != 4:
        raise ValueError(f"conv2d: x must have shape (N, C, H, W), got shape {tuple(x.shape)}")
    if w.ndim != 4:
        raise ValueError(f"conv2d: w must have shape (F, C, kh, kw), got shape {tuple(w.shape)}")
    _check_float(x, "conv2d", "x")
    if w.dtype != x.dtype:
        raise TypeError(f"conv2d: w has dtype {w.dtype}, x has {x.dtype}; they must match")
    if x.shape[1] != w.shape[1]:
        raise ValueError(
            f"conv2d: x has {x.shape[1]} channels (shape {tuple(x.shape)}) but w expects "
            f"{w.shape[1]} (shape {tuple(w.shape)})"
        )
    for axis, name in ((2, "height"), (3, "width")):
        i = axis - 2
        if output_size(x.shape[axis], w.shape[axis], stride[i], padding[i], dilation[i]) < 1:
            extent = dilation[i] * (w.shape[axis] - 1) + 1
            raise ValueError(
                f"conv2d: kernel {name} {w.shape[axis]} (dilation {dilation[i]}) spans {extent} "
                f"pixels, more than the padded input {name} {x.shape[axis] + 2 * padding[i]}"
            )
    if b is not None and tuple(b.shape) != (w.shape[0],):
        raise ValueError(f"conv2d: b must have shape ({w.shape[0]},), got {tuple(b.shape)}")
    args = (x, w) if b is None else (x, w, b)
    return Conv2d(stride, padding, dilation)(*args)


# --- batch_norm ------------------------------------------------------------------------
class BatchNorm(Function):
    def __init__(self, running_mean, running_var, training, momentum, eps, relu=False):
        self.running_mean, self.running_var = running_mean, running_var
        self.training, self.momentum, self.eps, self.relu = training, momentum, eps, relu

    def forward(self, x, weight, bias):
        self.impl = implementation("batchnorm", self.device)
        self.weight = weight
        self.relu_input = x if self.relu else None  # the ReLU's gradient mask comes from x
        y, self.xhat, self.inv_std = self.impl.forward(
            x, weight, bias, self.running_mean, self.running_var,
            self.training, self.momentum, self.eps, relu=self.relu,
        )
        return y

    def backward(self, gy):
        return self.impl.backward(gy, self.xhat, self.inv_std, self.weight, self.training,
                                  relu_input=self.relu_input)


def batch_norm(x, weight, bias, running_mean, running_var, training, momentum=0.1, eps=1e-5):
    """Batch normalisation over (N, H, W) per channel of NCHW ``x`` (see reference/batchnorm.py).

    ``running_mean`` and ``running_var`` are plain arrays, updated in place when training.
    """
    return _batch_norm("batch_norm", x, weight, bias, running_mean, running_var, training,
                       momentum, eps, relu=False)


def relu_batch_norm(x, weight, bias, running_mean, running_var, training, momentum=0.1, eps=1e-5):
    """``batch_norm(relu(x), ...)`` as one op: the ReLU is applied inside batchnorm's kernels as
    they read x, and its output is never stored (see kernels/batchnorm.py). The network uses
    it where a ReLU feeds a batchnorm (nn.Sequential finds those pairs)."""
    return _batch_norm("relu_batch_norm", x, weight, bias, running_mean, running_var, training,
                       momentum, eps, relu=True)


def _batch_norm(op, x, weight, bias, running_mean, running_var, training, momentum, eps, relu):
    if x.ndim != 4:
        raise ValueError(f"{op}: x must have shape (N, C, H, W), got shape {tuple(x.shape)}")
    _check_float(x, op, "x")
    c = x.shape[1]
    for name, v in (("weight", weight), ("bias", bias), ("running_mean", running_mean),
                    ("running_var", running_var)):
        if tuple(v.shape) != (c,):
            raise ValueError(f"{op}: {name} must have shape ({c},) for x of shape "
                             f"{tuple(x.shape)}, got {tuple(v.shape)}")
    if training and x.size // c < 2:
        raise ValueError(f"{op}: training needs more than one value per channel, "
                         f"got x of shape {tuple(x.shape)}")
    running_mean = running_mean.data if isinstance(running_mean, Tensor) else running_mean
    running_var = running_var.data if isinstance(running_var, Tensor) else running_var
    return BatchNorm(running_mean, running_var, training, momentum, eps, relu)(x, weight, bias)


# --- relu --------------------------------------------------------------------------------
class ReLU(Function):
    def forward(self, x):
        self.impl = implementation("relu", self.device)
        self.y = self.impl.forward(x)  # backward's mask: y > 0 exactly where x > 0
        return self.y

    def backward(self, gy):
        return self.impl.backward(gy, self.y)


def relu(x):
    return ReLU()(x)


# --- leaky_relu --------------------------------------------------------------------------
class LeakyReLU(Function):
    def __init__(self, negative_slope):
        self.negative_slope = negative_slope

    def forward(self, x):
        self.impl = implementation("leaky_relu", self.device)
        self.x = x  # backward needs to know which side of zero each element was on
        return self.impl.forward(x, self.negative_slope)

    def backward(self, gy):
        return self.impl.backward(gy, self.x, self.negative_slope)


def leaky_relu(x, negative_slope=0.01):
    """x where x > 0, else negative_slope * x (PyTorch's default slope, 0.01); see
    reference/leaky_relu.py."""
    if isinstance(negative_slope, bool) or not isinstance(negative_slope, numbers.Real):
        raise TypeError(f"leaky_relu: negative_slope must be a number, got {negative_slope!r}")
    _check_float(x, "leaky_relu", "x")
    return LeakyReLU(float(negative_slope))(x)


# --- upsample ----------------------------------------------------------------------------
class Upsample(Function):
    def __init__(self, scale, mode):
        self.scale, self.mode = scale, mode

    def forward(self, x):
        self.impl = implementation("upsample", self.device)
        self.x_shape = x.shape
        return self.impl.forward(x, self.scale, self.mode)

    def backward(self, gy):
        return self.impl.backward(gy, self.x_shape, self.scale, self.mode)


def upsample(x, scale_factor, mode="nearest"):
    """Enlarge the last two axes of NCHW ``x`` by an integer factor ("nearest" or "bilinear").

    Bilinear follows PyTorch's ``align_corners=False``.
    """
    if mode not in ("nearest", "bilinear"):
        raise ValueError(f"upsample: mode must be 'nearest' or 'bilinear', got {mode!r}")
    if not isinstance(scale_factor, int) or scale_factor < 1:
        raise ValueError(f"upsample: scale_factor must be a positive int, got {scale_factor!r}")
    if x.ndim != 4:
        raise ValueError(f"upsample: x must have shape (N, C, H, W), got shape {tuple(x.shape)}")
    _check_float(x, "upsample", "x")
    return Upsample(scale_factor, mode)(x)


# --- mse_loss ----------------------------------------------------------------------------
class MSELoss(Function):
    def forward(self, pred, target):
        self.impl = implementation("mse", self.device)
        loss, self.diff = self.impl.forward(pred, target)
        return loss

    def backward(self, g):
        return self.impl.backward(g, self.diff), None


def mse_loss(pred, target):
    """mean((pred - target)^2) over every element, as a scalar tensor."""
    if tuple(pred.shape) != tuple(target.shape):
        raise ValueError(f"mse_loss: pred has shape {tuple(pred.shape)} but target has "
                         f"{tuple(target.shape)}; they must match")
    _check_float(pred, "mse_loss", "pred")
    return MSELoss()(pred, target)


# --- classification (Zhang et al.): see reference/classify.py ----------------------------------
class SoftmaxCrossEntropy(Function):
    def __init__(self, target, weight):
        self.target, self.weight = target, weight

    def forward(self, logits):
        self.impl = implementation("classify", self.device)
        loss, self.probs = self.impl.cross_entropy_forward(logits, self.target, self.weight)
        return loss

    def backward(self, g):
        return self.impl.cross_entropy_backward(g, self.probs, self.target, self.weight)


def softmax_cross_entropy(logits, target, weight=None):
    """Mean over pixels of weight * cross-entropy(softmax(logits), target), classes on axis 1.

    logits (N, Q, h, w) tensor; target (N, Q, h, w) array of distributions; weight (N, h, w)
    array (default: all ones).
    """
    target = target.data if isinstance(target, Tensor) else target
    if logits.ndim != 4 or tuple(target.shape) != tuple(logits.shape):
        raise ValueError(f"softmax_cross_entropy: logits {tuple(logits.shape)} and target "
                         f"{tuple(target.shape)} must both have shape (N, Q, h, w)")
    xp = backend.get_array_module(logits.data)
    if weight is None:
        weight = xp.ones((logits.shape[0],) + tuple(logits.shape[2:]), dtype=logits.dtype)
    weight = weight.data if isinstance(weight, Tensor) else weight
    if tuple(weight.shape) != (logits.shape[0],) + tuple(logits.shape[2:]):
        raise ValueError(f"softmax_cross_entropy: weight has shape {tuple(weight.shape)}, "
                         f"expected {(logits.shape[0],) + tuple(logits.shape[2:])}")
    return SoftmaxCrossEntropy(target, weight)(logits)


class AnnealedMean(Function):
    def __init__(self, centers, temperature):
        self.centers, self.temperature = centers, temperature

    def forward(self, logits):
        self.impl = implementation("classify", self.device)
        self.ab, self.p = self.impl.annealed_mean_forward(logits, self.centers, self.temperature)
        return self.ab

    def backward(self, g):
        return self.impl.annealed_mean_backward(g, self.p, self.ab, self.centers, self.temperature)


def annealed_mean(logits, centers, temperature=0.38):
    """Decode logits (N, Q, h, w) to ab (N, 2, h, w): the mean of the bin ``centers`` (Q, 2)
    under softmax(logits / temperature)."""
    if logits.ndim != 4 or logits.shape[1] != centers.shape[0]:
        raise ValueError(f"annealed_mean: logits {tuple(logits.shape)} must have shape "
                         f"(N, {centers.shape[0]}, h, w) for {centers.shape[0]} bin centers")
    if temperature <= 0:
        raise ValueError(f"annealed_mean: temperature must be positive, got {temperature}")
    return AnnealedMean(centers, temperature)(logits)

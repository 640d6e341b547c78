"""The autograd engine: Tensor, Function, backward and no_grad.

A ``Tensor`` wraps an array (``.data``: NumPy on the CPU, CuPy on the GPU) and, once
``backward`` has run, the gradient of some scalar with respect to it (``.grad``, a plain
array of the same module and shape).

A ``Function`` is one differentiable operation. Calling it on tensors runs ``forward`` on
their arrays, and, unless ``no_grad()`` is active or no input requires a gradient,
remembers the inputs so that ``backward`` can later turn the output's gradient into the
inputs' gradients. The recorded functions form a graph; ``Tensor.backward`` walks it in
reverse topological order (an explicit stack, so deep graphs hit no recursion limit).

Gradients *accumulate*: calling ``backward`` twice adds the second gradient to the first,
as in PyTorch. Call ``zero_grad`` (or the optimizer's) between steps.
"""
import contextlib

import numpy as np

from . import backend

_grad_enabled = True


@contextlib.contextmanager
def no_grad():
    """Within this block, operations build no graph (for inference and optimizer steps)."""
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = previous


def is_grad_enabled():
    return _grad_enabled


class Tensor:
    """An array, the device it lives on, and (optionally) its gradient."""

    __array_priority__ = 100  # so that ``ndarray * Tensor`` calls Tensor.__rmul__

    def __init__(self, data, requires_grad=False, device=None):
        if isinstance(data, Tensor):
            data = data.data
        if device is None:
            device = backend.device_of(data)
        if not hasattr(data, "dtype") or not backend.holds(device, data):
            data = backend.as_array(data, device)
        if data.dtype.kind not in "fc" and requires_grad:
            raise TypeError(f"only floating-point tensors can require grad, got dtype {data.dtype}")
        self.data = data
        self.device = device
        self.requires_grad = bool(requires_grad)
        self.grad = None
        self.creator = None  # the Function that made this tensor, if any
        self.generation = 0  # depth in the graph, orders the backward pass

    # --- what it is -------------------------------------------------------------------
    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: self.data.size)

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor(shape={self.shape}, dtype={self.dtype}, device={self.device!r}{grad})"

    def numpy(self):
        """A host (NumPy) copy of the data."""
        return np.array(backend.to_numpy(self.data))

    def item(self):
        return self.numpy().item()

    def detach(self):
        """The same data, cut from the graph."""
        return Tensor(self.data, device=self.device)

    def to(self, device):
        """A copy on ``device`` (or this tensor, if it is already there)."""
        backend.check_device(device)
        if device == self.device:
            return self
        return Tensor(backend.as_array(self.data, device), self.requires_grad, device)

    def astype(self, dtype):
        return Tensor(self.data.astype(dtype), self.requires_grad, self.device)

    def zero_grad(self):
        self.grad = None

    # --- backward ---------------------------------------------------------------------
    def backward(self, grad=None):
        """Add d(self)/d(leaf) * grad to the ``.grad`` of every leaf that requires grad.

        ``grad`` defaults to 1 for a scalar; for any other shape it must be given.
        """
        if grad is None:
            if self.size != 1:
                raise RuntimeError(
                    f"backward() without a gradient needs a scalar, got shape {self.shape}; "
                    "pass grad= of the same shape"
                )
            grad = backend.get_array_module(self.data).ones_like(self.data)
        else:
            grad = grad.data if isinstance(grad, Tensor) else grad
            if tuple(grad.shape) != tuple(self.shape):
                raise ValueError(f"grad has shape {tuple(grad.shape)}, expected {self.shape}")

        grads = {id(self): grad}  # gradients flowing into non-leaf tensors, by tensor id
        for t in _reverse_topological(self):
            g = grads.pop(id(t), None)
            if g is None:
                continue
            if t.creator is None:  # a leaf: accumulate
                if t.requires_grad:
                    t.grad = g if t.grad is None else t.grad + g
                continue
            f = t.creator
            in_grads = f.backward(g)
            if not isinstance(in_grads, tuple):
                in_grads = (in_grads,)
            for x, gx in zip(f.inputs, in_grads):
                if gx is None or not x.requires_grad:
                    continue
                gx = _sum_to(gx, x.shape)
                grads[id(x)] = gx if id(x) not in grads else grads[id(x)] + gx

    # --- arithmetic (each is a Function below) -----------------------------------------
    def __add__(self, other):
        return Add()(self, other)

    def __radd__(self, other):
        return Add()(other, self)

    def __sub__(self, other):
        return Sub()(self, other)

    def __rsub__(self, other):
        return Sub()(other, self)

    def __mul__(self, other):
        return Mul()(self, other)

    def __rmul__(self, other):
        return Mul()(other, self)

    def __truediv__(self, other):
        return Div()(self, other)

    def __rtruediv__(self, other):
        return Div()(other, self)

    def __neg__(self):
        return Neg()(self)

    def __pow__(self, exponent):
        return Pow(exponent)(self)

    def sum(self, axis=None, keepdims=False):
        return Sum(axis, keepdims)(self)

    def mean(self, axis=None, keepdims=False):
        total = self.sum(axis, keepdims)
        return total * (total.size / self.size)

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return Reshape(shape)(self)


def tensor(data, requires_grad=False, device="cpu", dtype=None):
    """Make a Tensor from array-like ``data`` on ``device`` ("cpu", "cuda" or "sim")."""
    backend.check_device(device)
    return Tensor(backend.as_array(data, device, dtype), requires_grad, device)


def _reverse_topological(root):
    """Tensors reachable from ``root``, each after every tensor that depends on it."""
    order, seen = [], set()
    stack = [(root, False)]
    while stack:
        t, children_done = stack.pop()
        if children_done:
            order.append(t)
            continue
        if id(t) in seen:
            continue
        seen.add(id(t))
        stack.append((t, True))
        if t.creator is not None:
            for x in t.creator.inputs:
                if id(x) not in seen:
                    stack.append((x, False))
    return reversed(order)


def _sum_to(grad, shape):
    """Sum ``grad`` over the axes that broadcasting added or stretched to reach ``shape``."""
    shape = tuple(shape)
    if tuple(grad.shape) == shape:
        return grad
    lead = grad.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and grad.shape[lead + i] != 1
    )
    grad = grad.sum(axis=axes, keepdims=True)
    return grad.reshape(shape)


class Function:
    """One differentiable operation on arrays.

    Subclasses implement ``forward(*arrays) -> array`` (saving on ``self`` what backward
    needs) and ``backward(grad_out) -> grad or tuple of grads``, one per input (None for an
    input that needs none). Gradients may have a broadcast shape; the engine sums them
    back to each input's shape.
    """

    def __call__(self, *inputs):
        inputs = [_as_tensor(x, inputs) for x in inputs]
        devices = {x.device for x in inputs}
        if len(devices) > 1:
            raise ValueError(f"{type(self).__name__}: inputs are on different devices {sorted(devices)}")
        self.device = inputs[0].device
        out = Tensor(self.forward(*[x.data for x in inputs]), device=self.device)
        if _grad_enabled and any(x.requires_grad for x in inputs):
            out.requires_grad = True
            out.creator = self
            out.generation = max(x.generation for x in inputs) + 1
            self.inputs = inputs
        return out

    def forward(self, *xs):
        raise NotImplementedError

    def backward(self, grad_out):
        raise NotImplementedError


def _as_tensor(x, inputs):
    if isinstance(x, Tensor):
        return x
    like = next(t for t in inputs if isinstance(t, Tensor))
    xp = backend.get_array_module(like.data)
    return Tensor(xp.asarray(x, dtype=like.dtype), device=like.device)


class Add(Function):
    def forward(self, a, b):
        return a + b

    def backward(self, g):
        return g, g


class Sub(Function):
    def forward(self, a, b):
        return a - b

    def backward(self, g):
        return g, -g


class Mul(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return a * b

    def backward(self, g):
        return g * self.b, g * self.a


class Div(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return a / b

    def backward(self, g):
        gb = -g * self.a / (self.b * self.b)
        return g / self.b, gb


class Neg(Function):
    def forward(self, a):
        return -a

    def backward(self, g):
        return -g


class Pow(Function):
    def __init__(self, exponent):
        if not isinstance(exponent, (int, float)):
            raise TypeError(f"pow takes a Python int or float exponent, got {type(exponent).__name__}")
        self.exponent = exponent

    def forward(self, a):
        self.a = a
        return a**self.exponent

    def backward(self, g):
        return g * self.exponent * self.a ** (self.exponent - 1)


class Sum(Function):
    def __init__(self, axis=None, keepdims=False):
        self.axis, self.keepdims = axis, keepdims

    def forward(self, a):
        self.shape = a.shape
        return a.sum(axis=self.axis, keepdims=self.keepdims)

    def backward(self, g):
        xp = backend.get_array_module(g)
        if not self.keepdims and self.axis is not None:
            axes = (self.axis,) if isinstance(self.axis, int) else self.axis
            axes = sorted(a % len(self.shape) for a in axes)
            for ax in axes:
                g = xp.expand_dims(g, ax)
        return xp.broadcast_to(g, self.shape).copy()


class Reshape(Function):
    def __init__(self, shape):
        self.shape = shape

    def forward(self, a):
        self.in_shape = a.shape
        return a.reshape(self.shape)

    def backward(self, g):
        return g.reshape(self.in_shape)

"""Optimizers: SGD (with momentum) and Adam, updating parameters in place.

Both follow PyTorch's formulas and defaults, so results can be compared line by line.
The updates run under no_grad on the raw arrays (``p.data``), touching no graph.

The hyperparameters (``lr`` and the others) are plain attributes: change ``opt.lr`` between steps
for a schedule or a warm-up. The update itself does not read them as Python numbers, though: each
step first copies them into a small float64 array on the parameters' device, ``opt.hyper``
(``refresh``: only when they changed, so a normal step makes no transfer), and the update reads
that array. On the CPU this changes nothing but where a number comes from. It matters for a
CUDA graph (graph.py): a replay runs the recorded kernels and no Python, so a Python float
would stay at its value of the capture step for ever, while an array on the device is read
afresh by every replay; the graph calls ``refresh`` before each replay, outside the graph.
A device number is rounded to the parameters' dtype once per step (``_coefficients``), exactly
as NumPy and CuPy round a Python float when it meets an array, so both give the same bits.
"""
import math

import numpy as np

from . import backend


class Optimizer:
    def __init__(self, params, lr):
        self.params = list(params)
        if not self.params:
            raise ValueError(f"{type(self).__name__}: got no parameters to optimise")
        if lr <= 0:
            raise ValueError(f"{type(self).__name__}: lr must be positive, got {lr}")
        self.lr = lr
        self.hyper = None  # the hyperparameters on the parameters' device (float64), see refresh
        self._copied = None  # the values last copied into it

    def hyperparameters(self):
        """The numbers the update uses, as Python floats, in the order of ``self.hyper``."""
        return (self.lr,)

    def branches(self):
        """Which optional terms of the update are on (a value zero or not): what the step's
        Python ``if`` statements decide. A CUDA graph bakes in the branches it recorded, so it
        is captured again when these change (graph.StepGraph)."""
        return ()

    def refresh(self):
        """Copy the hyperparameters into ``self.hyper`` if they changed since the last copy, and
        return ``branches()``. Every step calls it first; a CUDA graph calls it before every
        replay (a replay runs no Python), on its stream but outside the graph."""
        values = tuple(float(v) for v in self.hyperparameters())
        if self.hyper is None:
            xp = backend.get_array_module(self.params[0].data)
            self.hyper = xp.asarray(values, dtype=xp.float64)
        elif values != self._copied:
            xp = backend.get_array_module(self.hyper)
            self.hyper[...] = xp.asarray(values, dtype=xp.float64)  # in place: a graph holds its address
        self._copied = values
        return self.branches()

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def step(self):
        self.refresh()
        self._rounded = {}
        for i, p in enumerate(self.params):
            if p.grad is not None:
                self.update(i, p.data, p.grad)

    def _coefficients(self, dtype):
        """The hyperparameters as ``dtype`` values, rounded once per step and dtype (a Python
        float meeting a ``dtype`` array is rounded the same way, so the bits are the same)."""
        if dtype not in self._rounded:
            self._rounded[dtype] = tuple(self.hyper.astype(dtype))
        return self._rounded[dtype]

    def update(self, i, param, grad):
        raise NotImplementedError

    # Optimizer state as a flat dict of arrays, so checkpoints hold it without pickling.
    def state_dict(self):
        raise NotImplementedError

    def load_state_dict(self, state):
        raise NotImplementedError


class SGD(Optimizer):
    """v = momentum * v + grad;  param -= lr * v   (plain SGD when momentum is 0)."""

    def __init__(self, params, lr=0.01, momentum=0.0, weight_decay=0.0):
        super().__init__(params, lr)
        self.momentum, self.weight_decay = momentum, weight_decay
        self.velocity = [None] * len(self.params)

    def hyperparameters(self):
        return (self.lr, self.momentum, self.weight_decay)

    def branches(self):
        return (self.momentum != 0, self.weight_decay != 0)

    def update(self, i, param, grad):
        lr, momentum, weight_decay = self._coefficients(param.dtype)  # self.hyper, in param's dtype
        if self.weight_decay:
            grad = grad + weight_decay * param
        if self.momentum:
            if self.velocity[i] is None:
                self.velocity[i] = grad.copy()
            else:
                self.velocity[i] *= momentum
                self.velocity[i] += grad
            grad = self.velocity[i]
        param -= lr * grad

    def state_dict(self):
        return {f"velocity.{i}": backend.to_numpy(v) for i, v in enumerate(self.velocity) if v is not None}

    def load_state_dict(self, state):
        for i, p in enumerate(self.params):
            key = f"velocity.{i}"
            self.velocity[i] = backend.as_array(state[key], p.device) if key in state else None


class Adam(Optimizer):
    """Adam (Kingma and Ba 2015) with bias correction, PyTorch's defaults.

        m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2
        param -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

    Every parameter's ``.data`` becomes a view into one flat buffer (``FlatBuffers``), so one
    step updates them all at once, through the implementation that the device's table picks
    (``backend.implementation("adam", device)``): reference/adam.py on "cpu" (NumPy array code),
    kernels/adam.py on "cuda" and "sim" (two kernel launches a step). Both give the same numbers.

    The step number t lives on the device (``count``, as the hyperparameters do in ``hyper``),
    and each step works out its constants there: a CUDA graph's replay then uses the right bias
    correction every time.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr)
        self.betas, self.eps, self.weight_decay = betas, eps, weight_decay
        self.flat = FlatBuffers(self.params)
        self.count = self.flat.xp.zeros(1, np.float64)  # the step number t (exact to 2^53)
        self.m, self.v = self.flat.views(self.flat.m), self.flat.views(self.flat.v)

    def hyperparameters(self):
        return (self.lr, *self.betas, self.eps, self.weight_decay)

    def branches(self):
        return (self.weight_decay != 0,)

    @property
    def t(self):
        """The number of steps taken (it lives on the device: reading it waits for the GPU)."""
        return int(backend.to_numpy(self.count)[0])

    @t.setter
    def t(self, value):
        self.count[...] = value

    def step(self):
        self.refresh()
        self.flat.step(self.params, self.count, self.hyper)

    def state_dict(self):
        state = {"t": np.asarray(self.t)}
        for i in range(len(self.params)):
            state[f"m.{i}"] = backend.to_numpy(self.m[i])
            state[f"v.{i}"] = backend.to_numpy(self.v[i])
        return state

    def load_state_dict(self, state):
        self.t = int(state["t"])
        for i, p in enumerate(self.params):
            for name, slot in (("m", self.m), ("v", self.v)):
                value = state[f"{name}.{i}"]
                if tuple(value.shape) != tuple(p.shape):
                    raise ValueError(f"Adam state {name}.{i} has shape {tuple(value.shape)}, "
                                     f"parameter {i} has {tuple(p.shape)}")
                slot[i][...] = backend.as_array(value, p.device, p.dtype)  # views: fill in place


class FlatBuffers:
    """Adam's state in four flat buffers: parameters, gradients and both moments.

    Parameter i occupies ``param[offsets[i]:offsets[i] + size_i]``, its ``.data`` a view of that
    slice; offsets are rounded up to ALIGN elements, and the gaps stay zero in every buffer (a
    zero gradient leaves a zero parameter where it is). ``coef`` holds the step's constants in
    the parameters' dtype, worked out on the device by the first call of each step. The
    parameters must share one device and one floating dtype (give each dtype an optimizer).
    """

    ALIGN = 64  # elements: each parameter starts on a 256-byte boundary (float32)

    def __init__(self, params):
        devices, dtypes = {p.device for p in params}, {p.dtype for p in params}
        if len(devices) != 1 or len(dtypes) != 1 or next(iter(dtypes)).kind != "f":
            raise ValueError(f"Adam: the parameters must share one device and one floating dtype, "
                             f"got devices {sorted(devices)} and dtypes {sorted(map(str, dtypes))}")
        device, dtype = devices.pop(), dtypes.pop()
        self.impl = backend.implementation("adam", device)  # reference/adam.py or kernels/adam.py
        self.xp = xp = backend.array_module(device)
        self.offsets, total = [], 0
        for p in params:
            self.offsets.append(total)
            total += -(-p.size // self.ALIGN) * self.ALIGN
        self.offsets.append(total)
        self.shapes = [p.shape for p in params]
        self.param = xp.zeros(total, dtype)
        self.grad, self.m, self.v = xp.zeros(total, dtype), xp.zeros(total, dtype), xp.zeros(total, dtype)
        self.param_views, self.grad_views = self.views(self.param), self.views(self.grad)
        for p, view in zip(params, self.param_views):
            view[...] = p.data
            p.data = view
        self.coef = xp.zeros(self.impl.COEF_SIZE, dtype)

    def views(self, flat):
        """One view of ``flat`` per parameter, in the parameter's shape."""
        return [flat[a:a + math.prod(shape)].reshape(shape)
                for a, shape in zip(self.offsets, self.shapes)]

    def step(self, params, count, hyper):
        """One Adam step of every parameter that has a gradient: ``count`` holds t (advanced
        here), ``hyper`` (lr, b1, b2, eps, weight decay), both float64 on the device."""
        with_grad = []
        for i, (p, view, grad_view) in enumerate(zip(params, self.param_views, self.grad_views)):
            if p.data is not view:  # someone replaced .data (e.g. p.data = ...): take it back in
                view[...] = p.data
                p.data = view
            if p.grad is not None:
                grad_view[...] = p.grad  # the one copy per parameter: gradients arrive separately
                with_grad.append(i)
        self.impl.advance(count, hyper, self.coef)
        for first, last in _runs(with_grad):  # all of them, usually: one call
            a, b = self.offsets[first], self.offsets[last + 1]
            self.impl.update(self.param[a:b], self.grad[a:b], self.m[a:b], self.v[a:b], self.coef)


def _runs(indices):
    """Maximal runs of consecutive integers in sorted ``indices``, as (first, last) pairs."""
    runs = []
    for i in indices:
        if runs and runs[-1][1] == i - 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return runs


def by_name(name, params, lr):
    """The Trainer's optimizers by name: "adam" (PyTorch's defaults) or "sgd" (momentum 0.9)."""
    if name == "adam":
        return Adam(params, lr=lr)
    if name == "sgd":
        return SGD(params, lr=lr, momentum=0.9)
    raise ValueError(f"optimizer must be 'adam' or 'sgd', got {name!r}")

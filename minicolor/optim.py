"""Optimizers: SGD (with momentum) and Adam, updating parameters in place.

Both follow PyTorch's formulas and defaults, so results can be compared line by line.
The updates run under no_grad on the raw arrays (``p.data``), touching no graph.
"""
import math

from . import backend


class Optimizer:
    def __init__(self, params, lr):
        self.params = list(params)
        if not self.params:
            raise ValueError(f"{type(self).__name__}: got no parameters to optimise")
        if lr <= 0:
            raise ValueError(f"{type(self).__name__}: lr must be positive, got {lr}")
        self.lr = lr

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def step(self):
        for i, p in enumerate(self.params):
            if p.grad is not None:
                self.update(i, p.data, p.grad)

    def update(self, i, param, grad):
        raise NotImplementedError

    # Optimizer state as a flat dict of arrays, so checkpoints hold it without pickling.
    def state_dict(self):
        raise NotImplementedError

    def load_state_dict(self, state):
        raise NotImplementedError


def _zeros_like(a):
    return backend.get_array_module(a).zeros_like(a)


class SGD(Optimizer):
    """v = momentum * v + grad;  param -= lr * v   (plain SGD when momentum is 0)."""

    def __init__(self, params, lr=0.01, momentum=0.0, weight_decay=0.0):
        super().__init__(params, lr)
        self.momentum, self.weight_decay = momentum, weight_decay
        self.velocity = [None] * len(self.params)

    def update(self, i, param, grad):
        if self.weight_decay:
            grad = grad + self.weight_decay * param
        if self.momentum:
            if self.velocity[i] is None:
                self.velocity[i] = grad.copy()
            else:
                self.velocity[i] *= self.momentum
                self.velocity[i] += grad
            grad = self.velocity[i]
        param -= self.lr * grad

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

    ``update`` below is the reference: NumPy or CuPy, one parameter at a time. On the "cuda"
    and "sim" devices (parameters all of one float dtype) the step runs kernels/adam.py
    instead: every parameter's ``.data`` becomes a view into one flat buffer, and one kernel
    updates them all (see ``FlatBuffers``). Both give the same numbers, to rounding.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr)
        self.betas, self.eps, self.weight_decay = betas, eps, weight_decay
        self.flat = FlatBuffers.for_params(self.params)
        if self.flat is None:
            self._t = 0
            self.m = [_zeros_like(p.data) for p in self.params]
            self.v = [_zeros_like(p.data) for p in self.params]
        else:
            self.m, self.v = self.flat.views(self.flat.m), self.flat.views(self.flat.v)

    @property
    def t(self):
        """The number of steps taken (on the fused path it lives on the device: reading it waits)."""
        return self._t if self.flat is None else int(backend.to_numpy(self.flat.count)[0])

    @t.setter
    def t(self, value):
        if self.flat is None:
            self._t = value
        else:
            self.flat.count[...] = value

    def step(self):
        if self.flat is not None:
            self.flat.step(self.params, (self.lr, *self.betas, self.eps, self.weight_decay))
            return
        self.t += 1
        b1, b2 = self.betas
        self._step_size, self._bias2 = self.lr / (1 - b1**self.t), 1 - b2**self.t
        self._rounded = {}
        super().step()

    def _corrections(self, dtype):
        """(lr / (1 - b1^t), 1 - b2^t) as they meet arrays of ``dtype``.

        Python floats while t is a Python int. While t is a 0-d device array (the CUDA graph's
        step counter, see graph.py) they are 0-d arrays computed on the device, rounded to
        ``dtype`` once per step, just as NumPy and CuPy round a float when it meets an array:
        so the graph's update is the eager update, to the bit.
        """
        if isinstance(self.t, int):
            return self._step_size, self._bias2
        if dtype not in self._rounded:
            xp = backend.get_array_module(self.t)
            self._rounded[dtype] = tuple(xp.asarray(c, dtype=dtype) for c in (self._step_size, self._bias2))
        return self._rounded[dtype]

    def update(self, i, param, grad):
        b1, b2 = self.betas
        step_size, bias2 = self._corrections(param.dtype)
        if self.weight_decay:
            grad = grad + self.weight_decay * param
        m, v = self.m[i], self.v[i]
        m *= b1
        m += (1 - b1) * grad
        v *= b2
        v += (1 - b2) * (grad * grad)
        xp = backend.get_array_module(param)
        denom = xp.sqrt(v / bias2)
        denom += self.eps
        param -= step_size * m / denom

    def state_dict(self):
        state = {"t": backend.to_numpy(self.t)}
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
                if self.flat is None:
                    slot[i] = backend.as_array(value, p.device, p.dtype)
                else:  # the moments are views into the flat buffers: fill them in place
                    slot[i][...] = backend.as_array(value, p.device, p.dtype)


class FlatBuffers:
    """Adam's state for kernels/adam.py: parameters, gradients and moments in four flat buffers.

    Parameter i occupies ``param[offsets[i]:offsets[i] + size_i]``, its ``.data`` a view of that
    slice; offsets are rounded up to ALIGN elements, and the gaps stay zero in every buffer (a
    zero gradient leaves a zero parameter where it is). The step number ``count`` and the
    hyperparameters ``hyper`` are small device arrays, so a captured CUDA graph sees them.
    """

    ALIGN = 64  # elements: each parameter starts on a 256-byte boundary (float32)

    @classmethod
    def for_params(cls, params):
        """FlatBuffers for ``params`` on "cuda" or "sim", all of one float dtype; else None."""
        devices = {p.device for p in params}
        dtypes = {p.dtype for p in params}
        if len(devices) != 1 or devices.pop() not in ("cuda", "sim") or len(dtypes) != 1:
            return None
        dtype = dtypes.pop()
        if dtype.kind != "f":
            return None
        return cls(params, dtype)

    def __init__(self, params, dtype):
        from .kernels import adam as kernel

        self.kernel, self.device = kernel, params[0].device
        xp = backend.get_array_module(params[0].data)
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
        self.count = xp.zeros(1, xp.float64)  # the step number t
        self.hyper = xp.zeros(kernel.HYPER_SIZE, xp.float64)
        self.coef = xp.zeros(kernel.COEF_SIZE, dtype)
        self.hyper_values = None

    def views(self, flat):
        """One view of ``flat`` per parameter, in the parameter's shape."""
        return [flat[a:a + math.prod(shape)].reshape(shape)
                for a, shape in zip(self.offsets, self.shapes)]

    def step(self, params, hyper):
        """One Adam step of every parameter that has a gradient; ``hyper`` = (lr, b1, b2, eps, wd)."""
        if hyper != self.hyper_values:  # only when they change: no transfer in a normal step
            self.hyper[...] = backend.as_array(hyper, self.device, "float64")
            self.hyper_values = hyper
        with_grad = []
        for i, (p, view, grad_view) in enumerate(zip(params, self.param_views, self.grad_views)):
            if p.data is not view:  # someone replaced .data (e.g. p.data = ...): take it back in
                view[...] = p.data
                p.data = view
            if p.grad is not None:
                grad_view[...] = p.grad  # the one copy per parameter: gradients arrive separately
                with_grad.append(i)
        self.kernel.advance(self.count, self.hyper, self.coef)
        for first, last in _runs(with_grad):  # all of them, usually: one launch
            a, b = self.offsets[first], self.offsets[last + 1]
            self.kernel.update(self.param[a:b], self.grad[a:b], self.m[a:b], self.v[a:b], self.coef)


def _runs(indices):
    """Maximal runs of consecutive integers in sorted ``indices``, as (first, last) pairs."""
    runs = []
    for i in indices:
        if runs and runs[-1][1] == i - 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return runs

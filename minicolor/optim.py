"""Optimizers: SGD (with momentum) and Adam, updating parameters in place.

Both follow PyTorch's formulas and defaults, so results can be compared line by line.
The updates run under no_grad on the raw arrays (``p.data``), touching no graph.
"""
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
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr)
        self.betas, self.eps, self.weight_decay = betas, eps, weight_decay
        self.t = 0
        self.m = [_zeros_like(p.data) for p in self.params]
        self.v = [_zeros_like(p.data) for p in self.params]

    def step(self):
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
                slot[i] = backend.as_array(value, p.device, p.dtype)

"""Numerical gradient checking: does backward agree with finite differences of forward?

For a function f of tensors x_1..x_k with an output y, pick a fixed random array r of y's
shape and look at the scalar  L(x) = sum(f(x) * r).  backward with grad r gives dL/dx_i.
Central differences of L estimate the same numbers:

    small inputs (<= max_elementwise values): every element e, (L(x + eps e) - L(x - eps e)) / 2 eps
    large inputs: along random unit directions d,  (L(x + eps d) - L(x - eps d)) / 2 eps
                  must equal  sum(dL/dx * d)

Everything runs in float64 (cast the inputs before calling), where eps = 1e-6 leaves about
ten significant digits. On failure the error names the input, the index (or direction), the
numeric and the analytic value, so you can see *where* a backward goes wrong.
"""
import numpy as np

from . import backend
from .tensor import Tensor, no_grad


class GradcheckError(AssertionError):
    pass


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, max_elementwise=64, directions=8, seed=0):
    """Check ``fn(*inputs)``'s backward against central differences; return True or raise.

    ``inputs`` are float64 Tensors; those with ``requires_grad`` are checked.
    """
    inputs = list(inputs)
    for i, x in enumerate(inputs):
        if not isinstance(x, Tensor):
            raise TypeError(f"gradcheck: input {i} must be a Tensor, got {type(x).__name__}")
        if x.requires_grad and x.dtype != np.float64:
            raise TypeError(f"gradcheck: input {i} has dtype {x.dtype}; check gradients in float64")
    rng = np.random.default_rng(seed)

    out = fn(*inputs)
    xp = backend.get_array_module(out.data)
    r = xp.asarray(rng.standard_normal(out.shape))
    for x in inputs:
        x.grad = None
    out.backward(r)

    def loss():
        with no_grad():
            return float((fn(*inputs).data * r).sum())

    worst = None  # (difference, message) of the largest disagreement beyond tolerance
    for i, x in enumerate(inputs):
        if not x.requires_grad:
            continue
        analytic = backend.to_numpy(x.grad) if x.grad is not None else np.zeros(x.shape)
        original = x.data.copy()
        for where, direction in _probes(x, max_elementwise, directions, rng):
            if direction is None:  # one element
                step = np.zeros(x.shape)
                step[where] = eps
                expected = float(analytic[where])
            else:
                step = direction * eps
                expected = float((analytic * direction).sum())
            step = xp.asarray(step)
            x.data = original + step
            plus = loss()
            x.data = original - step
            minus = loss()
            x.data = original
            numeric = (plus - minus) / (2 * eps)
            difference = abs(numeric - expected)
            if difference > atol + rtol * abs(numeric) and (worst is None or difference > worst[0]):
                worst = (difference, f"input {i} (shape {tuple(x.shape)}) at {where}: "
                         f"numeric {numeric:.8g}, analytic {expected:.8g}")
    if worst is not None:
        raise GradcheckError(
            f"gradcheck failed; largest disagreement {worst[0]:.3g} (atol {atol}, rtol {rtol}) "
            f"for {worst[1]}"
        )
    return True


def _probes(x, max_elementwise, directions, rng):
    """(where, direction) pairs: each element for small x, else random unit directions."""
    if x.size <= max_elementwise:
        return [(tuple(int(k) for k in np.unravel_index(k, x.shape)), None) for k in range(x.size)]
    probes = []
    for k in range(directions):
        d = rng.standard_normal(x.shape)
        probes.append((f"random direction {k}", d / np.linalg.norm(d)))
    return probes

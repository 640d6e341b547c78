"""Adam's update, the fast CPU path: one compiled pass over the flat buffers.

Same functions, arguments and results (to the bit) as minicolor/reference/adam.py, which does
one NumPy array operation per line of the formula: about ten passes over the four flat buffers
(7.8 MB each for the width-16 network), each on one core, with temporaries. Here one loop reads
param, grad, m and v once and writes param, m and v once, in fixed chunks spread over the
cores, with the reference's arithmetic in the reference's order (Numba does not fuse a
multiply and an add unless asked, so every rounding is NumPy's):

    g = grad (+ wd * param)
    m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2
    param -= (lr / (1 - b1^t)) * m / (sqrt(v / (1 - b2^t)) + eps)

Measured on the width-16 network (1,955,026 parameters), one thread, CPU time, the best of 9
(`python examples/cpu_figures.py ops`, idle 2-core Xeon): 7.5 ms a step for the reference,
1.5 ms here.
"""
import numpy as np
from numba import njit, prange

from ..reference.adam import (C_BETA1, C_BETA2, C_BIAS2, C_EPS, C_ONE_MINUS_BETA1,  # noqa: F401
                              C_ONE_MINUS_BETA2, C_STEP, C_WEIGHT_DECAY, COEF_SIZE, HYPER_SIZE,
                              advance)
from . import threads

CHUNK = 1 << 15  # elements per loop turn


@njit(parallel=True, cache=True)
def _update(param, grad, m, v, coef):
    b1, one_minus_b1, b2, one_minus_b2 = coef[C_BETA1], coef[C_ONE_MINUS_BETA1], coef[C_BETA2], coef[C_ONE_MINUS_BETA2]
    eps, weight_decay, step_size, bias2 = coef[C_EPS], coef[C_WEIGHT_DECAY], coef[C_STEP], coef[C_BIAS2]
    decay = weight_decay != 0
    for chunk in prange(-(-param.size // CHUNK)):
        lo, hi = chunk * CHUNK, (chunk + 1) * CHUNK
        p, g, mm, vv = param[lo:hi], grad[lo:hi], m[lo:hi], v[lo:hi]
        for k in range(p.size):
            gk = g[k] + weight_decay * p[k] if decay else g[k]
            mk = mm[k] * b1 + one_minus_b1 * gk
            vk = vv[k] * b2 + one_minus_b2 * (gk * gk)
            mm[k] = mk
            vv[k] = vk
            p[k] = p[k] - step_size * mk / (np.sqrt(vk / bias2) + eps)


def update(param, grad, m, v, coef):
    """One Adam update of the flat (1-D, same length) buffers param, m and v with grad, in place."""
    threads.adapt()
    _update(param, grad, m, v, coef)

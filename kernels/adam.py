"""Adam over every parameter at once: two Numba CUDA kernels per step instead of ~13 per parameter.

Read minicolor/reference/adam.py first: the same two steps as NumPy/CuPy array code (each
line there is one array operation, so one GPU kernel per line: and when it was written one
parameter at a time, about 780 kernels for the 60 parameters of the width-16 network). The
parameters, their gradients and both moments live in four flat buffers (``FlatBuffers`` in
optim.py lays them out; every parameter's ``.data`` is a view into the flat parameter
buffer), and one step is:

    _advance   one thread. The step number t lives on the device, in ``count``: the thread adds
               one to it, then works out the step's constants from the hyperparameters
               (float64) and writes them to ``coef``, rounded to the parameters' dtype exactly as
               the reference rounds its Python scalars: lr / (1 - b1^t), 1 - b2^t, b1, 1 - b1,
               ... Keeping t on the device means a CUDA graph that captured this step replays
               it with the right bias correction every time.
    _update    one thread per element (a grid-stride loop over the flat buffers): the
               reference's arithmetic in the reference's order, in the parameters' dtype:
                   g = grad (+ wd * param)
                   m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2
                   param -= (lr / (1 - b1^t)) * m / (sqrt(v / (1 - b2^t)) + eps)
               Each element is read and written once: 4 loads and 3 stores, nothing shared.

What it saves: 2 launches a step instead of ~780 CuPy kernels (about 12 ms of host time per
step on the H100 machine, 2026-11-28-step-profile-h100.log). The gradients still arrive as
separate arrays from the backward pass, so optim.py copies them into the flat gradient buffer
first (one copy per parameter).
"""
import math

import numpy as np
from numba import cuda

import minicolor.kernels as kernels
from minicolor.kernels import SIMULATOR
# the layout of hyper (float64) and coef (the parameters' dtype), shared with the reference
from minicolor.reference.adam import (BETA1, BETA2, C_BETA1, C_BETA2, C_BIAS2, C_EPS,
                                      C_ONE_MINUS_BETA1, C_ONE_MINUS_BETA2, C_STEP, C_WEIGHT_DECAY,
                                      COEF_SIZE, EPS, HYPER_SIZE, LR, WEIGHT_DECAY)  # noqa: F401

THREADS = 32 if SIMULATOR else 256  # threads per block (fewer Python threads in the simulator)


@cuda.jit
def _advance(count, hyper, coef):
    """Thread 0: t = count[0] + 1 (stored back), and the step's constants into coef."""
    if cuda.grid(1) != 0:
        return
    t = count[0] + 1.0
    count[0] = t
    b1, b2 = hyper[BETA1], hyper[BETA2]
    coef[C_BETA1] = b1
    coef[C_ONE_MINUS_BETA1] = 1.0 - b1
    coef[C_BETA2] = b2
    coef[C_ONE_MINUS_BETA2] = 1.0 - b2
    coef[C_EPS] = hyper[EPS]
    coef[C_WEIGHT_DECAY] = hyper[WEIGHT_DECAY]
    coef[C_STEP] = hyper[LR] / (1.0 - b1**t)
    coef[C_BIAS2] = 1.0 - b2**t


@cuda.jit
def _update(param, grad, m, v, coef):
    """One thread per element: Adam's update of param, m and v (see the module docstring)."""
    for i in range(cuda.grid(1), param.size, cuda.gridsize(1)):
        g = grad[i]
        if coef[C_WEIGHT_DECAY] != 0:
            g = g + coef[C_WEIGHT_DECAY] * param[i]
        mi = m[i] * coef[C_BETA1]
        mi = mi + coef[C_ONE_MINUS_BETA1] * g
        vi = v[i] * coef[C_BETA2]
        vi = vi + coef[C_ONE_MINUS_BETA2] * (g * g)
        m[i] = mi
        v[i] = vi
        denom = math.sqrt(vi / coef[C_BIAS2]) + coef[C_EPS]
        param[i] = param[i] - coef[C_STEP] * mi / denom


def advance(count, hyper, coef):
    """Step number + 1 and the step's constants, on the device (see ``_advance``)."""
    kernels.launch(_advance, 1, 1, count, hyper, coef)


def update(param, grad, m, v, coef):
    """One Adam update of the flat (1-D, same length) buffers param, m and v with grad."""
    blocks = max(1, min(math.ceil(param.size / THREADS), 65535 if not SIMULATOR else 64))
    kernels.launch(_update, blocks, THREADS, param, grad, m, v, coef)


def examples(dtype, array=np.zeros):
    """Both steps on a few values, the buffers as optim.FlatBuffers allocates them: the kernel
    report's calls (see kernels/__init__.py)."""
    flat, count = array(10, dtype), array(1, np.float64)
    hyper, coef = array(HYPER_SIZE, np.float64), array(COEF_SIZE, dtype)
    return [("advance", lambda: advance(count, hyper, coef)),
            ("update", lambda: update(flat, flat, flat.copy(), flat.copy(), coef))]

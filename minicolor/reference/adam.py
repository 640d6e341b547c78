"""Adam's update, the NumPy (xp) reference: the two steps of kernels/adam.py, as array code.

optim.Adam keeps the parameters, their gradients and both moments in four flat buffers (every
parameter's ``.data`` is a view into the flat parameter buffer: optim.FlatBuffers), and the
step number t and the hyperparameters in small float64 arrays on the parameters' device. One
step is then two calls, here and in kernels/adam.py alike:

    advance(count, hyper, coef)    t = count + 1 (stored back in ``count``); the step's constants
                                   into ``coef``, rounded to the parameters' dtype
    update(param, grad, m, v, coef)
                                   g = grad (+ weight_decay * param)
                                   m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2
                                   param -= (lr / (1 - b1^t)) * m / (sqrt(v / (1 - b2^t)) + eps)

Every line below is one array operation over all the parameters at once, in the order the
kernel does them per element, so the two agree to the last bit (tests/test_fused_sim.py).
"""
from ..backend import get_array_module

# hyper (float64): the hyperparameters as given
LR, BETA1, BETA2, EPS, WEIGHT_DECAY = range(5)
HYPER_SIZE = 5
# coef (the parameters' dtype): the step's constants
C_BETA1, C_ONE_MINUS_BETA1, C_BETA2, C_ONE_MINUS_BETA2, C_EPS, C_WEIGHT_DECAY, C_STEP, C_BIAS2 = range(8)
COEF_SIZE = 8


def advance(count, hyper, coef):
    """Add one to the step number ``count[0]``; write b1, 1 - b1, b2, 1 - b2, eps, weight decay,
    lr / (1 - b1^t) and 1 - b2^t into ``coef``: computed in float64, rounded once to its dtype."""
    xp = get_array_module(count)
    count += 1
    t = count[0]
    lr, b1, b2, eps, weight_decay = hyper
    coef[...] = xp.stack([b1, 1 - b1, b2, 1 - b2, eps, weight_decay, lr / (1 - b1**t), 1 - b2**t])


def update(param, grad, m, v, coef):
    """One Adam update of the flat (1-D, same length) buffers param, m and v with grad, in place.

    ``coef`` is read on the host to decide whether there is weight decay (a transfer on CuPy:
    there kernels/adam.py runs instead, reading it on the device)."""
    xp = get_array_module(param)
    b1, one_minus_b1, b2, one_minus_b2, eps, weight_decay, step_size, bias2 = coef
    if weight_decay != 0:
        grad = grad + weight_decay * param
    m *= b1
    m += one_minus_b1 * grad
    v *= b2
    v += one_minus_b2 * (grad * grad)
    denom = xp.sqrt(v / bias2)
    denom += eps
    param -= step_size * m / denom

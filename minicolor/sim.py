"""How much the "sim" device takes on, and a progress bar while it works.

Numba's CUDA simulator runs every CUDA thread of a kernel as a Python thread (docs/kernels.md).
That is what makes it a teaching tool: the kernels run, step by step, on any machine. It is
also why it is slow: one forward pass of a width-16 network at 8 x 8 pixels, 2.7 million
multiply-adds that NumPy does in a few milliseconds, took over four minutes. Its time follows
the multiply-adds of the convolutions, and those grow with (width x size)^2: twice the width or
twice the size is four times the wait.

So the commands give the simulator a fixed budget of about a minute on a 2-core CPU, and
refuse more with a message that says why and what would fit (``check``):

    one forward pass (colorize, evaluate, activations: one per photo) of a network of width w
    at size s fits when  w x s  <=  16 x SIM_MAX_SIZE;
    a training step costs 3 forward passes per image (forward, grad-input, grad-weight).

Below the limit, ``layer_progress`` shows a bar that moves layer by layer.
"""
import contextlib
import math
import sys

from tqdm.auto import tqdm

# The largest size (pixels, one side) at which one forward pass of a width-16 network (the
# shipped weights) runs in the simulator in about a minute on a 2-core CPU: as a budget, width x
# size <= 16 x SIM_MAX_SIZE. Measured with the tiled conv kernels on a busy 2-core machine (load
# 2 to 11), one forward pass, width x size: 1 x 8 in 3.5 s, 2 x 8 in 7.9 s, 4 x 8 in 25 to 39 s,
# 4 x 16 in 32 s, 8 x 8 in 114 s, 16 x 8 in 277 s. So about a minute is width x size = 48, below
# the smallest size (8) at width 16. (These kernels' time grows more slowly with the size than
# the rule above says, their tiles being padded at tiny sizes; kernels with one thread per
# output follow it.) Re-measure it when the kernels the simulator runs change.
SIM_MAX_SIZE = 3
REFERENCE_WIDTH = 16
TRAINING_STEP = 3  # forward passes' worth of work in one training step, per image


def budget():
    """The largest (width x size)^2 x forward passes the simulator is given."""
    return (REFERENCE_WIDTH * SIM_MAX_SIZE) ** 2


def max_size(width, passes=1):
    """The largest multiple of 8 that fits ``passes`` forward passes at ``width`` (0: none)."""
    return int(math.sqrt(budget() / passes) / width) // 8 * 8


def seconds(width, size, passes=1):
    """About how long the simulator takes, from the budget's minute."""
    return 60 * (width * size) ** 2 * passes / budget()


def _duration(s):
    for unit, length in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if s >= 2 * length:
            return f"{s / length:.0f} {unit}"
    return f"{s:.0f} seconds"


def limit_text():
    """The limit in words, for --help."""
    return (f"about a minute of work: width x size <= {REFERENCE_WIDTH * SIM_MAX_SIZE:g} per forward "
            f"pass (a training step: {TRAINING_STEP} per image)")


def check(width, size, passes=1, what="a forward pass"):
    """Raise ValueError if ``passes`` forward passes of a width-``width`` network at ``size``
    would take the simulator more than about a minute; say what would fit."""
    if (width * size) ** 2 * passes <= budget():
        return
    fits = max_size(width, passes)
    advice = (f"At width {width}, --size {fits} fits" if fits
              else f"No --size fits at width {width} (the smallest is 8)")
    raise ValueError(
        f"{what} of a width-{width} network at size {size} would take the simulator about "
        f"{_duration(seconds(width, size, passes))}: it runs every CUDA thread as a Python thread, "
        f"and gets {limit_text()}. {advice}; --device cpu runs the same network in NumPy")


def prepare():
    """Let the simulator's Python threads take turns quickly: its barriers wait for a thread
    switch, and the default interval (5 ms) makes every barrier slow."""
    sys.setswitchinterval(min(sys.getswitchinterval(), 5e-5))


@contextlib.contextmanager
def layer_progress(model, passes=1, desc="simulating"):
    """A bar that moves as each layer of ``model`` finishes, through ``passes`` forward passes.
    (The layers that run fused into the next are left unhooked: a hook would turn the fusion off.)"""
    from .nn import fused_layers

    fused = fused_layers(model)
    layers = [m for name, m in model.named_modules() if not list(m.children()) and name not in fused]
    bar = tqdm(total=len(layers) * passes, desc=desc, unit="layer")
    removers = [m.register_forward_hook(lambda *_: bar.update(1)) for m in layers]
    try:
        yield bar
    finally:
        for remove in removers:
            remove()
        bar.close()

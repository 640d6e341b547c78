"""How much the "sim" device takes on, and a progress bar while it works.

Numba's CUDA simulator runs every CUDA thread of a kernel as a Python thread (docs/kernels.md).
That is what makes it a teaching tool: the kernels run, step by step, on any machine. It is
also why it is slow: one forward pass of a width-16 network at 16 x 16 pixels, 11 million
multiply-adds that NumPy does in a few milliseconds, takes a minute. Its time follows
the multiply-adds of the convolutions, and those grow with (width x size)^2: twice the width or
twice the size is four times the wait.

So the commands give the simulator a fixed budget of about a minute on a 2-core CPU, and
refuse more with a message that says why and what would fit (``check``):

    one forward pass (colorize, evaluate, activations: one per photo) of a network of width w
    at size s fits when  w x s  <=  16 x SIM_MAX_SIZE;
    a training step costs TRAINING_STEP forward passes per image (measured: backward is slow).

Below the limit, ``layer_progress`` shows a bar that moves layer by layer.
"""
import contextlib
import math
import sys

from tqdm.auto import tqdm

# The largest size (pixels, one side) at which one forward pass of a width-16 network (the
# shipped weights) runs in the simulator in about a minute on a 2-core CPU: as a budget, width x
# size <= 16 x SIM_MAX_SIZE. Measured with the naive conv kernels (the simulator's default, see
# kernels/conv2d.py) on the 2-core machine at load 3: one forward pass, width x size: 1 x 16 in
# 3.8 s, 4 x 16 in 6.1 s, 8 x 8 in 6.0 s, 16 x 8 in 13 s, 16 x 16 in 61 s, 16 x 24 in 181 s.
# (With the tiled kernels, 16 x 8 took 277 s.) Re-measure it when the kernels the simulator runs
# change.
SIM_MAX_SIZE = 16
REFERENCE_WIDTH = 16
# A training step (forward, backward, Adam) of width 4 at 16 px took 100 s at load 3: 27 times
# what the budget's rule gives one forward pass there (grad-weight's naive kernel runs one
# Python thread per weight, each looping over every pixel).
TRAINING_STEP = 27  # forward passes' worth of work in one training step, per image


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

"""Every launch of a whole training step can take the fast launch path (kernels/_launch.py).

The fast path caches an argument's Numba type under ``_launch.argument_key``; an argument it
cannot key (a tuple, a string, a host array) sends the launch through Numba's own launch, at
120-135 us of host time each on the H100 machine. Here a whole training step (forward, loss,
backward, Adam) of the width-16 and width-64 networks is recorded on the sim device, nothing
run, and every argument of every launch is keyed as a GPU run would key it: a NumPy array
stands for the CuPy array it would be there. Each kernel must also be launched with one
signature throughout the step (the launcher keys ints by type): one compiled specialisation
serves every layer.
"""
import numpy as np
import pytest

from fakes import DeviceArray
from minicolor import backend

try:
    backend.enable_simulator()
except backend.DeviceError as exc:  # numba.cuda already imported for a real GPU
    pytest.skip(str(exc), allow_module_level=True)

import minicolor.kernels as kernels  # noqa: E402
from minicolor.tools import bench  # noqa: E402
from minicolor.kernels import conv2d  # noqa: E402
from minicolor.kernels import _launch as L  # noqa: E402


def gpu_key(value):
    return L.argument_key(DeviceArray(value) if isinstance(value, np.ndarray) else value)


def kernel_name(kernel):
    tiles = getattr(kernel, "tiles", None)
    module = kernel.py_func.__module__.rsplit(".", 1)[-1]
    return f"{module}.{kernel.py_func.__qualname__}" + (f"[{tiles[0]}x{tiles[1]}]" if tiles else "")


@pytest.mark.parametrize("version", conv2d.VERSIONS)
@pytest.mark.parametrize("width", [16, 64])
def test_every_launch_of_a_training_step_is_fast_path(width, version, monkeypatch):
    monkeypatch.setattr(conv2d, "VERSION", version)
    step = bench.minicolor_step(width, batch=1, size=224, device="sim")
    with kernels.recording() as launches, np.errstate(all="ignore"):  # garbage values: nothing runs
        step()
    convs = [k for k, *_ in launches if k.py_func.__module__.startswith("minicolor.kernels.conv2d")]
    assert len(convs) >= 68  # 23 convs: forward, grad-weight, and grad-input but for the first
    slow, signatures = [], {}
    for kernel, grid, block, args in launches:
        keys = tuple(gpu_key(a) for a in args)
        slow += [f"{kernel_name(kernel)} argument {i}: {type(a).__name__} {a!r:.60}"
                 for i, (a, key) in enumerate(zip(args, keys)) if key is None]
        signatures.setdefault(kernel_name(kernel), set()).add(keys)
    assert not slow, "arguments the fast launch path cannot key:\n" + "\n".join(slow)
    several = {name: len(keys) for name, keys in signatures.items() if len(keys) > 1}
    assert not several, f"kernels launched with more than one signature in one step: {several}"

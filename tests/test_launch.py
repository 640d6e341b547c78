"""The launch path: the launch counter, recording, and the fast path's caches on plain objects.

The fast path itself only runs on a real GPU (tests/test_kernels_gpu.py compares it with
Numba's own launch there); here its pure parts run against a fake driver and fake kernels.
"""
import warnings

import numba
import numpy as np
import pytest

from minicolor import backend

try:
    backend.enable_simulator()
except backend.DeviceError as exc:  # numba.cuda already imported for a real GPU
    pytest.skip(str(exc), allow_module_level=True)

import minicolor.kernels as kernels  # noqa: E402
from minicolor.kernels import launcher as L  # noqa: E402
from minicolor.kernels import mse as k_mse  # noqa: E402


class DeviceArray:
    """A stand-in for a CuPy array: a class with __cuda_array_interface__, a pointer in .data.ptr."""

    __cuda_array_interface__ = None

    def __init__(self, host, ptr=0x7000_0000):
        self.host = host
        self.dtype, self.ndim, self.shape, self.strides = host.dtype, host.ndim, host.shape, host.strides
        self.size, self.itemsize = host.size, host.itemsize
        self.data = type("Memory", (), {"ptr": ptr})()


@pytest.mark.parametrize("make", [
    lambda: np.zeros((2, 3, 4)),
    lambda: np.zeros((2, 3, 4)).T,
    lambda: np.zeros((2, 3, 4))[:, 1:],
    lambda: np.zeros((4, 6))[::2],
    lambda: np.zeros(5),
    lambda: np.zeros((3, 1, 4)),
    lambda: np.zeros((1, 5, 1)),
    lambda: np.zeros((3, 4), np.float32).T[:, :1],
])
def test_layout_matches_numba(make):
    a = make()
    assert L.layout(a.shape, a.strides, a.itemsize) == numba.typeof(a).layout


def test_argument_keys():
    a = DeviceArray(np.zeros((2, 3), np.float32))
    assert L.argument_key(a) == ("array", DeviceArray, np.dtype(np.float32), 2, "C")
    assert L.argument_key(DeviceArray(np.zeros((2, 3)).T))[4] == "F"
    assert L.argument_key(np.zeros(3)) is None  # a host array: Numba's launch copies it
    assert L.argument_key(3) == (int, True)
    assert L.argument_key(2**63) == (int, False)
    assert L.argument_key(True) is bool and L.argument_key(0.5) is float
    assert L.argument_key(np.float32(1)) is np.float32
    assert L.argument_key("text") is None


def test_array_parameters_follow_numbas_order():
    host = np.zeros((2, 3, 4), np.float32)[:, 1:]
    params = L.array_parameters(DeviceArray(host, ptr=1234))
    assert params == [0, 0, 16, 4, 1234, 2, 2, 4, 48, 16, 4]


class FakeOverload:
    cooperative, debug = False, False

    def _prepare_args(self, ty, value, stream, writebacks, parameters):
        parameters.append(("scalar", ty, value))


class FakeKernel:
    def __init__(self):
        self.overloads, self.targetoptions = {}, {}


class FakeDriver:
    def __init__(self):
        self.typed, self.launched, self.fail = [], [], False

    def typeof(self, kernel, value):
        self.typed.append(value)
        key = L.argument_key(value)
        return ("T",) + (key[2:] if isinstance(key, tuple) and key[0] == "array"
                         else key[1:] if isinstance(key, tuple) else (key,))

    def function(self, overload):
        return "function"

    def config(self, grid, block, cooperative):
        return ("config", grid, block)

    def launch(self, stream, config, function, parameters):
        if self.fail:
            raise TypeError("no such parameter type")
        self.launched.append((stream, config, function, parameters))


def test_launcher_types_once_per_key_and_resolves_once_per_signature():
    driver, kernel = FakeDriver(), FakeKernel()
    fast = L.Launcher(driver)
    stream = L.Stream("numba stream", "core stream")
    x = DeviceArray(np.zeros((2, 3), np.float32), ptr=10)
    args = (x, 3, 0.5)
    assert not fast.launch(kernel, 4, 32, stream, args)  # not compiled yet: Numba's launch compiles it
    types = (("T", np.dtype(np.float32), 2, "C"), ("T", True), ("T", float))
    kernel.overloads[types] = FakeOverload()  # what Numba's launch leaves behind
    for i in range(3):
        y = DeviceArray(np.zeros((5, 7), np.float32), ptr=100 + i)  # same key, other shape and pointer
        assert fast.launch(kernel, 4, 32, stream, (y, 3 + i, 0.25))
    assert len(driver.typed) == 3  # one typeof per argument key, not per launch
    assert len(fast.entries) == 1
    stream_used, config, function, params = driver.launched[-1]
    assert (stream_used, config, function) == ("core stream", ("config", 4, 32), "function")
    assert params == [0, 0, 35, 4, 102, 5, 7, 28, 4, ("scalar", ("T", True), 5),
                      ("scalar", ("T", float), 0.25)]


def test_launcher_falls_back():
    driver, kernel = FakeDriver(), FakeKernel()
    fast = L.Launcher(driver)
    stream = L.Stream(0, 0)
    assert not fast.launch(kernel, 1, 32, stream, (np.zeros(3),))  # host array
    assert not fast.launch(kernel, 1, 32, stream, (5,))  # never compiled: tried twice, then never
    assert not fast.launch(kernel, 1, 32, stream, (5,))
    kernel.overloads[(("T", True),)] = FakeOverload()
    assert not fast.launch(kernel, 1, 32, stream, (5,))
    assert fast.launch(kernel, 1, 32, stream, (5.0,)) is False  # first sight of this signature
    kernel.overloads[(("T", float),)] = FakeOverload()
    driver.fail = True
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not fast.launch(kernel, 1, 32, stream, (5.0,))
    assert "fast launch path failed" in str(caught[0].message)
    driver.fail = False
    assert not fast.launch(kernel, 1, 32, stream, (5.0,))  # disabled for good


def test_launch_counts_runs_and_records():
    pred = np.arange(40, dtype=np.float32)
    target = np.zeros(40, np.float32)
    before = kernels.launch_count
    loss, diff = k_mse.forward(pred, target)
    assert kernels.launch_count == before + 1
    np.testing.assert_allclose(loss, np.mean(pred**2), rtol=1e-6)
    with kernels.recording() as launches:
        k_mse.backward(np.ones((), np.float32), diff)
    assert kernels.launch_count == before + 2
    assert len(launches) == 1 and launches[0][0] is k_mse._backward

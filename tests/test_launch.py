"""The launch path: the launch counter, recording, and the fast path's caches on plain objects.

The fast path itself only runs on a real GPU (tests/test_kernels_gpu.py compares it with
Numba's own launch there); here its pure parts run against a fake driver and fake kernels, and
``kernels.launch`` runs its GPU branch against a fake stream, driver and kernel: what happens
when the fast path cannot be built, when it is off, and when the GPU reports an error.
"""
import ast
import inspect
import warnings

import numba
import numpy as np
import pytest

from fakes import DeviceArray
from minicolor import backend

try:
    backend.enable_simulator()
except backend.DeviceError as exc:  # numba.cuda already imported for a real GPU
    pytest.skip(str(exc), allow_module_level=True)

import minicolor.kernels as kernels  # noqa: E402
from minicolor.kernels import _launch as L  # noqa: E402
from minicolor.kernels import mse as k_mse  # noqa: E402


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


class FakeKernel:
    """A kernel: ``overloads`` as Numba's dispatcher has them; ``kernel[grid, block, stream](*args)``
    is Numba's own launch, recorded in ``numba_launches``."""

    def __init__(self):
        self.overloads, self.targetoptions, self.numba_launches = {}, {}, []

    def __getitem__(self, config):
        return lambda *args: self.numba_launches.append((config, args))


class FakeCudaError(Exception):
    """What cuda.core raises for CUDA_ERROR_ILLEGAL_ADDRESS and friends."""


class FakeDriver:
    errors = (FakeCudaError,)

    def __init__(self):
        self.typed, self.launched, self.fail = [], [], None

    def typeof(self, kernel, value):
        self.typed.append(value)
        key = L.argument_key(value)
        return ("T",) + (key[2:] if isinstance(key, tuple) and key[0] == "array"
                         else key[1:] if isinstance(key, tuple) else (key,))

    def specialisation(self, kernel, types):
        return kernel.overloads.get(types)

    def function(self, overload):
        return "function"

    def scalar_parameters(self, overload, ty, value, core_stream, parameters):
        parameters.append(("scalar", ty, value))

    def config(self, grid, block, overload):
        return ("config", grid, block)

    def core_stream(self, stream):
        return ("core", stream)

    def launch(self, stream, config, function, parameters):
        if self.fail:
            raise self.fail
        self.launched.append((stream, config, function, parameters))


def test_launcher_types_once_per_key_and_resolves_once_per_signature():
    driver, kernel = FakeDriver(), FakeKernel()
    fast = L.Launcher(driver)
    x = DeviceArray(np.zeros((2, 3), np.float32), ptr=10)
    args = (x, 3, 0.5)
    assert not fast.launch(kernel, 4, 32, "stream", args)  # not compiled yet: Numba's launch compiles it
    types = (("T", np.dtype(np.float32), 2, "C"), ("T", True), ("T", float))
    kernel.overloads[types] = FakeOverload()  # what Numba's launch leaves behind
    for i in range(3):
        y = DeviceArray(np.zeros((5, 7), np.float32), ptr=100 + i)  # same key, other shape and pointer
        assert fast.launch(kernel, 4, 32, "stream", (y, 3 + i, 0.25))
    assert len(driver.typed) == 3  # one typeof per argument key, not per launch
    assert len(fast.entries) == 1
    stream_used, config, function, params = driver.launched[-1]
    assert (stream_used, config, function) == (("core", "stream"), ("config", 4, 32), "function")
    assert params == [0, 0, 35, 4, 102, 5, 7, 28, 4, ("scalar", ("T", True), 5),
                      ("scalar", ("T", float), 0.25)]


def test_launcher_falls_back():
    driver, kernel = FakeDriver(), FakeKernel()
    fast = L.Launcher(driver)
    assert not fast.launch(kernel, 1, 32, 0, (np.zeros(3),))  # host array
    assert not fast.launch(kernel, 1, 32, 0, (5,))  # never compiled: tried twice, then never
    assert not fast.launch(kernel, 1, 32, 0, (5,))
    kernel.overloads[(("T", True),)] = FakeOverload()
    assert not fast.launch(kernel, 1, 32, 0, (5,))
    assert fast.launch(kernel, 1, 32, 0, (5.0,)) is False  # first sight of this signature
    kernel.overloads[(("T", float),)] = FakeOverload()
    driver.fail = TypeError("no such parameter type")  # the fast path's own bookkeeping failed
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not fast.launch(kernel, 1, 32, 0, (5.0,))
    assert len(caught) == 1 and "fast launch path failed" in str(caught[0].message)
    assert "numba-cuda 0.30.4" in str(caught[0].message)
    driver.fail = None
    assert not fast.launch(kernel, 1, 32, 0, (5.0,))  # disabled for good


def test_a_cuda_error_is_raised_not_taken_for_a_fast_path_failure():
    """An illegal address left by an earlier kernel is sticky: every later launch reports it.
    It must reach the caller as the CUDA error it is, not as "fast launch path failed"."""
    driver, kernel = FakeDriver(), FakeKernel()
    fast = L.Launcher(driver)
    kernel.overloads[(("T", float),)] = FakeOverload()
    assert fast.launch(kernel, 1, 32, 0, (1.0,))
    driver.fail = FakeCudaError("CUDA_ERROR_ILLEGAL_ADDRESS: an illegal memory access was encountered")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning either
        with pytest.raises(FakeCudaError, match="ILLEGAL_ADDRESS"):
            fast.launch(kernel, 1, 32, 0, (1.0,))
    assert fast.enabled and kernel.numba_launches == []


# --- kernels.launch on a pretend GPU -------------------------------------------------------------
class FakeStreams:
    def current(self):
        return "cupy's current stream"


@pytest.fixture
def pretend_gpu(monkeypatch):
    """kernels.launch takes its GPU branch, with a fake stream and no fast path built yet."""
    monkeypatch.setattr(kernels, "SIMULATOR", False)
    monkeypatch.setattr(kernels, "_streams", FakeStreams())
    monkeypatch.setattr(kernels, "_fast", None)
    monkeypatch.setattr(kernels, "FAST_LAUNCH", True)
    monkeypatch.setattr(L, "installed_versions", lambda: dict(L.WRITTEN_FOR))


def test_a_driver_that_cannot_be_built_leaves_numbas_launch_with_one_warning(pretend_gpu, monkeypatch):
    class MovedName:
        def __init__(self):
            raise AttributeError("module 'numba.cuda.dispatcher' has no attribute 'LaunchConfig'")

    monkeypatch.setattr(L, "NumbaCudaDriver", MovedName)
    monkeypatch.setattr(L, "installed_versions", lambda: {"numba-cuda": "0.31.0", "cuda-core": "1.2.2"})
    monkeypatch.setenv("MINICOLOR_FAST_LAUNCH", "force")  # versions aside, try to build it
    kernel = FakeKernel()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(3):
            kernels.launch(kernel, 2, 32, i)
    assert kernel.numba_launches == [((2, 32, "cupy's current stream"), (i,)) for i in range(3)]
    assert len(caught) == 1, [str(w.message) for w in caught]
    message = str(caught[0].message)
    for words in ("fast launch path is off", "LaunchConfig", "numba-cuda 0.30.4", "cuda-core 1.2.2",
                  "numba-cuda 0.31.0"):
        assert words in message
    assert kernels._fast is False


def test_other_versions_keep_the_fast_path_off(pretend_gpu, monkeypatch):
    built = []
    monkeypatch.setattr(L, "NumbaCudaDriver", lambda: built.append(1))
    monkeypatch.setattr(L, "installed_versions", lambda: {"numba-cuda": "0.30.4", "cuda-core": "1.3.0"})
    kernel = FakeKernel()
    with pytest.warns(RuntimeWarning, match=r"other versions.*cuda-core 1\.2\.2.*cuda-core 1\.3\.0"):
        kernels.launch(kernel, 1, 32)
    assert built == [] and len(kernel.numba_launches) == 1


def test_fast_launch_off_touches_nothing_private(pretend_gpu, monkeypatch):
    def private(*args):
        raise AssertionError("the fast path was built with fast launch off")

    monkeypatch.setattr(L, "NumbaCudaDriver", private)
    monkeypatch.setattr(L, "make_fast_path", private)
    monkeypatch.setattr(kernels, "FAST_LAUNCH", False)
    kernel = FakeKernel()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kernels.launch(kernel, 3, 64, "x")
    assert kernel.numba_launches == [((3, 64, "cupy's current stream"), ("x",))]
    assert kernels._fast is None


def test_private_names_are_used_only_inside_the_driver():
    """Every ``something._name`` of another package and every import from a private module sits
    in NumbaCudaDriver: that is what "off touches nothing private" rests on."""
    tree = ast.parse(inspect.getsource(L))
    driver = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "NumbaCudaDriver")
    inside = {id(n) for n in ast.walk(driver)}
    ours = {"self", "kernels"} | {alias.asname or alias.name for n in ast.walk(tree)
                                  if isinstance(n, ast.ImportFrom) and n.module.startswith("minicolor")
                                  for alias in n.names}
    outside = []
    for node in ast.walk(tree):
        if id(node) in inside:
            continue
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            owner = node.value
            if not (isinstance(owner, ast.Name) and owner.id in ours):
                outside.append(ast.unparse(node))
        if isinstance(node, ast.ImportFrom) and node.module and any(
                part.startswith("_") for part in node.module.split(".")):
            outside.append(node.module)
    assert outside == []
    assert any(isinstance(n, ast.Attribute) and n.attr == "_prepare_args" for n in ast.walk(driver))


def test_a_cuda_error_reaches_the_caller_of_kernels_launch(pretend_gpu, monkeypatch):
    driver, kernel = FakeDriver(), FakeKernel()
    kernel.overloads[(("T", float),)] = FakeOverload()
    monkeypatch.setattr(kernels, "_fast", L.Launcher(driver))
    kernels.launch(kernel, 1, 32, 1.0)
    assert len(driver.launched) == 1 and kernel.numba_launches == []
    driver.fail = FakeCudaError("CUDA_ERROR_ILLEGAL_ADDRESS")
    with pytest.raises(FakeCudaError):
        kernels.launch(kernel, 1, 32, 1.0)
    assert kernel.numba_launches == []  # not retried on the slow path either


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


def test_recording_that_runs_keeps_every_argument():
    """What a CUDA graph capture uses (graph.py): the launches run, and the list holds their
    arguments, so nothing a graph reads can be freed while it lives."""
    pred = np.arange(40, dtype=np.float32)
    target = np.zeros(40, np.float32)
    with kernels.recording(run=True) as launches:
        loss, diff = k_mse.forward(pred, target)
    np.testing.assert_allclose(loss, np.mean(pred**2), rtol=1e-6)  # it ran
    assert [kernel for kernel, *_ in launches] == [k_mse._forward]
    args = [a for a in launches[0][3] if isinstance(a, np.ndarray)]
    assert any(np.shares_memory(a, pred) for a in args) and any(np.shares_memory(a, target) for a in args)
    with kernels.recording() as outer:
        with kernels.recording(run=True) as inner:
            k_mse.backward(np.ones((), np.float32), diff)
        k_mse.backward(np.ones((), np.float32), diff)
    assert len(inner) == 1 and len(outer) == 1  # the innermost recording gets each launch

"""Plumbing, not a lesson: the fast launch path that ``minicolor.kernels.launch`` uses on a GPU.

Nothing here teaches a kernel; read the op files (conv2d.py, batchnorm.py, ...) for that. This
file saves host time per launch, and it does so by reaching into numba-cuda's internals, so it
is written for one pair of versions (``WRITTEN_FOR``) and switches itself off, with one warning,
on anything else.

``kernel[grid, block, stream](*args)`` in numba-cuda 0.30 does five things on every call:

    1. types every argument: ``numba.typeof`` of a CuPy array goes through DLPack and builds a
       StridedMemoryView (about 25 us per array on the H100 host in the step profile)
    2. looks up the compiled specialisation for those types (the C dispatcher)
    3. converts every array *again*, into a device view (``_prepare_args``: ``wrap_arg(a).to_device``)
    4. flattens the arguments into the kernel's parameters: for each array
       (meminfo, parent, size, itemsize, data pointer, *shape, *strides in bytes); scalars as ctypes
    5. calls cuda.core's ``launch(stream, config, function, *parameters)``

Steps 1-3 dominate: 120-135 us per launch on CuPy arrays, against 34 us for the compiled
specialisation's own ``launch`` on ready-made Numba views (2026-11-28-launch-paths-h100.log).
``Launcher`` keeps step 5 and does the rest once:

    1. an argument's Numba type depends only on (array class, dtype, ndim, layout) -- or the
       Python type of a scalar -- so Numba's own ``typeof`` runs once per such key, and is cached;
    2. the specialisation is looked up once per (kernel, key of every argument) and cached;
    3. is skipped: a CuPy array already holds its pointer, shape and strides;
    4. is ``array_parameters`` below for arrays (the same list numba's ``_prepare_args`` builds),
       and numba's own ``_prepare_args`` for scalars (cheap: no typing, just a ctypes value).

Anything it does not know (a host array, a kernel compiled with debug=True, an extension, a
launch-config-sensitive kernel, a signature not compiled yet) returns False, and the caller
uses Numba's own launch: that is also how a new signature gets compiled the first time.

What may fail, and what happens then:

    - building the fast path (``make_fast_path``, at the first launch, only when fast launch
      is on): other numba-cuda / cuda-core versions, or a private name that moved. The fast
      path stays off for the process, with ONE warning naming the versions it was written for
      and the versions found; every launch goes through Numba's own launch, which is correct.
    - the fast path's own bookkeeping during a launch (an interface of numba-cuda it does not
      know): the same, turned off for good with one warning; nothing of that launch has run
      (the launch call is the last step), so Numba's launch starts it instead.
    - a CUDA error (``NumbaCudaDriver.errors``: an illegal address left by an earlier kernel, an
      out-of-memory, ...): raised to the caller as it is. It is not the fast path's fault, and
      Numba's launch would fail on it too.

Every name that is private to numba-cuda or cuda-core is used inside ``NumbaCudaDriver`` and
nowhere else (a test checks this on the source), and nothing builds one unless fast launch is
on: with MINICOLOR_FAST_LAUNCH=0 no private name is touched. ``CupyStreams`` uses public API
only; both paths need it.

The pure parts (argument keys, layouts, parameter lists, the caches, the fallbacks) need no GPU
and are unit-tested with fakes in tests/test_launch.py; tests/test_kernels_gpu.py checks the
whole path against Numba's launch on a GPU; ``python -m minicolor.kernels._launch`` prints the
host time per launch of both paths there.
"""
import os
import warnings

import numpy as np

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# The versions whose sources this file was written against (the parameter order of
# ``_prepare_args``, the names in ``NumbaCudaDriver``). On others the fast path stays off unless
# MINICOLOR_FAST_LAUNCH=force.
WRITTEN_FOR = {"numba-cuda": "0.30.4", "cuda-core": "1.2.2"}


def layout(shape, strides, itemsize):
    """Numba's layout letter for an array: 'C' (row-major contiguous), 'F' (column-major) or 'A'.

    Axes of length 1 are ignored (their stride is never used to address an element), as in
    NumPy's own contiguity flags.
    """
    if strides is None:
        return "C"
    dims = [(n, s) for n, s in zip(shape, strides) if n != 1]
    expected = itemsize
    for n, s in reversed(dims):
        if s != expected:
            break
        expected *= n
    else:
        return "C"
    expected = itemsize
    for n, s in dims:
        if s != expected:
            return "A"
        expected *= n
    return "F"


_DEVICE_ARRAY_CLASSES = {}  # class -> whether its instances are device arrays


def is_device_array(value):
    """True for CuPy arrays and other objects of a class with ``__cuda_array_interface__``."""
    cls = type(value)
    known = _DEVICE_ARRAY_CLASSES.get(cls)
    if known is None:
        known = _DEVICE_ARRAY_CLASSES[cls] = hasattr(cls, "__cuda_array_interface__")
    return known


def argument_key(value):
    """What an argument's Numba type depends on; None for what the cache does not handle.

    Device arrays: ("array", class, dtype, ndim, layout). Python scalars: their type (an int also
    whether it fits in int64, as Numba types ints by size). NumPy scalars: their type.
    Host (NumPy) arrays are None: Numba copies those to the device, the fast path does not.
    """
    if is_device_array(value):
        return ("array", type(value), value.dtype, value.ndim,
                layout(value.shape, value.strides, value.itemsize))
    cls = type(value)
    if cls is int:
        return (int, INT64_MIN <= value <= INT64_MAX)
    if cls is bool or cls is float or isinstance(value, np.generic):
        return cls
    return None


def data_pointer(array):
    """The device address of an array's first element (CuPy: ``.data.ptr``)."""
    data = getattr(array, "data", None)
    ptr = getattr(data, "ptr", None)
    if ptr is not None:
        return ptr
    return array.__cuda_array_interface__["data"][0]


def array_parameters(array):
    """An array's kernel parameters, in numba-cuda's order (dispatcher.py, ``_prepare_args``):
    meminfo and parent (both 0: no reference counting on the device), the number of
    elements, the item size, the data pointer, the shape, and the strides in bytes."""
    return [0, 0, array.size, array.itemsize, data_pointer(array), *array.shape, *array.strides]


def installed_versions():
    """{"numba-cuda": version, "cuda-core": version} of this process ("not installed" if absent)."""
    from importlib import metadata

    found = {}
    for name in WRITTEN_FOR:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def _versions_sentence(found):
    written = " and ".join(f"{name} {version}" for name, version in WRITTEN_FOR.items())
    have = " and ".join(f"{name} {version}" for name, version in found.items())
    return f"it was written for {written}; this process has {have}"


def make_fast_path():
    """The fast path for this process: a ``Launcher``, or False after one warning saying why not.

    Called once, at the first launch on a GPU with fast launch on. It refuses versions other
    than ``WRITTEN_FOR`` (their parameter packing may differ: a wrong guess would launch a
    kernel on garbage), unless MINICOLOR_FAST_LAUNCH=force, and any error while building the
    driver (a private name that is not there) turns it off the same way.
    """
    found = installed_versions()
    if found != WRITTEN_FOR and os.environ.get("MINICOLOR_FAST_LAUNCH") != "force":
        problem = "other versions (MINICOLOR_FAST_LAUNCH=force tries it anyway)"
    else:
        try:
            return Launcher(NumbaCudaDriver())
        except Exception as exc:  # the driver touches private names: any error means "not here"
            problem = f"{type(exc).__name__}: {exc}"
    warnings.warn(f"minicolor.kernels: the fast launch path is off ({problem}); "
                  f"{_versions_sentence(found)}. Every kernel goes through Numba's own launch: "
                  "correct, with about 0.1 ms more host time per launch. Set "
                  "MINICOLOR_FAST_LAUNCH=0 to use Numba's launch without this warning.",
                  RuntimeWarning, stacklevel=3)
    return False


class Launcher:
    """Launches kernels with cached argument types and specialisations (see the module docstring).

    ``driver`` does what needs numba-cuda on a GPU: ``typeof(kernel, value)``,
    ``specialisation(kernel, types)``, ``function(overload)``, ``scalar_parameters(...)``,
    ``config(grid, block, overload)``, ``core_stream(stream)`` and ``launch(stream, config,
    function, parameters)``; ``errors`` is the tuple of CUDA error classes, which are raised,
    never taken for a failure of the fast path. Tests pass a fake one.
    """

    def __init__(self, driver):
        self.driver = driver
        self.types = {}     # argument key -> Numba type
        self.entries = {}   # (kernel, argument keys) -> (overload, types, function), or False
        self.configs = {}   # (grid, block, overload) -> launch configuration
        self.streams = {}   # Numba stream -> cuda.core stream
        self.misses = set()  # signatures seen once without a compiled specialisation
        self.enabled = True

    def launch(self, kernel, grid, block, stream, args):
        """Start ``kernel`` on the Numba ``stream`` if the fast path can; return False (nothing
        started) if it cannot.

        A CUDA error is raised as it is. Any other error (an interface of numba-cuda or
        cuda.core this code does not know) turns the fast path off for good, with a warning:
        Numba's own launch takes over.
        """
        if not self.enabled:
            return False
        try:
            return self._launch(kernel, grid, block, stream, args)
        except self.driver.errors:
            raise  # the GPU's error, not ours: an earlier kernel's illegal address, out of memory, ...
        except Exception as exc:
            self.enabled = False
            warnings.warn(f"minicolor.kernels: the fast launch path failed ({type(exc).__name__}: "
                          f"{exc}); using Numba's own launch from now on; "
                          f"{_versions_sentence(installed_versions())}", RuntimeWarning, stacklevel=3)
            return False

    def _launch(self, kernel, grid, block, stream, args):
        keys = tuple(map(argument_key, args))
        entry = self.entries.get((kernel, keys))
        if entry is None:
            entry = self._resolve(kernel, keys, args)
        if not entry:
            return False
        overload, types, function = entry
        core = self.streams.get(stream)
        if core is None:
            core = self.streams[stream] = self.driver.core_stream(stream)
        parameters = []
        for ty, value, key in zip(types, args, keys):
            if type(key) is tuple and key[0] == "array":
                parameters += array_parameters(value)
            else:
                self.driver.scalar_parameters(overload, ty, value, core, parameters)
        config_key = (grid, block, overload)
        config = self.configs.get(config_key)
        if config is None:
            config = self.configs[config_key] = self.driver.config(grid, block, overload)
        self.driver.launch(core, config, function, parameters)  # the last step: nothing has
        return True                                              # started before it

    def _resolve(self, kernel, keys, args):
        """(overload, types, function) for these arguments, or False / None (use Numba's launch;
        None: try again next time, after Numba's launch may have compiled the signature)."""
        if None in keys:
            self.entries[(kernel, keys)] = False
            return False
        types = []
        for key, value in zip(keys, args):
            ty = self.types.get(key)
            if ty is None:
                ty = self.types[key] = self.driver.typeof(kernel, value)
            types.append(ty)
        types = tuple(types)
        overload = self.driver.specialisation(kernel, types)
        if overload is None:
            if (kernel, keys) in self.misses:  # Numba's launch did not compile it: never fast
                self.entries[(kernel, keys)] = False
                return False
            self.misses.add((kernel, keys))
            return None
        entry = (overload, types, self.driver.function(overload)) if overload else False
        self.entries[(kernel, keys)] = entry
        return entry


class NumbaCudaDriver:
    """Every call into numba-cuda's and cuda.core's internals that the fast path makes (numba-cuda
    0.30.4, cuda-core 1.2.2; real GPU only). Building one imports what it needs, so a version
    where a name moved fails here, once, and ``make_fast_path`` turns the fast path off."""

    def __init__(self):
        from cuda.core._utils.cuda_utils import CUDAError
        from numba.cuda import dispatcher
        from numba.cuda.cudadrv import driver
        from numba.cuda.cudadrv.error import CudaDriverError, CudaRuntimeError
        from numba.cuda.errors import normalize_kernel_dimensions

        self._dispatcher, self._normalize = dispatcher, normalize_kernel_dimensions
        self._to_core_stream = driver._to_core_stream
        self._launch, self._launch_config = dispatcher.launch, dispatcher.LaunchConfig
        self._core_ge_1 = dispatcher.CUDA_CORE_GE_1_0
        errors = [CUDAError, CudaDriverError, CudaRuntimeError]
        try:  # CuPy's own, should the DLPack typing of a CuPy array meet the error first
            from cupy.cuda.driver import CUDADriverError
            from cupy.cuda.runtime import CUDARuntimeError

            errors += [CUDADriverError, CUDARuntimeError]
        except ImportError:
            pass
        self.errors = tuple(errors)

    def typeof(self, kernel, value):
        return kernel.typeof_pyval(value)

    def specialisation(self, kernel, types):
        """The compiled kernel for ``types``: None if not compiled yet, False if the fast path
        must not launch it (debug build, extensions, launch-config-sensitive)."""
        if kernel.targetoptions.get("extensions") or getattr(kernel, "_launch_config_sensitive", False):
            return False
        overload = kernel.overloads.get(types)
        if overload is None:
            return None
        if getattr(overload, "debug", False) or getattr(overload, "launch_config_sensitive", False):
            return False
        return overload

    def function(self, overload):
        return overload._codelibrary.get_cufunc().kernel

    def scalar_parameters(self, overload, ty, value, core_stream, parameters):
        overload._prepare_args(ty, value, core_stream, [], parameters)

    def config(self, grid, block, overload):
        grid, block = self._normalize(grid, block)
        if self._core_ge_1:
            return self._launch_config(grid=grid, block=block, shmem_size=0,
                                       is_cooperative=overload.cooperative)
        return self._launch_config(grid=grid, block=block, shmem_size=0,
                                   cooperative_launch=overload.cooperative)

    def core_stream(self, stream):
        return self._to_core_stream(stream)

    def launch(self, core_stream, config, function, parameters):
        self._launch(core_stream, config, function, *parameters)


class CupyStreams:
    """CuPy's current stream as a Numba stream, made once per stream pointer and then cached
    (public API only: both launch paths use it).

    Launching on CuPy's *current* stream is what lets a CUDA graph captured on a CuPy stream
    (``stream.begin_capture()``) catch every kernel; pointer 0 is the legacy default stream,
    Numba's stream 0.
    """

    def __init__(self):
        import cupy
        from numba import cuda

        self._get_current_stream, self._external_stream = cupy.cuda.get_current_stream, cuda.external_stream
        self._streams = {}

    def current(self):
        ptr = self._get_current_stream().ptr
        stream = self._streams.get(ptr)
        if stream is None:
            stream = self._streams[ptr] = self._external_stream(ptr) if ptr else 0
        return stream


def measure(launches=2000):
    """Host time per launch of a small kernel through both paths (run on a GPU:
    ``python -m minicolor.kernels._launch``). Prints microseconds per launch."""
    import time

    import cupy

    import minicolor.kernels as kernels
    from minicolor.kernels import batchnorm

    rng = cupy.random.default_rng(0)
    x = rng.standard_normal((1, 16, 64), dtype=cupy.float32)  # (N, C, H*W), as the launchers pass
    c = cupy.ones(16, cupy.float32)
    y, xhat = cupy.empty_like(x), cupy.empty_like(x)
    args = (x, c, c, c, c, True, y, xhat)  # 8 arguments: 7 arrays and a flag
    saved = kernels.FAST_LAUNCH
    for fast in (False, True):
        kernels.FAST_LAUNCH = fast
        for _ in range(20):  # compile, fill the caches
            kernels.launch(batchnorm._normalize, (1, 16), batchnorm.THREADS, *args)
        cupy.cuda.get_current_stream().synchronize()
        start = time.perf_counter()
        for _ in range(launches):
            kernels.launch(batchnorm._normalize, (1, 16), batchnorm.THREADS, *args)
        host = time.perf_counter() - start
        cupy.cuda.get_current_stream().synchronize()
        path = "kernels/_launch.py (fast)" if fast else "Numba's kernel[grid, block, stream](*args)"
        if fast and not kernels._fast:
            path += " -- OFF, see the warning"
        print(f"{path:45s} {host / launches * 1e6:7.1f} us of host time per launch")
    kernels.FAST_LAUNCH = saved


if __name__ == "__main__":
    measure()

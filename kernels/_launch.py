"""The fast launch path on a real GPU: numba-cuda's launch, minus the work it repeats every time.

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

The pure parts (argument keys, layouts, parameter lists, the caches) need no GPU and are
unit-tested on plain objects in tests/test_launch.py; ``NumbaCudaDriver`` holds the three
calls into numba-cuda and cuda.core, and tests/test_kernels_gpu.py checks the whole path
against Numba's launch on a GPU.
"""
import warnings

import numpy as np

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


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


class Launcher:
    """Launches kernels with cached argument types and specialisations (see the module docstring).

    ``driver`` does the three things that need numba-cuda on a GPU: ``typeof(kernel, value)``,
    ``config(grid, block, cooperative)`` and ``launch(stream, config, function, parameters)``,
    plus ``function(overload)``, the compiled function to start. Tests pass a fake one.
    """

    def __init__(self, driver):
        self.driver = driver
        self.types = {}     # argument key -> Numba type
        self.entries = {}   # (kernel, argument keys) -> (overload, types, function), or False
        self.configs = {}   # (grid, block, cooperative) -> launch configuration
        self.misses = set()  # signatures seen once without a compiled specialisation
        self.enabled = True

    def launch(self, kernel, grid, block, stream, args):
        """Start ``kernel`` if the fast path can; return False (nothing started) if it cannot.

        Any error on the way (an interface of numba-cuda or cuda.core this code does not know)
        turns the fast path off for good, with a warning: Numba's own launch takes over.
        """
        if not self.enabled:
            return False
        try:
            return self._launch(kernel, grid, block, stream, args)
        except Exception as exc:
            self.enabled = False
            warnings.warn(f"minicolor.kernels: the fast launch path failed ({type(exc).__name__}: "
                          f"{exc}); using Numba's own launch from now on", RuntimeWarning)
            return False

    def _launch(self, kernel, grid, block, stream, args):
        keys = tuple(map(argument_key, args))
        entry = self.entries.get((kernel, keys))
        if entry is None:
            entry = self._resolve(kernel, keys, args)
        if not entry:
            return False
        overload, types, function = entry
        parameters, writebacks = [], []
        for ty, value, key in zip(types, args, keys):
            if type(key) is tuple and key[0] == "array":
                parameters += array_parameters(value)
            else:
                overload._prepare_args(ty, value, stream.core, writebacks, parameters)
        config_key = (grid, block, overload.cooperative)
        config = self.configs.get(config_key)
        if config is None:
            config = self.configs[config_key] = self.driver.config(grid, block, overload.cooperative)
        self.driver.launch(stream.core, config, function, parameters)  # the last step: nothing
        return True                                                    # has started before it

    def _resolve(self, kernel, keys, args):
        """(overload, types, function) for these arguments, or False / None (use Numba's launch;
        None: try again next time, after Numba's launch may have compiled the signature)."""
        if None in keys or kernel.targetoptions.get("extensions") or getattr(
                kernel, "_launch_config_sensitive", False):
            self.entries[(kernel, keys)] = False
            return False
        types = []
        for key, value in zip(keys, args):
            ty = self.types.get(key)
            if ty is None:
                ty = self.types[key] = self.driver.typeof(kernel, value)
            types.append(ty)
        types = tuple(types)
        overload = kernel.overloads.get(types)
        if overload is None:
            if (kernel, keys) in self.misses:  # Numba's launch did not compile it: never fast
                self.entries[(kernel, keys)] = False
                return False
            self.misses.add((kernel, keys))
            return None
        if getattr(overload, "debug", False) or getattr(overload, "launch_config_sensitive", False):
            entry = False
        else:
            entry = (overload, types, self.driver.function(overload))
        self.entries[(kernel, keys)] = entry
        return entry


class Stream:
    """A CuPy stream seen by Numba: ``numba`` for ``kernel[grid, block, stream]``, ``core`` for
    cuda.core's launch."""

    def __init__(self, numba_stream, core_stream):
        self.numba, self.core = numba_stream, core_stream


class NumbaCudaDriver:
    """The calls into numba-cuda 0.30 and cuda.core that the fast path needs (real GPU only)."""

    def __init__(self):
        from numba.cuda import dispatcher
        from numba.cuda.errors import normalize_kernel_dimensions

        self._dispatcher = dispatcher
        self._normalize = normalize_kernel_dimensions

    def typeof(self, kernel, value):
        return kernel.typeof_pyval(value)

    def function(self, overload):
        return overload._codelibrary.get_cufunc().kernel

    def config(self, grid, block, cooperative):
        grid, block = self._normalize(grid, block)
        d = self._dispatcher
        if d.CUDA_CORE_GE_1_0:
            return d.LaunchConfig(grid=grid, block=block, shmem_size=0, is_cooperative=cooperative)
        return d.LaunchConfig(grid=grid, block=block, shmem_size=0, cooperative_launch=cooperative)

    def launch(self, stream, config, function, parameters):
        self._dispatcher.launch(stream, config, function, *parameters)


class CupyStreams:
    """CuPy's current stream as a ``Stream``, made once per stream pointer and then cached.

    Launching on CuPy's *current* stream is what lets a CUDA graph captured on a CuPy stream
    (``stream.begin_capture()``) catch every kernel; pointer 0 is the legacy default stream,
    Numba's stream 0.
    """

    def __init__(self):
        import cupy
        from numba import cuda
        from numba.cuda.cudadrv import driver

        self._get_current_stream = cupy.cuda.get_current_stream
        self._external_stream, self._to_core = cuda.external_stream, driver._to_core_stream
        self._streams = {}

    def current(self):
        ptr = self._get_current_stream().ptr
        stream = self._streams.get(ptr)
        if stream is None:
            numba_stream = self._external_stream(ptr) if ptr else 0
            stream = self._streams[ptr] = Stream(numba_stream, self._to_core(numba_stream))
        return stream


def measure(launches=2000):
    """Host time per launch of a small kernel through both paths (run on a GPU:
    ``python -m minicolor.kernels.launcher``). Prints microseconds per launch."""
    import time

    import cupy

    import minicolor.kernels as kernels
    from minicolor.kernels import batchnorm

    rng = cupy.random.default_rng(0)
    x = rng.standard_normal((1, 16, 64), dtype=cupy.float32)  # (N, C, H*W), as the launchers pass
    c = cupy.ones(16, cupy.float32)
    y, xhat = cupy.empty_like(x), cupy.empty_like(x)
    args = (x, c, c, c, c, True, y, xhat)  # 8 arguments: 7 arrays and a flag
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
        path = "kernels/launcher.py" if fast else "Numba's kernel[grid, block, stream](*args)"
        print(f"{path:45s} {host / launches * 1e6:7.1f} us of host time per launch")
    kernels.FAST_LAUNCH = True


if __name__ == "__main__":
    measure()

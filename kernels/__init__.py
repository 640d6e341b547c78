"""minicolor.kernels: hand-written Numba CUDA kernels, one file per layer.

Each file here has a twin of the same name in minicolor/reference/ computing the same thing
in NumPy; the tests compare the two. Importing this package imports numba.cuda, after
restoring ``np.row_stack`` for numba-cuda 0.30 on NumPy 2.5 (see backend.patch_numpy_for_numba).

Every file that defines kernels ends with ``examples(dtype, array=np.zeros)``: (label, call)
pairs, small calls of its launchers that between them launch each of its kernels, their
arrays made by ``array(shape, dtype)``. That is all a new kernel file adds for the tools: the
kernel report (minicolor/tools/kernel_report.py, ``minicolor kernels``) finds every such file
by reading kernels/*.py, records the launches of its examples (nothing runs) and compiles each
kernel for an H100; examples/gpu_check_cases.py runs them on a GPU, on random numbers.
"""
import os

from minicolor.backend import patch_numpy_for_numba, simulator_enabled

patch_numpy_for_numba()

# Under the simulator every CUDA thread is a Python thread, so the kernels are launched with
# smaller blocks and tiles there; the code of each kernel is the same, only these sizes change.
SIMULATOR = simulator_enabled()


def _lock_simulator_shared_arrays():
    """Make the simulator's ``cuda.shared.array`` safe when threads start at the same time.

    The simulator finds a block's shared array by the source line that declares it: the first
    thread to get there allocates it, the others look it up. That check-then-store is not
    locked, so two threads arriving together can both allocate, and one of them then works
    on a private copy that no other thread writes: a wrong result now and then (the sim-versus-
    cpu network gradients came out wrong in 4 runs of 50 without a lock, 0 of 50 with it, on
    the 2-core test machine). This replaces the method with the same logic under a lock.
    Real GPUs are not affected.
    """
    import sys
    import threading

    import numpy as np
    from numba.core import types
    from numba.np import numpy_support

    try:
        from numba.cuda.simulator.kernelapi import FakeCUDAShared
    except ImportError:  # a numba without this simulator layout: leave it alone
        return
    lock = threading.Lock()
    original = FakeCUDAShared.array

    def array(self, shape, dtype):
        if shape == 0:  # dynamic shared memory: no per-line lookup
            return original(self, shape, dtype)
        if isinstance(dtype, types.Type):
            dtype = numpy_support.as_dtype(dtype)
        caller = sys._getframe(1)
        key = (caller.f_code.co_filename, caller.f_lineno)
        with lock:
            found = self._allocations.get(key)
            if found is None:
                found = self._allocations[key] = np.empty(shape, dtype)
        return found

    FakeCUDAShared.array = array


if SIMULATOR:
    _lock_simulator_shared_arrays()

# Set to True (the kernel tests do) to fill every output with NaN before a kernel writes it:
# an element that a kernel forgets to write then shows up as NaN in the comparison.
POISON = False


def empty(xp, shape, dtype):
    """Allocate a kernel's output array (NaN-filled when POISON is set)."""
    if POISON:
        return xp.full(shape, xp.nan, dtype=dtype)
    return xp.empty(shape, dtype=dtype)


# --- the one launch path --------------------------------------------------------------------------
# Every launcher in this package starts its kernels through ``launch``, so how a kernel is started
# (streams, counting, recording the arguments for the compile check or a CUDA graph, the fast
# path) is decided here, in one place, and not in each op.
_RECORDING = None  # while ``recording()`` is active: (list of launches, whether they also run)

# Kernels launched (or recorded) since import. ``minicolor profile`` reads it before and after a
# step: the difference is the number of Numba launches the step makes.
launch_count = 0

# On a real GPU, launch through the fast path of kernels/_launch.py (plumbing: cached argument
# types and specialisations, see docs/kernels.md, "Launching a kernel"). False, or
# MINICOLOR_FAST_LAUNCH=0, uses Numba's own ``kernel[grid, block, stream](*args)`` for every
# launch and touches none of numba-cuda's private names.
FAST_LAUNCH = os.environ.get("MINICOLOR_FAST_LAUNCH", "1") != "0"
_streams = None  # CuPy's current stream as a Numba stream (_launch.CupyStreams), made at first use
_fast = None  # the fast path (a _launch.Launcher), made at the first launch that wants it; False
#               if it could not be made (one warning said why): then Numba's launch does it all


def launch(kernel, grid, block, *args):
    """Start ``kernel`` on ``grid`` blocks of ``block`` threads with ``args``.

    Same as ``kernel[grid, block](*args)``. On a real GPU it runs on CuPy's *current* stream
    (so that a CUDA graph captured on a CuPy stream records it), through the fast path of
    kernels/_launch.py when it can, else through Numba's own launch. Inside ``recording()``
    the launch is also recorded (the kernel, its grid, block and arguments); with
    ``run=False`` it is only recorded and nothing runs. Every call adds one to ``launch_count``.
    """
    global launch_count, _streams
    launch_count += 1
    if _RECORDING is not None:
        launches, run = _RECORDING
        launches.append((kernel, grid, block, args))
        if not run:
            return
    if SIMULATOR:
        kernel[grid, block](*args)
        return
    if _streams is None:
        from minicolor.kernels._launch import CupyStreams

        _streams = CupyStreams()
    stream = _streams.current()
    if FAST_LAUNCH and _fast_path() and _fast.launch(kernel, grid, block, stream, args):
        return
    kernel[grid, block, stream](*args)


def _fast_path():
    """The fast path, built at the first launch that asks for it (only then: with fast launch
    off, nothing of numba-cuda's internals is touched); False where it cannot be had."""
    global _fast
    if _fast is None:
        from minicolor.kernels._launch import make_fast_path

        _fast = make_fast_path()
    return _fast


class recording:
    """``with recording() as launches:`` collects the launches made inside, as (kernel, grid,
    block, args) tuples.

    ``run=False`` (the compile check, minicolor/tools/kernel_report.py): they are recorded instead of
    run, so their signatures can be compiled without a GPU. ``run=True`` (a CUDA graph capture,
    minicolor/graph.py): they run as usual, and the list holds on to every argument of every
    kernel, for as long as the caller keeps it: a graph replays the recorded addresses, so none
    of that memory may be freed while the graph lives.
    """

    def __init__(self, run=False):
        self.run = run

    def __enter__(self):
        global _RECORDING
        self._saved, _RECORDING = _RECORDING, ([], self.run)
        return _RECORDING[0]

    def __exit__(self, *exc):
        global _RECORDING
        _RECORDING = self._saved
        return False

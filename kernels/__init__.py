"""minicolor.kernels: hand-written Numba CUDA kernels, one file per layer.

Each file here has a twin of the same name in minicolor/reference/ computing the same thing
in NumPy; the tests compare the two. Importing this package imports numba.cuda, after
restoring ``np.row_stack`` for numba-cuda 0.30 on NumPy 2.5 (see backend.patch_numpy_for_numba).
"""
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
# (caching, streams, CUDA graph capture, recording the argument types for the compile check) is
# decided here, in one place, and not in each op.
_RECORDING = None  # a list while ``recording()`` is active: (kernel, args) are appended, not run
launch_count = 0  # launches (or recordings) since import: ``minicolor profile`` counts a step's


def launch(kernel, grid, block, *args):
    """Start ``kernel`` on ``grid`` blocks of ``block`` threads with ``args``.

    Same as ``kernel[grid, block](*args)``. While ``recording()`` is active the launch is only
    recorded (the kernel and its arguments, so their Numba types can be derived) and nothing
    runs: that is how the compile check learns the signatures the launchers really use.
    """
    global launch_count
    launch_count += 1
    if _RECORDING is not None:
        _RECORDING.append((kernel, grid, block, args))
        return
    kernel[grid, block](*args)


class recording:
    """``with recording() as launches:`` collects the launches made inside instead of running them."""

    def __enter__(self):
        global _RECORDING
        self._saved, _RECORDING = _RECORDING, []
        return _RECORDING

    def __exit__(self, *exc):
        global _RECORDING
        _RECORDING = self._saved
        return False

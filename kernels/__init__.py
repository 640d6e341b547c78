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

# Set to True (the kernel tests do) to fill every output with NaN before a kernel writes it:
# an element that a kernel forgets to write then shows up as NaN in the comparison.
POISON = False


def empty(xp, shape, dtype):
    """Allocate a kernel's output array (NaN-filled when POISON is set)."""
    if POISON:
        return xp.full(shape, xp.nan, dtype=dtype)
    return xp.empty(shape, dtype=dtype)

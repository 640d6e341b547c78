"""minicolor.kernels: hand-written Numba CUDA kernels, one file per layer.

Each file here has a twin of the same name in minicolor/reference/ computing the same thing
in NumPy; the tests compare the two. Importing this package imports numba.cuda, after
restoring ``np.row_stack`` for numba-cuda 0.30 on NumPy 2.5 (see backend.patch_numpy_for_numba).
"""
from minicolor.backend import patch_numpy_for_numba

patch_numpy_for_numba()

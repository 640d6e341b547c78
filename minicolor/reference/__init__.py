"""NumPy (``xp``) references of minicolor's layers, one file per op.

Each file here has a twin of the same name in kernels/ holding the CUDA kernels that compute
the same thing; the kernel tests compare exactly those two.
"""

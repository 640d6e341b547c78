"""The fast CPU path: the ops of minicolor/reference/ again, compiled (Numba) and parallel.

One file per op, with the same functions, arguments and results as its reference twin, so that
functional.py can run either (``MINICOLOR_CPU=reference`` switches back). Each is checked
against the reference in tests/test_cpu_fast.py; docs/cpu.md says what each change saves.

    conv2d.py     three routes by shape: Winograd F(4x4, 3x3) for 3x3 stride-1 layers
                  (winograd.py), one matrix product over the batch for the strided ones, the
                  reference for the rest
    winograd.py   Lavin & Gray's minimal filtering: its transforms as compiled loops
    batchnorm.py  batchnorm and the fused ReLU + batchnorm, one compiled pass at a time
    upsample.py   nearest and bilinear upsampling, each output read from its sources
    threads.py    how many threads, for Numba's loops and OpenBLAS's products together
"""

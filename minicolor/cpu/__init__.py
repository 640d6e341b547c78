"""The fast CPU path: the ops of minicolor/reference/ again, compiled (Numba) and parallel.

One file per op, with the same functions, arguments and results as its reference twin, so that
functional.py can run either (``MINICOLOR_CPU=reference`` switches back). Each is checked
against the reference in tests/test_cpu_fast.py; docs/cpu.md says what each change saves.

    conv2d.py     two routes by shape: Winograd F(4x4, 3x3) for 3x3 stride-1 layers
                  (winograd.py), im2col by bands of output rows for the rest (im2col.py)
    winograd.py   Lavin & Gray's minimal filtering: its transforms as compiled loops
    im2col.py     im2col and one matrix product per band of rows, the columns kept in cache
    products.py   independent matrix products shared out over the cores, one BLAS thread each
    batchnorm.py  batchnorm and the fused ReLU + batchnorm, one compiled pass at a time
    relu.py       ReLU, one compiled pass each way
    upsample.py   nearest and bilinear upsampling, each output read from its sources
    adam.py       Adam's update, one compiled pass over the flat buffers
    threads.py    how many threads, for Numba's loops and the products together
"""

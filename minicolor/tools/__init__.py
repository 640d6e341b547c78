"""Tools that measure minicolor rather than being it; none of the library imports them.

    summary.py        per layer: output shape, parameters, FLOPs      (``minicolor summary``)
    profile.py        where one training step's time goes, per layer   (``minicolor profile``)
    bench.py          training steps and conv layers, beside PyTorch   (``minicolor bench``)
    kernel_report.py  every CUDA kernel compiled for an H100 without a GPU (``minicolor kernels``)

They learn about the network by asking each layer (nn.Module's ``layers``, ``flops``,
``describe`` and ``to_torch``), never by checking its type.
"""

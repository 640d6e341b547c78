"""conv2d as Numba CUDA kernels: the three passes, in two versions, behind one switch.

Read minicolor/reference/conv2d.py first: there each pass of a convolution is one matrix
product over an im2col buffer. The kernels compute the same three passes without that
buffer, in two versions, as llm.c's dev/cuda keeps kernel1 (naive) ... kernelN beside its
CPU reference. Each is checked against the reference by the same tests:

    conv2d_naive.py   version "naive": one thread computes one output value, reading its
                      inputs straight from global memory. A page of code; slow on a GPU.
    conv2d_tiled.py   version "tiled": implicit GEMM, a block computes a 128 x 128 tile of
                      the product through shared memory and registers. What tiling buys is
                      printed by ``minicolor bench`` (both versions, per layer) and
                      ``minicolor kernels`` (both versions' machine code).

    pass          output                 naive: one thread per          tiled: C = A^T @ B
    forward       y  (N, F, Ho, Wo)      y[n, f, oh, ow]                (F x N*Ho*Wo)
    grad-input    gx (N, C, H, W)        gx[n, c, ih, iw]               (C x N*H*W), by phase
    grad-weight   gw (F, C, kh, kw), gb  gw[f, c, i, j] and gb[f]       (F x C*kh*kw + 1)

**The switch.** ``VERSION`` below picks the version every launcher here runs:

    import minicolor.kernels.conv2d as conv2d
    conv2d.VERSION = "naive"          # or "tiled"

Its default is the environment variable ``MINICOLOR_CONV2D`` if set, else "tiled" on a GPU
and "naive" in the simulator. Numba's CUDA simulator runs each CUDA thread as a Python thread,
and a barrier waits for all of them to be scheduled: there the naive kernels (many threads, no
barrier) beat the tiled ones (16-thread blocks, a barrier per slice of 4). One training step of
ColorizationNet(width=4) at 16 x 16, batch 1 (forward, MSE, backward, Adam) on ``--device sim``
took 111 s and 126 s with the naive kernels against 393 s with the tiled ones at Python's
default thread switch interval (5 ms), and 91 s against 198 s at 0.05 ms (the tests' setting);
timed in one process each, interleaved, on the 2-core test machine at a load of 6 to 16.
Both versions save the same tensor for grad-weight (x), so a step may even switch between passes.
"""
import importlib
import os
from typing import NamedTuple

from minicolor.kernels import SIMULATOR
from minicolor.reference.conv2d import output_size

VERSIONS = ("naive", "tiled")  # the files conv2d_naive.py and conv2d_tiled.py
VERSION = os.environ.get("MINICOLOR_CONV2D") or ("naive" if SIMULATOR else "tiled")


def version(name=None):
    """The module of version ``name`` (default: ``VERSION``): conv2d_naive or conv2d_tiled."""
    name = VERSION if name is None else name
    if name not in VERSIONS:
        raise ValueError(f"minicolor.kernels.conv2d.VERSION (or MINICOLOR_CONV2D) must be one of "
                         f"{', '.join(VERSIONS)}, got {name!r}")
    return importlib.import_module(f"minicolor.kernels.conv2d_{name}")


def forward(x, w, b, stride, padding, dilation):
    """Same as reference.conv2d.forward; returns (y, x): grad-weight re-reads x."""
    return version().forward(x, w, b, stride, padding, dilation)


def backward_data(gy, w, x_shape, stride, padding, dilation, saved=None):
    """gx, the gradient of the loss for x (``saved``, what forward returned, is not needed)."""
    return version().backward_data(gy, w, x_shape, stride, padding, dilation)


def backward_weight(gy, x, w_shape, stride, padding, dilation):
    """(gw, gb), the gradients for w and b, from x as ``forward`` saved it."""
    return version().backward_weight(gy, x, w_shape, stride, padding, dilation)


# --- the geometry both versions share -----------------------------------------------------------
class Geometry(NamedTuple):
    """Every size of one convolution, by name (host side; the kernels get the ones they need)."""
    n: int   # images
    c: int   # input channels
    h: int   # input height
    w: int   # input width
    f: int   # filters (output channels)
    kh: int  # kernel height
    kw: int  # kernel width
    ho: int  # output height
    wo: int  # output width
    sh: int  # stride, rows
    sw: int  # stride, columns
    ph: int  # zero padding, rows (each side)
    pw: int  # zero padding, columns
    dh: int  # dilation, rows
    dw: int  # dilation, columns


def geometry(x_shape, w_shape, stride, padding, dilation):
    """The Geometry of x (N, C, H, W) convolved with w (F, C, kh, kw); all Python ints, so a
    kernel gets int64 scalars whatever the caller passed (one compiled specialisation)."""
    n, c, h, w = (int(v) for v in x_shape)
    f, kh, kw = int(w_shape[0]), int(w_shape[2]), int(w_shape[3])
    (sh, sw), (ph, pw), (dh, dw) = ((int(a), int(b)) for a, b in (stride, padding, dilation))
    ho, wo = output_size(h, kh, sh, ph, dh), output_size(w, kw, sw, pw, dw)
    return Geometry(n, c, h, w, f, kh, kw, ho, wo, sh, sw, ph, pw, dh, dw)


def pass_examples(name, layer, x_shape, w_shape, stride, padding, dtype, array, splits=None):
    """(label, call) for the three passes of one conv layer through version ``name``'s launchers:
    what conv2d_naive.examples and conv2d_tiled.examples are made of. Each label starts with its
    pass (forward, grad-input, grad-weight): the kernel report groups the conv kernels by it."""
    module = version(name)
    x, w, b = array(x_shape, dtype), array(w_shape, dtype), array(w_shape[0], dtype)
    conv = ((stride, stride), (padding, padding), (1, 1))  # stride, padding, dilation
    ho, wo = (output_size(size, k, stride, padding, 1) for size, k in zip(x_shape[2:], w_shape[2:]))
    gy = array((x_shape[0], w_shape[0], ho, wo), dtype)
    split = {"splits": splits} if splits else {}
    return [(f"forward {layer}", lambda: module.forward(x, w, b, *conv)),
            (f"grad-input {layer}", lambda: module.backward_data(gy, w, x.shape, *conv)),
            (f"grad-weight {layer}" + (f" split-K {splits}" if splits else ""),
             lambda: module.backward_weight(gy, x, w.shape, *conv, **split))]


def check_32bit(*arrays):
    """The kernels index with 32-bit offsets: refuse arrays they cannot address."""
    for a in arrays:
        if a.size >= 2**31:
            raise ValueError(f"conv2d kernels: arrays must have fewer than 2**31 elements (32-bit "
                             f"offsets), got shape {tuple(a.shape)}")

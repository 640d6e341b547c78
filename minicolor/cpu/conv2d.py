"""conv2d, the fast CPU path: Winograd for 3x3 stride-1 layers, im2col by bands for the rest.

Same functions, arguments and results as minicolor/reference/conv2d.py (read that first), and
checked against it (tests/test_cpu_fast.py). Each layer takes one of two routes, chosen from its
shapes alone (``route``), so that its three passes agree:

"winograd"  3x3 kernels with stride 1 and at least 16 channels in and out: Winograd's
            F(4x4, 3x3) (winograd.py), 36 multiplications per 16 outputs instead of 144, as
            36 matrix products. With 8 channels it was no faster than im2col, with 4 twice
            slower.
"im2col"    the rest (the strided layers, the first layer's single input channel, the 1x1
            head): im2col and a matrix product, one band of output rows of one image at a time,
            so that the columns stay in cache (im2col.py).

``forward`` returns what ``backward_weight`` needs in ``saved``: the transformed input V of a
Winograd layer, x itself otherwise.
"""
import numpy as np

from . import im2col, threads, winograd

WINOGRAD_MIN_CHANNELS = 16  # see "winograd" above


def route(x_shape, w_shape, stride, padding, dilation):
    """"winograd" or "im2col" for a layer of these shapes (see above)."""
    f, c, kh, kw = w_shape
    if (kh, kw) == (3, 3) and tuple(stride) == (1, 1) and min(c, f) >= WINOGRAD_MIN_CHANNELS:
        return "winograd"
    return "im2col"


def forward(x, w, b, stride, padding, dilation):
    """y = conv2d(x, w) + b. Returns (y, saved); keep saved for grad-weight."""
    threads.adapt()
    x = np.ascontiguousarray(x)
    stride, padding, dilation = tuple(stride), tuple(padding), tuple(dilation)
    if route(x.shape, w.shape, stride, padding, dilation) == "winograd":
        return winograd.conv(x, w, b, padding, dilation)
    return im2col.forward(x, np.ascontiguousarray(w), b, stride, padding, dilation)


def backward_data(gy, w, x_shape, stride, padding, dilation, saved=None):
    """Gradient with respect to x. ``saved``, what forward returned, lets a Winograd layer reuse
    its transformed filters (without it, forward's transforms are made again here)."""
    threads.adapt()
    gy = np.ascontiguousarray(gy)
    stride, padding, dilation = tuple(stride), tuple(padding), tuple(dilation)
    if route(x_shape, w.shape, stride, padding, dilation) == "winograd":
        if saved is None:
            saved = winograd.Saved(None, winograd.weight_transform(w))
        return winograd.backward_data(gy, saved, tuple(x_shape), padding, dilation)
    return im2col.backward_data(gy, np.ascontiguousarray(w), tuple(x_shape), stride, padding, dilation)


def backward_weight(gy, saved, w_shape, stride, padding, dilation):
    """Gradients with respect to w and b, from gy and what forward saved."""
    threads.adapt()
    gy = np.ascontiguousarray(gy)
    stride, padding, dilation = tuple(stride), tuple(padding), tuple(dilation)
    if isinstance(saved, winograd.Saved):
        return winograd.backward_weight(gy, saved, w_shape, padding, dilation)
    return im2col.backward_weight(gy, saved, tuple(w_shape), stride, padding, dilation)

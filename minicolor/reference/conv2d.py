"""conv2d, the NumPy reference: im2col, one matrix product per pass, col2im.

Shapes (NCHW). x: (N, C, H, W); w: (F, C, kh, kw); y: (N, F, Ho, Wo), with

    Ho = (H + 2*ph - dh*(kh - 1) - 1) // sh + 1        (the same for Wo)

im2col gathers, for every output pixel, the C*kh*kw input values under the kernel into
one column, so that the convolution becomes a matrix product:

    cols = im2col(x)                     (N, K, P)    K = C*kh*kw, P = Ho*Wo
    y    = w.reshape(F, K) @ cols        (N, F, P)    forward
    gcols = w.reshape(F, K).T @ gy       (N, K, P)    grad-input, before col2im
    gx   = col2im(gcols)                 (N, C, H, W) adds each column back where it came from
    gw   = sum_n gy[n] @ cols[n].T       (F, K)       grad-weight
    gb   = gy summed over N and P        (F,)

im2col and col2im loop over the kh*kw kernel offsets only (9 for a 3x3 kernel): each
offset moves one strided slice of the (padded) input for all images and channels at once.
Every line here is written against ``xp`` so the same code runs on NumPy and CuPy.
The CUDA kernels compute the same three passes without the cols buffer: kernels/conv2d_naive.py
one thread per output, kernels/conv2d_tiled.py as tiled matrix products (kernels/conv2d.py picks).
"""
from ..backend import get_array_module


def output_size(size, kernel, stride, padding, dilation):
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _pad(x, ph, pw):
    if ph == 0 and pw == 0:
        return x
    xp = get_array_module(x)
    n, c, h, w = x.shape
    padded = xp.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=x.dtype)
    padded[:, :, ph : ph + h, pw : pw + w] = x
    return padded


def _window(i, j, ho, wo, stride, dilation):
    """The slices of the padded input that kernel offset (i, j) reads, over all outputs."""
    (sh, sw), (dh, dw) = stride, dilation
    return (
        slice(i * dh, i * dh + sh * (ho - 1) + 1, sh),
        slice(j * dw, j * dw + sw * (wo - 1) + 1, sw),
    )


def im2col(x, kernel_size, stride, padding, dilation):
    """(N, C, H, W) -> cols (N, C*kh*kw, Ho*Wo), rows ordered (c, i, j) like w.reshape(F, -1)."""
    xp = get_array_module(x)
    n, c, h, w = x.shape
    kh, kw = kernel_size
    ho = output_size(h, kh, stride[0], padding[0], dilation[0])
    wo = output_size(w, kw, stride[1], padding[1], dilation[1])
    if (kh, kw) == (1, 1) and stride == (1, 1) and padding == (0, 0):
        return x.reshape(n, c, h * w)  # a 1x1 convolution needs no gathering
    padded = _pad(x, *padding)
    cols = xp.empty((n, c, kh, kw, ho, wo), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            rows, columns = _window(i, j, ho, wo, stride, dilation)
            cols[:, :, i, j] = padded[:, :, rows, columns]
    return cols.reshape(n, c * kh * kw, ho * wo)


def col2im(cols, x_shape, kernel_size, stride, padding, dilation):
    """The adjoint of im2col: add every column entry back onto the input pixel it came from."""
    xp = get_array_module(cols)
    n, c, h, w = x_shape
    kh, kw = kernel_size
    (ph, pw) = padding
    ho = output_size(h, kh, stride[0], ph, dilation[0])
    wo = output_size(w, kw, stride[1], pw, dilation[1])
    if (kh, kw) == (1, 1) and stride == (1, 1) and padding == (0, 0):
        return cols.reshape(x_shape)
    cols = cols.reshape(n, c, kh, kw, ho, wo)
    padded = xp.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            rows, columns = _window(i, j, ho, wo, stride, dilation)
            padded[:, :, rows, columns] += cols[:, :, i, j]
    return padded[:, :, ph : ph + h, pw : pw + w]


def forward(x, w, b, stride, padding, dilation):
    """y = conv2d(x, w) + b. Returns (y, cols); keep cols for grad-weight."""
    n = x.shape[0]
    f, _, kh, kw = w.shape
    cols = im2col(x, (kh, kw), stride, padding, dilation)
    y = w.reshape(f, -1) @ cols  # (F, K) @ (N, K, P) -> (N, F, P)
    if b is not None:
        y += b.reshape(1, f, 1)
    ho = output_size(x.shape[2], kh, stride[0], padding[0], dilation[0])
    wo = output_size(x.shape[3], kw, stride[1], padding[1], dilation[1])
    return y.reshape(n, f, ho, wo), cols


def backward_data(gy, w, x_shape, stride, padding, dilation, saved=None):
    """Gradient with respect to x: w^T @ gy, then col2im. (``saved``, what forward returned, is
    not needed here; the fast CPU path reuses its transformed filters from it.)"""
    n, f = gy.shape[:2]
    gcols = w.reshape(f, -1).T @ gy.reshape(n, f, -1)  # (K, F) @ (N, F, P) -> (N, K, P)
    return col2im(gcols, x_shape, w.shape[2:], stride, padding, dilation)


def backward_weight(gy, cols, w_shape, *geometry):
    """Gradients with respect to w and b: sum over images of gy @ cols^T, and gy's sums.

    ``cols`` is what forward returned; it already holds stride, padding and dilation, so
    the ``geometry`` that the kernels' version needs goes unused here.
    """
    n, f = gy.shape[:2]
    gy = gy.reshape(n, f, -1)
    gw = (gy @ cols.transpose(0, 2, 1)).sum(axis=0)  # (N, F, P) @ (N, P, K) -> (F, K)
    gb = gy.sum(axis=(0, 2))
    return gw.reshape(w_shape), gb

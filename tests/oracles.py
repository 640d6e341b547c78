"""Direct-loop implementations that share no code with minicolor: the tests' oracles.

Slow and obvious on purpose: one output value at a time, straight from the definitions.
"""
import math

import numpy as np


def conv2d_loop(x, w, b, stride, padding, dilation):
    n, c, h, wd = x.shape
    f, _, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    y = np.zeros((n, f, ho, wo))
    for b_ in range(n):
        for o in range(f):
            for r in range(ho):
                for s in range(wo):
                    total = 0.0 if b is None else b[o]
                    for ch in range(c):
                        for i in range(kh):
                            for j in range(kw):
                                row, col = r * sh - ph + i * dh, s * sw - pw + j * dw
                                if 0 <= row < h and 0 <= col < wd:
                                    total += x[b_, ch, row, col] * w[o, ch, i, j]
                    y[b_, o, r, s] = total
    return y


def upsample_loop(x, scale, mode):
    n, c, h, w = x.shape
    y = np.zeros((n, c, h * scale, w * scale))
    for r in range(h * scale):
        for s in range(w * scale):
            if mode == "nearest":
                y[:, :, r, s] = x[:, :, r // scale, s // scale]
                continue
            sr = max((r + 0.5) / scale - 0.5, 0.0)
            ss = max((s + 0.5) / scale - 0.5, 0.0)
            r0, s0 = int(math.floor(sr)), int(math.floor(ss))
            r1, s1 = min(r0 + 1, h - 1), min(s0 + 1, w - 1)
            fr, fs = sr - r0, ss - s0
            y[:, :, r, s] = ((1 - fr) * (1 - fs) * x[:, :, r0, s0] + (1 - fr) * fs * x[:, :, r0, s1]
                             + fr * (1 - fs) * x[:, :, r1, s0] + fr * fs * x[:, :, r1, s1])
    return y


def batchnorm_loop(x, weight, bias, eps):
    y = np.zeros_like(x, dtype=np.float64)
    for ch in range(x.shape[1]):
        values = x[:, ch].astype(np.float64)
        mean = values.sum() / values.size
        var = ((values - mean) ** 2).sum() / values.size
        y[:, ch] = (values - mean) / math.sqrt(var + eps) * weight[ch] + bias[ch]
    return y

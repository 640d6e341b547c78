"""Numbers that say how good a colorization is.

    upsampling_floor   the lowest MSE a network that predicts ab at 1/factor size and
                       upsamples bilinearly can reach on given ab
    auc                Zhang et al.'s AuC: area under the curve of the fraction of pixels
                       whose ab error is within a threshold, thresholds 0..150
    psnr               peak signal-to-noise ratio of RGB images in 0..1
    colorfulness       Hasler and Suesstrunk (2003)
    wash               the mean predicted chroma |ab| where the truth is neutral (|ab| < 5):
                       how far truly gray, white and black areas are pushed off gray
    already_gray       whether a photo has no colors to compare (fewer than 1% of its pixels
                       reach chroma 5): its gray baseline is perfect, so it says nothing
"""
import numpy as np

from .reference.upsample import matrix


def upsampling_floor(ab, factor=4):
    """Least MSE over ab (n, 2, H, W) of any (H/factor, W/factor) field upsampled bilinearly.

    Bilinear upsampling is a linear map U = A_h (x) A_w, so the best field is the least
    squares solution pinv(A_h) ab pinv(A_w)^T, and what it misses is the floor.
    """
    ab = np.asarray(ab, dtype=np.float64)
    h, w = ab.shape[-2:]
    if h % factor or w % factor:
        raise ValueError(f"upsampling_floor: size {h}x{w} is not divisible by {factor}")
    a_h = matrix(h // factor, factor, "bilinear", np, np.float64)
    a_w = matrix(w // factor, factor, "bilinear", np, np.float64)
    best = np.linalg.pinv(a_h) @ ab @ np.linalg.pinv(a_w).T
    return float(((a_h @ best @ a_w.T - ab) ** 2).mean())


def ab_error_cdf(ab_pred, ab_true, thresholds=np.arange(0, 151)):
    """Fraction of pixels whose Euclidean ab error is <= each threshold."""
    err = np.sqrt(((np.asarray(ab_pred, np.float64) - ab_true) ** 2).sum(axis=-3)).ravel()
    err.sort()
    return np.searchsorted(err, thresholds, side="right") / err.size


def auc(ab_pred, ab_true, max_threshold=150):
    """Zhang et al.'s AuC: mean of the ab-error CDF over thresholds 0..150, in 0..1 (1 is perfect)."""
    thresholds = np.arange(0, max_threshold + 1)
    cdf = ab_error_cdf(ab_pred, ab_true, thresholds)
    area = ((cdf[1:] + cdf[:-1]) / 2).sum()  # trapezoid rule, thresholds one apart
    return float(area / max_threshold)


def psnr(rgb_pred, rgb_true):
    """PSNR in dB of RGB images with values in 0..1."""
    mse = float(((np.asarray(rgb_pred, np.float64) - rgb_true) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def colorfulness(rgb):
    """Hasler and Suesstrunk (2003): sqrt(std_rg^2 + std_yb^2) + 0.3 sqrt(mean_rg^2 + mean_yb^2).

    On 0..255 RGB (inputs in 0..1 are scaled); 0 for a gray image, about 100+ for vivid ones.
    """
    rgb = np.asarray(rgb, np.float64) * 255.0
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    rg, yb = r - g, 0.5 * (r + g) - b
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


NEUTRAL_CHROMA = 5.0  # |ab| below which a pixel counts as neutral: about the smallest tint one sees


def chroma(ab):
    """|ab| per pixel of ab with the channels first: (2, ...) -> (...)."""
    ab = np.asarray(ab, np.float64)
    return np.hypot(ab[0], ab[1])


def wash(ab_pred, ab_true, threshold=NEUTRAL_CHROMA):
    """Mean predicted chroma |ab| over the pixels whose true chroma is below ``threshold``,
    ab as (2, H, W): 0 for gray (the baseline), larger as neutral areas get tinted (a sepia or
    blue wash). None when no pixel of the truth is neutral."""
    neutral = chroma(ab_true) < threshold
    return float(chroma(ab_pred)[neutral].mean()) if neutral.any() else None


def already_gray(ab_true, threshold=NEUTRAL_CHROMA, share=0.01):
    """True when fewer than ``share`` of the pixels reach chroma ``threshold``: a black-and-white
    photo (or one so faded) has no colors to compare a colorization with."""
    return bool((chroma(ab_true) >= threshold).mean() < share)

"""sRGB <-> CIE Lab (D65 white, 2-degree observer), and the network's input/output scaling.

Lab splits a color into lightness L (0 black .. 100 white) and two color axes: a (green -
to red +) and b (blue - to yellow +), both roughly -110..110 for sRGB colors. A grayscale
photo *is* the L channel; colorization predicts a and b from it.

The path, per pixel (channel-last arrays, ``(..., 3)``, floats; sRGB in 0..1):

    sRGB --gamma--> linear RGB --3x3 matrix--> XYZ --/white, cube root--> Lab

Constants follow scikit-image's ``rgb2lab``/``lab2rgb`` so the two agree to 1e-3.
Going back, a Lab color outside the sRGB gamut gives linear RGB outside 0..1; it is
clipped to 0..1 (and a negative Z to 0), the usual choice, so every Lab maps to *some*
displayable color. Every function is written against ``xp`` and runs on NumPy or CuPy.
"""
import numpy as np

from .backend import get_array_module

RGB_TO_XYZ = np.array([[0.412453, 0.357580, 0.180423],
                       [0.212671, 0.715160, 0.072169],
                       [0.019334, 0.119193, 0.950227]])
XYZ_TO_RGB = np.linalg.inv(RGB_TO_XYZ)
WHITE_D65 = np.array([0.95047, 1.0, 1.08883])
_EPSILON = 0.008856  # (6/29)^3: below it the cube root becomes a straight line
_KAPPA = 7.787       # that line's slope


def _float(x):
    xp = get_array_module(x)
    return xp, xp.asarray(x, dtype=x.dtype if x.dtype.kind == "f" else np.float64)


def rgb_to_lab(rgb):
    """sRGB (..., 3) with values in 0..1 -> Lab (..., 3): L in 0..100, a and b in Lab units."""
    xp, rgb = _float(rgb)
    if rgb.shape[-1] != 3:
        raise ValueError(f"rgb_to_lab: expected shape (..., 3), got {tuple(rgb.shape)}")
    linear = xp.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = linear @ xp.asarray(RGB_TO_XYZ.T, dtype=rgb.dtype) / xp.asarray(WHITE_D65, dtype=rgb.dtype)
    f = xp.where(xyz > _EPSILON, xp.cbrt(xyz), _KAPPA * xyz + 16 / 116)
    fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
    return xp.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], axis=-1)


def lab_to_rgb(lab):
    """Lab (..., 3) -> sRGB (..., 3) in 0..1; out-of-gamut colors are clipped (see above)."""
    xp, lab = _float(lab)
    if lab.shape[-1] != 3:
        raise ValueError(f"lab_to_rgb: expected shape (..., 3), got {tuple(lab.shape)}")
    fy = (lab[..., 0] + 16) / 116
    fx = fy + lab[..., 1] / 500
    fz = xp.maximum(fy - lab[..., 2] / 200, 0)
    f = xp.stack([fx, fy, fz], axis=-1)
    xyz = xp.where(f**3 > _EPSILON, f**3, (f - 16 / 116) / _KAPPA)
    linear = (xyz * xp.asarray(WHITE_D65, dtype=lab.dtype)) @ xp.asarray(XYZ_TO_RGB.T, dtype=lab.dtype)
    linear = xp.clip(linear, 0, 1)
    rgb = xp.where(linear > 0.0031308, 1.055 * linear ** (1 / 2.4) - 0.055, 12.92 * linear)
    return xp.clip(rgb, 0, 1)


# --- the network's units: the one place that says how L and ab are scaled ----------------------
L_CENTER, L_SCALE = 50.0, 100.0  # network input  = (L - 50) / 100, about -0.5..0.5
AB_SCALE = 110.0                 # network output = ab / 110,      about -1..1


def normalize_l(l):
    return (l - L_CENTER) / L_SCALE


def normalize_ab(ab):
    return ab / AB_SCALE


def denormalize_ab(ab):
    return ab * AB_SCALE


def gray_to_rgb(l):
    """L (...,) -> the gray sRGB image (..., 3) of that lightness (a = b = 0)."""
    xp = get_array_module(l)
    return lab_to_rgb(xp.stack([l, xp.zeros_like(l), xp.zeros_like(l)], axis=-1))

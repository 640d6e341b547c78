"""Read any image file a user may have into RGB uint8: the one loader of colorize and ImageFolder.

Photos come in many shapes. ``load_rgb`` turns each into an (H, W, 3) uint8 array, upright:

    mode                 what it is                              how it becomes RGB
    1, L, P, RGB         bilevel, 8-bit gray, palette, 8-bit RGB  PIL's conversion
    RGBA, LA, PA, La,    with an alpha channel (or a palette     composited on white
      RGBa, P + tRNS       with a transparent entry)
    CMYK, YCbCr          print and JPEG color spaces             PIL's conversion
    I;16, I;16B, ...     16-bit gray (PNG, TIFF, scanners)       scaled 0..65535 -> 0..255
    I                    32-bit integer gray                     see ``_range`` below
    F                    32-bit float gray                       see ``_range`` below

(A 16-bit RGB PNG is opened by PIL as 8-bit RGB already, keeping the high byte.)

Camera photos are often stored sideways with an EXIF "Orientation" tag that says how to turn
them; it is applied, so a portrait comes out as a portrait.

Files larger than ``MAX_PIXELS`` (150 megapixels, e.g. 12,000 x 12,500) are refused before
they are decoded, with a one-line error: a file that claims more is far more likely a
decompression bomb (a small file that unpacks to gigabytes) than a photo, and minicolor's
memory use grows with the pixel count. Resize such a photo first, or raise
``minicolor.images.MAX_PIXELS`` in your own code.

Every failure to read is a ``DataError`` (a ValueError) whose message names the file.
"""
import warnings

import numpy as np
from PIL import Image

MAX_PIXELS = 150_000_000
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
ORIENTATION = 0x0112  # the EXIF tag


class DataError(ValueError):
    """A data file is missing, unreadable, or not what it should be."""


def is_image_name(path):
    """True for a visible file with an image suffix (``._x.jpg``, macOS metadata, is hidden)."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def find_images(folder):
    """The photos under ``folder`` (every subfolder; hidden files passed over), sorted."""
    return sorted(p for p in folder.rglob("*") if is_image_name(p) and p.is_file())


def load_rgb(path, min_side=None):
    """Any image file (path or binary file object) -> upright RGB uint8 (H, W, 3).

    ``min_side``: the caller will shrink the photo so its shorter side is this; a JPEG is then
    decoded at the smallest of 1/1, 1/2, 1/4, 1/8 scale that keeps at least that (much faster
    for camera photos). The result may be larger than asked, never smaller.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own cap below
            img = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc
    except Exception as exc:  # PIL raises many kinds on a damaged file; we name the file
        raise DataError(f"cannot read image {path}: {_reason(exc)}") from exc
    with img:
        width, height = img.size
        if width * height > MAX_PIXELS:
            raise DataError(f"image {path} is {width}x{height} = {width * height / 1e6:.0f} megapixels; "
                            f"minicolor reads at most {MAX_PIXELS / 1e6:.0f} (a guard against "
                            "decompression bombs): resize it first")
        if min_side and img.format == "JPEG":
            scale = min_side / min(width, height)
            img.draft(None, (int(np.ceil(width * scale)), int(np.ceil(height * scale))))
        try:
            orientation = _orientation(img)
            img.load()
            rgb = _to_rgb(img)
            img.close()  # frees the decoded image before the turn below copies the result
        except Exception as exc:
            raise DataError(f"cannot read image {path}: {_reason(exc)}") from exc
    return _orient(rgb, orientation)


def _reason(exc):
    return str(exc) or type(exc).__name__


def _to_rgb(img, strip_pixels=1 << 20):
    """A loaded PIL image of any mode -> RGB uint8 (H, W, 3).

    Converted a strip of rows at a time into the result, so a large photo costs its decoded
    image and the result, not also a converted copy and PIL's byte string of it."""
    width, height = img.size
    top = None
    if img.mode.startswith("I;16"):
        top = 65535.0
    elif img.mode in ("I", "F"):
        top = _range(img.getextrema()[1])
    out = np.empty((height, width, 3), np.uint8)
    rows = max(1, strip_pixels // max(width, 1))
    for y in range(0, height, rows):
        out[y : y + rows] = _strip_to_rgb(img.crop((0, y, width, min(y + rows, height))), top)
    return out


def _strip_to_rgb(img, top):
    mode = img.mode
    if top is not None:  # 16-bit, 32-bit integer and float gray
        gray = np.asarray(img, dtype=np.float32 if mode == "F" else np.float64)
        gray = np.clip(np.nan_to_num(gray) * (255.0 / top) + 0.5, 0, 255).astype(np.uint8)
        return gray[..., None]
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    try:
        return np.asarray(img if mode == "RGB" else img.convert("RGB"))
    except ValueError as exc:
        raise DataError(f"cannot convert image mode {mode} to RGB ({exc})") from exc


def _range(top):
    """The white level of an I or F image, whose files say nothing about it, from its largest
    value: 1.0 if within 0..1 (float images), 255 if within 0..255, else 65535 (16-bit data)."""
    top = float(top) if top == top else 0.0  # NaN: nothing to go by
    return 1.0 if top <= 1.0 else 255.0 if top <= 255.0 else 65535.0


def _orientation(img):
    try:
        value = int(img.getexif().get(ORIENTATION, 1))
    except Exception:  # a damaged EXIF block: the pixels may still be fine
        return 1
    return value if 1 <= value <= 8 else 1


def _orient(rgb, orientation):
    """Turn an (H, W, 3) array as EXIF orientation 1..8 says (as PIL's ImageOps.exif_transpose)."""
    turned = {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.transpose(1, 0, 2),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
        8: lambda a: np.rot90(a, 1),
    }[orientation](rgb)
    return rgb if orientation == 1 else np.ascontiguousarray(turned)

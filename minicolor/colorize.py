"""Colorize photos with a trained model, keeping each photo's own size and lightness.

The network runs at a fixed size (224x224 by default): the photo's lightness is resized
to it, the network predicts ab there, and the ab planes are resized back to the photo's
resolution (bilinear) and put beside the photo's *original* L. Color is smooth at this
scale anyway, and all the detail a viewer sees lives in L, which is never resampled.

Only two steps work at the photo's full size: its Lab conversion and the ab upsampling.
Both go a strip of rows at a time (``STRIP_PIXELS`` pixels, float32), straight into the
uint8 result, so memory stays near three bytes per pixel for the photo and three for the
result: about 0.7 GB at 100 megapixels (see ``images.MAX_PIXELS`` for the largest accepted).

Where results go (``output_paths``): ``NAME_color.png`` in the output folder, or the one file
``-o`` names. Within a run no output replaces another (a/x.jpg and b/x.png give x_color.png
and x_color-2.png); a file left by an earlier run is kept too, and the new result takes the
next free number, unless ``overwrite``. Each result is written to a temporary file and
renamed, so a crash never leaves half a picture under the final name.
"""
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from .color import lab_to_rgb, rgb_to_lab
from .data import resize_rgb
from .images import find_images, load_rgb

WEIGHTS_DIR = Path(__file__).with_name("weights")
RESULT_SUFFIXES = (".png", ".jpg", ".jpeg")  # lossless, or a photo's usual; not GIF's 256 colors
STRIP_PIXELS = 1 << 20  # pixels per strip of the full-size work (about 100 MB of temporaries)


class OutputError(OSError):
    """A result cannot be written where it should go."""


def shipped_weights():
    """The weights file that ships inside the package, or None if there is none."""
    files = sorted(WEIGHTS_DIR.glob("*.npz")) if WEIGHTS_DIR.is_dir() else []
    return files[0] if files else None


# --- the prediction ------------------------------------------------------------------------
def predict_small_ab(model, rgb, size=224):
    """RGB uint8 (H, W, 3) -> the model's ab at size x size, float32 (2, size, size)."""
    small_l = rgb_to_lab(resize_rgb(rgb, size, size).astype(np.float64) / 255.0)[..., 0]
    return model.predict_ab(small_l[None])[0].astype(np.float32)


def _bilinear_taps(n_out, n_in):
    """Source indices (i0, i1) and weight of i1 for each output position: half-pixel centers,
    edges clamped (what PIL's bilinear resize does when it enlarges)."""
    x = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    x = np.clip(x, 0, n_in - 1)
    i0 = np.floor(x).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (x - i0).astype(np.float32)


def upsample_ab_rows(ab_small, height, width, top, bottom):
    """Rows top..bottom-1 of ab_small (2, h, w) resized bilinearly to (2, height, width),
    as (bottom - top, width, 2) float32. Each row depends on its own index only, so the
    strips of a photo put together equal the whole."""
    r0, r1, rw = (t[top:bottom] for t in _bilinear_taps(height, ab_small.shape[1]))
    c0, c1, cw = _bilinear_taps(width, ab_small.shape[2])
    rows = ab_small[:, r0] * (1 - rw)[:, None] + ab_small[:, r1] * rw[:, None]  # (2, n, w)
    ab = rows[:, :, c0] * (1 - cw) + rows[:, :, c1] * cw  # (2, n, width)
    return np.moveaxis(ab, 0, -1)


def predict_lab(model, rgb, size=224):
    """RGB uint8 (H, W, 3) -> Lab float32 (H, W, 3): the photo's own L, the model's ab.

    For a whole-photo array (evaluation); ``colorize_rgb`` does the same in strips."""
    h, w = rgb.shape[:2]
    lab = rgb_to_lab(rgb.astype(np.float32) / np.float32(255))
    lab[..., 1:] = upsample_ab_rows(predict_small_ab(model, rgb, size), h, w, 0, h)
    return lab


def colorize_rgb(model, rgb, size=224, strip_pixels=None):
    """RGB uint8 (H, W, 3) (color or gray) -> colorized RGB uint8 of the same size.

    The full-size work goes ``strip_pixels`` (default ``STRIP_PIXELS``) at a time."""
    h, w = rgb.shape[:2]
    ab_small = predict_small_ab(model, rgb, size)
    out = np.empty((h, w, 3), np.uint8)
    rows = max(1, (strip_pixels or STRIP_PIXELS) // max(w, 1))
    for top in range(0, h, rows):
        bottom = min(top + rows, h)
        lab = rgb_to_lab(rgb[top:bottom].astype(np.float32) / np.float32(255))
        lab[..., 1:] = upsample_ab_rows(ab_small, h, w, top, bottom)
        out[top:bottom] = np.round(lab_to_rgb(lab) * 255)
    return out


# --- files -----------------------------------------------------------------------------------
def expand_inputs(inputs):
    """[(photo, path of its result relative to the output folder, without suffix)] for the
    command's arguments: a file as given (a missing one too: reading it will fail and say so);
    a folder's photos (every subfolder, hidden files passed over), each result in the same
    subfolder of the output. Input order is kept, a photo given twice is colorized once."""
    pairs, seen = [], set()
    for item in map(Path, inputs):
        if item.is_dir():
            pairs += [(p, p.relative_to(item).with_suffix("")) for p in find_images(item)]
        else:
            pairs.append((item, Path(item.stem)))
    unique = []
    for photo, stem in pairs:
        key = os.path.realpath(photo)
        if key not in seen:
            seen.add(key)
            unique.append((photo, stem))
    return unique


def output_paths(stems, out, overwrite=False):
    """Where each result goes: ``out``/STEM_color.png, or the file ``out`` itself.

    ``out`` is a file when it has an image suffix PIL knows (out.png, out.jpg) or is an
    existing file; it then takes exactly one photo, and must end in .png, .jpg or .jpeg. No two
    results of one run share a name (the later ones get -2, -3, ...); an existing file keeps its
    content unless ``overwrite``.
    """
    out = Path(out)
    as_file = out.is_file() or (not out.is_dir() and out.suffix.lower() in Image.registered_extensions())
    if as_file:
        if len(stems) != 1:
            raise OutputError(f"-o {out} names one file, but {len(stems)} photos were given; "
                              "give a folder for several")
        if out.suffix.lower() not in RESULT_SUFFIXES:
            raise OutputError(f"-o {out}: results are written as .png or .jpg (or .jpeg), not "
                              f"{out.suffix or 'a file without a suffix'}; give such a name, or a folder")
        if out.exists() and not overwrite:
            raise OutputError(f"{out} exists; --overwrite replaces it")
        return [out]
    taken, paths = set(), []
    for stem in stems:
        base = out / stem.parent / f"{stem.name}_color"
        target, k = base.with_name(base.name + ".png"), 1
        while target in taken or (target.exists() and not overwrite):
            k += 1
            target = base.with_name(f"{base.name}-{k}.png")
        taken.add(target)
        paths.append(target)
    return paths


def check_writable(folder):
    """Make ``folder`` (and its parents) and check a file can be created in it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise OutputError(f"cannot write into the output folder {folder}: "
                          f"{exc.strerror or exc}") from exc


def save_rgb(rgb, target):
    """Write an RGB uint8 array to ``target`` (format from its suffix) through a temporary
    file and a rename."""
    target = Path(target)
    check_writable(target.parent)
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        Image.fromarray(rgb).save(tmp, format=Image.registered_extensions()[target.suffix.lower()])
        os.replace(tmp, target)
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)  # after a failure or Ctrl-C; gone already after the rename
    return target


def colorize_file(model, path, out_dir, size=224, target=None):
    """Colorize one image file into ``target`` (default ``out_dir``/<name>_color.png, numbered
    if that exists, see ``output_paths``); returns the path written."""
    rgb = load_rgb(path)
    if target is None:
        target = output_paths([Path(Path(path).stem)], out_dir)[0]
    return save_rgb(colorize_rgb(model, rgb, size), target)

"""Colorize photos with a trained model, keeping each photo's own size and lightness.

The network runs at a fixed size (224x224 by default): the photo's lightness is resized
to it, the network predicts ab there, and the ab planes are resized back to the photo's
resolution (bilinear) and put beside the photo's *original* L. Color is smooth at this
scale anyway, and all the detail a viewer sees lives in L, which is never resampled.
"""
from pathlib import Path

import numpy as np
from PIL import Image

from .color import lab_to_rgb, rgb_to_lab
from .data import load_rgb, resize_rgb

WEIGHTS_DIR = Path(__file__).with_name("weights")


def shipped_weights():
    """The weights file that ships inside the package, or None if there is none."""
    files = sorted(WEIGHTS_DIR.glob("*.npz")) if WEIGHTS_DIR.is_dir() else []
    return files[0] if files else None


def resize_plane(plane, width, height):
    """Resize one float plane (H, W) bilinearly."""
    return np.asarray(Image.fromarray(np.asarray(plane, np.float32), mode="F").resize(
        (width, height), Image.BILINEAR))


def predict_lab(model, rgb, size=224):
    """RGB uint8 (H, W, 3) -> Lab (H, W, 3): the photo's own L, the model's ab."""
    h, w = rgb.shape[:2]
    lab = rgb_to_lab(rgb.astype(np.float64) / 255.0)
    small_l = rgb_to_lab(resize_rgb(rgb, size, size).astype(np.float64) / 255.0)[..., 0]
    ab_small = model.predict_ab(small_l[None])[0]  # (2, size, size)
    ab = np.stack([resize_plane(ab_small[k], w, h) for k in range(2)], axis=-1)
    return np.concatenate([lab[..., :1], ab], axis=-1)


def colorize_rgb(model, rgb, size=224):
    """RGB uint8 (H, W, 3) (color or gray) -> colorized RGB uint8 of the same size."""
    return np.round(lab_to_rgb(predict_lab(model, rgb, size)) * 255).astype(np.uint8)


def colorize_file(model, path, out_dir, size=224):
    """Colorize one image file into ``out_dir``/<name>_color.png; returns the output path."""
    rgb = load_rgb(path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{Path(path).stem}_color.png"
    Image.fromarray(colorize_rgb(model, rgb, size)).save(target)
    return target

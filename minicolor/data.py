"""Data sets of (L, ab) pairs and a deterministic batch order.

Every data set answers ``len(ds)`` and ``ds.batch(indices, rng)``, which returns
``(l, ab)``: L in 0..100 as float32 (n, H, W) and ab in Lab units as float32 (n, 2, H, W).
``rng`` drives augmentation (random crops, flips); pass None for the plain images.

    KaggleColorization   the Kaggle "image-colorization" .npy files, memory-mapped
    ImageFolder          photos of any size and mode, decoded once, cropped per batch
    Subset               some indices of another data set (a held-out split)

Each also answers ``ds.identity()``: a short dict that tells one data set from another
(the trainer stores it in checkpoints and warns when a resume uses different data).
"""
import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .color import rgb_to_lab
from .images import IMAGE_SUFFIXES, DataError, find_images, load_rgb  # noqa: F401 (re-exported)


def _digest(value):
    return hashlib.sha256(json.dumps(value).encode()).hexdigest()[:16]


# --- images ----------------------------------------------------------------------------------
def resize_rgb(rgb, width, height):
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.BICUBIC))


def resize_shorter_side(rgb, size):
    h, w = rgb.shape[:2]
    scale = size / min(h, w)
    return resize_rgb(rgb, max(size, round(w * scale)), max(size, round(h * scale)))


def rgb_to_l_ab(rgb):
    """RGB uint8 (..., H, W, 3) -> (L float32 (..., H, W), ab float32 (..., 2, H, W))."""
    lab = rgb_to_lab(rgb.astype(np.float64) / 255.0).astype(np.float32)
    return lab[..., 0], np.moveaxis(lab[..., 1:], -1, -3)


# --- the Kaggle layout -----------------------------------------------------------------------------
class KaggleColorization:
    """The Kaggle "image-colorization" set: 25,000 MIRFLICKR photos at 224x224, as .npy files.

    ``gray_scale.npy``: uint8 (N, H, W) holding L * 255 / 100;
    ``ab1.npy``, ``ab2.npy``, ``ab3.npy``: uint8 (n_i, H, W, 2) holding a + 128 and b + 128,
    concatenated in this order to pair with the L file. The files are found anywhere under
    ``root`` (the download nests them in l/ and ab/ab/), opened memory-mapped (the set is
    3.8 GB), and checked before use. ``limit`` keeps only the first images.
    """

    L_FILE, AB_FILES = "gray_scale.npy", ("ab1.npy", "ab2.npy", "ab3.npy")

    def __init__(self, root, limit=None, flip=False):
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"Kaggle data directory {root} does not exist")
        self.flip = flip
        self.l = self._open(self._find(root, self.L_FILE), ndim=3)
        self.ab_parts = [self._open(self._find(root, name), ndim=4) for name in self.AB_FILES]
        n, h, w = self.l.shape
        for part, name in zip(self.ab_parts, self.AB_FILES):
            if part.shape[1:] != (h, w, 2):
                raise DataError(f"{name} has shape {part.shape}; expected (n, {h}, {w}, 2) "
                                f"to match {self.L_FILE} of shape {self.l.shape}")
        self.offsets = np.cumsum([0] + [len(p) for p in self.ab_parts])
        if self.offsets[-1] != n:
            counts = " + ".join(str(len(p)) for p in self.ab_parts)
            raise DataError(f"{self.L_FILE} holds {n} images but the ab files hold "
                            f"{counts} = {self.offsets[-1]}; they must pair one to one")
        self.n = n if limit is None else min(n, int(limit))

    def identity(self):
        """The array shapes and the limit: what tells one Kaggle-layout set from another."""
        shapes = [list(self.l.shape)] + [list(p.shape) for p in self.ab_parts]
        return {"kind": "kaggle", "images": self.n, "hash": _digest([shapes, self.n])}

    @staticmethod
    def _find(root, name):
        matches = sorted(root.rglob(name))
        if not matches:
            raise DataError(f"missing {name} under {root} (the Kaggle layout needs gray_scale.npy "
                            "and ab1.npy, ab2.npy, ab3.npy)")
        return matches[0]

    @staticmethod
    def _open(path, ndim):
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read {path} as a .npy array: {exc}") from exc
        if array.dtype != np.uint8:
            raise DataError(f"{path} has dtype {array.dtype}; expected uint8")
        if array.ndim != ndim:
            raise DataError(f"{path} has shape {array.shape}; expected {ndim} dimensions")
        return array

    def __len__(self):
        return self.n

    def batch(self, indices, rng=None):
        indices = np.asarray(indices)
        l = self.l[indices].astype(np.float32) * np.float32(100 / 255)
        ab = np.empty((len(indices), 2) + l.shape[1:], np.float32)
        for k, i in enumerate(indices):
            part = int(np.searchsorted(self.offsets, i, side="right")) - 1
            ab[k] = np.moveaxis(self.ab_parts[part][i - self.offsets[part]], -1, 0)
        ab -= 128
        if self.flip and rng is not None:
            flip = rng.random(len(indices)) < 0.5
            l[flip], ab[flip] = l[flip, :, ::-1], ab[flip, :, :, ::-1]
        return l, ab


# --- folders of photos ---------------------------------------------------------------------------
class ImageFolder:
    """Photos under ``root`` (or a list of files), as size x size (L, ab) pairs.

    Files with a suffix in ``images.IMAGE_SUFFIXES`` (.jpg, .jpeg, .png, .webp, .bmp, .tif,
    .tiff, any case) are found in every subfolder; hidden files (names starting with a dot,
    such as macOS's ``._photo.jpg``) are passed over. Any mode is read (``images.load_rgb``:
    16-bit, alpha, CMYK, EXIF orientation).

    Each photo is decoded once and resized so its shorter side is ``resize`` (default
    ``size``). With an ``rng`` a batch takes a random size x size crop of each (at several
    scales with ``zoom``, see ``crop``) and, if ``flip``, flips half of them left-right;
    without one, the center crop. ``fit="squash"`` instead resizes each whole photo to
    size x size, ignoring its aspect ratio (no crops). ``on_error`` says what to do with a
    file that cannot be read: "raise" (stop, naming it) or "skip" (warn, naming it, and keep
    the list in ``skipped``). Photos are kept in memory as uint8. ``progress`` shows a bar
    while they are decoded.
    """

    def __init__(self, root, size=224, resize=None, on_error="raise", fit="crop", flip=True,
                 zoom=(1.0, 1.0), progress=False):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if fit not in ("crop", "squash"):
            raise ValueError(f"fit must be 'crop' or 'squash', got {fit!r}")
        self.size, self.resize, self.flip = size, resize or size, flip
        self.zoom = tuple(float(z) for z in zoom)
        if len(self.zoom) != 2 or not 1.0 <= self.zoom[0] <= self.zoom[1]:
            raise ValueError(f"zoom must be (lo, hi) with 1 <= lo <= hi, got {zoom!r}")
        if self.resize < size:
            raise ValueError(f"resize ({self.resize}) must be at least size ({size})")
        paths = self._list(root)
        self.root = Path(root) if isinstance(root, (str, Path)) and Path(root).is_dir() else None
        self.paths, self.images, self.skipped = [], [], []
        shorter = size if fit == "squash" else self.resize
        for path in tqdm(paths, desc="reading photos", unit="photo", disable=not progress):
            try:
                # a JPEG is decoded at a reduced scale while that keeps twice the pixels needed
                rgb = load_rgb(path, min_side=2 * shorter)
            except DataError as exc:
                if on_error == "raise":
                    raise
                warnings.warn(f"skipping {path}: {exc}", stacklevel=2)
                self.skipped.append(str(path))
                continue
            self.paths.append(str(path))
            if fit == "squash":
                self.images.append(resize_rgb(rgb, size, size))
            else:
                self.images.append(resize_shorter_side(rgb, self.resize))
        if not self.images:
            raise DataError(f"no readable images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {root}")

    @staticmethod
    def _list(root):
        if isinstance(root, (list, tuple)):
            return [Path(p) for p in root]
        root = Path(root)
        if root.is_file():
            return [root]
        if not root.is_dir():
            raise DataError(f"image folder {root} does not exist")
        return find_images(root)

    def identity(self):
        """Names (relative to the folder) and byte sizes of the photos read: a copied or moved
        folder keeps its identity, an added, removed or edited photo changes it."""
        files = []
        for path in map(Path, self.paths):
            name = path.relative_to(self.root).as_posix() if self.root else path.name
            files.append([name, path.stat().st_size if path.exists() else -1])
        return {"kind": "folder", "images": len(files), "hash": _digest(files)}

    def __len__(self):
        return len(self.images)

    def crop(self, i, rng=None):
        """The size x size RGB crop of photo i: random (and maybe flipped) with rng, else central.

        With ``zoom=(lo, hi)`` a random crop covers size * z pixels (z uniform in lo..hi, at
        most the photo's shorter side) and is scaled down to size: the network sees things at
        several scales.
        """
        img, s = self.images[i], self.size
        h, w = img.shape[:2]
        side = s
        if rng is not None and self.zoom != (1.0, 1.0):
            side = min(int(s * rng.uniform(*self.zoom)), h, w)
        if rng is None:
            top, left = (h - side) // 2, (w - side) // 2
        else:
            top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        out = img[top : top + side, left : left + side]
        if side != s:
            out = resize_rgb(np.ascontiguousarray(out), s, s)
        if rng is not None and self.flip and rng.random() < 0.5:
            out = out[:, ::-1]
        return out

    def batch(self, indices, rng=None):
        rgb = np.stack([self.crop(int(i), rng) for i in indices])
        return rgb_to_l_ab(rgb)


class Subset:
    """The images of ``dataset`` at ``indices``, in that order."""

    def __init__(self, dataset, indices):
        self.dataset, self.indices = dataset, np.asarray(indices, dtype=np.int64)

    def __len__(self):
        return len(self.indices)

    def batch(self, indices, rng=None):
        return self.dataset.batch(self.indices[np.asarray(indices)], rng)

    def identity(self):
        """The whole data set's identity and which of its images this subset holds."""
        parent = data_identity(self.dataset)
        if parent is None:
            return None
        return {**parent, "images": len(self), "hash": _digest([parent["hash"], self.indices.tolist()])}


def data_identity(dataset):
    """``dataset.identity()`` where the data set has one, else None."""
    identity = getattr(dataset, "identity", None)
    return identity() if callable(identity) else None


# --- order ---------------------------------------------------------------------------------------
def split(dataset, val_fraction=0.1, seed=0):
    """(train, validation) Subsets of whole images, chosen by a seeded permutation."""
    n = len(dataset)
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = int(round(n * val_fraction))
    if val_fraction > 0 and n_val == 0 and n > 1:
        n_val = 1
    order = np.random.default_rng(seed).permutation(n)
    return Subset(dataset, np.sort(order[n_val:])), Subset(dataset, np.sort(order[:n_val]))


def batch_indices(n, batch_size, step, seed=0, shuffle=True):
    """The indices of training step ``step`` (0-based): a pure function of its arguments.

    Epoch e visits every image once in the order ``default_rng([seed, e]).permutation(n)``
    (or 0..n-1 without shuffle), batch_size at a time; a batch that would cross the end of
    an epoch continues into the next one. Because nothing here carries state, training
    resumed at step k sees exactly the batches an uninterrupted run would.
    """
    positions = np.arange(step * batch_size, (step + 1) * batch_size)
    epochs, within = np.divmod(positions, n)
    out = np.empty(batch_size, dtype=np.int64)
    for epoch in np.unique(epochs):
        order = np.random.default_rng([seed, int(epoch)]).permutation(n) if shuffle else np.arange(n)
        out[epochs == epoch] = order[within[epochs == epoch]]
    return out

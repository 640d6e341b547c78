"""Evaluate a model on photos it has never seen: AuC, PSNR and colorfulness, beside baselines.

For each photo the model colors its gray version (at the network's size, ab resized back to
the photo's size, as ``minicolor colorize`` does). Then:

    AuC           Zhang et al.: the share of pixels whose ab error is within t, averaged over
                  t = 0..150 (1 is perfect); for the model and for the gray baseline (ab = 0)
    PSNR          of the RGB result against the photo, in dB; model and gray baseline
    colorfulness  Hasler and Suesstrunk (2003) of the model's result, the gray baseline (0)
                  and the photo itself (how colorful it really is)
    wash          the mean predicted chroma |ab| over the pixels whose true chroma is below 5:
                  how far truly neutral areas (white walls, gray skies) are pushed off gray; the
                  gray baseline's is 0, and smaller is better

A photo that is already gray (fewer than 1% of its pixels with chroma 5 or more) has nothing to
compare: gray is perfect there (PSNR near 100 dB) and would pull every mean its way. Such photos
get a row, marked, but are left out of the means, and the table says which they are.

The standard held-out photos come with scikit-image, scikit-learn and matplotlib (bundled in
their wheels, nothing is downloaded): ``standard_images()``. Other photos come from files,
folders or list files (``find_photos``); a folder's first subfolder is a photo's source (the
corpus of examples/collect_photos.py keeps one per Debian package), and ``by_source`` /
``format_sources`` give the means per source beside the mean over all.
"""
from pathlib import Path

import numpy as np

from .color import gray_to_rgb, lab_to_rgb, rgb_to_lab
from .colorize import predict_lab
from .data import load_rgb
from .images import IMAGE_SUFFIXES, find_images
from .metrics import already_gray, auc, colorfulness, psnr, wash

STANDARD = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle", "china", "flower", "grace_hopper")


def standard_images():
    """{name: RGB uint8} of the eight standard held-out photos (needs scikit-image and scikit-learn)."""
    try:
        from skimage import data as skdata
        from sklearn.datasets import load_sample_image
    except ImportError as exc:
        raise RuntimeError("the standard images need scikit-image and scikit-learn: "
                           "pip install 'minicolor[eval]' (or pip install scikit-image scikit-learn)"
                           ) from exc
    import matplotlib.cbook

    images = {name: getattr(skdata, name)() for name in ("astronaut", "chelsea", "coffee", "rocket")}
    images["motorcycle"] = skdata.stereo_motorcycle()[0]
    images["china"] = load_sample_image("china.jpg")
    images["flower"] = load_sample_image("flower.jpg")
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        images["grace_hopper"] = load_rgb(f)
    return images


def evaluate_rgb(model, rgb, size=224):
    """The metrics of one photo (RGB uint8) as a dict."""
    truth = rgb_to_lab(rgb.astype(np.float64) / 255.0)
    truth_rgb = rgb.astype(np.float64) / 255.0
    pred = predict_lab(model, rgb, size)
    pred_rgb = lab_to_rgb(pred)
    gray_rgb = gray_to_rgb(truth[..., 0])
    ab_true = np.moveaxis(truth[..., 1:], -1, 0)
    ab_pred = np.moveaxis(pred[..., 1:], -1, 0)
    return {
        "auc": auc(ab_pred, ab_true),
        "auc_gray": auc(np.zeros_like(ab_true), ab_true),
        "psnr": psnr(pred_rgb, truth_rgb),
        "psnr_gray": psnr(gray_rgb, truth_rgb),
        "colorfulness": colorfulness(pred_rgb),
        "colorfulness_gray": colorfulness(gray_rgb),
        "colorfulness_truth": colorfulness(truth_rgb),
        "wash": wash(ab_pred, ab_true),
        "wash_gray": wash(np.zeros_like(ab_true), ab_true),
        "already_gray": already_gray(ab_true),
    }


def mean_metrics(rows):
    """The mean of each metric over ``rows`` (dicts of evaluate_rgb) that have it; None where
    none does (the wash of photos without a neutral pixel)."""
    keys = [k for k in rows[0] if k != "already_gray"]
    values = {k: [r[k] for r in rows if r.get(k) is not None] for k in keys}
    return {k: float(np.mean(v)) if v else None for k, v in values.items()}


def evaluate(model, images, size=224):
    """{name: metrics} for {name: RGB uint8}, plus "mean" over the photos that are not already
    gray (None if every one is)."""
    results = {name: evaluate_rgb(model, rgb, size) for name, rgb in images.items()}
    colored = [r for r in results.values() if not r["already_gray"]]
    results["mean"] = mean_metrics(colored) if colored else None
    return results


def gray_photos(results):
    """The names of the photos that were already gray, left out of the means."""
    return [name for name, r in results.items() if name != "mean" and r.get("already_gray")]


def _number(value, width, digits):
    return f"{value:>{width}.{digits}f}" if value is not None else f"{'-':>{width}}"


def format_table(results):
    width = max([14] + [len(name) + 9 for name in results])  # long names keep the columns aligned
    header = (f"{'image':<{width}}{'AuC':>7}{'gray':>7}{'PSNR':>8}{'gray':>7}"
              f"{'colorful':>10}{'gray':>6}{'truth':>7}{'wash':>7}{'gray':>6}")
    lines = [header, "-" * len(header)]
    for name, r in results.items():
        if name == "mean":
            lines.append("-" * len(header))
            if r is None:
                lines.append("mean: none, every photo is already gray")
                continue
        label = name + (" (gray)" if r.get("already_gray") else "")
        lines.append(f"{label:<{width}}{r['auc']:>7.3f}{r['auc_gray']:>7.3f}{r['psnr']:>8.2f}"
                     f"{r['psnr_gray']:>7.2f}{r['colorfulness']:>10.1f}{r['colorfulness_gray']:>6.1f}"
                     f"{r['colorfulness_truth']:>7.1f}{_number(r.get('wash'), 7, 1)}"
                     f"{_number(r.get('wash_gray'), 6, 1)}")
    return "\n".join(lines)


def notes(results):
    """What the tables' readers need to know: the wash column, and the photos left out."""
    lines = ["wash: the mean predicted |ab| where the photo's own is below 5 (gray's is 0; smaller "
             "is better)"]
    gray = gray_photos(results)
    if gray:
        lines.append(f"left out of the means, already gray (under 1% of pixels with |ab| >= 5): "
                     f"{', '.join(gray)}")
    return "\n".join(lines)


# --- folders, lists and sources ------------------------------------------------------------------
def find_photos(sources, root=None, taken=()):
    """{name: (path, source)} of the photos named by ``sources``: files, folders or list files.

    A folder gives every photo below it, named by its path inside the folder (without the
    suffix); its source is the first subfolder (a corpus made by examples/collect_photos.py
    keeps each Debian package in its own subfolder), or the folder's own name. A ``.txt`` list
    holds one path per line, relative to ``root`` (default: the list file's folder); blank
    lines and lines starting with # are skipped; a listed path's source is its first folder.
    A single photo is named by its stem and has no source (""). A name already found, or in
    ``taken``, is replaced by the photo's path, so two photos never share a row.
    """
    found = {}

    def add(path, name, source):
        if not path.is_file():
            raise FileNotFoundError(f"no photo at {path}")
        if name in found or name in taken:
            name = path.as_posix()
        found[name] = (path, source)

    for entry in map(Path, sources):
        if entry.is_dir():
            photos = find_images(entry)
            if not photos:
                raise FileNotFoundError(f"no photos ({', '.join(sorted(IMAGE_SUFFIXES))}) under {entry}")
            for p in photos:
                rel = p.relative_to(entry)
                add(p, rel.with_suffix("").as_posix(), rel.parts[0] if len(rel.parts) > 1 else entry.name)
        elif entry.suffix.lower() == ".txt":
            base = Path(root) if root is not None else entry.parent
            lines = [s.strip() for s in entry.read_text().splitlines()]
            for line in (s for s in lines if s and not s.startswith("#")):
                rel = Path(line)
                path = base / rel
                if not path.suffix:  # a list may name photos without their suffix
                    path = next((path.with_suffix(s) for s in sorted(IMAGE_SUFFIXES)
                                 if path.with_suffix(s).is_file()), path)
                add(path, rel.with_suffix("").as_posix() if rel.suffix else rel.as_posix(),
                    rel.parts[0] if len(rel.parts) > 1 else "")
        else:
            add(entry, entry.stem, "")
    return found


def by_source(results, sources):
    """{source: mean metrics and "n"} over the photos of each source, and "all" over every photo;
    photos already gray are left out (as from ``evaluate``'s mean).

    ``results`` as returned by ``evaluate``; ``sources`` maps photo name -> source.
    """
    groups = {}
    for name, source in sources.items():
        if name in results and name != "mean" and not results[name].get("already_gray"):
            groups.setdefault(source or "(none)", []).append(results[name])
    groups = dict(sorted(groups.items()))
    groups["all"] = [r for name, r in results.items() if name != "mean" and not r.get("already_gray")]
    out = {}
    for source, rows in groups.items():
        if rows:
            out[source] = {**mean_metrics(rows), "n": len(rows)}
    return out


def format_sources(groups, title="source"):
    """The per-source means as a table whose first column fits the longest source name."""
    width = max(len(title), *(len(name) for name in groups)) + 2
    header = (f"{title:<{width}}{'n':>4}{'AuC':>7}{'gray':>7}{'PSNR':>8}{'gray':>7}"
              f"{'colorful':>10}{'truth':>7}{'ratio':>7}{'wash':>7}")
    lines = [header, "-" * len(header)]
    for name, r in groups.items():
        if name == "all":
            lines.append("-" * len(header))
        ratio = r["colorfulness"] / r["colorfulness_truth"] if r["colorfulness_truth"] else float("nan")
        lines.append(f"{name:<{width}}{r['n']:>4d}{r['auc']:>7.3f}{r['auc_gray']:>7.3f}"
                     f"{r['psnr']:>8.2f}{r['psnr_gray']:>7.2f}{r['colorfulness']:>10.1f}"
                     f"{r['colorfulness_truth']:>7.1f}{ratio:>7.2f}{_number(r.get('wash'), 7, 1)}")
    return "\n".join(lines)

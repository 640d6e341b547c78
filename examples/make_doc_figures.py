"""Regenerate the pictures in docs/img/ (and print the numbers the docs quote).

    python examples/make_doc_figures.py              # everything, on the CPU (a few minutes)
    python examples/make_doc_figures.py --skip-overfit

1. The report's experiment on the bridge photo (examples/overfit_bridge.py): grids at steps
   100 and 400 and the loss curve -> docs/img/bridge_step100.png, bridge_step400.png,
   bridge_loss.png, and its table on stdout.
2. The activation figure of the shipped model on the bridge photo -> docs/img/activations.png.
3. The model card's galleries of held-out photos: gray input | the weights shipped before (244
   photos) | the shipped weights | truth, on the eight standard photos -> docs/img/gallery.png (needs
   scikit-image and scikit-learn), and on held-out corpus photos (data/corpus/heldout, made by
   examples/collect_photos.py), the four where the shipped model beats gray by the most AuC
   and the four where it loses the most -> docs/img/gallery_heldout.png.
"""
import argparse
import csv
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from minicolor.activations import save_activation_grid  # noqa: E402
from minicolor.color import gray_to_rgb, rgb_to_lab  # noqa: E402
from minicolor.colorize import colorize_rgb, shipped_weights  # noqa: E402
from minicolor.data import load_rgb, resize_rgb  # noqa: E402
from minicolor.evaluate import evaluate_rgb, find_photos, standard_images  # noqa: E402
from minicolor.overfit import format_table, overfit  # noqa: E402
from minicolor.checkpoint import load_model  # noqa: E402

HERE = Path(__file__).parent
IMG = HERE.parent / "docs" / "img"
BRIDGE = HERE / "roebling-bridge.jpg"
CORPUS = HERE.parent / "data" / "corpus"
BEFORE = HERE / "weights" / "colorizer-w16-regression-244photos.npz"  # shipped before (244 corpus photos)


def bridge_figures(out):
    summary = overfit(BRIDGE, steps=400, out_dir=out, progress=False)
    print(format_table(summary))
    for name in ("bridge_step100.png", "bridge_step400.png"):
        shutil.copy(out / name, IMG / name)
    shutil.copy(out / "loss.png", IMG / "bridge_loss.png")


def activation_figure(weights):
    model = load_model(weights)
    rgb = resize_rgb(load_rgb(BRIDGE), 224, 224)
    l = rgb_to_lab(rgb / 255.0)[..., 0]
    chosen = save_activation_grid(IMG / "activations.png", model, l, seed=0,
                                  title=f"Shipped model ({Path(weights).name}) on the bridge photo:\n"
                                        "one random kernel's activation per conv layer")
    print("activations:", chosen)


def gallery(models, names, path, max_side=240, images=None):
    images = standard_images() if images is None else images
    names = names or list(images)
    columns = ["gray input"] + list(models) + ["truth"]
    fig, axes = plt.subplots(len(names), len(columns), figsize=(2.4 * len(columns), 2.0 * len(names)),
                             dpi=64, squeeze=False)
    for r, name in enumerate(names):
        rgb = images[name]
        scale = max_side / max(rgb.shape[:2])
        if scale < 1:
            rgb = resize_rgb(rgb, round(rgb.shape[1] * scale), round(rgb.shape[0] * scale))
        gray = gray_to_rgb(rgb_to_lab(rgb / 255.0)[..., 0])
        pictures = [gray] + [colorize_rgb(m, rgb) for m in models.values()] + [rgb]
        for c, picture in enumerate(pictures):
            axes[r, c].imshow(picture)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(columns[c], fontsize=10)
        axes[r, 0].set_ylabel(name.split("/")[-1].split("-")[-1][:22], fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def good_and_bad(model, images, n=4):
    """The n photos where the model beats the gray baseline by the most AuC, then the n where it
    loses the most, with that difference."""
    metrics = {name: evaluate_rgb(model, rgb) for name, rgb in images.items()}
    gains = {name: m["auc"] - m["auc_gray"] for name, m in metrics.items()}
    order = sorted(gains, key=gains.get, reverse=True)
    return [(name, gains[name]) for name in order[:n] + order[-n:]]


def heldout_gallery(models, shipped, path):
    found = find_photos([CORPUS / "heldout"])
    images = {name: load_rgb(p) for name, (p, _) in found.items()}
    chosen = good_and_bad(shipped, images)
    print("held-out gallery (AuC minus gray's):", ", ".join(f"{n} {g:+.3f}" for n, g in chosen))
    with open(CORPUS / "manifest.csv", newline="", encoding="utf-8") as f:
        credits = {row["file"]: row for row in csv.DictReader(f)}
    for name, _ in chosen:  # the credits the model card must give for the pictures it shows
        row = credits[f"heldout/{name}.jpg"]
        print(f"  {name}: {row['original_path']} ({row['package']}), {row['licence']}, "
              f"{row['credit']} {row['source_url']}".rstrip())
    gallery(models, [name for name, _ in chosen], path, images=images)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-overfit", action="store_true", help="keep the bridge figures as they are")
    parser.add_argument("--out", default="runs/doc_figures", help="scratch folder for the overfit run")
    args = parser.parse_args()
    IMG.mkdir(parents=True, exist_ok=True)
    if not args.skip_overfit:
        bridge_figures(Path(args.out))
    shipped = shipped_weights()
    if shipped is None:
        print("no shipped weights: skipping the activation figure and the galleries")
    else:
        activation_figure(shipped)
        models = {"before (244 photos)": load_model(BEFORE), "shipped": load_model(shipped)}
        gallery(models, None, IMG / "gallery.png")
        if (CORPUS / "heldout").is_dir():
            heldout_gallery(models, models["shipped"], IMG / "gallery_heldout.png")
        else:
            print(f"no {CORPUS / 'heldout'}: run examples/collect_photos.py for the held-out gallery")
    for path in sorted(IMG.glob("*.png")):
        shrink(path)
    print("wrote", ", ".join(f"{p} ({p.stat().st_size // 1024} KB)" for p in sorted(IMG.glob("*.png"))))


def shrink(path):
    """Store a figure with a 256-color palette: a third of the size, no visible difference."""
    from PIL import Image

    with Image.open(path) as img:
        small = img.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


if __name__ == "__main__":
    main()

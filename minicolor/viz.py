"""Pictures: loss curves and sample grids (activation grids live in activations.py).

Everything draws with matplotlib's Agg backend into PNG files; nothing opens a window.
"""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .color import lab_to_rgb  # noqa: E402


def lab_image(l, ab):
    """L (H, W) and ab (2, H, W) in Lab units -> sRGB (H, W, 3) in 0..1."""
    return lab_to_rgb(np.concatenate([np.asarray(l)[..., None], np.moveaxis(np.asarray(ab), 0, -1)], -1))


def save_loss_curve(path, train, val=(), title="Training loss", floor=None):
    """train and val: lists of (step, loss) with loss as MSE per ab value in Lab units."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    if train:
        steps, losses = zip(*train)
        ax.plot(steps, losses, label="training loss", lw=1.2)
    if val:
        steps, losses = zip(*val)
        ax.plot(steps, losses, "o-", label="validation loss", lw=1.2, ms=3)
    if floor is not None:
        ax.axhline(floor, color="gray", ls="--", lw=1, label=f"floor of x4 upsampling ({floor:.1f})")
    ax.set_xlabel("training step")
    ax.set_ylabel("MSE per ab value (Lab units²)")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def save_sample_grid(path, l, ab_true, ab_pred, title=""):
    """The report's figure: per image, original | prediction, then both with L averaged.

    l: (n, H, W); ab_true, ab_pred: (n, 2, H, W), Lab units. In the last two columns every
    pixel gets the image's mean lightness, so only the colors are left to compare.
    """
    n = len(l)
    fig, axes = plt.subplots(n, 4, figsize=(8.8, 2.3 * n + 0.6), dpi=100, squeeze=False)
    headings = ["original", "prediction", "original, L averaged", "prediction, L averaged"]
    for i in range(n):
        flat = np.full_like(l[i], l[i].mean())
        pictures = [lab_image(l[i], ab_true[i]), lab_image(l[i], ab_pred[i]),
                    lab_image(flat, ab_true[i]), lab_image(flat, ab_pred[i])]
        for j, picture in enumerate(pictures):
            ax = axes[i, j]
            ax.imshow(picture)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(headings[j], fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)

"""See inside the network: what one kernel of each conv layer responds to, group by group.

The original report's most instructive figure: run one photo through the network and show,
for every conv layer, the activation (after its ReLU) of one randomly chosen kernel, a row
per group. Groups 1-2 respond to edges and lightness, 3-4 to textures, 5-6 look like noise
at this scale, and 7-8 bring back the image's layout (the decoder must place colors).

The activations are caught with forward hooks on the ReLU modules (each conv is followed by
one), so the network itself runs unchanged: nothing is computed twice.
"""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .nn import Conv2d, ReLU  # noqa: E402


def network_size(width, height, longer=224):
    """(width, height) for a photo scaled so its longer side is ``longer``, the other side
    keeping the aspect ratio, both rounded to a multiple of 8 (at least 8) as the network needs."""
    scale = longer / max(width, height)
    return tuple(max(8, int(round(side * scale / 8)) * 8) for side in (width, height))


def record_activations(model, l):
    """Run L (H, W) in 0..100 through the model in eval mode; returns
    [(group index, layer name, activation (C, h, w) host array)] for every conv + ReLU."""
    records, removers = [], []
    for g, group in enumerate(model.groups(), start=1):
        modules = list(group)
        for i, module in enumerate(modules):
            if isinstance(module, ReLU) and i > 0 and isinstance(modules[i - 1], Conv2d):
                def hook(mod, inputs, output, g=g, name=f"group{g}.{i - 1}"):
                    records.append((g, name, output.numpy()[0]))
                removers.append(module.register_forward_hook(hook))
    try:
        model.predict_ab(np.asarray(l)[None])  # eval mode, no graph; the hooks keep what we want
    finally:
        for remove in removers:
            remove()
    return records


def save_activation_grid(path, model, l, seed=0, channels=None, title=None, dpi=72):
    """Draw one kernel's activation per conv layer, one row per group; returns the choices.

    ``channels`` maps layer name -> kernel index; layers not in it get a seeded random kernel.
    """
    records = record_activations(model, l)
    rng = np.random.default_rng(seed)
    chosen = {}
    rows = sorted({g for g, _, _ in records})
    columns = max(sum(1 for g2, _, _ in records if g2 == g) for g in rows)
    fig, axes = plt.subplots(len(rows), columns + 1, figsize=(2.0 * (columns + 1), 2.0 * len(rows) + 0.7),
                             dpi=dpi, squeeze=False)
    for r, g in enumerate(rows):
        layers = [(name, act) for g2, name, act in records if g2 == g]
        axes[r, 0].imshow(l, cmap="gray", vmin=0, vmax=100)
        axes[r, 0].set_ylabel(f"group {g}", fontsize=10)
        if r == 0:
            axes[r, 0].set_title("input L", fontsize=9)
        for c in range(columns + 1):
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
        for c, (name, act) in enumerate(layers, start=1):
            k = (channels or {}).get(name, int(rng.integers(act.shape[0])))
            chosen[name] = k
            axes[r, c].imshow(act[k], cmap="magma")
            axes[r, c].set_title(f"{name}, kernel {k}\n{act.shape[1]}x{act.shape[2]}", fontsize=8)
        for c in range(len(layers) + 1, columns + 1):
            axes[r, c].axis("off")
    fig.suptitle(title or "One kernel's activation (after ReLU) per conv layer; brighter = stronger",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return chosen

"""The report's experiment: overfit the network to a single photo.

The 2019 student report trained ColorizationNet (width 16) on one 224x224 photo of a
bridge, batch 1, Adam lr 1e-4, and read the loss (MSE per ab value, Lab units) at 100, 200
and 400 epochs: about 40, 31 and 24. Overfitting one photo says nothing about
generalisation, but it is the best first test of a training loop: if the network cannot
learn one image, something is broken.

It also shows a limit of the architecture. The network predicts ab at a quarter of the
input size and upsamples x4 bilinearly, so no weights can beat the best quarter-size
field upsampled the same way: ``metrics.upsampling_floor``. On our bridge photo that floor
is about 25, so the report's 24 (on another photo) cannot be reached here, however long
one trains: the last bit of color detail is simply lost at 56x56.
"""
import time
from pathlib import Path

from .data import ImageFolder
from .metrics import upsampling_floor
from .models import ColorizationNet
from .train import Trainer

REPORT_LOSS = {100: 40.0, 200: 31.0, 400: 24.0}  # read off the report's figures


def overfit(image, steps=400, width=16, size=224, lr=1e-4, device="cpu", seed=0,
            out_dir="runs/overfit", report_steps=(100, 200, 400), progress=True, graph=None):
    """Train on one photo; save grids and report the loss at ``report_steps`` and at the last
    step (a run of 20 steps reports step 20); save the loss curve; return a summary.

    One progress bar covers the whole run; each report step prints a line above it.
    ``graph``: see Trainer (on cuda the step runs as a CUDA graph unless it is False).
    """
    if size % 8:
        raise ValueError(f"size must be divisible by 8, got {size}")
    dataset = ImageFolder([image], size=size, fit="squash", flip=False)  # the same picture every step
    out_dir = Path(out_dir)
    trainer = Trainer(ColorizationNet(width, seed=seed), _SameBatch(dataset), lr=lr, batch_size=1,
                      device=device, seed=seed, out_dir=out_dir, progress=progress,
                      log_every=10, graph=graph)
    floor = upsampling_floor(dataset.batch([0])[1], factor=4)
    marks = sorted({s for s in report_steps if s <= steps} | {steps})
    grids, losses, drawing = [], {}, [0.0]  # drawing: seconds spent on the grids

    def mark(trainer):
        if trainer.step not in marks:
            return None
        started = time.perf_counter()
        trainer.read_losses()  # this step's loss, if nothing has read it yet
        losses[trainer.step] = trainer.history["train"][-1][1]
        # the prediction whose loss the table reports: batchnorm as in training
        grids.append(trainer.save_samples(out_dir / f"bridge_step{trainer.step}.png", batch_statistics=True))
        drawing[0] += time.perf_counter() - started
        return f"step {trainer.step}: loss {losses[trainer.step]:.2f}, grid {grids[-1]}"

    started = time.perf_counter()
    trainer.fit(steps, on_step=mark)
    curve = trainer.save_loss_curve(out_dir / "loss.png", floor=floor)
    return {
        "losses": losses, "floor": floor, "seconds": trainer.train_seconds - drawing[0],
        "total_seconds": time.perf_counter() - started,  # with the pictures
        "device": trainer.device, "steps": steps,
        "grids": [str(g) for g in grids], "loss_curve": str(curve),
        "graph": trainer.graph.captured,
    }


class _SameBatch:
    """The one photo of ``dataset`` as its only batch, converted to Lab once: it is neither
    cropped nor flipped, so every step's batch is the same (and converting it every step
    would cost more host time than a step on the GPU)."""

    def __init__(self, dataset):
        self.dataset, self._batch = dataset, dataset.batch([0])

    def __len__(self):
        return 1

    def batch(self, indices, rng=None):
        if list(indices) != [0]:
            raise IndexError(f"the overfit data set holds one photo, asked for {list(indices)}")
        return self._batch


def format_table(summary):
    """The loss at the report's steps, beside the report's own figures and the floor."""
    lines = [f"{'step':>6} {'minicolor':>10} {'report':>8}"]
    for step, loss in summary["losses"].items():
        report = REPORT_LOSS.get(step)
        lines.append(f"{step:>6} {loss:>10.2f} {'' if report is None else f'~{report:.0f}':>8}")
    lines.append(f"floor of x4 bilinear upsampling on this photo: {summary['floor']:.2f}")
    how = ", replayed as a CUDA graph" if summary.get("graph") else ""
    lines.append(f"{summary['steps']} steps in {summary['seconds']:.2f} s of training on "
                 f"{summary['device']}{how} ({summary['total_seconds']:.1f} s with the pictures)")
    return "\n".join(lines)

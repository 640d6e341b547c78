"""The training loop: batches, steps, validation, checkpoints, logs and pictures.

A ``Trainer`` owns a model, its optimizer (Adam, lr 1e-4 by default, as in the report) and
a data set, and runs numbered steps. Every step is a pure function of the checkpointed
state (weights, batchnorm statistics, optimizer moments, step number and seed), so a run
resumed from a checkpoint repeats an uninterrupted run exactly.

What it leaves in ``out_dir``:
    metrics.jsonl        one JSON object per logged step or validation
    loss.png             the loss curve (MSE per ab value, Lab units²)
    samples_XXXXXX.png   original | prediction grids, as in the report
    checkpoint.npz       written atomically, read as untrusted input (checkpoint.py)
    snapshots/stepN.npz  the weights every ``snapshot_every`` steps (examples/average_weights.py
                         averages them)

On ``cuda`` the step runs as a CUDA graph by default (``graph=None``; see graph.py): a few
eager warm-up steps, then the whole step captured once and replayed, the batch copied into
fixed input buffers. ``graph=False`` trains eagerly; ``graph=True`` asks for it on any device
(on cpu and sim a stand-in replays the Python step, to test the bookkeeping).

Losses are always reported in raw Lab ab units: the model works on ab / 110, so the
reported loss is the training loss times 110². That is the unit of the report's figures.
"""
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from . import backend, checkpoint, color, optim, viz
from .data import batch_indices, data_identity
from .graph import TrainingGraph
from .functional import mse_loss
from .tensor import Tensor, no_grad

LOSS_UNIT = color.AB_SCALE**2  # normalised MSE -> MSE in Lab units


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class LossLog:
    """The training losses: their history on the host, and the steps whose loss is still on the
    device (no host synchronisation inside a step: a step only ``add``s its loss arrays).

    ``read`` brings every unread loss to the host in one transfer, checks that each is finite
    (else TrainingDiverged, naming the step) and appends it to ``history["train"]`` as (step,
    MSE in Lab units); ``objective`` is the last cross-entropy of the classification head."""

    def __init__(self):
        self.history = {"train": [], "val": []}  # lists of (step, loss in Lab units)
        self.unread = []  # (step, mse, objective or None), on the device
        self.objective = None

    def add(self, step, mse, objective=None):
        self.unread.append((step, mse, objective))

    def forget_after(self, step):
        """Drop what is known of the steps after ``step`` (a step cut short by Ctrl-C)."""
        self.unread = [u for u in self.unread if u[0] <= step]
        self.history["train"] = [(s, v) for s, v in self.history["train"] if s <= step]

    def read(self, after_update=False, checkpoint=None):
        if not self.unread:
            return None
        unread, self.unread = self.unread, []
        xp = backend.get_array_module(unread[0][1])
        both = [a for _, mse, objective in unread for a in (mse, mse if objective is None else objective)]
        values = backend.to_numpy(xp.stack(both).astype(xp.float64)).reshape(-1, 2)
        for (step, _, objective), (mse, cross_entropy) in zip(unread, values):
            value = float(mse) * LOSS_UNIT
            if not np.isfinite(value):
                raise TrainingDiverged(
                    f"the loss became {value} at step {step}; training stopped "
                    f"{'after' if after_update else 'before'} updating the weights at step "
                    f"{unread[-1][0]}. The last good checkpoint (if any) is {checkpoint}")
            self.history["train"].append((step, value))
            self.objective = None if objective is None else float(cross_entropy)
        return value


class Trainer:
    def __init__(self, model, train_set, val_set=None, *, lr=1e-4, batch_size=1, optimizer="adam",
                 device="auto", seed=0, out_dir="runs/train", log_every=10, val_every=None,
                 checkpoint_every=None, sample_every=None, n_samples=4, progress=True,
                 graph=None, snapshot_every=None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(train_set) == 0:
            raise ValueError("the training set is empty")
        self.device = backend.resolve_device(device)
        self.model = model.to(self.device)
        self.train_set, self.val_set = train_set, val_set
        self.config = {"lr": lr, "batch_size": batch_size, "optimizer": optimizer, "seed": seed}
        self.optimizer = optim.by_name(optimizer, model.parameters(), lr)
        self.batch_size, self.seed = batch_size, seed
        self.out_dir = Path(out_dir)
        self.log_every, self.val_every = log_every, val_every
        self.checkpoint_every, self.sample_every = checkpoint_every, sample_every
        self.snapshot_every = snapshot_every  # weights kept along the way, for averaging
        self.n_samples, self.progress = n_samples, progress
        self.step = 0
        self.losses = LossLog()  # the history, and the losses still on the device
        self.target = None  # the step fit() trains to: it decides which steps read their loss
        self.graph = TrainingGraph(self.model, self.optimizer, self.device, graph)
        self.train_seconds = 0.0  # wall time inside fit's step loops (no loss curve), all fits

    # --- one step ---------------------------------------------------------------------------

    def train_step(self):
        """Run step ``self.step + 1``; return its loss in Lab units (before the update), or None.

        The loss stays on the device (no host synchronisation inside a step) until a step that
        reads it: every step when called on its own, in ``fit`` only the steps that log,
        validate or checkpoint. A reading step brings every unread loss to the host in one
        transfer and checks them before its own update; each step's loss goes to the history.
        Through the CUDA graph a step reads its loss after its update (the graph is one call).
        """
        indices = batch_indices(len(self.train_set), self.batch_size, self.step, self.seed)
        rng = np.random.default_rng([self.seed, self.step, 1])  # augmentation of this step
        l, ab = self.train_set.batch(indices, rng)
        losses = self.graph.step(*network_inputs(l, ab))  # None: this step runs eagerly
        if losses is not None:
            self.step += 1
            self.losses.add(self.step, *losses)
            return self.read_losses() if self._reads(self.step) else None
        x, y = network_inputs(l, ab, self.device)
        self.model.train()
        self.optimizer.zero_grad()
        loss, mse = self.model.loss(x, y)
        # what is minimised, when it is not the MSE (the classification head's cross-entropy)
        self.losses.add(self.step + 1, mse.data, *([] if loss is mse else [loss.data]))
        value = self.read_losses() if self._reads(self.step + 1) else None
        loss.backward()
        self.optimizer.step()
        self.step += 1
        return value

    @property
    def history(self):
        """{"train": [(step, loss)], "val": [(step, loss)]}, losses in Lab units."""
        return self.losses.history

    @history.setter
    def history(self, value):
        self.losses.history = value

    def _reads(self, step):
        """Whether ``step`` reads the losses: inside fit, when it logs, validates or checkpoints."""
        if self.target is None:
            return True
        return any(self._due(every, self.target, step)
                   for every in (self.log_every, self.val_every, self.checkpoint_every))

    def read_losses(self):
        """Bring the unread losses to the host and check them (``LossLog.read``); return the
        last one in Lab units, or None if none was unread."""
        return self.losses.read(after_update=self.graph.active, checkpoint=self.checkpoint_path)

    def validate(self, dataset=None):
        """Mean MSE (Lab units) over a data set (default: the validation set): ``mean_loss``."""
        return mean_loss(self.model, self.val_set if dataset is None else dataset, self.batch_size)

    # --- the loop ---------------------------------------------------------------------------
    def fit(self, steps, on_step=None):
        """Train until step ``steps`` (counting steps done before a resume).

        ``on_step(trainer)``, if given, runs after every step; a line it returns is printed
        above the progress bar (``overfit`` saves and announces its grids so, on one bar)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        note = busy_cpu_note(self.device) if self.step < steps else None
        if note:
            tqdm.write(note, file=sys.stderr)
        bar = tqdm(total=steps, initial=self.step, disable=not self.progress, unit="step",
                   desc=f"training on {self.device}")
        started, first_step = time.perf_counter(), self.step
        self.target = steps
        try:
            while self.step < steps:
                loss = self.train_step()
                speed = (self.step - first_step) * self.batch_size / (time.perf_counter() - started)
                bar.update(1)
                if loss is not None:
                    bar.set_postfix(loss=f"{loss:.2f}", img_s=f"{speed:.1f}")
                if self._due(self.log_every, steps):
                    record = {"step": self.step, "loss": loss, "images_per_s": speed}
                    if self.losses.objective is not None:
                        record["cross_entropy"] = self.losses.objective
                    self.log(record)
                if self._due(self.val_every, steps) and self.val_set is not None and len(self.val_set):
                    val = self.validate()
                    self.history["val"].append((self.step, val))
                    self.log({"step": self.step, "val_loss": val})
                    bar.write(f"step {self.step}: validation loss {val:.2f}"
                              + (f", training loss {loss:.2f}" if loss is not None else ""))
                if self._due(self.sample_every, steps):
                    self.save_samples()
                if self._due(self.checkpoint_every, steps):
                    self.save_checkpoint()
                if self._due(self.snapshot_every, steps):
                    checkpoint.save_weights(self.out_dir / "snapshots" / f"step{self.step:06d}.npz",
                                            self.model, extra={"step": self.step})
                line = on_step(self) if on_step is not None else None
                if line:
                    bar.write(line)
            self.read_losses()  # any left (when nothing logs the last step)
            self.train_seconds += time.perf_counter() - started
        except KeyboardInterrupt:
            bar.close()
            # the history holds the steps done: read the rest, forget a step cut short
            self.losses.forget_after(self.step)
            self.read_losses()
            path = self.save_checkpoint()
            print(f"\ninterrupted at step {self.step}; checkpoint saved to {path}")
            raise
        finally:
            self.target = None
        bar.close()
        self.save_loss_curve()
        return self.history

    def _due(self, every, steps, step=None):
        step = self.step if step is None else step
        return bool(every) and (step % every == 0 or step == steps)

    # --- records --------------------------------------------------------------------------------
    def log(self, record):
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def save_loss_curve(self, path=None, floor=None):
        path = path or self.out_dir / "loss.png"
        viz.save_loss_curve(path, self.history["train"], self.history["val"],
                            title=f"ColorizationNet (width {self.model.width}) on {self.device}",
                            floor=floor)
        return path

    def save_samples(self, path=None, batch_statistics=False):
        """A grid of validation images (training images if there are none) and predictions.

        Predictions use batchnorm's running estimates, unless ``batch_statistics`` (see
        ColorizationNet.predict_ab).
        """
        dataset = self.val_set if self.val_set is not None and len(self.val_set) else self.train_set
        indices = np.arange(min(self.n_samples, len(dataset)))
        l, ab = dataset.batch(indices)
        pred = self.model.predict_ab(l, batch_statistics)
        path = path or self.out_dir / f"samples_{self.step:06d}.png"
        how = ", batchnorm on the batch's own statistics as in training" if batch_statistics else ""
        viz.save_sample_grid(path, l, ab, pred, title=f"step {self.step}{how}")
        return path

    # --- checkpoints ------------------------------------------------------------------------
    @property
    def checkpoint_path(self):
        return self.out_dir / "checkpoint.npz"

    def save_checkpoint(self, path=None):
        """Weights, batchnorm statistics, optimizer state, step and seed, written atomically."""
        return checkpoint.save_checkpoint(path or self.checkpoint_path, self.model, self.optimizer,
                                          self.step, self.config, self.history,
                                          data_identity(self.train_set))

    def load_checkpoint(self, path):
        """Restore a checkpoint written by save_checkpoint; training then goes on from its step
        (see checkpoint.load_checkpoint for what is refused and what only warned about)."""
        self.step, self.history = checkpoint.load_checkpoint(
            path, self.model, self.optimizer, self.config, data_identity(self.train_set))
        self.graph.reset()  # capture again: the graph recorded the addresses of the state before
        return self

    def load_weights(self, path):
        """Start from the weights of a weights or checkpoint file, at step 0, with the optimizer
        as it is (fresh, before training)."""
        checkpoint.load_weights(path, self.model)
        return self


def network_inputs(l, ab, device=None):
    """The network's input and target for a batch of L and ab: float32 host arrays, or tensors
    on ``device`` when one is given."""
    x = np.ascontiguousarray(color.normalize_l(l)[:, None], np.float32)
    y = np.ascontiguousarray(color.normalize_ab(ab), np.float32)
    if device is None:
        return x, y
    return tuple(Tensor(backend.as_array(a, device), device=device) for a in (x, y))


def mean_loss(model, dataset, batch_size):
    """Mean MSE (Lab units) of ``model`` over ``dataset``, in eval mode, without augmentation."""
    model.eval()
    total, count = 0.0, 0
    with no_grad():
        for start in range(0, len(dataset), batch_size):
            indices = np.arange(start, min(start + batch_size, len(dataset)))
            x, y = network_inputs(*dataset.batch(indices), model.device)
            total += float(mse_loss(model(x), y).item()) * len(indices)
            count += len(indices)
    model.train()
    return total / count * LOSS_UNIT


def busy_cpu_note(device):
    """A line about training on CPU cores that other processes keep busy, else None.

    NumPy's OpenBLAS splits each matrix product over all cores, and its threads spin while they
    wait for each other; when another process holds a core, every product waits for the thread
    that is not running. One thread was 3 to 7 times faster on a busy 2-core machine
    (docs/benchmarks.md, *Threads on a busy machine*). So the NumPy references get advice; the
    fast CPU path picks its thread count from the free cores itself (minicolor/cpu/threads.py),
    and the note only says why training is slower than on an idle machine."""
    cores = backend.cpu_count()
    if backend.runs_kernels(device) or cores < 2:
        return None
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load < cores:
        return None
    busy = f"note: the CPU is busy (load {load:.1f} on {cores} cores); "
    if backend.implementation("conv2d", device).__name__ != "minicolor.reference.conv2d":
        return busy + "the fast CPU path trains on the cores left free, so more slowly than on an idle machine"
    if os.environ.get("OPENBLAS_NUM_THREADS") == "1":
        return None
    return busy + ("the NumPy references (MINICOLOR_CPU=reference) may train several times faster "
                   "with OPENBLAS_NUM_THREADS=1 set before the command")


def fit_class_weights(model, dataset, seed=0, max_images=512, batch_size=16):
    """Set a classification model's rebalancing weights from (up to) max_images of dataset."""
    n = min(len(dataset), max_images)
    rng = np.random.default_rng([seed, 2])
    order = rng.permutation(len(dataset))[:n]
    batches = (dataset.batch(order[i:i + batch_size], rng)[1] for i in range(0, n, batch_size))
    return model.fit_class_weights(batches)

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
import warnings
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from . import backend, color, graph as step_graph, optim, viz
from .checkpoint import load_state, read_state, save_npz_atomic, section
from .data import batch_indices, data_identity
from .functional import mse_loss
from .tensor import Tensor, no_grad

LOSS_UNIT = color.AB_SCALE**2  # normalised MSE -> MSE in Lab units


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class Trainer:
    def __init__(self, model, train_set, val_set=None, *, lr=1e-4, batch_size=1, optimizer="adam",
                 device="auto", seed=0, out_dir="runs/train", log_every=10, val_every=None,
                 checkpoint_every=None, sample_every=None, n_samples=4, progress=True,
                 graph=None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(train_set) == 0:
            raise ValueError("the training set is empty")
        self.device = backend.resolve_device(device)
        self.model = model.to(self.device)
        self.train_set, self.val_set = train_set, val_set
        self.config = {"lr": lr, "batch_size": batch_size, "optimizer": optimizer, "seed": seed}
        if optimizer == "adam":
            self.optimizer = optim.Adam(model.parameters(), lr=lr)
        elif optimizer == "sgd":
            self.optimizer = optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        else:
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
        self.batch_size, self.seed = batch_size, seed
        self.out_dir = Path(out_dir)
        self.log_every, self.val_every = log_every, val_every
        self.checkpoint_every, self.sample_every = checkpoint_every, sample_every
        self.n_samples, self.progress = n_samples, progress
        self.step = 0
        self.objective = None
        self.history = {"train": [], "val": []}  # lists of (step, loss in Lab units)
        self.target = None  # the step fit() trains to: it decides which steps read their loss
        self.unread = []  # (step, mse, objective) of steps whose loss is still on the device
        if graph not in (None, True, False):
            raise ValueError(f"graph must be None (on cuda only), True or False, got {graph!r}")
        self.graph = graph
        self.train_seconds = 0.0  # wall time inside fit's step loops (no loss curve), all fits
        self._graph = None  # the StepGraph, once a step has used it
        self.graph_off = None  # why the graph is not used (a sentence), once that is known

    # --- one step ---------------------------------------------------------------------------
    @staticmethod
    def _inputs(l, ab):
        """The network's input and target for a batch of L and ab: float32 host arrays."""
        return (np.ascontiguousarray(color.normalize_l(l)[:, None], np.float32),
                np.ascontiguousarray(color.normalize_ab(ab), np.float32))

    def _tensors(self, l, ab):
        return tuple(Tensor(backend.as_array(a, self.device), device=self.device)
                     for a in self._inputs(l, ab))

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
        if self._graph_wanted():
            done, value = self._graph_train_step(l, ab)
            if done:
                return value
        x, y = self._tensors(l, ab)
        self.model.train()
        self.optimizer.zero_grad()
        loss, mse = self.model.loss(x, y)
        # what is minimised, when it is not the MSE (the classification head's cross-entropy)
        self.unread.append((self.step + 1, mse.data, None if loss is mse else loss.data))
        value = self.read_losses() if self._reads(self.step + 1) else None
        loss.backward()
        self.optimizer.step()
        self.step += 1
        return value

    # --- the step as a CUDA graph (graph.py) -------------------------------------------------
    @property
    def graph_captured(self):
        """True once the step has been captured and is being replayed."""
        return self._graph is not None and self._graph.captured

    def _graph_wanted(self):
        if self.graph is False or self.graph_off is not None:
            return False
        if self.graph is None and self.device != "cuda":
            self.graph_off = f"CUDA graphs need device 'cuda'; this trainer runs on {self.device}"
            return False
        return True

    def _graph_train_step(self, l, ab):
        """One step through the StepGraph: (True, loss or None), or (False, None) where this
        step must run eagerly."""
        x, y = self._inputs(l, ab)
        if self._graph is None:
            layers = [module for _, module in self.model.named_modules()]
            capture = step_graph.capture_for(self.device, frozen=[self.optimizer, *layers])
            self._graph = step_graph.StepGraph(self._captured_step, capture, refresh=self.optimizer.refresh)
        try:
            outputs = self._graph(x, y)
        except step_graph.ShapeChanged:
            return False, None  # an odd batch: this step runs eagerly, the graph stays for the next
        except step_graph.GraphUnavailable as exc:
            self.graph_off = str(exc)
            self._graph = None
            warnings.warn(f"training eagerly: {exc}", RuntimeWarning, stacklevel=3)
            return False, None
        self.step += 1
        mse, *objective = self._graph.snapshot(outputs)  # the next replay overwrites the outputs
        self.unread.append((self.step, mse, objective[0] if objective else None))
        return True, (self.read_losses() if self._reads(self.step) else None)

    def _captured_step(self, x, y):
        """The step the graph records: forward, loss, backward, update; no host reads."""
        self.model.train()
        self.optimizer.zero_grad()
        loss, mse = self.model.loss(Tensor(x, device=self.device), Tensor(y, device=self.device))
        loss.backward()
        self.optimizer.step()
        return (mse.data,) if loss is mse else (mse.data, loss.data)

    def _reads(self, step):
        """Whether ``step`` reads the losses: inside fit, when it logs, validates or checkpoints."""
        if self.target is None:
            return True
        return any(self._due(every, self.target, step)
                   for every in (self.log_every, self.val_every, self.checkpoint_every))

    def read_losses(self):
        """Bring the unread losses to the host (one transfer), check them and add them to the
        history; return the last one in Lab units. Raises TrainingDiverged at the first one
        that is not finite."""
        if not self.unread:
            return None
        unread, self.unread = self.unread, []
        xp = backend.get_array_module(unread[0][1])
        both = [a for _, mse, objective in unread for a in (mse, mse if objective is None else objective)]
        values = backend.to_numpy(xp.stack(both).astype(xp.float64)).reshape(-1, 2)
        for (step, _, objective), (mse, cross_entropy) in zip(unread, values):
            value = float(mse) * LOSS_UNIT
            if not np.isfinite(value):
                when = "before" if self._graph is None else "after"  # a graph step is one call
                raise TrainingDiverged(
                    f"the loss became {value} at step {step}; training stopped {when} updating "
                    f"the weights at step {unread[-1][0]}. The last good checkpoint (if any) is "
                    f"{self.checkpoint_path}")
            self.history["train"].append((step, value))
            self.objective = None if objective is None else float(cross_entropy)
        return value

    def validate(self, dataset=None):
        """Mean MSE (Lab units) over a data set, in eval mode, without augmentation."""
        dataset = self.val_set if dataset is None else dataset
        self.model.eval()
        total, count = 0.0, 0
        with no_grad():
            for start in range(0, len(dataset), self.batch_size):
                indices = np.arange(start, min(start + self.batch_size, len(dataset)))
                x, y = self._tensors(*dataset.batch(indices))
                total += float(mse_loss(self.model(x), y).item()) * len(indices)
                count += len(indices)
        self.model.train()
        return total / count * LOSS_UNIT

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
                    if self.objective is not None:
                        record["cross_entropy"] = self.objective
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
                line = on_step(self) if on_step is not None else None
                if line:
                    bar.write(line)
            self.read_losses()  # any left (when nothing logs the last step)
            self.train_seconds += time.perf_counter() - started
        except KeyboardInterrupt:
            bar.close()
            # the history holds the steps done: read the rest, forget a step cut short
            self.unread = [u for u in self.unread if u[0] <= self.step]
            self.read_losses()
            self.history["train"] = [(s, v) for s, v in self.history["train"] if s <= self.step]
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
        path = Path(path or self.checkpoint_path)
        arrays = {f"model/{k}": v for k, v in self.model.state_dict().items()}
        arrays.update({f"optim/{k}": np.asarray(v) for k, v in self.optimizer.state_dict().items()})
        arrays["step"] = np.asarray(self.step)
        # The random state of step k is default_rng([seed, k, ...]): seed and step are all of it.
        arrays["config"] = np.asarray(json.dumps({
            "model": self.model.config(),
            "trainer": self.config, "history": self.history,
            "data": data_identity(self.train_set),  # checked (a warning) on resume
        }))
        save_npz_atomic(path, arrays)
        return path

    def load_checkpoint(self, path):
        """Restore a checkpoint written by save_checkpoint; training then goes on from its step.

        A weights file (no optimizer state, no step) is refused: ``load_weights`` starts from
        one. Training on other data than the checkpoint's (``data.data_identity``) is allowed,
        with a warning."""
        arrays, config = read_state(path, self.model)
        if "trainer" not in config:
            raise ValueError(f"{path} is a weights file (no optimizer state, no step), not a "
                             "checkpoint.npz; it cannot be resumed exactly")
        if "step" not in arrays or int(arrays["step"]) < 0 or "history" not in config:
            raise ValueError(f"{path} is a checkpoint without a step number or loss history; "
                             "it cannot be resumed exactly")
        if config["trainer"]["seed"] != self.seed or config["trainer"]["batch_size"] != self.batch_size:
            raise ValueError(f"checkpoint {path} was trained with {config['trainer']}; this trainer "
                             f"has {self.config}: the batches would differ")
        old, new = config.get("data"), data_identity(self.train_set)
        if old and new and old["hash"] != new["hash"]:
            warnings.warn(f"checkpoint {path} was trained on other data ({old['kind']}, "
                          f"{old['images']} training images) than this run's ({new['kind']}, "
                          f"{new['images']}); training goes on with this run's data", stacklevel=2)
        load_state(path, self.model, section(arrays, "model/"))
        try:
            self.optimizer.load_state_dict(section(arrays, "optim/"))
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{path} holds no state for this trainer's {self.config['optimizer']} "
                             f"optimizer ({type(exc).__name__}: {exc})") from exc
        self._graph = None  # capture again: the graph recorded the addresses of the state before
        self.step = int(arrays["step"])
        self.history = {k: [tuple(p) for p in config["history"].get(k, [])] for k in ("train", "val")}
        return self

    def load_weights(self, path):
        """Start from the weights of a weights or checkpoint file, at step 0, with the optimizer
        as it is (fresh, before training)."""
        arrays, _ = read_state(path, self.model, optimizer_state=False)
        load_state(path, self.model, section(arrays, "model/"))
        return self


def busy_cpu_note(device):
    """A line of advice when training on CPU cores that other processes keep busy, else None.

    NumPy's OpenBLAS splits each matrix product over all cores, and its threads spin while they
    wait for each other; when another process holds a core, every product waits for the thread
    that is not running. One thread was 3 to 7 times faster on a busy 2-core machine
    (docs/benchmarks.md, *Threads on a busy machine*)."""
    cores = backend.cpu_count()
    if device != "cpu" or cores < 2 or os.environ.get("OPENBLAS_NUM_THREADS") == "1":
        return None
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load < cores:
        return None
    return (f"note: the CPU is busy (load {load:.1f} on {cores} cores); training may run several "
            "times faster with OPENBLAS_NUM_THREADS=1 set before the command")


def fit_class_weights(model, dataset, seed=0, max_images=512, batch_size=16):
    """Set a classification model's rebalancing weights from (up to) max_images of dataset."""
    n = min(len(dataset), max_images)
    rng = np.random.default_rng([seed, 2])
    order = rng.permutation(len(dataset))[:n]
    batches = (dataset.batch(order[i:i + batch_size], rng)[1] for i in range(0, n, batch_size))
    return model.fit_class_weights(batches)

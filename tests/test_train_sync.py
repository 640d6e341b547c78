"""The trainer keeps each step's loss on the device and reads it only on steps that log."""
import json

import numpy as np
import pytest
from PIL import Image

from minicolor.data import ImageFolder
from minicolor.models import ColorizationNet
from minicolor.train import Trainer, TrainingDiverged


@pytest.fixture
def photos(tmp_path, rng):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3)).astype(np.uint8)).save(folder / f"p{i}.png")
    return ImageFolder(folder, size=16)


def trainer(photos, out, **options):
    return Trainer(ColorizationNet(width=2, seed=1), photos, lr=1e-3, batch_size=2, device="cpu",
                   out_dir=out, progress=False, **options)


def test_losses_are_read_on_logging_steps_only(photos, tmp_path, monkeypatch):
    every_step = trainer(photos, tmp_path / "a", log_every=1)
    every_step.fit(7)
    deferred = trainer(photos, tmp_path / "b", log_every=3)
    reads = []
    original = deferred.read_losses
    monkeypatch.setattr(deferred, "read_losses", lambda: reads.append(deferred.step) or original())
    deferred.fit(7)
    assert reads[:3] == [2, 5, 6]  # before the updates of steps 3, 6 and 7 (the last)
    assert deferred.history["train"] == every_step.history["train"]  # every step, same values
    records = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in records] == [every_step.history["train"][i] for i in (2, 5, 6)]


def test_nan_found_at_the_next_read(photos, tmp_path):
    run = trainer(photos, tmp_path / "run", log_every=4)
    run.fit(2)
    run.model.head.weight.data[...] = np.nan
    with pytest.raises(TrainingDiverged, match="nan at step 3; training stopped before updating the "
                                               "weights at step 4"):
        run.fit(8)
    assert run.step == 3 and [s for s, _ in run.history["train"]] == [1, 2]

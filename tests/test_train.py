"""Trainer: exact resume, checkpoints, the NaN guard, Ctrl-C, logs and pictures; the network."""
import json

import numpy as np
import pytest
from PIL import Image

from minicolor.data import ImageFolder, split
from minicolor.metrics import upsampling_floor
from minicolor.models import ColorizationNet
from minicolor.checkpoint import load_model, read_npz, save_weights
from minicolor.train import Trainer, TrainingDiverged


@pytest.fixture
def photos(tmp_path, rng):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(5):
        base = rng.integers(0, 256, (1, 1, 3))
        noise = rng.integers(-40, 40, (24, 28, 3))
        Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(folder / f"p{i}.png")
    return ImageFolder(folder, size=16, resize=20)


def make_trainer(photos, out, **kwargs):
    train_set, val_set = split(photos, 0.2, seed=0)
    options = dict(lr=1e-3, batch_size=2, device="cpu", out_dir=out, progress=False, log_every=1)
    options.update(kwargs)
    return Trainer(ColorizationNet(width=2, seed=1), train_set, val_set, **options)


def test_network_shape_and_parameter_count():
    net = ColorizationNet(16)
    assert net.num_parameters() == 1_955_026
    assert "parameters=1,955,026" in repr(net)
    small = ColorizationNet(2)
    ab = small.predict_ab(np.full((1, 16, 24), 50.0))
    assert ab.shape == (1, 2, 16, 24)
    with pytest.raises(ValueError, match="divisible by 8"):
        small.predict_ab(np.zeros((1, 12, 16)))


def test_resume_repeats_an_uninterrupted_run(photos, tmp_path):
    full = make_trainer(photos, tmp_path / "full")
    full.fit(6)
    first = make_trainer(photos, tmp_path / "part")
    first.fit(3)
    path = first.save_checkpoint()
    resumed = make_trainer(photos, tmp_path / "part").load_checkpoint(path)
    assert resumed.step == 3
    resumed.fit(6)
    assert [loss for _, loss in resumed.history["train"]] == [loss for _, loss in full.history["train"]]
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_checkpoint_round_trip_is_atomic_and_unpickled(photos, tmp_path):
    trainer = make_trainer(photos, tmp_path / "run")
    trainer.fit(2)
    path = trainer.save_checkpoint()
    assert not list(path.parent.glob("*.tmp"))
    arrays, config = read_npz(path)  # allow_pickle=False inside
    assert int(arrays["step"]) == 2 and config["trainer"]["batch_size"] == 2
    assert all(a.dtype != object for a in arrays.values())
    model = load_model(path)
    for (name, a), b in zip(trainer.model.state_dict().items(), model.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    half = save_weights(tmp_path / "w16.npz", trainer.model, dtype=np.float16)
    assert np.abs(load_model(half).head.weight.data - trainer.model.head.weight.data).max() < 1e-2


def test_bad_checkpoint_files(tmp_path, photos):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        read_npz(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(ValueError, match="is not a minicolor checkpoint"):
        read_npz(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(2))
    with pytest.raises(ValueError, match="no 'config' entry"):
        read_npz(tmp_path / "other.npz")
    trainer = make_trainer(photos, tmp_path / "a")
    path = trainer.save_checkpoint()
    with pytest.raises(ValueError, match="the batches would differ"):
        make_trainer(photos, tmp_path / "b", batch_size=3).load_checkpoint(path)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(photos, tmp_path):
    trainer = make_trainer(photos, tmp_path / "run", checkpoint_every=2)
    trainer.fit(2)
    before = trainer.checkpoint_path.read_bytes()
    trainer.model.head.weight.data[...] = np.nan
    with pytest.raises(TrainingDiverged, match="the loss became nan at step 3.*checkpoint.npz"):
        trainer.fit(4)
    assert trainer.checkpoint_path.read_bytes() == before
    assert trainer.step == 2


def test_ctrl_c_saves_a_checkpoint(photos, tmp_path, monkeypatch):
    trainer = make_trainer(photos, tmp_path / "run")
    original = trainer.train_step

    def interrupted():
        if trainer.step == 2:
            raise KeyboardInterrupt
        return original()

    monkeypatch.setattr(trainer, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(5)
    arrays, _ = read_npz(trainer.checkpoint_path)
    assert int(arrays["step"]) == 2


def test_logs_and_pictures(photos, tmp_path):
    trainer = make_trainer(photos, tmp_path / "run", val_every=2, sample_every=2)
    trainer.fit(4)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in records if "val_loss" in r] == [2, 4]
    assert all(r["loss"] > 0 and r["images_per_s"] > 0 for r in records if "loss" in r)
    for name in ("loss.png", "samples_000002.png", "samples_000004.png"):
        assert Image.open(tmp_path / "run" / name).size[0] > 100


def test_upsampling_floor():
    rng = np.random.default_rng(0)
    smooth = rng.standard_normal((1, 2, 4, 4))
    from minicolor.reference.upsample import matrix

    a = matrix(4, 4, "bilinear", np, np.float64)
    assert upsampling_floor(a @ smooth @ a.T) < 1e-20  # exactly representable: floor 0
    assert upsampling_floor(rng.standard_normal((1, 2, 16, 16))) > 0.5


def test_predict_with_batch_statistics_leaves_running_estimates(photos):
    net = ColorizationNet(width=2, seed=0)
    l, _ = photos.batch([0, 1])
    before = {name: b.copy() for name, b in net.named_buffers()}
    a = net.predict_ab(l, batch_statistics=True)
    for name, b in net.named_buffers():
        np.testing.assert_array_equal(b, before[name], err_msg=name)
    assert net.training and net.group1[4].momentum == 0.1
    assert not np.allclose(a, net.predict_ab(l))  # fresh running estimates differ from the batch's

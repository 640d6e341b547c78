"""examples/average_weights.py: the mean of checkpoints, loadable as weights."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from minicolor.models import ColorizationNet
from minicolor.checkpoint import load_model, save_npz_atomic

sys.path.insert(0, str(Path(__file__).parent.parent / "examples"))
import average_weights  # noqa: E402


def checkpoint(path, net, step):
    arrays = {f"model/{k}": v for k, v in net.state_dict().items()}
    arrays["step"] = np.asarray(step)
    arrays["config"] = np.asarray(json.dumps({"model": net.config()}))
    save_npz_atomic(path, arrays)
    return path


def test_average_is_the_mean_and_loads(tmp_path, monkeypatch):
    a, b = ColorizationNet(2, seed=1), ColorizationNet(2, seed=2)
    paths = [checkpoint(tmp_path / "a.npz", a, 100), checkpoint(tmp_path / "b.npz", b, 200)]
    out = tmp_path / "mean.npz"
    monkeypatch.setattr(sys, "argv", ["average_weights.py", str(out)] + [str(p) for p in paths])
    average_weights.main()
    model = load_model(out)
    expected = (a.state_dict()["group1.0.weight"] + b.state_dict()["group1.0.weight"]) / 2
    np.testing.assert_allclose(model.state_dict()["group1.0.weight"], expected, rtol=1e-3, atol=1e-4)
    with np.load(out) as f:
        assert f["model/head.weight"].dtype == np.float16
        assert json.loads(str(f["config"]))["averaged_steps"] == [100, 200]


def test_checkpoints_of_different_networks_are_refused(tmp_path):
    paths = [checkpoint(tmp_path / "a.npz", ColorizationNet(2), 1),
             checkpoint(tmp_path / "b.npz", ColorizationNet(3), 2)]
    with pytest.raises(ValueError, match="width"):
        average_weights.average(paths)


def test_training_keeps_snapshots_that_average(tmp_path, monkeypatch):
    from minicolor.train import Trainer

    class Photos:  # two 16 x 16 photos
        l = np.random.default_rng(0).uniform(0, 100, (2, 16, 16)).astype(np.float32)
        ab = np.random.default_rng(1).uniform(-20, 20, (2, 2, 16, 16)).astype(np.float32)

        def __len__(self):
            return 2

        def batch(self, indices, rng=None):
            return self.l[indices], self.ab[indices]

    trainer = Trainer(ColorizationNet(2), Photos(), batch_size=2, device="cpu", out_dir=tmp_path / "run",
                      progress=False, snapshot_every=2)
    trainer.fit(5)
    snapshots = sorted((tmp_path / "run" / "snapshots").glob("*.npz"))
    assert [p.name for p in snapshots] == ["step000002.npz", "step000004.npz", "step000005.npz"]
    np.testing.assert_array_equal(load_model(snapshots[-1]).state_dict()["head.weight"],
                                  trainer.model.state_dict()["head.weight"])  # the last is the final
    out = tmp_path / "mean.npz"
    monkeypatch.setattr(sys, "argv", ["average_weights.py", str(out)] + [str(p) for p in snapshots])
    average_weights.main()
    with np.load(out) as f:
        assert json.loads(str(f["config"]))["averaged_steps"] == [2, 4, 5]

"""Activation pictures and the model summary, on tiny inputs."""
import numpy as np

from minicolor.activations import record_activations, save_activation_grid
from minicolor.models import ColorizationNet
from minicolor.tools.summary import layer_table, summary


def test_record_activations_uses_hooks_and_leaves_none_behind():
    net = ColorizationNet(2, seed=0)
    records = record_activations(net, np.full((16, 16), 40.0))
    names = [name for _, name, _ in records]
    assert len(names) == 22  # every 3x3 conv is followed by a ReLU; the 1x1 head is not
    assert names[0] == "group1.0" and names[-1] == "group8.5"
    assert records[0][2].shape == (2, 16, 16) and records[-1][2].shape == (8, 4, 4)
    assert all((act >= 0).all() for _, _, act in records)  # after ReLU
    assert not any(m._forward_hooks for _, m in net.named_modules())


def test_activation_grid_is_seeded(tmp_path):
    net = ColorizationNet(2, seed=0)
    l = np.linspace(0, 100, 256).reshape(16, 16)
    first = save_activation_grid(tmp_path / "a.png", net, l, seed=5)
    second = save_activation_grid(tmp_path / "b.png", net, l, seed=5)
    assert first == second
    fixed = save_activation_grid(tmp_path / "c.png", net, l, channels={"group1.0": 1})
    assert fixed["group1.0"] == 1


def test_summary_counts():
    net = ColorizationNet(16)
    rows = layer_table(net, size=32)
    assert sum(r[3] for r in rows) == net.num_parameters()
    conv = next(r for r in rows if r[0] == "group1.0")
    assert conv[2] == (1, 16, 32, 32) and conv[4] == 16 * 32 * 32 * (2 * 9 + 1)
    text = summary(net, size=32)
    assert "total" in text and "1,955,026" in text

"""examples/widen_weights.py: a network twice as wide that computes what the narrow one did."""
import sys
from pathlib import Path

import numpy as np
import pytest

from minicolor import no_grad, tensor
from minicolor.checkpoint import load_model
from minicolor.models import ColorizationNet

sys.path.insert(0, str(Path(__file__).parent.parent / "examples"))
import widen_weights  # noqa: E402


def trained_looking(width, seed=3, dtype=np.float32):
    """A network whose batchnorm parameters and statistics are not the initial 1s and 0s."""
    net = ColorizationNet(width, seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed)
    state = net.state_dict()
    for name, value in state.items():
        if value.ndim == 1:
            state[name] = (rng.uniform(0.5, 1.5, value.shape) if name.endswith(("weight", "running_var"))
                           else rng.normal(0, 0.1, value.shape)).astype(value.dtype)
    net.load_state_dict(state)
    return net


@pytest.mark.parametrize("training", [False, True])
def test_the_wide_network_computes_the_same_colors(training):
    """In float64, to rounding: batchnorm in training mode on a few pixels a channel turns
    float32's rounding into differences of 3e-5 (the same widening, exact in float64)."""
    narrow = trained_looking(2, dtype=np.float64)
    wide = widen_weights.widen(narrow, dtype=np.float64)
    assert wide.config()["width"] == 4
    l = tensor(np.random.default_rng(0).uniform(-0.5, 0.5, (2, 1, 32, 24)))
    for net in (narrow, wide):
        net.train() if training else net.eval()
    with no_grad():
        a, b = narrow(l).numpy(), wide(l).numpy()
    np.testing.assert_allclose(b, a, atol=1e-12 * np.abs(a).max())


def test_the_copies_of_a_channel_get_different_outgoing_weights():
    wide = widen_weights.widen(trained_looking(2))
    w = wide.state_dict()["group2.0.weight"]  # reads group1's 4 channels: 2 and their copies
    assert not np.allclose(w[:, :2], w[:, 2:])
    np.testing.assert_array_equal(wide.state_dict()["group1.0.weight"][:2], wide.state_dict()["group1.0.weight"][2:])


def test_the_command_writes_weights_that_load(tmp_path, monkeypatch, capsys):
    from minicolor.checkpoint import save_weights
    save_weights(tmp_path / "narrow.npz", trained_looking(2))
    monkeypatch.setattr(sys, "argv", ["widen_weights.py", str(tmp_path / "narrow.npz"), str(tmp_path / "wide.npz")])
    widen_weights.main()
    assert "width 2 -> 4" in capsys.readouterr().out
    assert load_model(tmp_path / "wide.npz").config()["width"] == 4

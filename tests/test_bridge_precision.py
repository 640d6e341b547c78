"""examples/bridge_precision.py: the main job's losses in float32 and float64, both CPU paths."""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent.parent / "examples"))
import bridge_precision  # noqa: E402


def test_in_float64_the_fast_path_follows_the_reference_step_by_step():
    fast, reference = (bridge_precision.losses(path, np.float64, 3, seed=0, size=32)
                       for path in ("fast", "reference"))
    np.testing.assert_allclose(fast, reference, rtol=1e-9)
    assert fast[2] < fast[0]  # it trains


def test_the_start_rounded_to_float32_is_the_float32_runs_start():
    """Step 1's loss is the initial network's: from weights rounded to float32 it is the float32
    run's to float32 rounding, and it moves off the float64 start's."""
    exact = bridge_precision.losses("fast", np.float64, 1, seed=0, size=32)
    rounded = bridge_precision.losses("fast", np.float64, 1, seed=0, start=np.float32, size=32)
    single = bridge_precision.losses("fast", np.float32, 1, seed=0, size=32)
    assert rounded[0] != exact[0]
    np.testing.assert_allclose(single, rounded, rtol=1e-5)


def test_the_table_names_every_run(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["bridge_precision.py", "--steps", "2", "--size", "32"])
    bridge_precision.main()
    out = capsys.readouterr().out
    for name in bridge_precision.RUNS:
        assert f"   0 {name} " in out
    assert "fast against reference: largest difference over all 2 steps" in out
    assert "first gradients, reference float32 against float64" in out


def test_gradient_error_names_the_worst_parameter():
    exact = {"a": np.array([1.0, -2.0]), "b": np.array([4.0, 0.0])}
    grads = {"a": np.array([1.0, -1.9]), "b": np.array([4.0, 1.0])}
    assert bridge_precision.gradient_error(grads, exact) == (0.25, "b")

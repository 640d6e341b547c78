"""The training step as a real CUDA graph (graph.py) against the same steps run eagerly.

Skipped where no GPU is usable (and in a process where the simulator is enabled: run this
file in its own pytest process on a GPU machine). tests/test_graph.py tests the bookkeeping
around the capture on any machine; here the capture itself: every kernel of the step (Numba
and CuPy) must be inside the graph, on memory that stays valid, with Adam's step counter
advancing on the device and an lr changed after the capture reaching the replays. The eager and the captured run see the same batches; their losses,
weights, batchnorm statistics and Adam moments must agree.
"""
import numpy as np
import pytest

from minicolor import backend

if backend.why_no_cuda() or backend.simulator_enabled():
    pytest.skip(f"needs a CUDA GPU without the simulator ({backend.why_no_cuda() or 'simulator on'})",
                allow_module_level=True)

import minicolor.kernels as kernels  # noqa: E402
from minicolor.data import rgb_to_l_ab  # noqa: E402
from minicolor.models import ColorizationNet  # noqa: E402
from minicolor.train import Trainer  # noqa: E402


class Photos:
    """n random size x size photos; a batch is indexed, not augmented."""

    def __init__(self, n, size, seed=0):
        rgb = np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        self.l, self.ab = rgb_to_l_ab(rgb)

    def __len__(self):
        return len(self.l)

    def batch(self, indices, rng=None):
        return self.l[indices], self.ab[indices]


def run(tmp_path, graph, steps, width, size, batch, lr=1e-3):
    trainer = Trainer(ColorizationNet(width, seed=1), Photos(5, size), lr=lr, batch_size=batch,
                      device="cuda", graph=graph, log_every=1, progress=False,
                      out_dir=tmp_path / ("graph" if graph is None else "eager"))
    trainer.fit(steps)
    return trainer


def max_difference(a, b):
    return max(float(np.abs(x.astype(np.float64) - y).max()) for x, y in zip(a.values(), b.values()))


@pytest.mark.parametrize("width, size, batch", [(4, 32, 2), (16, 224, 1)], ids=["w4-b2", "w16-b1"])
def test_graph_steps_equal_eager_steps(tmp_path, width, size, batch):
    steps = 8  # 2 eager warm-up steps inside the graph run, the capture, 6 replays
    eager = run(tmp_path, False, steps, width, size, batch)
    captured = run(tmp_path, None, steps, width, size, batch)  # the default on cuda: the graph
    assert captured.graph.captured, f"the step was not captured: {captured.graph.off}"
    assert not eager.graph.captured
    assert int(backend.to_numpy(captured.optimizer.t)) == steps
    eager_losses = [loss for _, loss in eager.history["train"]]
    graph_losses = [loss for _, loss in captured.history["train"]]
    assert len(graph_losses) == steps
    np.testing.assert_allclose(graph_losses, eager_losses, rtol=1e-5)
    # weights and batchnorm statistics; Adam's moments and step
    model_a, model_b = eager.model.state_dict(), captured.model.state_dict()
    assert max_difference(model_a, model_b) < 1e-5, "weights differ"
    optim_a, optim_b = eager.optimizer.state_dict(), captured.optimizer.state_dict()
    assert max_difference(optim_a, optim_b) < 1e-5, "Adam's state differs"


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_an_lr_change_after_the_capture_reaches_the_replays(tmp_path, optimizer):
    trainers = []
    for graph in (False, None):
        trainer = Trainer(ColorizationNet(4, seed=1), Photos(5, 32), lr=1e-3, batch_size=2,
                          optimizer=optimizer, device="cuda", graph=graph, log_every=1,
                          progress=False, out_dir=tmp_path / f"{optimizer}-{graph}")
        trainer.fit(4)  # warm-up, capture at step 3, one replay
        trainer.optimizer.lr = 2e-4  # a schedule's next value
        trainer.fit(8)
        trainers.append(trainer)
    eager, captured = trainers
    assert captured.graph.captured, captured.graph.off
    np.testing.assert_allclose([v for _, v in captured.history["train"]],
                               [v for _, v in eager.history["train"]], rtol=1e-5)
    assert max_difference(eager.model.state_dict(), captured.model.state_dict()) < 1e-5


def test_a_replay_launches_nothing_from_python(tmp_path):
    trainer = run(tmp_path, None, 3, 4, 32, 2)
    assert trainer.graph.captured, trainer.graph.off
    count = getattr(kernels, "launch_count", None)
    if count is None:
        pytest.skip("minicolor.kernels has no launch counter")
    trainer.fit(6)
    assert kernels.launch_count == count  # three more steps, not one Numba launch from the host

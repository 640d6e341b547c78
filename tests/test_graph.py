"""The captured training step (graph.py), with a stand-in for CUDA graph capture.

The real capture needs a GPU (tests/test_graph_gpu.py). Everything around it runs here: the
fixed input buffers and the copy-in, warm-up, capturing once, the optimizer's step counter
on the device, reading the loss only when it is logged, and falling back to eager.
"""
import warnings

import numpy as np
import pytest

from minicolor import graph, optim
from minicolor.data import ImageFolder
from minicolor.models import ColorizationNet
from minicolor.nn import Conv2d
from minicolor.train import Trainer, TrainingDiverged


@pytest.fixture
def photos(tmp_path, rng):
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        noise = rng.integers(0, 256, (20, 20, 3))
        Image.fromarray(noise.astype(np.uint8)).save(folder / f"p{i}.png")
    return ImageFolder(folder, size=16, resize=20)


def trainer(photos, tmp_path, name, **kwargs):
    options = dict(lr=1e-3, batch_size=2, device="cpu", out_dir=tmp_path / name, progress=False,
                   log_every=1)
    options.update(kwargs)
    return Trainer(ColorizationNet(width=2, seed=1), photos, **options)


class CountingCapture(graph.RecordedCapture):
    """The stand-in, counting captures and replays."""

    def __init__(self):
        self.captures = self.replays = 0

    def capture(self, fn):
        self.captures += 1
        recording = super().capture(fn)
        replay = recording.replay

        def counted():
            self.replays += 1
            replay()

        recording.replay = counted
        return recording


class FailingCapture(graph.RecordedCapture):
    def capture(self, fn):
        raise RuntimeError("the current stream is capturing, so H2D transfers are disallowed")


def linear_step(seed=0):
    """A tiny step (1x1 conv, MSE, Adam) and its parameter, for StepGraph on its own."""
    from minicolor import functional as F
    from minicolor.tensor import Tensor

    conv = Conv2d(2, 1, 1, rng=np.random.default_rng(seed))
    opt = optim.Adam(conv.parameters(), lr=1e-2)

    def step(x, y):
        opt.zero_grad()
        loss = F.mse_loss(conv(Tensor(x)), Tensor(y))
        loss.backward()
        opt.step()
        return (loss.data,)

    return step, conv, opt


def batches(n, rng):
    return [(rng.standard_normal((3, 2, 4, 4)).astype(np.float32),
             rng.standard_normal((3, 1, 4, 4)).astype(np.float32)) for _ in range(n)]


def test_warmup_then_one_capture_then_replays_on_fixed_buffers(rng):
    step, conv, opt = linear_step()
    graph.device_step_counter(opt, np)
    capture = CountingCapture()
    g = graph.StepGraph(step, capture, warmup=2)
    data = batches(6, rng)
    outputs, buffers = [], None
    for i, (x, y) in enumerate(data):
        out = g(x, y)
        outputs.append(out[0].copy())
        if i == 0:
            buffers = list(g.inputs)
        assert all(a is b for a, b in zip(g.inputs, buffers))  # the same buffers every step
        np.testing.assert_array_equal(g.inputs[0], x)  # holding this step's batch
        assert capture.captures == (i >= 2) and capture.replays == max(0, i - 1)
        if i >= 3:
            assert out[0] is g.recording.outputs[0]  # one output buffer, overwritten
    assert g.captured and g.calls == 6
    assert isinstance(opt.t, np.ndarray) and int(opt.t) == 6  # advanced inside every step

    eager_step, eager_conv, _ = linear_step()  # the same steps with a Python int t: bit for bit
    for (x, y), got in zip(data, outputs):
        np.testing.assert_array_equal(got, eager_step(x, y)[0])
    np.testing.assert_array_equal(conv.weight.data, eager_conv.weight.data)


def test_a_batch_of_another_shape_or_dtype_is_refused(rng):
    step, _, _ = linear_step()
    g = graph.StepGraph(step, graph.RecordedCapture())
    x, y = batches(1, rng)[0]
    g(x, y)
    with pytest.raises(graph.ShapeChanged, match=r"\(2, 2, 4, 4\).*\(3, 2, 4, 4\)"):
        g(x[:2], y[:2])
    with pytest.raises(graph.ShapeChanged, match="float64"):
        g(x.astype(np.float64), y)
    with pytest.raises(ValueError, match="at least one eager warm-up"):
        graph.StepGraph(step, graph.RecordedCapture(), warmup=0)


def test_device_step_counter_keeps_checkpoints_working():
    _, conv, opt = linear_step()
    opt.t = 7
    counter = graph.device_step_counter(opt, np)
    assert counter is opt.t and counter.dtype == np.int64 and int(counter) == 7
    assert graph.device_step_counter(opt, np) is counter  # made once
    state = opt.state_dict()
    fresh = optim.Adam(conv.parameters())
    fresh.load_state_dict(state)
    assert fresh.t == 7
    assert graph.device_step_counter(optim.SGD(conv.parameters()), np) is None  # no counter


def test_trainer_graph_equals_eager(photos, tmp_path):
    eager = trainer(photos, tmp_path, "eager", graph=False)
    eager.fit(5)
    captured = trainer(photos, tmp_path, "graph", graph=True, log_every=2)
    captured.fit(5)
    assert captured.graph_captured and captured.graph_off is None
    assert int(captured.optimizer.t) == 5
    assert captured.history["train"] == eager.history["train"]  # every step's loss, read in batches
    for (name, a), b in zip(eager.model.state_dict().items(), captured.model.state_dict().values()):
        np.testing.assert_array_equal(b, a, err_msg=name)
    for (name, a), b in zip(eager.optimizer.state_dict().items(), captured.optimizer.state_dict().values()):
        np.testing.assert_array_equal(b, a, err_msg=name)


def test_trainer_uses_the_graph_on_cuda_only_by_default(photos, tmp_path):
    t = trainer(photos, tmp_path, "auto")
    t.fit(1)
    assert t._graph is None and "need device 'cuda'" in t.graph_off
    assert isinstance(t.history["train"][0][1], float)
    with pytest.raises(ValueError, match="graph must be"):
        trainer(photos, tmp_path, "bad", graph="yes")


def test_failed_capture_falls_back_to_eager_with_a_message(photos, tmp_path, monkeypatch):
    monkeypatch.setattr(graph, "capture_for", lambda device: FailingCapture())
    t = trainer(photos, tmp_path, "fallback", graph=True)
    with pytest.warns(RuntimeWarning, match="training eagerly: capturing the training step failed "
                                            r"\(RuntimeError: the current stream is capturing"):
        t.fit(4)
    assert t.step == 4 and "capturing the training step failed" in t.graph_off
    eager = trainer(photos, tmp_path, "eager", graph=False)
    eager.fit(4)
    # two warm-up steps through the graph object, then eager; the same training either way
    assert t.history["train"] == eager.history["train"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once, not at every step
        t.fit(5)


def test_diverging_graph_loss_is_caught_when_read(photos, tmp_path):
    t = trainer(photos, tmp_path, "nan", graph=True, log_every=3)
    t.fit(3)
    t.model.head.weight.data[...] = np.nan
    with pytest.raises(TrainingDiverged, match="the loss became nan at step 4; training stopped after"):
        t.fit(6)


def test_train_step_on_its_own_reads_its_loss(photos, tmp_path):
    t = trainer(photos, tmp_path, "raw", graph=True)
    for _ in range(4):
        loss = t.train_step()
    assert t.graph_captured and loss > 0 and len(t.history["train"]) == 4 and not t.unread


def test_overfit_and_train_take_no_graph(tmp_path):
    from minicolor import cli

    parser = cli.build_parser()
    assert parser.parse_args(["overfit", "x.jpg", "--no-graph"]).no_graph
    assert not parser.parse_args(["train", "data"]).no_graph


def test_snapshot_keeps_a_step_s_outputs_past_the_next_replay(rng):
    step, _, _ = linear_step()
    g = graph.StepGraph(step, graph.RecordedCapture(), warmup=1)
    data = batches(4, rng)
    for x, y in data[:3]:
        out = g(x, y)
    (kept,) = g.snapshot(out)
    before = float(kept)
    g(*data[3])
    assert float(kept) == before and float(out[0]) != before


def test_a_capture_holds_every_kernel_argument():
    import types

    ran = []
    fake = types.SimpleNamespace(launch=lambda kernel, grid, block, *args: ran.append(kernel))
    original, kept, table = fake.launch, [], np.arange(3)
    with graph.holding_arguments(fake, kept):
        fake.launch("k1", 1, 32, table, 5)
        fake.launch("k2", 2, 64)
    assert ran == ["k1", "k2"] and kept == [(table, 5), ()] and kept[0][0] is table
    assert fake.launch is original  # put back
    with pytest.raises(RuntimeError), graph.holding_arguments(fake, kept):
        raise RuntimeError("capture failed")
    assert fake.launch is original

"""The captured training step (graph.py), with a stand-in for CUDA graph capture.

The real capture needs a GPU (tests/test_graph_gpu.py). Everything around it runs here: the
fixed input buffers and the copy-in, warm-up, capturing once, the optimizer's step number and
hyperparameters on the device (an lr schedule under the graph), reading the loss only when it
is logged, and falling back to eager. The stand-in replays the step with the Python values of
its capture, as a real graph does, so a number kept on the host shows up here as a frozen one.
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

    def __init__(self, frozen=()):
        super().__init__(frozen)
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


def linear_step(seed=0, make_optimizer=lambda params: optim.Adam(params, lr=1e-2)):
    """A tiny step (1x1 conv, MSE, Adam) and its parameter, for StepGraph on its own."""
    from minicolor import functional as F
    from minicolor.tensor import Tensor

    conv = Conv2d(2, 1, 1, rng=np.random.default_rng(seed))
    opt = make_optimizer(conv.parameters())

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
    capture = CountingCapture(frozen=[opt, conv])
    g = graph.StepGraph(step, capture, warmup=2, refresh=opt.refresh)
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
    assert opt.t == 6  # advanced inside every step, on the device

    eager_step, eager_conv, _ = linear_step()  # the same steps run eagerly: bit for bit
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


OPTIMIZERS = {
    "adam": lambda params: optim.Adam(params, lr=1e-2, weight_decay=0.01),
    "sgd": lambda params: optim.SGD(params, lr=1e-2, momentum=0.9, weight_decay=0.01),
}
SCHEDULE = [1e-2, 1e-2, 1e-2, 5e-3, 2e-3, 2e-3, 1e-3]  # lr of each step: it changes after the capture


def run_schedule(step, opt, data, schedule, g=None):
    """Each step at its lr from ``schedule``, through the StepGraph ``g`` or eagerly."""
    outputs = []
    for lr, (x, y) in zip(schedule, data):
        opt.lr = lr
        outputs.append((g(x, y) if g is not None else step(x, y))[0].copy())
    return outputs


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_an_lr_change_after_the_capture_reaches_the_replays(rng, name):
    """A warm-up or schedule under the graph: the steps after the capture (step 3) run at their
    own lr, with the same weights as eager steps on the same schedule, bit for bit."""
    data = batches(len(SCHEDULE), rng)
    step, conv, opt = linear_step(make_optimizer=OPTIMIZERS[name])
    capture = CountingCapture(frozen=[opt, conv])
    g = graph.StepGraph(step, capture, warmup=2, refresh=opt.refresh)
    graphed = run_schedule(step, opt, data, SCHEDULE, g)
    assert capture.captures == 1 and capture.replays == len(SCHEDULE) - 2

    eager_step, eager_conv, eager_opt = linear_step(make_optimizer=OPTIMIZERS[name])
    eager = run_schedule(eager_step, eager_opt, data, SCHEDULE)
    for i, (a, b) in enumerate(zip(graphed, eager)):
        np.testing.assert_array_equal(a, b, err_msg=f"loss of step {i + 1}")
    np.testing.assert_array_equal(conv.weight.data, eager_conv.weight.data)
    np.testing.assert_array_equal(conv.bias.data, eager_conv.bias.data)

    frozen_step, frozen_conv, frozen_opt = linear_step(make_optimizer=OPTIMIZERS[name])
    run_schedule(frozen_step, frozen_opt, data, SCHEDULE[:3] + [SCHEDULE[2]] * 4)
    assert not np.array_equal(conv.weight.data, frozen_conv.weight.data)  # the schedule mattered


def test_the_stand_in_replays_with_the_python_values_of_its_capture():
    """What the stand-in promises: a Python number the step reads is baked in at capture, as in
    a real CUDA graph, while an array is read afresh. (This is why the optimizers keep their
    hyperparameters in a device array.)"""
    class Scaler:
        factor = None

    scaler, table = Scaler(), np.ones(1)
    scaler.factor = 2.0
    g = graph.StepGraph(lambda x: (x * scaler.factor * table,), graph.RecordedCapture([scaler]), warmup=1)
    x = np.ones(1)
    assert float(g(x)[0][0]) == 2.0  # eager
    assert float(g(x)[0][0]) == 2.0  # the capture
    scaler.factor, table[0] = 3.0, 10.0
    assert float(g(x)[0][0]) == 20.0  # the factor of the capture, the array of now
    assert scaler.factor == 3.0  # and the Python value is left as it was


def test_switching_a_term_on_captures_again(rng):
    """SGD's momentum and weight decay are Python branches: turned on after the capture, the
    graph warms up and captures again, and the steps equal eager ones."""
    make = lambda params: optim.SGD(params, lr=1e-2)  # noqa: E731
    data = batches(8, rng)
    step, conv, opt = linear_step(make_optimizer=make)
    capture = CountingCapture(frozen=[opt, conv])
    g = graph.StepGraph(step, capture, warmup=2, refresh=opt.refresh)
    eager_step, eager_conv, eager_opt = linear_step(make_optimizer=make)
    for i, (x, y) in enumerate(data):
        for o in (opt, eager_opt):
            o.momentum = 0.9 if i >= 4 else 0.0
        np.testing.assert_array_equal(g(x, y)[0], eager_step(x, y)[0], err_msg=f"step {i + 1}")
    assert capture.captures == 2 and g.captured  # steps 3 and 7 (after two eager ones)
    np.testing.assert_array_equal(conv.weight.data, eager_conv.weight.data)


def test_fused_adam_takes_an_lr_change_under_the_graph(rng):
    """The same for kernels/adam.py in the simulator: its hyperparameters sit on the device, read
    by its first kernel at every replay."""
    from minicolor import backend, nn

    try:
        backend.enable_simulator()
    except backend.DeviceError as exc:
        pytest.skip(str(exc))
    shapes = [(3, 4), (5,)]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in SCHEDULE]
    start = [rng.standard_normal(s).astype(np.float32) for s in shapes]

    def make():
        params = [nn.Parameter(a.copy(), device="sim") for a in start]
        opt = optim.Adam(params, lr=SCHEDULE[0])
        assert opt.flat is not None

        def step(*gradients):  # the gradients arrive in the graph's input buffers
            for p, gradient in zip(params, gradients):
                p.grad = gradient
            opt.step()
            return (opt.flat.param,)

        return params, opt, step

    params, opt, step = make()
    g = graph.StepGraph(step, graph.RecordedCapture([opt]), warmup=2, refresh=opt.refresh)
    eager_params, eager_opt, eager_step = make()
    for lr, gradients in zip(SCHEDULE, grads):
        opt.lr = eager_opt.lr = lr
        g(*gradients)
        eager_step(*gradients)
    assert g.captured and opt.t == eager_opt.t == len(SCHEDULE)
    for a, b in zip(params, eager_params):
        np.testing.assert_array_equal(a.data, b.data)


def test_trainer_graph_equals_eager(photos, tmp_path):
    eager = trainer(photos, tmp_path, "eager", graph=False)
    eager.fit(5)
    captured = trainer(photos, tmp_path, "graph", graph=True, log_every=2)
    captured.fit(5)
    assert captured.graph.captured and captured.graph.off is None
    assert captured.optimizer.t == 5
    assert captured.history["train"] == eager.history["train"]  # every step's loss, read in batches
    for (name, a), b in zip(eager.model.state_dict().items(), captured.model.state_dict().values()):
        np.testing.assert_array_equal(b, a, err_msg=name)
    for (name, a), b in zip(eager.optimizer.state_dict().items(), captured.optimizer.state_dict().values()):
        np.testing.assert_array_equal(b, a, err_msg=name)


def test_trainer_uses_the_graph_on_cuda_only_by_default(photos, tmp_path):
    t = trainer(photos, tmp_path, "auto")
    t.fit(1)
    assert t.graph.graph is None and "need device 'cuda'" in t.graph.off
    assert isinstance(t.history["train"][0][1], float)
    with pytest.raises(ValueError, match="graph must be"):
        trainer(photos, tmp_path, "bad", graph="yes")


def test_failed_capture_falls_back_to_eager_with_a_message(photos, tmp_path, monkeypatch):
    monkeypatch.setattr(graph, "capture_for", lambda device, frozen: FailingCapture())
    t = trainer(photos, tmp_path, "fallback", graph=True)
    with pytest.warns(RuntimeWarning, match="training eagerly: capturing the training step failed "
                                            r"\(RuntimeError: the current stream is capturing"):
        t.fit(4)
    assert t.step == 4 and "capturing the training step failed" in t.graph.off
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
    assert t.graph.captured and loss > 0 and len(t.history["train"]) == 4 and not t.losses.unread


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

"""The training step as a CUDA graph: captured once, replayed every step.

An eager training step on the GPU is a few hundred kernel launches, each prepared by Python
on the host. A CUDA graph records those launches once (stream capture: while a stream is
capturing, work sent to it is recorded, not run) and then replays the whole recording with
one call, about 1.5 us per kernel instead of 10-300 us. The price is that the replay does
exactly what was recorded: the same kernels, on the same memory, with the same arguments.
``StepGraph`` arranges a training step so that this is what we want:

    fixed buffers     the batch is copied into input buffers made once; every array the
                      step makes is made during capture and never freed (a private memory
                      pool), so its address stays valid for every replay; and the graph keeps
                      a reference to every argument of every kernel launched while it was
                      captured (``kernels.recording(run=True)``), so an array made earlier and
                      held only by some cache (conv2d's geometry tables) cannot be freed and
                      its memory reused
    warm-up           the first steps run eagerly: Numba compiles its kernels, CuPy its
                      elementwise kernels, the optimizer makes its state (SGD's velocity),
                      the memory pool grows; none of that may happen inside a capture
    no host values    nothing in the step may wait for the GPU (``.item()``, ``float()``)
                      or branch on a value it computed: during capture nothing has run yet.
                      The loss stays in a device buffer that the caller reads when it logs
    device numbers    a Python number that the step uses is baked into the graph at capture:
                      CuPy passes it to its kernel as an argument, and the replay repeats that
                      argument. So the optimizers keep what changes between steps on the device:
                      Adam's step number t (advanced inside the graph) and the hyperparameters
                      (optim.py: ``hyper``), which ``refresh`` copies there before every replay,
                      from outside the graph: an lr schedule or warm-up reaches every step.
                      When a term of the update is switched on or off (``refresh`` returns the
                      optimizer's branches), the step is warmed up and captured again
    one stream        warm-up, copies, capture and replays all run on one CuPy stream. It is
                      a *blocking* stream on purpose: a kernel sent to the legacy default
                      stream during capture then fails the capture loudly (instead of
                      running outside it unnoticed). minicolor.kernels.launch sends Numba
                      kernels to CuPy's current stream, so they are captured with the rest

The capture itself sits behind a small interface, ``capture(fn) -> recording`` with
``recording.replay()`` and ``recording.outputs``: ``CudaCapture`` is the real one;
``RecordedCapture`` is a stand-in for the CPU and the simulator that replays by calling
``fn`` again, with the Python values of the capture (see its docstring), and copying its results
into the first call's outputs. The bookkeeping here (buffers, copy-in, warm-up, refreshing the
hyperparameters, falling back) is the same for both, so it is tested on any machine; only
``CudaCapture`` needs a GPU (tests/test_graph_gpu.py).

``TrainingGraph`` at the end is what the Trainer uses: its training step (forward, loss,
backward, update) through a StepGraph, or the reason it runs eagerly instead.
"""
import contextlib
import warnings

import numpy as np

from . import backend
from .tensor import Tensor


class GraphUnavailable(RuntimeError):
    """The step could not be captured; the caller should train eagerly (the message says why)."""


class ShapeChanged(ValueError):
    """A batch does not fit the graph's input buffers (shape or dtype); run that step eagerly."""


# --- the two ways to capture -------------------------------------------------------------------------
class RecordedCapture:
    """A stand-in for CUDA graph capture (CPU and simulator): records the Python step function.

    A real replay runs no Python: it repeats the kernels the capture recorded, with the
    arguments they had then. A Python number the step used (``opt.lr``, a flag) is one of those
    arguments, baked in; arrays are device memory, which every replay reads afresh. The
    stand-in can only replay by calling the step again, so it makes that call see what a real
    replay sees: the plain Python values (numbers, strings, tuples, None) of the objects in
    ``frozen`` (the optimizer, the layers) are set back to what they were at capture for the
    call, and afterwards to what they were before it (a replay changes no Python value).
    ``replay()`` then copies each result into the arrays the capture returned, so the outputs
    behave like a graph's fixed output buffers.
    """

    stream = contextlib.nullcontext()

    def __init__(self, frozen=()):
        self.frozen = list(frozen)

    def capture(self, fn):
        return _Recorded(fn, self.frozen)

    def synchronize(self):
        pass


def _python_values(objects):
    """[(object, {attribute: value})] of the plain Python values among the objects' attributes."""
    plain = (int, float, complex, str, bool, type(None), np.generic)

    def is_plain(value):
        return isinstance(value, plain) or (isinstance(value, tuple) and all(map(is_plain, value)))

    return [(obj, {k: v for k, v in vars(obj).items() if is_plain(v)}) for obj in objects]


def _set_values(saved):
    for obj, values in saved:
        for name, value in values.items():
            setattr(obj, name, value)


class _Recorded:
    def __init__(self, fn, frozen):
        self.fn, self.frozen, self.outputs = fn, frozen, None
        self.at_capture = _python_values(frozen)

    def replay(self):
        if self.outputs is None:  # the capture: the step runs as it is
            self.outputs = self.fn()
            return
        now = _python_values(self.frozen)
        _set_values(self.at_capture)
        try:
            results = self.fn()
        finally:
            _set_values(now)
        for out, new in zip(self.outputs, results):
            out[...] = new


class CudaCapture:
    """CUDA graph capture of everything sent to one CuPy stream (``cupy.cuda.Graph``).

    Arrays allocated during capture come from a private memory pool that nothing else uses,
    and are never returned to the driver while this object lives: a block freed inside the
    step is reused only inside the step, in the same stream order as when it was recorded, so
    no later eager allocation can land on memory the graph writes.
    """

    def __init__(self):
        import cupy

        self._cupy = cupy
        self.stream = cupy.cuda.Stream(non_blocking=False)  # blocking: see the module docstring
        self.pool = cupy.cuda.MemoryPool()

    def capture(self, fn):
        import minicolor.kernels as kernels

        cupy = self._cupy
        with self.stream, cupy.cuda.using_allocator(self.pool.malloc), kernels.recording(run=True) as kept:
            self.stream.begin_capture()
            try:
                outputs = fn()
            except BaseException:
                with contextlib.suppress(Exception):  # an invalidated capture may fail to end
                    self.stream.end_capture()
                raise
            graph = self.stream.end_capture()
        return _CudaRecording(graph, self.stream, outputs, kept)

    def synchronize(self):
        self.stream.synchronize()


class _CudaRecording:
    def __init__(self, graph, stream, outputs, kept):
        self.graph, self.stream, self.outputs = graph, stream, outputs
        self.kept = kept  # every Numba launch in the graph, with its arguments: alive as long as it is

    def replay(self):
        self.graph.launch(stream=self.stream)

    def kernel_count(self):
        """Kernel nodes in the graph (from its DOT description): every kernel one step runs."""
        return self.graph.debug_dot_str().count("KERNEL")


def capture_for(device, frozen=()):
    """The capture to use on ``device``: the real CUDA one, or the stand-in (which replays with
    the Python values that the objects in ``frozen`` had at capture, as a real graph does)."""
    return CudaCapture() if backend.captures_graphs(device) else RecordedCapture(frozen)


# --- the captured step ------------------------------------------------------------------------------
class StepGraph:
    """Run ``step(*inputs) -> tuple of arrays`` as a captured graph on fixed input buffers.

    ``graph(*batch)`` copies the batch into the input buffers (made from the first batch) and
    runs one step: eagerly for the first ``warmup`` calls, then captures the step once and
    replays it from then on. It returns the step's output arrays; with a graph they are the
    same arrays every call, overwritten by each replay, so read them (``read``) before the
    next call if the value matters. The device is not synchronised: the host can prepare the
    next batch while the GPU runs this one.

    ``refresh()``, if given, runs before every step, outside the graph (the optimizer's
    ``refresh``: it copies the hyperparameters to the device). What it returns says which
    branches the step's Python takes; when that changes, the step is warmed up and captured
    again, since the graph holds the branches of its capture.

    Raises ShapeChanged for a batch that does not fit the buffers, GraphUnavailable when
    the capture fails (nothing of that step ran; the caller trains it eagerly).
    """

    def __init__(self, step, capture, warmup=2, refresh=None):
        if warmup < 1:
            raise ValueError(f"StepGraph needs at least one eager warm-up step, got warmup={warmup}")
        self.step_fn, self.capturer, self.warmup, self.refresh = step, capture, warmup, refresh
        self.inputs = None  # the fixed input buffers
        self.recording = None  # the captured step, after warm-up
        self.branches = None  # what refresh() returned at the capture
        self.calls = 0  # steps run through this object (eager warm-up ones included)
        self.eager_calls = 0  # eager steps since the last (re)start: capture after ``warmup``

    @property
    def captured(self):
        return self.recording is not None

    def fits(self, batch):
        return self.inputs is None or all(
            tuple(b.shape) == tuple(a.shape) and np.dtype(b.dtype) == np.dtype(a.dtype)
            for b, a in zip(self.inputs, batch))

    def __call__(self, *batch):
        if self.inputs is not None and len(batch) != len(self.inputs):
            raise ShapeChanged(f"StepGraph expects {len(self.inputs)} input arrays, got {len(batch)}")
        if not self.fits(batch):
            raise ShapeChanged(
                f"the batch has shapes {[tuple(b.shape) for b in batch]} and dtypes "
                f"{[str(b.dtype) for b in batch]}; the graph's input buffers have "
                f"{[tuple(a.shape) for a in self.inputs]}, {[str(a.dtype) for a in self.inputs]}")
        with self.capturer.stream:
            if self.inputs is None:
                self.inputs = [_empty_like_on_device(b, self.capturer) for b in batch]
            for buffer, values in zip(self.inputs, batch):
                copy_into(buffer, values)
            branches = self.refresh() if self.refresh is not None else None
            if self.recording is not None and branches != self.branches:
                self.recording, self.eager_calls = None, 0  # other branches: warm up, capture again
            if self.eager_calls < self.warmup:
                outputs = tuple(self.step_fn(*self.inputs))
                self.eager_calls += 1
            else:
                if self.recording is None:
                    self.recording, self.branches = self._capture(), branches
                self.recording.replay()
                outputs = tuple(self.recording.outputs)
        self.calls += 1
        return outputs

    def _capture(self):
        try:
            return self.capturer.capture(lambda: tuple(self.step_fn(*self.inputs)))
        except Exception as exc:
            raise GraphUnavailable(f"capturing the training step failed ({type(exc).__name__}: "
                                   f"{exc})") from exc

    def snapshot(self, arrays):
        """Copies of ``arrays`` (outputs of a step), made on the graph's stream after the step:
        they keep the step's values when the next replay overwrites the outputs."""
        with self.capturer.stream:
            return [a.copy() for a in arrays]

    def read(self, arrays):
        """Host floats of 0-d device arrays (this waits for the GPU)."""
        with self.capturer.stream:
            return [float(backend.to_numpy(a)) for a in arrays]


def _empty_like_on_device(values, capturer):
    if isinstance(capturer, CudaCapture):
        return capturer._cupy.empty(values.shape, dtype=values.dtype)
    return np.empty(values.shape, dtype=values.dtype)


def copy_into(buffer, values):
    """Copy ``values`` (a NumPy or CuPy array) into ``buffer`` in place, on the current stream."""
    if backend.get_array_module(buffer) is not np and isinstance(values, np.ndarray):
        buffer.set(np.ascontiguousarray(values, dtype=buffer.dtype))  # host -> device, no temporary
    else:
        buffer[...] = values


# --- the Trainer's step -------------------------------------------------------------------------------
class TrainingGraph:
    """A model's training step as a captured graph, for the Trainer (train.py).

    ``step(x, y)`` runs one step (forward, loss, backward, update) on the batch (normalised L
    and ab, host arrays) and returns copies of its losses on the device: (MSE,) or, for the
    classification head, (MSE, cross-entropy). It returns None where this step must run
    eagerly instead: the graph is not wanted, the batch has another shape than the captured
    one (the graph stays for the next), or the capture failed (a one-time warning; ``off``
    says why from then on).

    ``wanted``: None (a graph where the device captures graphs: "cuda"), True (on any device;
    on cpu and sim the stand-in replays the Python step, to test the bookkeeping), False.
    """

    def __init__(self, model, optimizer, device, wanted=None):
        if wanted not in (None, True, False):
            raise ValueError(f"graph must be None (on cuda only), True or False, got {wanted!r}")
        self.model, self.optimizer, self.device = model, optimizer, device
        self.graph = None  # the StepGraph, once a step has used it
        self.off = None  # why no graph is used (a sentence), once that is known
        if wanted is None and not backend.captures_graphs(device):
            self.off = f"CUDA graphs need device 'cuda'; this trainer runs on {device}"
        elif wanted is False:
            self.off = "graph=False: training eagerly"

    @property
    def captured(self):
        """True once the step has been captured and is being replayed."""
        return self.graph is not None and self.graph.captured

    @property
    def active(self):
        """True while steps go through the StepGraph (its eager warm-up steps included): each
        returns its losses after its update."""
        return self.graph is not None

    def reset(self):
        """Forget the capture (the state it recorded was replaced, e.g. by a checkpoint)."""
        self.graph = None

    def step(self, x, y):
        if self.off is not None:
            return None
        if self.graph is None:
            layers = [module for _, module in self.model.named_modules()]
            capture = capture_for(self.device, frozen=[self.optimizer, *layers])
            self.graph = StepGraph(self._recorded_step, capture, refresh=self.optimizer.refresh)
        try:
            outputs = self.graph(x, y)
        except ShapeChanged:
            return None
        except GraphUnavailable as exc:
            self.off, self.graph = str(exc), None
            warnings.warn(f"training eagerly: {exc}", RuntimeWarning, stacklevel=3)
            return None
        return self.graph.snapshot(outputs)  # the next replay overwrites the outputs

    def _recorded_step(self, x, y):
        """The step the graph records: forward, loss, backward, update; no host reads."""
        self.model.train()
        self.optimizer.zero_grad()
        loss, mse = self.model.loss(Tensor(x, device=self.device), Tensor(y, device=self.device))
        loss.backward()
        self.optimizer.step()
        return (mse.data,) if loss is mse else (mse.data, loss.data)

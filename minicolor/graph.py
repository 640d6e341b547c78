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
                      captured, so an array made earlier and held only by some cache (conv2d's
                      geometry tables) cannot be freed and its memory reused
    warm-up           the first steps run eagerly: Numba compiles its kernels, CuPy its
                      elementwise kernels, the optimizer makes its state (SGD's velocity),
                      the memory pool grows; none of that may happen inside a capture
    no host values    nothing in the step may wait for the GPU (``.item()``, ``float()``)
                      or branch on a value it computed: during capture nothing has run yet.
                      The loss stays in a device buffer that the caller reads when it logs
    device counter    Adam's bias correction depends on the step number t. A Python int
                      would be baked into the graph at capture; so ``device_step_counter``
                      makes ``optimizer.t`` a 0-d device array that ``t += 1`` advances in
                      place, inside the graph, and ``b ** t`` reads on the device
    one stream        warm-up, copies, capture and replays all run on one CuPy stream. It is
                      a *blocking* stream on purpose: a kernel sent to the legacy default
                      stream during capture then fails the capture loudly (instead of
                      running outside it unnoticed). minicolor.kernels.launch sends Numba
                      kernels to CuPy's current stream, so they are captured with the rest

The capture itself sits behind a small interface, ``capture(fn) -> recording`` with
``recording.replay()`` and ``recording.outputs``: ``CudaCapture`` is the real one;
``RecordedCapture`` is a stand-in for the CPU and the simulator that replays by calling
``fn`` again and copying its results into the first call's outputs. The bookkeeping here
(buffers, copy-in, warm-up, the counter, falling back) is the same for both, so it is tested
on any machine; only ``CudaCapture`` needs a GPU (tests/test_graph_gpu.py).
"""
import contextlib

import numpy as np

from . import backend


class GraphUnavailable(RuntimeError):
    """The step could not be captured; the caller should train eagerly (the message says why)."""


class ShapeChanged(ValueError):
    """A batch does not fit the graph's input buffers (shape or dtype); run that step eagerly."""


# --- the two ways to capture -------------------------------------------------------------------------
class RecordedCapture:
    """A stand-in for CUDA graph capture (CPU and simulator): records the Python step function.

    ``replay()`` calls it again and copies each result into the arrays the first call returned,
    so the outputs behave like a graph's fixed output buffers. It checks the bookkeeping
    around a graph, not the graph itself: a host value baked into a real capture would be
    recomputed here.
    """

    stream = contextlib.nullcontext()

    def capture(self, fn):
        return _Recorded(fn)

    def synchronize(self):
        pass


class _Recorded:
    def __init__(self, fn):
        self.fn, self.outputs = fn, None

    def replay(self):
        results = self.fn()
        if self.outputs is None:
            self.outputs = results
        else:
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

        cupy, kept = self._cupy, []
        with self.stream, cupy.cuda.using_allocator(self.pool.malloc), holding_arguments(kernels, kept):
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
        self.kept = kept  # the arguments of every kernel in the graph: alive as long as it is

    def replay(self):
        self.graph.launch(stream=self.stream)

    def kernel_count(self):
        """Kernel nodes in the graph (from its DOT description): every kernel one step runs."""
        return self.graph.debug_dot_str().count("KERNEL")


@contextlib.contextmanager
def holding_arguments(kernels, kept):
    """Within this block, every ``kernels.launch(kernel, grid, block, *args)`` also appends its
    ``args`` to ``kept``. Every launcher goes through ``minicolor.kernels.launch`` (looked up on
    the module at each call), so swapping it here for the capture sees them all."""
    launch = kernels.launch

    def keeping(kernel, grid, block, *args):
        kept.append(args)
        return launch(kernel, grid, block, *args)

    kernels.launch = keeping
    try:
        yield kept
    finally:
        kernels.launch = launch


def capture_for(device):
    """The capture to use on ``device``: the real CUDA one, or the stand-in."""
    return CudaCapture() if device == "cuda" else RecordedCapture()


# --- the optimizer's step counter on the device --------------------------------------------------------
def device_step_counter(optimizer, xp):
    """Keep ``optimizer.t`` (if it has one) as a 0-d int64 array of ``xp``; return it.

    Adam computes ``1 - beta ** t`` from it: with an array the result is an array too, read by
    the update kernels on the device, and ``t += 1`` in ``Adam.step`` adds in place. Eager
    steps keep working with it, so a run may switch between graph and eager at any step.
    """
    if not hasattr(optimizer, "t"):
        return None
    if not (hasattr(optimizer.t, "shape") and backend.get_array_module(optimizer.t) is xp):
        optimizer.t = xp.asarray(int(backend.to_numpy(optimizer.t)), dtype=np.int64)
    return optimizer.t


# --- the captured step ------------------------------------------------------------------------------
class StepGraph:
    """Run ``step(*inputs) -> tuple of arrays`` as a captured graph on fixed input buffers.

    ``graph(*batch)`` copies the batch into the input buffers (made from the first batch) and
    runs one step: eagerly for the first ``warmup`` calls, then captures the step once and
    replays it from then on. It returns the step's output arrays; with a graph they are the
    same arrays every call, overwritten by each replay, so read them (``read``) before the
    next call if the value matters. The device is not synchronised: the host can prepare the
    next batch while the GPU runs this one.

    Raises ShapeChanged for a batch that does not fit the buffers, GraphUnavailable when
    the capture fails (nothing of that step ran; the caller trains it eagerly).
    """

    def __init__(self, step, capture, warmup=2):
        if warmup < 1:
            raise ValueError(f"StepGraph needs at least one eager warm-up step, got warmup={warmup}")
        self.step_fn, self.capturer, self.warmup = step, capture, warmup
        self.inputs = None  # the fixed input buffers
        self.recording = None  # the captured step, after warm-up
        self.calls = 0  # steps run through this object (eager warm-up ones included)

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
            if self.calls < self.warmup:
                outputs = tuple(self.step_fn(*self.inputs))
            else:
                if self.recording is None:
                    self.recording = self._capture()
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

"""Where one training step's time goes: per layer and pass, on the device and on the host.

``minicolor profile`` runs a few training steps of ColorizationNet (forward, MSE, backward,
Adam) and times one of them piece by piece:

    forward    a forward hook on every layer (nn.Module.register_forward_hook) marks the
               moment the layer's forward returns; a layer's time is the gap since the mark
               before it
    backward   each layer's Function gets its ``backward`` wrapped, with a mark before and
               after; what lies between two layers' backwards is the autograd engine's own
               work (summing gradients), reported as one row
    update     a mark before and after ``optimizer.step()``

On ``cpu`` and ``sim`` a mark is the wall clock (``time.perf_counter``). On ``cuda`` a mark is
a CUDA event recorded on the stream, and the host's clock is read beside it. The two tell
different stories, and the table shows both:

    GPU ms     time between two events on the GPU's own timeline: how long the GPU worked
               on that layer. To make it that, and not the time the GPU sat waiting for the
               host to send the next kernel, the stream is first held by a one-thread kernel
               that spins for longer than the host needs to send the whole step; all the
               step's kernels queue up behind it and then run back to back.
    host ms    how long Python took to send the layer's kernels (argument checks, Numba's
               launch preparation, CuPy's kernel calls).

When the host column is the larger, the step is launch-bound: a faster GPU would not help,
fewer or cheaper launches (or a CUDA graph, graph.py) would. ``launches`` counts the Numba
kernel launches of the step (``minicolor.kernels.launch_count``); on cuda the step is also
captured once as a CUDA graph to count every kernel, CuPy's included, and the graph replayed
to time the step without the host.
"""
import gc
import statistics
import sys
import time

import numpy as np

from .. import backend, nn, optim
from ..models import ColorizationNet
from ..tensor import Tensor


# --- clocks ------------------------------------------------------------------------------------
class WallClock:
    """Marks are host times; durations in ms."""

    gpu = False

    def mark(self):
        return time.perf_counter()

    def ms(self, start, end):
        return (end - start) * 1e3

    def synchronize(self):
        pass


class CudaClock:
    """Marks are CUDA events on the current stream; durations in ms on the GPU's timeline."""

    gpu = True

    def __init__(self):
        import cupy

        self._cupy = cupy

    def mark(self):
        event = self._cupy.cuda.Event()
        event.record()
        return event

    def ms(self, start, end):
        return self._cupy.cuda.get_elapsed_time(start, end)

    def synchronize(self):
        self._cupy.cuda.get_current_stream().synchronize()

    def hold(self, seconds):
        """Keep the current stream busy for ``seconds`` (one thread spinning on the GPU timer);
        returns an event recorded when the hold ends."""
        _spin_kernel(self._cupy)((1,), (1,), (np.uint64(seconds * 1e9),))
        return self.mark()


_SPIN = r"""
extern "C" __global__ void spin(unsigned long long nanoseconds) {
    unsigned long long start, now;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
    do {
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
    } while (now - start < nanoseconds);
}
"""


_SPIN_KERNEL = []


def _spin_kernel(cupy):
    if not _SPIN_KERNEL:
        _SPIN_KERNEL.append(cupy.RawKernel(_SPIN, "spin"))
    return _SPIN_KERNEL[0]


class _Row:
    def __init__(self, name, kind):
        self.name, self.kind, self.shape = name, kind, None
        self.forward_ms = self.backward_ms = self.forward_host_ms = self.backward_host_ms = 0.0

    @property
    def total_ms(self):
        return self.forward_ms + self.backward_ms

    def as_dict(self):
        return {"layer": self.name, "kind": self.kind, "shape": list(self.shape or ()),
                "forward_ms": self.forward_ms, "backward_ms": self.backward_ms,
                "forward_host_ms": self.forward_host_ms, "backward_host_ms": self.backward_host_ms}


# --- one instrumented step ------------------------------------------------------------------------
class _Instrumented:
    """Marks around every layer's forward and backward, the loss and the update, for one step."""

    def __init__(self, model, clock):
        self.model, self.clock = model, clock
        self.rows, self.removers, self.pending, self.wrapped = {}, [], [], []
        fused, before = nn.fused_layers(model), ""
        for name, module in model.named_modules():
            if list(module.children()):  # the leaves run Functions
                continue
            if name in fused:  # no hook (it would turn the fusion off): its time is in the next row
                before = module.describe() + " + "
                continue
            self.rows[name] = _Row(name, before + module.describe())  # 'relu + batchnorm'
            self.removers.append(module.register_forward_hook(self._forward_hook(name)))
            before = ""
        self.rows["loss"] = _Row("loss", "mse")
        self.last = None  # (mark, host time) of the previous forward mark

    def _stamp(self):
        return self.clock.mark(), time.perf_counter()

    def start(self):
        self.last = self._stamp()
        return self.last

    def forward_done(self, name, output):
        now = self._stamp()
        row = self.rows[name]
        row.shape = tuple(output.shape)
        self.pending.append((row, "forward", self.last[0], now[0]))
        row.forward_host_ms += (now[1] - self.last[1]) * 1e3
        self.last = now
        creator = getattr(output, "creator", None)
        if creator is not None and "backward" not in vars(creator):  # wrap each Function once
            creator.backward = self._timed_backward(row, creator.backward)
            self.wrapped.append(creator)

    def _forward_hook(self, name):
        return lambda module, inputs, output: self.forward_done(name, output)

    def _timed_backward(self, row, backward):
        def timed(grad):
            before = self._stamp()
            result = backward(grad)
            after = self._stamp()
            self.pending.append((row, "backward", before[0], after[0]))
            row.backward_host_ms += (after[1] - before[1]) * 1e3
            return result

        return timed

    def resolve(self):
        """Turn the recorded marks into milliseconds (on cuda: after the step has finished)."""
        for row, which, start, end in self.pending:
            setattr(row, f"{which}_ms", getattr(row, f"{which}_ms") + self.clock.ms(start, end))
        self.pending = []

    def remove(self):
        for remove in self.removers:
            remove()
        for creator in self.wrapped:  # the wrapper refers to its Function: break that cycle
            del creator.backward
        self.wrapped = []


def profile(width=16, batch=1, size=224, device="cpu", warmup=2, repeat=3, seed=0, graph=True):
    """Profile the training step; returns a dict (rows, totals) that ``format_table`` prints.

    Every figure is the median over ``repeat`` instrumented steps, after ``warmup`` steps;
the step's total is the sum of its parts' medians.
    """
    backend.check_device(device)
    model = ColorizationNet(width, seed=seed).to(device)
    opt = optim.Adam(model.parameters(), lr=1e-4)
    rng = np.random.default_rng(seed)
    x = Tensor(backend.as_array(rng.uniform(-0.5, 0.5, (batch, 1, size, size)), device, np.float32),
               device=device)
    y = Tensor(backend.as_array(rng.uniform(-0.5, 0.5, (batch, 2, size, size)), device, np.float32),
               device=device)
    clock = CudaClock() if backend.on_gpu(device) else WallClock()

    def step():
        model.train()
        opt.zero_grad()
        loss, _ = model.loss(x, y)
        loss.backward()
        opt.step()

    for _ in range(warmup):  # compile kernels, grow the memory pool
        step()
    step_ms = statistics.median(_wall_ms(step, clock) for _ in range(repeat))  # plain, un-instrumented
    gc.disable()  # no collector pauses inside the timed steps
    try:
        runs = [_instrumented_step(model, opt, x, y, clock, step_ms) for _ in range(repeat)]
    finally:
        gc.enable()
    result = {"device": device, "width": width, "batch": batch, "size": size, "step_ms": step_ms,
              "gpu": clock.gpu, "gpu_waited_for_host": any(r["gpu_waited_for_host"] for r in runs)}
    for key in runs[0]:
        if key not in ("rows", "gpu_waited_for_host", "launches"):
            result[key] = statistics.median(r[key] for r in runs)
    result["launches"] = runs[-1]["launches"] if backend.runs_kernels(device) else None
    result["rows"] = [dict(row, **{key: statistics.median(r["rows"][i][key] for r in runs)
                                   for key in row if key.endswith("_ms")})
                      for i, row in enumerate(runs[0]["rows"])]
    # the parts' medians, added up (the median of the whole may differ a little on a busy host)
    result["total_ms"] = (sum(r["forward_ms"] + r["backward_ms"] for r in result["rows"])
                          + result["autograd_ms"] + result["update_ms"])
    if clock.gpu and graph:
        result.update(_graph_figures(step, clock, repeat))
    return result


def _instrumented_step(model, opt, x, y, clock, step_ms):
    """One training step with marks around every piece; its times (ms) as a dict."""
    probe = _Instrumented(model, clock)
    launches_before = _launch_count()
    held = None
    try:
        if clock.gpu:
            clock.synchronize()
            held = clock.hold(max(0.05, 3 * step_ms / 1e3))  # longer than the host needs
        host_start = time.perf_counter()
        start = probe.start()
        model.train()
        opt.zero_grad()
        loss, _ = model.loss(x, y)
        probe.forward_done("loss", loss)
        backward_start = probe._stamp()
        loss.backward()
        backward_end = probe._stamp()
        opt.step()
        end = probe._stamp()
        host_ms = (time.perf_counter() - host_start) * 1e3
        waited = held is not None and held.done  # the hold ended before the host had sent it all
        launches = _launch_count() - launches_before if launches_before is not None else None
        clock.synchronize()
        probe.resolve()
    finally:
        probe.remove()
    rows = [r for r in probe.rows.values() if r.shape is not None]
    backward_ms = clock.ms(backward_start[0], backward_end[0])
    return {
        "rows": [r.as_dict() for r in rows],
        "autograd_ms": max(0.0, backward_ms - sum(r.backward_ms for r in rows)),
        "autograd_host_ms": max(0.0, (backward_end[1] - backward_start[1]) * 1e3
                                - sum(r.backward_host_ms for r in rows)),
        "update_ms": clock.ms(backward_end[0], end[0]),
        "update_host_ms": (end[1] - backward_end[1]) * 1e3,
        "total_ms": clock.ms(start[0], end[0]),
        "host_ms": host_ms, "launches": launches, "gpu_waited_for_host": bool(waited),
    }


def _wall_ms(fn, clock):
    clock.synchronize()
    start = time.perf_counter()
    fn()
    clock.synchronize()
    return (time.perf_counter() - start) * 1e3


def _launch_count():
    """Numba launches so far (None where the kernels were never imported: cpu runs NumPy)."""
    kernels = sys.modules.get("minicolor.kernels")
    return getattr(kernels, "launch_count", None) if kernels is not None else None


def _graph_figures(step, clock, repeat):
    """Capture the step once as a CUDA graph: count its kernels, time its replay."""
    from .. import graph

    capture = graph.CudaCapture()
    try:
        with capture.stream:
            step()  # a warm-up on the capture stream
            recording = capture.capture(lambda: (step(),))
            recording.replay()
            capture.synchronize()
            times = []
            for _ in range(repeat):
                start = time.perf_counter()
                recording.replay()
                capture.synchronize()
                times.append((time.perf_counter() - start) * 1e3)
    except Exception as exc:  # the profile still stands without it; say why
        return {"graph_error": f"{type(exc).__name__}: {exc}"}
    return {"graph_kernels": recording.kernel_count(), "graph_ms": statistics.median(times)}


# --- printing -----------------------------------------------------------------------------------------
def format_table(result):
    """The profile as a table: one row per layer, then the totals."""
    gpu = result["gpu"]
    unit = "GPU" if gpu else "wall"
    total = result["total_ms"] or 1.0
    head = (f"{'layer':<10} {'kind':<22} {'output shape':<18} {'forward ms':>10} {'backward ms':>11} "
            f"{'update ms':>9} {'share':>6}")
    if gpu:
        head += f" {'host fwd ms':>11} {'host bwd ms':>11} {'host upd ms':>11}"
    title = (f"one training step of ColorizationNet(width {result['width']}), batch {result['batch']}, "
             f"{result['size']}x{result['size']}, on {result['device']} ({unit} time per layer)")
    lines = [title, head, "-" * len(head)]

    def line(name, kind, shape, fwd=0.0, bwd=0.0, upd=0.0, host_fwd=0.0, host_bwd=0.0, host_upd=0.0):
        text = (f"{name:<10} {kind:<22} {shape:<18} {fwd:>10.3f} {bwd:>11.3f} {upd:>9.3f} "
                f"{100 * (fwd + bwd + upd) / total:>5.1f}%")
        if gpu:
            text += f" {host_fwd:>11.3f} {host_bwd:>11.3f} {host_upd:>11.3f}"
        return text

    for r in result["rows"]:
        shape = "x".join(str(s) for s in r["shape"]) or "scalar"
        lines.append(line(r["layer"], r["kind"], shape, r["forward_ms"], r["backward_ms"],
                          host_fwd=r["forward_host_ms"], host_bwd=r["backward_host_ms"]))
    lines.append(line("autograd", "engine, between layers", "", bwd=result["autograd_ms"],
                      host_bwd=result["autograd_host_ms"]))
    lines.append(line("update", "Adam", "", upd=result["update_ms"], host_upd=result["update_host_ms"]))
    lines.append("-" * len(head))
    forward = sum(r["forward_ms"] for r in result["rows"])
    backward = sum(r["backward_ms"] for r in result["rows"]) + result["autograd_ms"]
    lines.append(f"forward {forward:.2f} ms, backward {backward:.2f} ms, update "
                 f"{result['update_ms']:.2f} ms: {result['total_ms']:.2f} ms of {unit} time")
    if gpu:
        lines.append(f"host time to send the step: {result['host_ms']:.2f} ms"
                     + (" (the GPU times include waiting for the host: the hold was too short)"
                        if result["gpu_waited_for_host"] else ""))
    lines.append(f"one plain step, start to finish: {result['step_ms']:.2f} ms")
    launches = result["launches"]
    if launches is None:
        launches = "none (this device runs no CUDA kernels)"
    lines.append(f"Numba kernel launches per step: {launches}")
    if "graph_kernels" in result:
        lines.append(f"as a CUDA graph: {result['graph_kernels']} kernels per step (CuPy's "
                     f"included), replayed in {result['graph_ms']:.2f} ms")
    elif "graph_error" in result:
        lines.append(f"as a CUDA graph: not captured ({result['graph_error']})")
    return "\n".join(lines)


def chart(result):
    """A matplotlib figure: a horizontal bar per layer, forward and backward time stacked, and
    the update's own bar; the legend sits outside the axes, where it covers no bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"] + [{"layer": "autograd", "forward_ms": 0.0, "backward_ms": result["autograd_ms"]}]
    names = [r["layer"] for r in rows] + ["update"]
    forward = np.array([r["forward_ms"] for r in rows] + [0.0])
    backward = np.array([r["backward_ms"] for r in rows] + [0.0])
    update = np.zeros(len(names))
    update[-1] = result["update_ms"]
    fig, ax = plt.subplots(figsize=(9, 0.16 * len(names) + 1.5))
    positions = np.arange(len(names))[::-1]
    ax.barh(positions, forward, color="tab:blue", label="forward")
    ax.barh(positions, backward, left=forward, color="tab:orange", label="backward")
    ax.barh(positions, update, color="tab:green", label="update (Adam)")
    ax.set_yticks(positions, names, fontsize=6)
    ax.set_ylim(-1, len(names))
    unit = "GPU" if result["gpu"] else "wall"
    ax.set_xlabel(f"{unit} time (ms)")
    ax.set_title(f"width {result['width']}, batch {result['batch']}, {result['size']}px, "
                 f"{result['device']}: {result['total_ms']:.1f} ms", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


def save_chart(result, path):
    """Draw ``chart`` into a PNG file."""
    import matplotlib.pyplot as plt

    fig = chart(result)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

"""Benchmarks: minicolor's training step and conv layers, timed side by side with PyTorch.

``minicolor bench`` (see ``--help``) measures, on one machine and device:

    step      the whole training step (forward, MSE, backward, Adam) of ColorizationNet at the
              chosen widths and batch sizes
    layers    each distinct conv layer shape of the network: forward, grad-input, grad-weight
    overfit   N training steps on one image, through the Trainer (data preparation included)

Each figure is the median over ``repeat`` runs after ``warmup`` runs, with the device
synchronised before every clock read. TFLOP/s counts the FLOPs of the conv layers only (they
are >99% of the arithmetic), as each conv counts its own (nn.Conv2d.flops: 2 per multiply-add,
1 per output for the bias). Where PyTorch is installed the same workloads run in PyTorch, in
float32 with TF32 off, on the same device, and the table shows the ratio minicolor time /
PyTorch time (below 1: minicolor is faster). The PyTorch network is built of the layers' own
twins (nn.Module.to_torch): a module without a twin or a FLOP count is an error
(``check_layers``), never left out. On the GPU the conv layers are also timed through the
NumPy reference on CuPy (im2col + cuBLAS).

On ``cuda`` and ``sim`` each conv pass is timed in both kernel versions of
kernels/conv2d.py, "naive" (one thread per output) and "tiled" (implicit GEMM), with the
ratio naive / tiled: what tiling buys. ``minicolor_s`` is the version the switch
(``minicolor.kernels.conv2d.VERSION``) runs in a training step. In the simulator the
figures are the simulator's (Python threads), not a GPU's: use tiny sizes there, e.g.
``minicolor bench --device sim --size 16 --widths 4 --batches 1 --overfit-steps 0``.

minicolor's and PyTorch's steps run in turn, one of each per round, so on a machine whose
load changes each sees the same conditions. On the CPU they share one OpenMP library, whose
threads wait passively (``_start_openmp_first``). On the CPU the steps are also given in GFLOP/s,
beside the machine's peak measured in the same run: NumPy's SGEMM on two 2048 x 2048
float32 matrices.
"""
import json
import platform
import statistics
import time

import numpy as np

from .. import backend, functional as F, nn, optim
from ..data import rgb_to_l_ab
from ..models import ColorizationNet
from ..reference import conv2d as ref_conv2d
from ..tensor import Tensor


def median_time(fn, device, warmup=2, repeat=5):
    """Median wall time of fn() in seconds, synchronising the device around each call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        backend.synchronize(device)
        start = time.perf_counter()
        fn()
        backend.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def check_layers(model, twin=False):
    """A ValueError naming every module of ``model`` that cannot say its output shape and FLOPs
    (and, with ``twin``, its PyTorch twin): the bench leaves no layer out, for then the FLOPs
    would fall short and PyTorch would time another network."""
    missing = [f"{name} ({kind}) lacks {', '.join(methods)}"
               for name, kind, methods in _undescribed(model, twin)]
    if missing:
        raise ValueError(f"{type(model).__name__} has modules that do not describe themselves "
                         f"(nn.Module), and the bench leaves none out: {'; '.join(missing)}")
    return model


def _undescribed(model, twin):
    """[(name, type name, [methods])]: the modules that leave a question to nn.Module's
    defaults, which raise. A layer answers output_shape and flops, a container layers; with
    ``twin`` both answer to_torch."""
    found = []
    for name, module in model.named_modules():
        asked = ["layers"] if list(module.children()) else ["output_shape", "flops"]
        asked += ["to_torch"] if twin else []
        missing = [m for m in asked if getattr(type(module), m) is getattr(nn.Module, m)]
        if missing:
            found.append((name or "the model", type(module).__name__, missing))
    return found


def median_times(fns, device, warmup=2, repeat=5):
    """Median wall time of each of ``fns`` (a dict of callables), run in turn, one of each per
    round: on a machine whose load changes, each sees the same conditions."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            times[name].append(median_time(fn, device, warmup=0, repeat=1))
    return {name: statistics.median(t) for name, t in times.items()}


def peak_gflops(size=2048, repeat=5):
    """The CPU's peak as NumPy reaches it: GFLOP/s of a float32 matrix product (SGEMM) of two
    size x size matrices, on NumPy's BLAS threads (the yardstick for every CPU figure)."""
    from ..cpu import threads  # the fast path holds OpenBLAS to one thread; here it gets them all

    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((size, size), dtype=np.float32) for _ in range(2))
    with threads.openblas_on_every_core():
        return 2 * size**3 / median_time(lambda: a @ b, "cpu", warmup=1, repeat=repeat) / 1e9


def step_flops(model, batch, size):
    """Conv FLOPs of a training step, each pass counted as the conv's forward (nn.Conv2d.flops):
    forward, grad-weight, and grad-input except the first layer's."""
    per_pass = [conv.flops(x_shape) for _, conv, x_shape, _ in model.conv_layers(batch, size)]
    return 3 * sum(per_pass) - per_pass[0]


# --- minicolor -----------------------------------------------------------------------------------
def _batch(batch, size, device, seed=0):
    rng = np.random.default_rng(seed)
    l = rng.uniform(-0.5, 0.5, (batch, 1, size, size)).astype(np.float32)
    ab = rng.uniform(-0.5, 0.5, (batch, 2, size, size)).astype(np.float32)
    return (Tensor(backend.as_array(l, device), device=device),
            Tensor(backend.as_array(ab, device), device=device))


def minicolor_step(width, batch, size, device):
    """A closure that runs one training step of ColorizationNet(width) on a fixed batch."""
    model = ColorizationNet(width).to(device)
    opt = optim.Adam(model.parameters(), lr=1e-4)
    x, y = _batch(batch, size, device)

    def step():
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()

    return step


def conv_versions(device):
    """{name: module with forward, backward_data, backward_weight} of minicolor's own conv on
    ``device`` (backend.implementation): each version where it has several (the kernels'
    VERSIONS, naive and tiled, on cuda and sim), else the one as "minicolor"."""
    impl = backend.implementation("conv2d", device)
    if not hasattr(impl, "VERSIONS"):
        return {"minicolor": impl}
    return {name: impl.version(name) for name in impl.VERSIONS}


def default_conv_version(device):
    """The key of conv_versions(device) that a training step runs."""
    return getattr(backend.implementation("conv2d", device), "VERSION", "minicolor")


def minicolor_conv(x_shape, conv, device, impl=None):
    """Closures for forward, grad-input and grad-weight of one conv layer shape."""
    impl = impl or backend.implementation("conv2d", device)
    rng = np.random.default_rng(0)
    x = backend.as_array(rng.standard_normal(x_shape, dtype=np.float32), device)
    w = backend.as_array(conv.weight.numpy(), device)
    b = backend.as_array(conv.bias.numpy(), device)
    geometry = conv.geometry()
    y, saved = impl.forward(x, w, b, *geometry)
    gy = backend.as_array(rng.standard_normal(y.shape, dtype=np.float32), device)
    return {
        "forward": lambda: impl.forward(x, w, b, *geometry),
        "grad-input": lambda: impl.backward_data(gy, w, x.shape, *geometry),
        "grad-weight": lambda: impl.backward_weight(gy, saved, w.shape, *geometry),
    }


# --- PyTorch, the yardstick ---------------------------------------------------------------------
def _start_openmp_first():
    """Start the fast CPU path's threads before PyTorch is imported.

    A process holds one OpenMP library (libgomp), whoever loads it first, and it reads its
    wait policy once, as it loads. minicolor's threads wait passively (cpu/threads.py); if
    PyTorch's import loaded libgomp first, minicolor's loops would run on spinning threads
    instead (or on Numba's slower workqueue), which users never see: at batch 8 the step took
    879 ms that way against 696 when minicolor's threads started first, on the idle 2-core
    machine. Started first, both libraries share the passive libgomp; PyTorch's step was not
    slower for it (729 against 774 ms at batch 8, 127 against 133 at batch 1).
    """
    from ..cpu import threads

    threads.adapt()


def torch_available():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _torch_setup(device):
    import torch

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    return torch, backend.torch_device(device)


def torch_step(width, batch, size, device):
    torch, dev = _torch_setup(device)
    model = ColorizationNet(width).to_torch().to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x, y = (torch.tensor(t.numpy(), device=dev) for t in _batch(batch, size, "cpu"))

    def step():
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()

    return step


def torch_conv(x_shape, conv, device):
    """Closures for the three passes of the conv's PyTorch twin (nn.Conv2d.to_torch)."""
    torch, dev = _torch_setup(device)
    twin = conv.to_torch().to(dev)
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.standard_normal(x_shape, dtype=np.float32), device=dev, requires_grad=True)
    w, b = twin.weight, twin.bias
    args = dict(stride=twin.stride, padding=twin.padding, dilation=twin.dilation)
    y = torch.nn.functional.conv2d(x, w, b, **args)
    gy = torch.randn_like(y)

    def grad(which):
        return lambda: torch.autograd.grad(y, which, gy, retain_graph=True)

    return {
        "forward": lambda: torch.nn.functional.conv2d(x, w, b, **args),
        "grad-input": grad([x]),
        "grad-weight": grad(list(twin.parameters())),
    }


# --- the runs ---------------------------------------------------------------------------------------
def run(device="cpu", widths=(16,), batches=(1, 8), size=224, layer_batch=None, layer_width=None,
        overfit_steps=400, warmup=2, repeat=5, torch=None, log=print):
    """Run the benchmark; returns a dict of results (also what --json writes)."""
    backend.check_device(device)
    if not backend.on_gpu(device):
        _start_openmp_first()
    torch = torch_available() if torch is None else torch
    results = {"machine": machine(device), "device": device, "size": size, "steps": [],
               "layers": [], "overfit": None}
    models = {width: check_layers(ColorizationNet(width), twin=torch) for width in widths}  # first
    if not backend.runs_kernels(device):  # the CPU: its peak, while NumPy's BLAS runs on every core
        results["peak_gflops"] = peak_gflops()
        log(format_peak(results["peak_gflops"]))
    if torch:
        torch_module, _ = _torch_setup(device)
        if not backend.on_gpu(device):  # PyTorch on the CPU: every core, as NumPy has
            torch_module.set_num_threads(max(1, backend.cpu_count()))
    for width, model in models.items():
        for batch in batches:
            flops = step_flops(model, batch, size)
            row = {"width": width, "batch": batch, "flops": flops}
            steps = {"minicolor": minicolor_step(width, batch, size, device)}
            if torch:
                steps["torch"] = torch_step(width, batch, size, device)
            for name, seconds in median_times(steps, device, warmup, repeat).items():
                row[f"{name}_s"] = seconds
            results["steps"].append(row)
            log(format_step(row, results.get("peak_gflops")))
    if layer_batch:
        model = ColorizationNet(layer_width or widths[-1])
        seen = set()
        for name, conv, x_shape, _ in model.conv_layers(layer_batch, size):
            key = (x_shape, conv.weight.shape, conv.stride, conv.dilation)
            if key in seen:
                continue
            seen.add(key)
            for row in conv_layer_rows(name, conv, x_shape, device, torch, warmup, repeat):
                results["layers"].append(row)
                log(format_layer(row))
    if overfit_steps:
        results["overfit"] = overfit_timing(device, overfit_steps, size, torch)
        log(format_overfit(results["overfit"]))
    return results


def conv_layer_rows(name, conv, x_shape, device, torch=False, warmup=2, repeat=5):
    """One row per pass of one conv layer: the median time of each implementation (``*_s``)."""
    flops = conv.flops(x_shape)  # the same count for each of the three passes
    impls = {version: minicolor_conv(x_shape, conv, device, impl)
             for version, impl in conv_versions(device).items()}
    if backend.on_gpu(device):  # the reference on CuPy: im2col + cuBLAS
        impls["reference"] = minicolor_conv(x_shape, conv, device, ref_conv2d)
    if torch:
        impls["torch"] = torch_conv(x_shape, conv, device)
    for pass_name in ("forward", "grad-input", "grad-weight"):
        row = {"layer": name, "x": list(x_shape), "w": list(conv.weight.shape), "stride": conv.stride,
               "dilation": conv.dilation, "pass": pass_name, "flops": flops}
        for impl_name, fns in impls.items():
            row[f"{impl_name}_s"] = median_time(fns[pass_name], device, warmup, repeat)
        row["minicolor_s"] = row[f"{default_conv_version(device)}_s"]  # what a training step runs
        yield row


class _OneImage:
    """A data set of one random size x size photo, for timing (no file needed)."""

    def __init__(self, size):
        rgb = np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
        self.l, self.ab = rgb_to_l_ab(rgb)

    def __len__(self):
        return 1

    def batch(self, indices, rng=None):
        return self.l[indices], self.ab[indices]


def overfit_timing(device, steps, size, torch):
    """Seconds for ``steps`` training steps on one image through the Trainer (width 16, batch 1)."""
    import tempfile

    from ..train import Trainer

    with tempfile.TemporaryDirectory() as scratch:  # the Trainer's logs and loss curve
        trainer = Trainer(ColorizationNet(16), _OneImage(size), device=device, progress=False,
                          log_every=10**9, out_dir=scratch)
        backend.synchronize(device)
        start = time.perf_counter()
        trainer.fit(steps)
        backend.synchronize(device)
        out = {"steps": steps, "minicolor_s": time.perf_counter() - start}
    if torch:
        step = torch_step(16, 1, size, device)
        backend.synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        backend.synchronize(device)
        out["torch_s"] = time.perf_counter() - start
    return out


def machine(device):
    info = {"python": platform.python_version(), "numpy": np.__version__,
            "platform": platform.platform(), "processor": _cpu_name(), "cores": backend.cpu_count()}
    try:
        import numba

        info["numba"] = numba.__version__
    except ImportError:
        pass
    if torch_available():
        import torch

        info["torch"] = torch.__version__
    if backend.on_gpu(device):
        import cupy

        info["gpu"] = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
        info["cupy"] = cupy.__version__
    return info


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# --- printing -----------------------------------------------------------------------------------------
def _ratio(row):
    return f"{row['minicolor_s'] / row['torch_s']:.2f}" if "torch_s" in row else "-"


def format_peak(gflops):
    return f"peak  NumPy SGEMM 2048x2048 float32: {gflops:7.1f} GFLOP/s"


def format_step(row, peak_gflops=None):
    """One step row; on the CPU (``peak_gflops`` given) rates in GFLOP/s and as % of the peak."""
    def rate(seconds):
        if peak_gflops is None:
            return f"{row['flops'] / seconds / 1e12:6.2f} TFLOP/s"
        gflops = row["flops"] / seconds / 1e9
        return f"{gflops:6.1f} GFLOP/s ({100 * gflops / peak_gflops:3.0f}% of peak)"

    t = row["minicolor_s"]
    torch_part = (f" | torch {row['torch_s'] * 1e3:9.1f} ms {row['batch'] / row['torch_s']:8.1f} img/s "
                  f"{rate(row['torch_s'])} | ratio {_ratio(row)}") if "torch_s" in row else ""
    return (f"step  width {row['width']:3d} batch {row['batch']:3d} | minicolor {t * 1e3:9.1f} ms "
            f"{row['batch'] / t:8.1f} img/s {rate(t)}{torch_part}")


def format_layer(row):
    parts = [f"layer {row['layer']:<9} {'x'.join(map(str, row['x'][1:])):>12} -> {row['w'][0]:4d} "
             f"s{row['stride']} d{row['dilation']} {row['pass']:<11}"]
    versions = "naive_s" in row and "tiled_s" in row  # minicolor_s is one of them: not printed twice
    for impl in ("naive", "tiled", "reference", "torch") if versions else ("minicolor", "reference", "torch"):
        if f"{impl}_s" in row:
            t = row[f"{impl}_s"]
            parts.append(f"{impl} {t * 1e3:8.2f} ms {row['flops'] / t / 1e12:6.2f} TFLOP/s")
    if versions:
        parts.append(f"tiling x{row['naive_s'] / row['tiled_s']:.1f}")
    if "torch_s" in row:
        parts.append(f"ratio {_ratio(row)}")
    return " | ".join(parts)


def format_overfit(row):
    torch_part = f" | torch {row['torch_s']:.1f} s | ratio {_ratio(row)}" if "torch_s" in row else ""
    return (f"overfit {row['steps']} steps (width 16, batch 1) | minicolor {row['minicolor_s']:.1f} s"
            f"{torch_part}")


def save_json(results, path):
    with open(path, "w") as f:
        json.dump(results, f, indent=1)

"""The small programs that examples/gpu_check.py runs, one per subcommand, each in its own process.

    probe           package versions; compile and run a trivial Numba kernel on CuPy memory
    kernels         every kernel of kernels/ once, on tiny cases (what compute-sanitizer checks)
    launches        Numba launches per training step, how many took the fast path, and the
                    kernels of the step captured as a CUDA graph (CuPy's own included)
    launcher-host   host time per launch of the fast launch path (the launcher module's measure())
    ncu-layer       the three passes of one conv layer, between profiler start and stop (for ncu)
    fake TOOL ...   the dry run's stand-ins for nvidia-smi, compute-sanitizer and ncu

Each prints what it does and ends with one line ``RESULT {json}`` that gpu_check.py reads.
``--dry-run`` runs the same code on Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1, set by
gpu_check.py) with NumPy arrays and tiny sizes: it checks this script, never the GPU.
"""
import argparse
import ast
import collections
import importlib
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

# The packages whose versions the probe reports (the first of each group that is installed).
PACKAGES = [("numba-cuda",), ("cuda-core",), ("cuda-bindings",), ("cuda-pathfinder",), ("numba",),
            ("llvmlite",), ("numpy",), ("cupy-cuda13x", "cupy-cuda12x", "cupy"), ("torch",)]


def result(**figures):
    """The last line of every subcommand: what gpu_check.py reads."""
    print("RESULT " + json.dumps(figures), flush=True)


def versions():
    found = {}
    for names in PACKAGES:
        for name in names:
            try:
                found[name] = importlib.metadata.version(name)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
        else:
            found[names[0]] = None
    return found


def simulator():
    return os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


def array_module():
    if simulator():
        import numpy
        return numpy
    import cupy
    return cupy


def synchronize():
    if not simulator():
        import cupy
        cupy.cuda.get_current_stream().synchronize()


# --- probe -----------------------------------------------------------------------------------------
def probe(args):
    found = versions()
    for name, version in found.items():
        print(f"{name:16s} {version or 'not installed'}")
    result(versions=found)  # read even if what follows fails
    if args.versions_only:
        return 0
    from minicolor.backend import patch_numpy_for_numba

    patch_numpy_for_numba()  # numba-cuda 0.30 on NumPy 2.5 (see minicolor/backend.py)
    start = time.perf_counter()
    global cuda  # a module global, as in kernels/: the simulator replaces the kernel's `cuda`
    from numba import cuda

    xp = array_module()
    import_s = time.perf_counter() - start

    @cuda.jit
    def add_one(values):
        i = cuda.grid(1)
        if i < values.size:
            values[i] += 1.0

    values = xp.zeros(1000, dtype=xp.float32)
    times = []
    for _ in range(2):  # the first launch compiles the kernel
        start = time.perf_counter()
        add_one[4, 256](values)
        synchronize()
        times.append(time.perf_counter() - start)
    correct = float(values.sum()) == 2000.0
    device = "simulator"
    if not simulator():
        import cupy
        device = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    print(f"numba.cuda import {import_s:.2f} s; trivial kernel: compile + first launch "
          f"{times[0]:.2f} s, second launch {times[1] * 1e3:.2f} ms, result "
          f"{'correct' if correct else 'WRONG'} on {device}")
    result(versions=found, import_s=import_s, compile_s=times[0], launch_ms=times[1] * 1e3,
           correct=correct, device=device)
    return 0 if correct else 1


# --- kernels: every kernel once, on tiny cases -----------------------------------------------------
def quick_case(module, label):
    """The dry run's subset: the cases that take about a second on the simulator (all but the
    big layers of the tiled conv and the large batch of batchnorm)."""
    return module not in ("conv2d_tiled", "batchnorm") or any(w in label for w in ("tiny", "small"))


def kernel_cases(args):
    """Run the examples of every kernel file (``examples(dtype, array)`` at the end of each file of
    kernels/, found by minicolor/tools/kernel_report.py: between them they reach every kernel,
    every conv tile shape included) on device arrays of random numbers.

    On a GPU, CuPy's memory pool is turned off: each array is then its own cudaMalloc, so
    compute-sanitizer's memcheck sees where each one ends (inside a pool's larger blocks an
    overrun would land on valid memory and go unseen)."""
    import numpy as np

    from minicolor.tools import kernel_report

    xp = array_module()
    if xp is not np:
        xp.cuda.set_allocator(None)
    import minicolor.kernels as kernels

    rng = np.random.default_rng(0)
    # the compile check gives the examples NumPy zeros; here they get random numbers on the device
    # (positive: Adam's second moment and batchnorm's variance must be, or the simulator's
    # math.sqrt raises)
    random_array = lambda shape, dtype: xp.asarray(rng.uniform(0.1, 1.0, shape).astype(dtype))  # noqa: E731
    examples, problems = kernel_report.kernel_examples()
    if problems:
        raise SystemExit("\n".join(problems))
    rounds, calls, launches = [], 0, 0
    for round_ in range(args.rounds):
        started = time.perf_counter()
        for module, make_calls in examples.items():
            for dtype in args.dtype:
                for label, call in make_calls(np.dtype(dtype), random_array):
                    if args.quick and not quick_case(module, label):
                        continue
                    before, start = kernels.launch_count, time.perf_counter()
                    with np.errstate(all="ignore"):
                        call()
                    synchronize()
                    if round_ == 0:
                        calls += 1
                        launches += kernels.launch_count - before
                        print(f"{module:12s} {dtype:8s} {label:32s} {kernels.launch_count - before} "
                              f"launches {time.perf_counter() - start:7.3f} s", flush=True)
        rounds.append(time.perf_counter() - started)
        what = "compiles and runs" if round_ == 0 else "runs (compiled)"
        print(f"round {round_ + 1}: {calls} calls, {launches} launches: {what} in {rounds[-1]:.2f} s")
    result(calls=calls, launches=launches, rounds_s=rounds)


# --- launches: the launch paths of one training step ----------------------------------------------
def find_launcher_module():
    """The dotted name of the module that defines the fast launch path (``class Launcher`` and
    ``def measure``), wherever it lives in the minicolor package."""
    import minicolor

    root = Path(minicolor.__file__).parent
    for folder, _, files in sorted(os.walk(root, followlinks=True)):
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            path = Path(folder) / name
            tree = ast.parse(path.read_text(), str(path))
            top = {(type(node).__name__, node.name) for node in tree.body if hasattr(node, "name")}
            if {("ClassDef", "Launcher"), ("FunctionDef", "measure")} <= top:
                parts = path.relative_to(root.parent).with_suffix("").parts
                return ".".join(parts)
    return None


class FastLaunchCounter:
    """How many launches took the fast path, and which kernels did not.

    The count is ``minicolor.kernels.fast_launch_count`` where the package keeps one, else the
    calls of ``Launcher.launch`` that returned True (it started the kernel); the kernels that it
    turned away (False: Numba's own launch ran them) are named in ``slow``. Both come from
    wrapping ``Launcher.launch`` of the module that defines the fast path."""

    def __init__(self, kernels):
        self.kernels, self.calls, self.slow = kernels, 0, collections.Counter()
        module = importlib.import_module(find_launcher_module())
        launch = module.Launcher.launch

        def counted(launcher, kernel, *args, **kwargs):
            started = launch(launcher, kernel, *args, **kwargs)
            if started:
                self.calls += 1
            else:
                self.slow[getattr(getattr(kernel, "py_func", None), "__name__", type(kernel).__name__)] += 1
            return started

        module.Launcher.launch = counted
        self.how = ("minicolor.kernels.fast_launch_count" if hasattr(kernels, "fast_launch_count")
                    else f"calls of {module.__name__}.Launcher.launch that started the kernel")

    def count(self):
        return getattr(self.kernels, "fast_launch_count", self.calls)


def launches(args):
    import numpy as np

    import minicolor.kernels as kernels
    from minicolor import backend, optim
    from minicolor.models import ColorizationNet
    from minicolor.tensor import Tensor

    device = "sim" if simulator() else "cuda"
    counter = None if simulator() else FastLaunchCounter(kernels)
    steps = []
    for width in args.widths:
        model = ColorizationNet(width).to(device)
        opt = optim.Adam(model.parameters(), lr=1e-4)
        rng = np.random.default_rng(0)
        x, y = (Tensor(backend.as_array(rng.uniform(-0.5, 0.5, (1, c, args.size, args.size)), device,
                                        np.float32), device=device) for c in (1, 2))

        def step():
            opt.zero_grad()
            loss, _ = model.loss(x, y)
            loss.backward()
            opt.step()

        row = {"width": width, "batch": 1, "size": args.size}
        if simulator():  # recorded, not run: the count of launches is the same, in milliseconds
            with kernels.recording() as recorded, np.errstate(all="ignore"):
                step()
            row["launches"] = len(recorded)
        else:
            start = time.perf_counter()
            step()
            synchronize()
            row["first_step_s"] = time.perf_counter() - start  # compiles (or loads) the kernels
            step()
            synchronize()
            before, fast_before = kernels.launch_count, counter.count()
            counter.slow.clear()
            step()
            synchronize()
            row["launches"] = kernels.launch_count - before
            row["fast"] = counter.count() - fast_before
            row["not_fast"] = dict(counter.slow)  # kernel name: launches the fast path turned away
            row.update(graph_kernels(step, kernels))
        print(json.dumps(row))
        steps.append(row)
    result(steps=steps, fast_counter=counter.how if counter else None,
           fast_launch=os.environ.get("MINICOLOR_FAST_LAUNCH", "1") != "0")


def graph_kernels(step, kernels):
    """Capture one step as a CUDA graph: its kernels (Numba's and CuPy's), and the Numba
    launches made while capturing."""
    from minicolor import graph

    capture = graph.CudaCapture()
    try:
        with capture.stream:
            step()  # a warm-up on the capture stream
            before = kernels.launch_count
            recording = capture.capture(lambda: (step(),))
            numba = kernels.launch_count - before
        total = recording.kernel_count()
    except Exception as exc:
        return {"graph_error": f"{type(exc).__name__}: {exc}"}
    return {"graph_kernels": total, "graph_numba": numba, "graph_cupy": total - numba}


# --- launcher-host: the fast path's own measurement -----------------------------------------------
def launcher_host(args):
    import runpy

    name = find_launcher_module()
    if name is None:
        print("no module of the minicolor package defines both Launcher and measure(): "
              "the fast launch path moved or changed; update gpu_check_cases.py")
        return 1
    print(f"the fast launch path: {name} (python -m {name})", flush=True)
    if args.dry_run:
        module = importlib.import_module(name)  # measure() needs a GPU: only check it is there
        print(f"{name}.measure found: {callable(getattr(module, 'measure', None))}")
        return 0
    runpy.run_module(name, run_name="__main__", alter_sys=True)
    return 0


# --- ncu-layer: one conv layer's three passes, for Nsight Compute -----------------------------------
def profiler(on):
    """cudaProfilerStart/Stop: ncu --profile-from-start off profiles only what runs in between."""
    if simulator():
        return
    from numba import cuda

    (cuda.profile_start if on else cuda.profile_stop)()


def ncu_layer(args):
    import numpy as np

    import minicolor.kernels as kernels
    from minicolor.tools import bench
    from minicolor.models import ColorizationNet

    device = "sim" if simulator() else "cuda"
    layers = ColorizationNet(args.width).conv_layers(args.batch, args.size)
    wanted = [layer for layer in layers if layer[2][1:] == tuple(args.x) and layer[1].kernel_size == (3, 3)
              and layer[1].stride in (1, (1, 1))]
    if not wanted:  # the largest 3x3 stride-1 layer instead
        wanted = sorted((layer for layer in layers if layer[1].kernel_size == (3, 3)),
                        key=lambda layer: layer[1].flops(layer[2]))[-1:]
    name, conv, x_shape, _ = wanted[0]
    flops = conv.flops(x_shape)  # each pass counted as the forward (nn.Conv2d.flops)
    print(f"layer {name}: x {x_shape}, w {tuple(conv.weight.shape)}, {flops / 1e9:.1f} GFLOP per pass")
    passes = bench.minicolor_conv(x_shape, conv, device)
    with np.errstate(all="ignore"):
        for fn in passes.values():  # compile outside the profiled range
            fn()
        synchronize()
        profiler(True)
        for pass_name, fn in passes.items():
            before = kernels.launch_count
            fn()
            synchronize()
            print(f"pass {pass_name}: {kernels.launch_count - before} Numba launches", flush=True)
        profiler(False)
    result(layer=name, x=list(x_shape), w=list(conv.weight.shape), flops=flops, passes=list(passes))


# --- the dry run's stand-ins for the GPU tools -------------------------------------------------------
def split_tool_arguments(argv):
    """(options, command) of ``tool --option value ... command args``: every option of the tools
    as gpu_check.py calls them takes one value."""
    i = 0
    while i < len(argv) and argv[i].startswith("--"):
        i += 1 if "=" in argv[i] else 2
    return argv[:i], argv[i:]


def fake(args):
    """Print what the real tool prints, around the real command; no figure in it is measured."""
    options, command = split_tool_arguments(args.rest)
    if args.tool == "nvidia-smi":
        print("name, driver_version, memory.total [MiB]\nnone (dry run: a stand-in for nvidia-smi), -, -")
        return 0
    if args.tool == "compute-sanitizer":
        print("========= COMPUTE-SANITIZER (dry run: a stand-in; nothing is checked)", flush=True)
        code = subprocess.call(command)
        print("========= ERROR SUMMARY: 0 errors")
        return code
    if args.tool == "ncu":
        print("==PROF== Connected to process (dry run: a stand-in for ncu; nothing is measured)",
              flush=True)
        run = subprocess.run(command, stdout=subprocess.PIPE, text=True)
        print(run.stdout, end="")
        print("==PROF== Disconnected from process")
        for pass_name in re.findall(r"^pass (\S+):", run.stdout, re.M):
            print(f"  dry_run_{pass_name.replace('-', '_')} (1, 1, 1)x(16, 1, 1), Context 1, Stream 7, "
                  f"Device 0, CC 0.0\n    Section: Command line profiler metrics\n"
                  f"    gpu__time_duration.sum      ms      0.00")
        return run.returncode
    raise SystemExit(f"no stand-in for {args.tool}")


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("probe")
    p.add_argument("--versions-only", action="store_true")
    p.set_defaults(run=probe)
    p = sub.add_parser("kernels")
    p.add_argument("--rounds", type=int, default=1, help="2: the second round runs compiled kernels")
    p.add_argument("--dtype", nargs="+", default=["float32", "float64"])
    p.add_argument("--quick", action="store_true", help="the dry run's subset (simulator)")
    p.set_defaults(run=kernel_cases)
    p = sub.add_parser("launches")
    p.add_argument("--widths", type=int, nargs="+", default=[16, 64])
    p.add_argument("--size", type=int, default=224)
    p.set_defaults(run=launches)
    p = sub.add_parser("launcher-host")
    p.add_argument("--dry-run", action="store_true")
    p.set_defaults(run=launcher_host)
    p = sub.add_parser("ncu-layer")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--x", type=int, nargs=3, default=[256, 56, 56], help="the layer's input C H W")
    p.set_defaults(run=ncu_layer)
    p = sub.add_parser("fake")
    p.add_argument("tool", choices=["nvidia-smi", "compute-sanitizer", "ncu"])
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(run=fake)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if simulator():
        sys.setswitchinterval(5e-5)  # the simulator runs a Python thread per CUDA thread
    return args.run(args) or 0


if __name__ == "__main__":
    sys.exit(main())

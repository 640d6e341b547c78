"""The figures of docs/cpu.md: the fast CPU path against the NumPy reference (and PyTorch), on one
thread, in CPU time, so that other processes on a shared machine disturb them little.

    python examples/cpu_figures.py ops              # each op: reference, one product, fast path
    python examples/cpu_figures.py steps 16 128     # training steps: fast, reference, PyTorch
    python examples/cpu_figures.py small            # batch 1's fixed costs, wall time, all cores

Each figure is the best of several runs, the variants run in turn. For wall times with every
core, use `minicolor bench --device cpu`.
"""
import os
import sys
import time

if sys.argv[1:2] != ["small"]:  # "small" measures how work is shared out over the cores
    os.environ.setdefault("MINICOLOR_THREADS", "1")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before NumPy starts

import numpy as np  # noqa: E402

from minicolor import backend  # noqa: E402
from minicolor.tools import bench  # noqa: E402
from minicolor.cpu import adam as c_adam, batchnorm as c_batchnorm, conv2d as c_conv2d  # noqa: E402
from minicolor.cpu import products, threads, winograd  # noqa: E402
from minicolor.cpu import relu as c_relu, upsample as c_upsample  # noqa: E402
from minicolor.models import ColorizationNet  # noqa: E402
from minicolor.reference import adam as r_adam, batchnorm as r_batchnorm, conv2d as r_conv2d  # noqa: E402
from minicolor.reference import relu as r_relu, upsample as r_upsample  # noqa: E402


def best_times(fns, rounds, clock=time.process_time):
    """The least time (s) of each callable over ``rounds`` rounds, one call of each per round:
    CPU time, or wall time with ``clock=time.perf_counter``."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = clock()
            fn()
            times[name].append(clock() - start)
    return {name: min(t) for name, t in times.items()}


def conv_passes(impl, x, w, geometry, route=None):
    """Forward, grad-input and grad-weight, through ``impl``; ``route`` forces a fast-path route."""
    def run():
        chosen = c_conv2d.route
        if route:
            c_conv2d.route = lambda *shapes: route
        try:
            y, saved = impl.forward(x, w, None, *geometry)
            impl.backward_data(y, w, x.shape, *geometry, saved=saved)
            impl.backward_weight(y, saved, w.shape, *geometry)
        finally:
            c_conv2d.route = chosen
    return run


CONVS = [  # (label, x shape, F, stride, padding = dilation)
    ("group4.2 at batch 16, 128 px", (16, 128, 16, 16), 128, 1, 1),
    ("group5.0 (dilation 2), batch 16", (16, 128, 16, 16), 128, 1, 2),
    ("group8.3 at batch 16, 128 px", (16, 64, 32, 32), 64, 1, 1),
    ("group2.0 at batch 16, 128 px", (16, 16, 64, 64), 32, 1, 1),
    ("group4.2 at batch 1, 224 px", (1, 128, 28, 28), 128, 1, 1),
    ("group1.2 (stride 2), batch 16", (16, 16, 128, 128), 16, 2, 1),
    ("group1.2 (stride 2), batch 1", (1, 16, 224, 224), 16, 2, 1),
    ("group1.0 (one channel), batch 16", (16, 1, 128, 128), 16, 1, 1),
]


def ops(rounds=9):
    rng = np.random.default_rng(0)
    for label, x_shape, f, stride, d in CONVS:
        x = rng.standard_normal(x_shape, dtype=np.float32)
        w = rng.standard_normal((f, x_shape[1], 3, 3), dtype=np.float32)
        geometry = ((stride, stride), (d, d), (d, d))
        fns = {"reference": conv_passes(r_conv2d, x, w, geometry),
               "im2col": conv_passes(c_conv2d, x, w, geometry, "im2col")}
        if c_conv2d.route(x.shape, w.shape, *geometry) == "winograd":
            fns["winograd"] = conv_passes(c_conv2d, x, w, geometry)
        print(f"conv {label:34s}", "  ".join(f"{k} {v * 1e3:6.1f} ms"
                                             for k, v in best_times(fns, rounds).items()), flush=True)
    x = rng.standard_normal((16, 16, 64, 64), dtype=np.float32)
    one, zero = np.ones(16, np.float32), np.zeros(16, np.float32)
    for name, impl in (("reference", r_batchnorm), ("fast", c_batchnorm)):
        y, xhat, inv_std = impl.forward(x, one, zero, zero.copy(), one.copy(), True, 0.1, 1e-5, relu=True)
        t = best_times({"forward": lambda: impl.forward(x, one, zero, zero.copy(), one.copy(), True,
                                                        0.1, 1e-5, relu=True),
                        "backward": lambda: impl.backward(x, xhat, inv_std, one, True, relu_input=x)}, rounds)
        print(f"relu + batchnorm (16, 16, 64, 64), {name:9s}", "  ".join(f"{k} {v * 1e3:.1f} ms" for k, v in t.items()))
    for shape, scale, mode in (((16, 128, 16, 16), 2, "nearest"), ((16, 2, 32, 32), 4, "bilinear")):
        u = rng.standard_normal(shape, dtype=np.float32)
        gy = rng.standard_normal(shape[:2] + (shape[2] * scale, shape[3] * scale), dtype=np.float32)
        t = best_times({name: lambda impl=impl: (impl.forward(u, scale, mode), impl.backward(gy, shape, scale, mode))
                        for name, impl in (("reference", r_upsample), ("fast", c_upsample))}, rounds)
        print(f"upsample {mode} x{scale} {shape}", "  ".join(f"{k} {v * 1e3:.1f} ms" for k, v in t.items()))
    x = rng.standard_normal((8, 16, 224, 224), dtype=np.float32)  # the first ReLU at batch 8
    for name, impl in (("reference", r_relu), ("fast", c_relu)):
        y = impl.forward(x)
        t = best_times({"forward": lambda: impl.forward(x), "backward": lambda: impl.backward(x, y)}, rounds)
        print(f"relu (8, 16, 224, 224), {name:9s}", "  ".join(f"{k} {v * 1e3:.1f} ms" for k, v in t.items()))
    size = sum(p.size for p in ColorizationNet(16).parameters())
    buffers = [rng.standard_normal(size, dtype=np.float32) for _ in range(4)]
    buffers[3] = np.abs(buffers[3])
    coef = np.zeros(r_adam.COEF_SIZE, np.float32)
    r_adam.advance(np.zeros(1), np.array([1e-3, 0.9, 0.999, 1e-8, 0.0]), coef)
    t = best_times({name: lambda impl=impl: impl.update(*buffers, coef) for name, impl in
                    (("reference", r_adam), ("fast", c_adam))}, rounds)
    print(f"adam, {size:,} parameters", "  ".join(f"{k} {v * 1e3:.1f} ms" for k, v in t.items()))
    print(f"load average {os.getloadavg()[0]:.2f}")


def small(rounds=100):
    """The changes made for batch 1, where each layer's work is small: wall time on every core
    (or MINICOLOR_THREADS), whatever the load average says. "before" is how the previous
    version did it."""
    threads.set_threads(threads.requested() or os.cpu_count())
    print(f"threads {threads.current()}")
    rng = np.random.default_rng(0)
    kron = np.kron(winograd.G, winograd.G).astype(np.float32)  # (36, 9)

    def in_four(a, b, out, axis):  # before: one product cut in 4 by columns (1) or rows (0)
        n = out.shape[axis]
        bounds = [n * i // 4 for i in range(5)]
        if axis:
            products.run([(a, b[:, lo:hi], out[:, lo:hi]) for lo, hi in zip(bounds, bounds[1:])])
        else:
            products.run([(a[lo:hi], b, out[lo:hi]) for lo, hi in zip(bounds, bounds[1:])])

    w = rng.standard_normal((128, 128, 3, 3), dtype=np.float32)
    dU = rng.standard_normal((36, 128, 128), dtype=np.float32)
    U, gw = np.empty((36, 128 * 128), np.float32), np.empty((128 * 128, 9), np.float32)
    t = best_times({"loops": lambda: winograd.weight_transform(w),
                    "before: kron(G, G) products": lambda: in_four(kron, w.reshape(-1, 9).T, U, 1),
                    "adjoint loops": lambda: winograd.weight_transform_adjoint(dU),
                    "before: adjoint products": lambda: in_four(dU.reshape(36, -1).T, kron, gw, 0)},
                   rounds, time.perf_counter)
    print("filter transforms, 128 x 128 filters:", "  ".join(f"{k} {v * 1e3:.3f} ms" for k, v in t.items()))
    for tiles, c, f in ((49, 128, 128), (196, 32, 64), (392, 128, 128)):  # 36 products (T x C) @ (C x F)
        a = rng.standard_normal((36, tiles, c), dtype=np.float32)
        b = rng.standard_normal((36, f, c), dtype=np.float32).transpose(0, 2, 1)  # as forward's U^T
        out = np.empty((36, tiles, f), np.float32)
        t = best_times({"one by one": lambda: products.run([(a[s], b[s], out[s]) for s in range(36)]),
                        "in sets of six": lambda: products.run([(a[s:s + 6], b[s:s + 6], out[s:s + 6])
                                                                for s in range(0, 36, 6)])},
                       rounds, time.perf_counter)
        print(f"36 products {tiles} x {c} x {f}:", "  ".join(f"{k} {v * 1e3:.3f} ms" for k, v in t.items()),
              f"(stacked takes {'sets' if 2 * tiles * c * f < products.SMALL_PRODUCT_FLOP else 'one by one'})")
    print(f"load average {os.getloadavg()[0]:.2f}")


def steps(batch, size, rounds=5):
    import torch

    torch.set_num_threads(1)

    def on(path, step):
        def run():
            backend.use_references_on_cpu(path == "reference")
            step()
            backend.use_references_on_cpu(False)
        return run

    flops = bench.step_flops(ColorizationNet(16), batch, size)
    t = best_times({"fast": on("fast", bench.minicolor_step(16, batch, size, "cpu")),
                    "reference": on("reference", bench.minicolor_step(16, batch, size, "cpu")),
                    "torch": bench.torch_step(16, batch, size, "cpu")}, rounds)
    print(f"batch {batch} size {size}, one thread, CPU time:",
          "  ".join(f"{k} {v * 1e3:.0f} ms ({flops / v / 1e9:.0f} GFLOP/s)" for k, v in t.items()),
          f"fast/torch {t['fast'] / t['torch']:.2f}  load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["steps"]:
        steps(int(sys.argv[2]), int(sys.argv[3]))
    elif sys.argv[1:2] == ["small"]:
        small()
    else:
        ops()

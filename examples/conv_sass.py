"""What the conv kernels cost on an H100, read from the machine code, without a GPU.

    python examples/conv_sass.py [--out DIR]

Records the launches that kernels/conv2d.py makes for a few layer shapes (nothing runs),
derives each kernel's Numba signature from the recorded arguments, compiles it to PTX for
compute capability 9.0 (numba-cuda's ``cuda.compile_ptx``), assembles it with ``ptxas -v``
and disassembles it with ``nvdisasm``. For each kernel it prints registers, spills, shared
memory, the theoretical occupancy on an H100, and the share of FFMA (DFMA in float64) in

- the innermost loop that holds the multiply-adds (two steps of a slice), and
- one pass of the reduction loop around it, counting the inner loop as many times as it runs.

Needs the wheels ``cuda-toolkit[nvvm,nvrtc]==13.5.0 nvidia-cuda-nvcc nvidia-cuda-nvdisasm``.
A scratch tool for docs/kernels.md; ``minicolor kernels`` is the general report.
"""
import argparse
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

import numba
import numpy as np

import minicolor.kernels as kernels
from minicolor.kernels import conv2d

SHAPES = [  # (x shape, w shape, stride, padding, dilation): big layer, first layer, regression head
    ((2, 64, 9, 9), (64, 64, 3, 3), 2, 1, 1),
    ((2, 1, 9, 9), (16, 1, 3, 3), 1, 1, 1),
    ((2, 64, 9, 9), (2, 64, 1, 1), 1, 0, 1),
]  # every tile shape appears: 128 x 128 (float64: 64 x 64), 32 x 128, 32 x 32 (first grad-weight)
FMA = ("FFMA", "DFMA")


def tool(name):
    """The wheel's ptxas / nvdisasm first: they match the NVVM that wrote the PTX."""
    try:
        import nvidia  # the nvidia-cuda-nvcc / nvidia-cuda-nvdisasm wheels
        for root in nvidia.__path__:
            for path in pathlib.Path(root).glob(f"*/bin/{name}"):
                return str(path)
    except ImportError:
        pass
    return shutil.which(name) or sys.exit(
        f"conv_sass: {name} not found (pip install nvidia-cuda-nvcc nvidia-cuda-nvdisasm)")


def recorded_kernels():
    """{(kernel, signature): tiles} for every conv launch of SHAPES, float32 and float64."""
    dtypes = (np.dtype("float32"), np.dtype("float64"))
    shapes = (conv2d.WIDE, conv2d.WIDE64, conv2d.THIN, conv2d.SMALL)
    tiles_of = {factory(dtype, tiles): tiles for factory in (conv2d._gather_gemm, conv2d._weight_gemm)
                for dtype in dtypes for tiles in shapes}
    found = {}
    for dtype in (np.float32, np.float64):
        for x_shape, w_shape, s, p, d in SHAPES:
            x, w = np.zeros(x_shape, dtype), np.zeros(w_shape, dtype)
            geometry = ((s, s), (p, p), (d, d))
            with kernels.recording() as launches:
                y, _ = conv2d.forward(x, w, None, *geometry)
                conv2d.backward_data(y, w, x.shape, *geometry)
                conv2d.backward_weight(y, x, w.shape, *geometry)
            for kernel, _, _, args in launches:
                found.setdefault((kernel, tuple(numba.typeof(a) for a in args)), tiles_of[kernel])
    return found


def compile_sass(kernel, signature, tag, out):
    from numba import cuda
    import numba.cuda.dispatcher as dispatcher

    class H100:
        compute_capability = (9, 0)

    dispatcher.get_current_device = lambda: H100()  # kernels calling device functions ask for one
    ptx, _ = cuda.compile_ptx(kernel.py_func, signature, cc=(9, 0),
                              launch_bounds=kernel.targetoptions.get("launch_bounds"))
    name = f"{kernel.py_func.__name__}_{signature[0].dtype}_{tag}"
    (out / f"{name}.ptx").write_text(ptx)
    cubin = out / f"{name}.cubin"
    ptxas = subprocess.run([tool("ptxas"), "-arch=sm_90", "-v", str(out / f"{name}.ptx"), "-o", str(cubin)],
                           capture_output=True, text=True, check=True).stderr
    sass = subprocess.run([tool("nvdisasm"), "-c", str(cubin)], capture_output=True, text=True,
                          check=True).stdout
    return name, ptxas, sass


def loops(sass):
    """Opcodes in order, and the (first, last) instruction of every loop (a backward branch)."""
    ops, labels, branches = [], {}, []
    for line in sass.splitlines():
        label = re.match(r"\s*(\.L_x_\d+):", line)
        if label:
            labels[label.group(1)] = len(ops)
            continue
        ins = re.match(r"\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)(.*);", line)
        if ins:
            target = re.search(r"(\.L_x_\d+)", ins.group(2)) if ins.group(1).startswith("BRA") else None
            if target:
                branches.append((len(ops), target.group(1)))
            ops.append(ins.group(1))
    return ops, [(labels[t], i) for i, t in branches if labels[t] <= i]


def occupancy(registers, smem, threads):
    """Theoretical H100 occupancy: 65,536 registers (allocated per warp in units of 256), 228 KiB
    of shared memory (1 KiB reserved per block), 64 warps and 32 blocks per SM."""
    warps = threads // 32
    per_warp = -(-registers * 32 // 256) * 256
    blocks = min((65536 // per_warp) // warps, 233472 // (smem + 1024), 64 // warps, 32)
    return blocks, blocks * warps / 64


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="keep the .ptx, .cubin and .sass files here")
    args = parser.parse_args()
    out = pathlib.Path(args.out or tempfile.mkdtemp())
    out.mkdir(parents=True, exist_ok=True)
    for (kernel, signature), (bm, bn, bk, tm, tn, vec) in recorded_kernels().items():
        name, ptxas, sass = compile_sass(kernel, signature, f"{bm}x{bn}", out)
        (out / f"{name}.sass").write_text(sass)
        name += f" ({tm}x{tn} per thread)"
        registers = int(re.search(r"Used (\d+) registers", ptxas).group(1))
        spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", ptxas).groups()
        smem = int((re.search(r"(\d+) bytes smem", ptxas) or [0, 0])[1])
        threads = kernel.targetoptions["launch_bounds"][0]
        blocks, occ = occupancy(registers, smem, threads)
        ops, found = loops(sass)
        with_fma = sorted((b - a, a, b) for a, b in found if any(o.startswith(FMA) for o in ops[a:b + 1]))
        _, a, b = with_fma[0]  # innermost
        inner_fma = sum(o.startswith(FMA) for o in ops[a:b + 1])
        trips = bk * tm * tn // inner_fma  # a thread does BK * TM * TN multiply-adds per slice
        if trips == 1:  # LLVM unrolled all BK steps: the innermost loop is the reduction loop
            c, d = a, b
        else:  # the reduction loop around it
            _, c, d = next(x for x in with_fma[1:] if x[1] <= a and b <= x[2])
        slice_ops = (d - c + 1) - (b - a + 1) + trips * (b - a + 1)
        slice_fma = sum(o.startswith(FMA) for o in ops[c:d + 1]) - inner_fma + trips * inner_fma
        print(f"{name}: {registers} registers, spills {spills[0]}/{spills[1]} bytes, {smem} bytes shared, "
              f"{blocks} blocks/SM = {occ:.0%} occupancy\n"
              f"    inner loop {b - a + 1} instructions, {inner_fma} FMA ({inner_fma / (b - a + 1):.1%}); "
              f"slice (inner x{trips}) {slice_ops} instructions, {slice_fma} FMA "
              f"({slice_fma / slice_ops:.1%}, "
              f"{slice_ops / slice_fma:.2f} instructions per FMA)")
    print(f"files in {out}")


if __name__ == "__main__":
    main()

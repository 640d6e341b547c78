"""The kernel report (minicolor/kernel_report.py): every kernel compiles for an H100, none spills.

The first tests check the report's own arithmetic on hand-written inputs (SASS text, ptxas
output, occupancy), so they run everywhere. The last one compiles every kernel in kernels/ for
sm_90 in a subprocess (simulator mode is fixed per process, and the rest of the suite runs the
kernels in the simulator); it needs the ``kernels`` extra and is skipped only where its NVVM
wheel or numba-cuda is not installed. CI installs them, so CI runs it.
"""
import importlib.metadata

import pytest

from minicolor import kernel_report as kr


def numbered(lines):
    """SASS as nvdisasm prints it: each instruction gets the next address (16 bytes apart)."""
    out, address = [], 0
    for line in lines:
        if line.endswith(":"):
            out.append(line)
        else:
            out.append(f"        /*{address:04x}*/                   {line} ;")
            address += 16
    return "\n".join(out)


PROLOGUE = ["LDC R1, c[0x0][0x28]", "S2R R0, SR_TID.X", "IMAD.MOV.U32 R2, RZ, RZ, RZ"]
INNER = [".L_x_1:", "LDS R12, [R10]", "LDS.128 R16, [R10+0x100]", "FFMA R20, R12, R16, R20",
         "FFMA R21, R12.reuse, R17, R21", "FFMA R22, R12, R18, R22", "FFMA R23, R12, R19, R23",
         "IADD3 R10, R10, 0x4, RZ", "ISETP.NE.AND P0, PT, R10, 0x20, PT", "@P0 BRA `(.L_x_1)"]
TILED = numbered(PROLOGUE + [
    ".L_x_2:", "LDG.E R4, desc[UR4][R6.64]", "IMAD R8, R0, 0x4, RZ", "I2F.U32.RP R9, R3",
    ".L_x_4:", "STS [R8], R4", "IADD3 R8, R8, 0x400, RZ", "@!P2 BRA `(.L_x_4)",  # a loop that fills
    "BAR.SYNC.DEFER_BLOCKING 0x0", "IMAD.MOV.U32 R10, RZ, RZ, RZ"] + INNER + [
    "BAR.SYNC.DEFER_BLOCKING 0x0", "IADD3 R2, R2, 0x8, RZ", "ISETP.GE.AND P1, PT, R2, R3, PT",
    "@!P1 BRA `(.L_x_2)", "STG.E desc[UR4][R24.64], R20", "EXIT", ".L_x_3:", "BRA `(.L_x_3)", "NOP"]
) + "\n" + numbered(["$__internal_0_$__cuda_sm20_div_s64:", "IADD3 R1, R1, 0x1, RZ", "RET.REL.NODEC R20"])
UNROLLED = numbered(PROLOGUE + [
    ".L_x_0:", "LDG.E R4, desc[UR4][R6.64]", "STS [R8], R4", "BAR.SYNC.DEFER_BLOCKING 0x0",
    "LDS.128 R12, [R10]", "LDS.128 R16, [R10+0x100]"]
    + [f"FFMA R{20 + i}, R{12 + i // 4}, R{16 + i % 4}, R{20 + i}" for i in range(16)] + [
    "BAR.SYNC.DEFER_BLOCKING 0x0", "ISETP.GE.AND P1, PT, R2, R3, PT", "@!P1 BRA `(.L_x_0)", "EXIT"])
NO_BARRIER = numbered(PROLOGUE + INNER + ["EXIT"])


def test_tiled_loop_counts_the_inner_loop_trip_times():
    loop = kr.main_loop(TILED, fma_per_pass=32)  # e.g. BK 8 x 2 x 2: 4 FFMA per trip, 8 trips
    assert (loop.inner.instructions, loop.inner.fma, loop.inner.lds, loop.inner.ldg) == (9, 4, 2, 0)
    assert round(loop.inner.fma_percent) == 44
    assert not loop.unrolled and loop.trip == 8 and loop.other_loops == 1
    reduction = loop.reduction  # 0x30 .. 0x170: 21 instructions, once each
    assert (reduction.instructions, reduction.fma, reduction.ldg, reduction.imad, reduction.div,
            reduction.barriers) == (21, 4, 1, 1, 1, 2)  # IMAD.MOV is a move, not counted
    one = loop.one_pass
    assert (one.instructions, one.fma, one.lds) == (21 + 7 * 9, 32, 2 + 7 * 2)
    assert round(one.fma_percent) == 38


def test_trip_count_must_be_whole():
    loop = kr.main_loop(TILED, fma_per_pass=34)  # 30 / 4 trips: not this loop nest
    assert loop.trip is None and loop.one_pass is None
    assert kr.main_loop(TILED).one_pass is None  # no BK, TM, TN: no pass figures


def test_unrolled_inner_product_is_the_reduction_loop():
    loop = kr.main_loop(UNROLLED, fma_per_pass=16)
    assert loop.unrolled and loop.trip == 1 and loop.other_loops == 0
    assert (loop.inner.instructions, loop.inner.fma, loop.inner.lds) == (24, 16, 2)
    assert loop.one_pass == loop.inner == loop.reduction


def test_no_barrier_no_reduction_loop():
    loop = kr.main_loop(NO_BARRIER, fma_per_pass=32)
    assert loop.inner.fma == 4 and loop.reduction is None and loop.one_pass is None
    assert kr.main_loop(numbered(PROLOGUE + ["EXIT"])) is None


def test_parse_sass_resolves_labels_per_function():
    functions = kr.parse_sass(TILED)
    assert [len(f) for f in functions] == [28, 2]
    branches = [i for i in functions[0] if i.base == "BRA"]
    assert [b.target for b in branches] == [0x60, 0xb0, 0x30, 0x1a0]


def test_parse_ptxas():
    text = """ptxas info    : 48 bytes gmem
ptxas info    : Compiling entry function '_ZN6kernel' for 'sm_90'
ptxas info    : Function properties for _ZN6kernel
    0 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 128 registers, used 1 barriers, 4128 bytes smem, 400 bytes cmem[0]"""
    assert kr.parse_ptxas(text) == {"regs": 128, "smem": 4128, "stack": 0, "spill_stores": 8,
                                    "spill_loads": 12}


@pytest.mark.parametrize("regs, smem, threads, expected", [
    (128, 4128, 256, (2, 0.25, ["regs"])),  # 4096 registers a warp: 4 warps a quarter
    (126, 4128, 256, (2, 0.25, ["regs"])),  # 126 * 32 = 4032, rounded up to 4096
    (80, 0, 256, (3, 0.375, ["regs"])),  # 2560 a warp: 6 per quarter, 24 warps, 3 blocks
    (32, 2048, 256, (8, 1.0, ["threads", "regs"])),
    (32, 100 * 1024, 64, (2, 0.0625, ["smem"])),  # 101 KB a block with the reserved 1 KB
    (16, 0, 32, (32, 0.5, ["blocks"])),
])
def test_occupancy(regs, smem, threads, expected):
    assert kr.occupancy(regs, smem, threads) == expected


def test_every_kernel_in_the_sources_is_found(tmp_path):
    (tmp_path / "op.py").write_text(
        "from numba import cuda\n\n@cuda.jit\ndef plain(x):\n    pass\n\n"
        "@cuda.jit(device=True)\ndef helper(x):\n    return x\n\n"
        "def factory():\n    @cuda.jit(fastmath=True)\n    def kernel(x):\n        pass\n    return kernel\n")
    assert kr.defined_kernels(tmp_path) == {("op", "plain"), ("op", "factory.<locals>.kernel")}
    found = kr.defined_kernels()  # the real kernels/
    assert {("conv2d", "_tiled_matmul.<locals>.kernel"), ("conv2d", "conv2d_naive"),
            ("batchnorm", "_stats"), ("mse", "_forward"), ("upsample", "_backward")} <= found


def test_an_unlaunched_kernel_is_reported():
    class PyFunc:
        __module__, __qualname__ = "minicolor.kernels.op", "plain"

    class Kernel:
        py_func = PyFunc

    launched = [kr.Compiled("op.plain", "float32", Kernel)]
    assert kr.missing_kernels({("op", "plain"), ("op", "other")}, launched) == ["op.other"]


def test_cli_has_the_kernels_command():
    from minicolor.cli import build_parser, cmd_kernels

    args = build_parser().parse_args(["kernels", "--dtype", "float32", "--out", "ptx"])
    assert args.run is cmd_kernels and args.dtype == ["float32"] and args.out == "ptx"


def _compile_wheels_missing():
    missing = []
    for dist in ("nvidia-nvvm", "numba-cuda"):
        try:
            importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            missing.append(dist)
    return missing


@pytest.mark.skipif(bool(_compile_wheels_missing()),
                    reason=f"{', '.join(_compile_wheels_missing())} not installed: the sm_90 compile check "
                           f"needs {kr.INSTALL_HINT}")
def test_every_kernel_compiles_for_sm90_without_spills(tmp_path):
    done = kr.run_subprocess(["--out", str(tmp_path)], capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, f"the kernel report failed:\n{done.stdout}\n{done.stderr}"
    print(done.stdout)  # the report, for pytest -s and CI logs
    for name in ("conv2d._tiled_matmul.forward", "conv2d._tiled_matmul.backward_data",
                 "conv2d._tiled_matmul.backward_weight", "conv2d._bias_grad", "conv2d.conv2d_naive",
                 "batchnorm._stats", "upsample._backward", "mse._forward"):
        for dtype in ("float32", "float64"):
            for suffix in (".ptx", ".cubin"):
                assert (tmp_path / f"{name}.{dtype}{suffix}").stat().st_size > 0
    assert "conv2d._tiled_matmul[forward]" in done.stdout and "limited by" in done.stdout

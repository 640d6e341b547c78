"""The kernel report (minicolor/tools/kernel_report.py): every kernel compiles for an H100, none spills.

The first tests check the report's own arithmetic on hand-written inputs (SASS text, ptxas
output, occupancy), so they run everywhere. The last one compiles every kernel in kernels/ for
sm_90 in a subprocess (simulator mode is fixed per process, and the rest of the suite runs the
kernels in the simulator); it needs the ``kernels`` extra and is skipped only where its NVVM
wheel or numba-cuda is not installed. CI installs them, so CI runs it.
"""
import importlib.metadata
import re
import types

import pytest

from minicolor.tools import kernel_report as kr


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


# conv2d's inner loop: two steps of a slice per iteration, each TM x TN (here 2 x 2) multiply-adds
TWO_STEPS = [".L_x_1:", "LDS.64 R12, [R10]", "LDS.64 R16, [R10+0x100]"] + [
    f"FFMA R{20 + i}, R{12 + i // 2}, R{16 + i % 2}, R{20 + i}" for i in range(4)] + [
    "LDS.64 R12, [R10+0x110]", "LDS.64 R16, [R10+0x210]"] + [
    f"FFMA R{20 + i}, R{12 + i // 2}, R{16 + i % 2}, R{20 + i}" for i in range(4)] + [
    "IADD3 R10, R10, 0x220, RZ", "ISETP.NE.AND P0, PT, R10, R9, PT", "@P0 BRA `(.L_x_1)"]
TWO_STEP_LOOP = numbered(PROLOGUE + [
    ".L_x_2:", "LDG.E R4, desc[UR4][R6.64]", "STS [R8], R4", "IMAD.MOV.U32 R10, RZ, RZ, R11"] + TWO_STEPS + [
    "BAR.SYNC.DEFER_BLOCKING 0x0", "IADD3 R2, R2, 0x1, RZ", "ISETP.GE.AND P1, PT, R2, R3, PT",
    "@!P1 BRA `(.L_x_2)", "EXIT"])


class Kernel:
    """Stands for a numba dispatcher: ``py_func``, and ``tiles`` when a conv2d factory made it."""

    def __init__(self, qualname, tiles=None, module="minicolor.kernels.conv2d"):
        self.py_func = types.SimpleNamespace(__module__=module, __qualname__=qualname,
                                             __name__=qualname.split(".")[-1])
        if tiles:
            self.tiles = tiles


def test_trip_count_comes_from_the_tile_the_kernel_was_built_with():
    tiles = (32, 32, 8, 2, 2, 2)  # (BM, BN, BK, TM, TN, VEC): 8 steps of 2 x 2 per slice
    assert kr.fma_per_pass(tiles) == 32 and kr.fma_per_pass(None) is None
    assert (kr.fma_per_pass(tiles), kr.fma_per_step(tiles)) == (32, 4) and kr.fma_per_pass(None) is None
    loop = kr.main_loop(TWO_STEP_LOOP, kr.fma_per_pass(tiles), kr.fma_per_step(tiles))
    assert (loop.inner.instructions, loop.inner.fma, loop.inner.lds) == (15, 8, 4)
    assert (loop.trip, loop.steps) == (4, 2)  # 8 steps, 2 per iteration
    assert not loop.unrolled and loop.other_loops == 0
    assert (loop.one_pass.instructions, loop.one_pass.fma) == (22 + 3 * 15, 32)
    # a tile with BK = 16 runs the same loop twice as often
    bk16 = (32, 32, 16, 2, 2, 2)
    assert kr.main_loop(TWO_STEP_LOOP, kr.fma_per_pass(bk16), kr.fma_per_step(bk16)).trip == 8
    # 3 x 2 per step: 48 FMAs per pass are 6 trips of 8, but 8 FMAs are not whole steps of 6
    odd = (32, 32, 8, 3, 2, 2)
    assert kr.main_loop(TWO_STEP_LOOP, kr.fma_per_pass(odd)).trip == 6
    assert kr.main_loop(TWO_STEP_LOOP, kr.fma_per_pass(odd), kr.fma_per_step(odd)).trip is None
    item = kr.Compiled("conv2d.gather_gemm[32x32]", "float32", Kernel("f.<locals>.gather_gemm", tiles),
                       labels=["forward small", "grad-input small"], loop=loop)
    text = kr.loop_report([item])
    assert "2x2 per thread, launched by forward, grad-input" in text
    assert "inner loop x4 per pass (2 of the 8 steps of a slice each)" in text
    assert "inner     15    8  53.3%       1.88" in text


def test_factory_kernels_are_named_by_their_tile():
    tiles = (128, 128, 8, 8, 8, 4)
    assert kr._display_name(Kernel("_gather_gemm.<locals>.gather_gemm", tiles), "forward") == \
        "conv2d.gather_gemm[128x128]"
    assert kr._display_name(Kernel("_make.<locals>.kernel"), "update") == "conv2d._make[update]"
    assert kr._display_name(Kernel("conv2d_naive"), "naive") == "conv2d.conv2d_naive"


def test_target_checks_one_line_per_conv_pass():
    main, thin = (128, 128, 8, 8, 8, 4), (32, 128, 8, 4, 4, 4)
    no_spill = {"spill_stores": 0, "spill_loads": 0}

    def item(name, tiles, labels, inner, one, dtype="float32"):
        loop = kr.MainLoop(inner=kr.Mix(instructions=100, fma=inner),
                           one_pass=kr.Mix(instructions=100, fma=one))
        return kr.Compiled(name, dtype, Kernel("f.<locals>.k", tiles), labels=labels, ptxas=no_spill,
                           loop=loop)

    items = [item("gather[128x128]", main, ["forward big", "grad-input big"], 88, 71),
             item("gather[32x128]", thin, ["forward first"], 20, 10),  # not a main tile: not checked
             item("gather[128x128]", main, ["grad-weight big"], 88, 71, "float64"),  # not float32
             item("weight[128x128]", main, ["grad-weight big split-K 3"], 87, 49)]
    lines = kr.target_checks(items, main)
    assert len(lines) == 4 and "inner loop >= 60%, of one pass >= 50%" in lines[0]
    assert lines[1].split() == ["forward", "gather[128x128]:", "inner", "88.0%,", "pass", "71.0%,",
                                "spills", "0", "bytes:", "met"]
    assert lines[2].startswith("  grad-input ") and lines[2].endswith(": met")
    assert lines[3].startswith("  grad-weight  weight[128x128]:") and lines[3].endswith("NOT MET")
    assert "grad-weight: not checked" in kr.target_checks(items[:3], main)[3]


def test_version_table_puts_naive_beside_tiled():
    main = (128, 128, 8, 8, 8, 4)

    def item(name, tiles, label, mix):
        loop = kr.MainLoop(inner=mix, one_pass=None if tiles is None else mix)
        return kr.Compiled(name, "float32", Kernel(name.split(".")[1], tiles), labels=[label], loop=loop)

    items = [item("conv2d_tiled.gather[128x128]", main, "forward big", kr.Mix(instructions=700, fma=512, ldg=20, lds=32)),
             item("conv2d_naive.forward", None, "forward naive", kr.Mix(instructions=51, fma=1, ldg=2)),
             item("conv2d_tiled.gather[32x32]", (32, 32, 8, 2, 2, 2), "forward tiny", kr.Mix(instructions=9, fma=1))]
    lines = kr.version_table(items, main).splitlines()
    assert len(lines) == 4  # header, rule, naive, tiled (not the 32 x 32 tile)
    assert lines[2].split() == ["forward", "conv2d_naive.forward", "inner", "loop", "51.00", "2.0%", "2.000", "0.000"]
    assert lines[3].split() == ["forward", "conv2d_tiled.gather[128x128]", "one", "pass", "1.37", "73.1%", "0.039",
                                "0.062"]


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
    assert {("conv2d_tiled", "_gather_gemm.<locals>.gather_gemm"),
            ("conv2d_tiled", "_weight_gemm.<locals>.weight_gemm"), ("conv2d_naive", "forward_kernel"),
            ("conv2d_naive", "grad_input_kernel"), ("conv2d_naive", "grad_weight_kernel"),
            ("batchnorm", "_chunk_stats"), ("mse", "_forward"),
            ("upsample", "_backward")} <= found
    assert kr.kernel_files(tmp_path) == ["op"]  # the files whose examples the report calls


def test_an_unlaunched_kernel_is_reported():
    launched = [kr.Compiled("op.plain", "float32", Kernel("plain", module="minicolor.kernels.op"))]
    assert kr.missing_kernels({("op", "plain"), ("op", "other")}, launched) == ["op.other"]


def simulator_if_possible():
    """Import the kernels in the simulator, as the other in-process kernel tests have them (a real
    GPU's numba.cuda would lock those out); where numba.cuda is a GPU's already, recording works too."""
    from minicolor import backend

    try:
        backend.enable_simulator()
    except backend.DeviceError:
        pass


def test_each_kernel_file_launches_each_of_its_kernels_in_both_dtypes():
    """Without compiling (recorded, nothing run): every file of kernels/ that defines kernels is
    found, has examples(), and they launch each of its kernels in float32 and in float64. A new
    kernel file needs nothing in the report."""
    simulator_if_possible()
    files = kr.kernel_files()
    assert {"adam", "batchnorm", "conv2d_naive", "conv2d_tiled", "mse", "upsample"} <= set(files)
    launched = {dtype: set() for dtype in kr.DTYPES}
    for module, dtype, label, launches, error in kr.recorded_launches():
        assert error is None, error
        launched[dtype] |= {(k.py_func.__module__.rsplit(".", 1)[-1], k.py_func.__qualname__)
                            for k, *_ in launches}
    for dtype in kr.DTYPES:
        assert kr.defined_kernels() - launched[dtype] == set(), dtype


def test_a_kernel_file_without_examples_is_named():
    simulator_if_possible()
    calls, problems = kr.kernel_examples(["mse", "reduce"])  # reduce.py has no examples()
    assert list(calls) == ["mse"]
    assert problems == ["kernels/reduce.py defines CUDA kernels but no examples(dtype, array): the calls "
                        "of its launchers that the report records (see kernels/__init__.py)"]


def test_cli_has_the_kernels_command():
    from minicolor.cli import build_parser, cmd_kernels

    args = build_parser().parse_args(["kernels", "--dtype", "float32", "--out", "ptx"])
    assert args.run is cmd_kernels and args.dtype == ["float32"] and args.out == "ptx"


def test_a_missing_kernels_extra_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(kr, "missing_wheels", lambda: list(kr.WHEELS.values()))
    monkeypatch.setattr("minicolor.backend.simulator_enabled", lambda: False)
    assert kr.main([]) == 1
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1, err
    assert err.startswith("minicolor kernels: error: the kernel report needs numba-cuda, nvidia-nvvm")
    assert kr.INSTALL_HINT in err


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
    assert "compiling for sm_90: 100%" in done.stderr  # the minute of compiling shows progress
    print(done.stdout)  # the report, for pytest -s and CI logs
    # every tile shape of both tiled conv kernels (128 x 128 in float32, 64 x 64 in float64 and for
    # float32 gathers that would get too few blocks, 32 x 128, 32 x 32), and the naive kernels
    conv = [f"conv2d_tiled.{kernel}.{tile}.{dtype}" for kernel in ("gather_gemm", "weight_gemm")
            for dtype, wide in (("float32", "128x128"), ("float64", "64x64"))
            for tile in (wide, "32x128", "32x32")] + ["conv2d_tiled.gather_gemm.64x64.float32"]
    for stem in conv:
        for suffix in (".ptx", ".cubin"):
            assert (tmp_path / f"{stem}{suffix}").stat().st_size > 0, stem
    # and every other kernel of kernels/ (a new file's too, found by the report itself), in both dtypes
    for module, qualname in kr.defined_kernels():
        if ".<locals>." not in qualname:
            for dtype in ("float32", "float64"):
                assert (tmp_path / f"{module}.{qualname}.{dtype}.cubin").stat().st_size > 0, (module, qualname)
    assert "conv2d_tiled.gather_gemm[128x128]  float32" in done.stdout and "limited by" in done.stdout
    for conv_pass in ("forward", "grad-input", "grad-weight"):  # the target check lines are there
        assert re.search(rf"^  {conv_pass} +conv2d_tiled\.\w+_gemm\[128x128\]: inner [\d.]+%, pass [\d.]+%",
                         done.stdout, re.MULTILINE), conv_pass

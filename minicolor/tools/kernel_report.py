"""What each CUDA kernel costs on an H100, worked out on a machine without a GPU.

    python -m minicolor.tools.kernel_report [--out DIR] [--dtype float32 float64]
    minicolor kernels [--out DIR] [--dtype ...]          (the same, in a fresh process)

Three steps, each done by a tool that ships as a pip wheel (the ``kernels`` extra):

1. **Compile** every kernel in kernels/ to PTX for compute capability 9.0 with numba-cuda's
   ``cuda.compile_ptx`` (NVVM, from the ``nvidia-nvvm`` wheel). No GPU and no driver are needed,
   except that Numba asks the driver for the current device while typing a kernel that calls
   device functions; ``_h100_as_current_device`` answers (9, 0) instead.
   The argument types are not written down here. Every file of kernels/ that defines kernels
   ends with ``examples(dtype, array)``: small calls of its launchers (kernels/__init__.py).
   The report finds those files by reading kernels/*.py (``kernel_files``), and runs each
   example on NumPy zeros while ``kernels.recording()`` is active, so ``kernels.launch`` records
   the kernel and its arguments instead of running it; the arguments are then typed as
   numba-cuda types the CuPy arrays of a real run (see ``argument_type``). A kernel file
   without examples, and a kernel that no example launched, are errors. Each kernel is
   compiled with its own ``@cuda.jit`` options (``launch_bounds``, ``fastmath``): the launch
   bounds set the register cap ptxas works to.
2. **Assemble** each PTX for sm_90 with ``ptxas -v`` (``nvidia-cuda-nvcc`` wheel): registers per
   thread, spilled bytes, shared memory per block. From these and the block size of the launch,
   the theoretical occupancy on an H100 (``occupancy``).
3. **Disassemble** the cubin with ``nvdisasm`` (``nvidia-cuda-nvdisasm`` wheel) and count the
   instructions of the main loop of each conv kernel (``main_loop``), in both versions (naive
   and tiled, kernels/conv2d_*.py). The tiled version's factories build one kernel per dtype and
   tile shape and set ``kernel.tiles`` = (BM, BN, BK, TM, TN, VEC): the rows are named by tile
   (``conv2d_tiled.gather_gemm[128x128]``), and BK * TM * TN gives the trip count of the inner
   loop. ``version_table`` puts the two versions side by side per pass, and ``target_checks``
   says per conv pass whether the main (128 x 128 float32) tiles meet the static targets: FMA
   share of the inner loop >= 60%, of one pass >= 50%.

Exit status 1 if a kernel does not compile, a kernel file has no examples, a kernel was not
launched by its file's examples in every dtype asked for, a tool is missing, or any kernel
spills registers to local memory. Simulator mode is decided when
numba.cuda is first imported, so this always runs in a process of its own (``run_subprocess``).
"""
import argparse
import ast
import importlib
import importlib.metadata
import importlib.util
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

CC = (9, 0)
ARCH = "sm_90"
DTYPES = ("float32", "float64")
# What the report needs besides numba: the ``kernels`` extra of pyproject.toml.
WHEELS = {"numba-cuda": "numba-cuda", "nvvm": "nvidia-nvvm", "ptxas": "nvidia-cuda-nvcc",
          "nvdisasm": "nvidia-cuda-nvdisasm"}
INSTALL_HINT = "pip install 'minicolor[kernels]'"
# Modules whose kernels get the instruction mix of their main loop (the conv passes).
MAIN_LOOP_MODULES = ("conv2d_naive", "conv2d_tiled")


# --- the H100 and the occupancy arithmetic ---------------------------------------------------------
@dataclass(frozen=True)
class Gpu:
    """The per-SM limits that decide how many blocks of a kernel one SM holds at once."""
    name: str = "H100 (sm_90)"
    sms: int = 132
    regs_per_sm: int = 65536
    reg_unit: int = 256  # registers are given to a warp in units of 256
    sub_partitions: int = 4  # the register file is split in 4; a warp lives in one quarter
    smem_per_sm: int = 228 * 1024
    smem_per_block: int = 227 * 1024
    smem_unit: int = 128  # shared memory is given to a block in units of 128 bytes
    smem_reserved: int = 1024  # ... plus 1 KB per block that the system keeps (sm_80 and later)
    max_threads_per_sm: int = 2048
    max_blocks_per_sm: int = 32
    warp: int = 32


H100 = Gpu()


def occupancy(regs, smem, threads, gpu=H100):
    """(blocks per SM, theoretical occupancy 0..1, list of the limits that bind).

    Each limit is a number of blocks that fit on one SM:
    threads    max_threads_per_sm // (warps per block * 32)
    blocks     max_blocks_per_sm
    regs       a warp takes regs * 32 registers rounded up to 256; each quarter of the register
               file (16,384) holds a whole number of warps; the SM holds 4 times that many warps,
               so that many // warps per block blocks
    smem       smem_per_sm // (smem + 1 KB reserved, rounded up to 128 bytes)
    Occupancy is the resident warps over the 64 an SM can hold.
    """
    warps = math.ceil(threads / gpu.warp)
    limits = {"threads": gpu.max_threads_per_sm // (warps * gpu.warp), "blocks": gpu.max_blocks_per_sm}
    reg_per_warp = math.ceil(regs * gpu.warp / gpu.reg_unit) * gpu.reg_unit
    if reg_per_warp:
        per_quarter = gpu.regs_per_sm // gpu.sub_partitions // reg_per_warp
        limits["regs"] = per_quarter * gpu.sub_partitions // warps
    smem_alloc = math.ceil((smem + gpu.smem_reserved) / gpu.smem_unit) * gpu.smem_unit
    limits["smem"] = gpu.smem_per_sm // smem_alloc if smem <= gpu.smem_per_block else 0
    blocks = min(limits.values())
    binding = [name for name, value in limits.items() if value == blocks]
    return blocks, blocks * warps / (gpu.max_threads_per_sm // gpu.warp), binding


# --- ptxas -v ------------------------------------------------------------------------------------------
def parse_ptxas(text):
    """Registers, spill bytes, stack and shared memory from ``ptxas -v`` of one kernel."""
    def number(pattern):
        found = re.search(pattern, text)
        return int(found.group(1)) if found else 0

    return {"regs": number(r"Used (\d+) registers"), "smem": number(r"(\d+) bytes smem"),
            "stack": number(r"(\d+) bytes stack frame"),
            "spill_stores": number(r"(\d+) bytes spill stores"),
            "spill_loads": number(r"(\d+) bytes spill loads")}


# --- the SASS and its loops -------------------------------------------------------------------------
_INSTRUCTION = re.compile(r"^\s*/\*([0-9a-fA-F]+)\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")
_LABEL = re.compile(r"^\s*([.$\w]+):\s*$")
_TARGET = re.compile(r"`\(([^)]+)\)|(0x[0-9a-fA-F]+)")


@dataclass
class Instruction:
    address: int
    opcode: str  # with its modifiers, e.g. LDS.U.128
    operands: str
    target: object = None  # a branch's target (label or address) before resolution

    @property
    def base(self):
        return self.opcode.split(".")[0]


def parse_sass(text):
    """nvdisasm output -> one list of Instructions per function (addresses start at 0 in each).

    Branch targets are resolved to addresses (nvdisasm writes them as labels like .L_x_5)."""
    functions, labels, pending = [], [], []
    for line in text.splitlines():
        label = _LABEL.match(line)
        if label:
            pending.append(label.group(1))
            continue
        found = _INSTRUCTION.match(line)
        if not found:
            continue
        address = int(found.group(1), 16)
        if address == 0 or not functions:
            functions.append([])
            labels.append({})
        for name in pending:
            labels[-1][name] = address
        pending = []
        instruction = Instruction(address, found.group(2), found.group(3).strip())
        if instruction.base in ("BRA", "JMP"):
            target = _TARGET.search(instruction.operands)
            if target:
                instruction.target = target.group(1) or int(target.group(2), 16)
        functions[-1].append(instruction)
    for code, names in zip(functions, labels):
        for instruction in code:
            if isinstance(instruction.target, str):
                instruction.target = names.get(instruction.target)
    return functions


@dataclass
class Mix:
    """The static instruction mix of a stretch of SASS."""
    instructions: int = 0
    fma: int = 0  # FFMA (float32) or DFMA (float64): one multiply-add each
    lds: int = 0  # loads from shared memory (LDS, LDSM; LDS.128 loads 4 words at once)
    ldg: int = 0  # loads from global memory (LDG, and generic LD)
    imad: int = 0  # integer multiplies (IMAD, IMUL, ... but not IMAD.MOV, which is a move)
    div: int = 0  # integer // and % sites: each starts with I2F.U32.RP (64-bit ones also CALL a routine)
    barriers: int = 0  # BAR (syncthreads)

    def add(self, other, times=1):
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + times * getattr(other, name))
        return self

    @property
    def fma_percent(self):
        return 100.0 * self.fma / self.instructions if self.instructions else 0.0


def mix_of(instructions):
    mix = Mix()
    for ins in instructions:
        base = ins.base
        mix.instructions += 1
        mix.fma += base in ("FFMA", "DFMA")
        mix.lds += base in ("LDS", "LDSM")
        mix.ldg += base in ("LDG", "LD")
        mix.imad += base in ("IMAD", "IMUL") and not ins.opcode.startswith("IMAD.MOV")
        mix.div += base == "I2F" and ".RP" in ins.opcode
        mix.barriers += base == "BAR"
    return mix


@dataclass
class Loop:
    head: int  # address of the first instruction (the target of the backward branch)
    end: int  # address of the last backward branch to it
    body: list = field(repr=False)

    def contains(self, other):
        return self is not other and self.head <= other.head and other.end <= self.end


def find_loops(code):
    """Loops of one function: a branch to an address at or before itself closes a loop."""
    ends = {}
    for ins in code:
        if isinstance(ins.target, int) and ins.target <= ins.address:
            ends[ins.target] = max(ends.get(ins.target, 0), ins.address)
    return [Loop(head, end, [i for i in code if head <= i.address <= end])
            for head, end in sorted(ends.items())]


@dataclass
class MainLoop:
    """The innermost loop holding the multiply-adds, and the reduction loop around it."""
    inner: Mix
    reduction: Mix = None  # None: no loop with a barrier around the inner loop
    unrolled: bool = False  # the inner loop *is* the reduction loop (inner product unrolled)
    trip: int = None  # times the inner loop runs per pass of the reduction loop
    steps: int = None  # steps of a slice (TM x TN multiply-adds each) per iteration of the inner loop
    one_pass: Mix = None  # the reduction loop with the inner loop counted ``trip`` times
    other_loops: int = 0  # further loops inside the reduction loop (counted once each)


def main_loop(sass, fma_per_pass=None, fma_per_step=None):
    """Find and count the main loop of a kernel, or None if no loop does multiply-adds.

    Inner loop: the loop with the most FMAs among those with no FMA-holding loop inside.
    Reduction loop: the innermost loop around it (or the inner loop itself) that holds a barrier:
    the loop over K slices, which loads tiles and syncs. If the inner loop holds the barrier,
    the inner product was fully unrolled and both are the same loop. ``fma_per_pass`` is the
    multiply-adds one thread does per pass of the reduction loop: BK * TM * TN of the tile the
    kernel was built with (``fma_per_pass(kernel.tiles)``). The inner loop then runs
    trip = (fma_per_pass - FMAs outside it) / FMAs in it times per pass: the SASS says how far
    the loop over the BK steps was unrolled (conv2d's 128 x 128 tile: 2 steps of 8 x 8 = 128 FMAs
    per iteration, so 512 / 128 = 4 trips), the tile says how many multiply-adds there are.
    With ``fma_per_step`` (TM * TN) the inner loop must also hold a whole number of steps.
    """
    code = max(parse_sass(sass), key=lambda c: sum(i.base in ("FFMA", "DFMA") for i in c), default=[])
    loops = find_loops(code)
    mixes = {id(loop): mix_of(loop.body) for loop in loops}
    with_fma = [loop for loop in loops if mixes[id(loop)].fma]
    innermost = [loop for loop in with_fma if not any(loop.contains(o) for o in with_fma)]
    if not innermost:
        return None
    inner = max(innermost, key=lambda loop: mixes[id(loop)].fma)
    result = MainLoop(inner=mixes[id(inner)])
    around = sorted((loop for loop in loops if loop is inner or loop.contains(inner)),
                    key=lambda loop: loop.end - loop.head)
    reduction = next((loop for loop in around if mixes[id(loop)].barriers), None)
    if reduction is None:
        return result
    result.reduction = mixes[id(reduction)]
    result.unrolled = reduction is inner
    result.other_loops = sum(1 for loop in loops if reduction.contains(loop) and loop is not inner
                             and not inner.contains(loop))
    if result.unrolled:
        result.trip, result.one_pass = 1, Mix().add(result.reduction)
    elif fma_per_pass:
        outside = result.reduction.fma - result.inner.fma
        trip = (fma_per_pass - outside) / result.inner.fma
        whole_steps = not fma_per_step or result.inner.fma % fma_per_step == 0
        if trip >= 1 and trip == int(trip) and whole_steps:
            result.trip = int(trip)
            result.steps = result.inner.fma // fma_per_step if fma_per_step else None
            result.one_pass = Mix().add(result.reduction).add(result.inner, result.trip - 1)
    return result


# --- which kernels exist, and the example calls that reach them ---------------------------------------
def kernel_dir():
    """The folder of minicolor.kernels (found without importing it: that fixes simulator mode)."""
    return Path(importlib.util.find_spec("minicolor.kernels").submodule_search_locations[0])


def _is_kernel_decorator(node):
    """``@cuda.jit`` or ``@cuda.jit(...)`` without device=True."""
    call = node if isinstance(node, ast.Call) else None
    func = call.func if call else node
    if not (isinstance(func, ast.Attribute) and func.attr == "jit"
            and ast.unparse(func.value).endswith("cuda")):
        return False
    return not (call and any(k.arg == "device" and ast.unparse(k.value) == "True" for k in call.keywords))


def defined_kernels(folder=None):
    """{(module, qualname)} of every function in kernels/*.py decorated as a CUDA kernel,
    including kernels made inside a factory (qualname ``factory.<locals>.kernel``)."""
    found = set()

    def visit(body, module, prefix):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                qualname = prefix + node.name
                if any(_is_kernel_decorator(d) for d in node.decorator_list):
                    found.add((module, qualname))
                visit(node.body, module, qualname + ".<locals>.")
            elif isinstance(node, ast.ClassDef):
                visit(node.body, module, prefix + node.name + ".")

    for path in sorted(Path(folder or kernel_dir()).glob("*.py")):
        visit(ast.parse(path.read_text(), str(path)).body, path.stem, "")
    return found


def kernel_files(folder=None):
    """Names (file stems) of the files in kernels/ that define CUDA kernels, read from their
    source: the files whose ``examples`` the report calls."""
    return sorted({module for module, _ in defined_kernels(folder)})


def kernel_examples(modules=None):
    """({module: its ``examples`` function}, problems) for each file of kernels/ that defines
    kernels (``kernel_files``), or for ``modules``.

    The convention (kernels/__init__.py): such a file ends with ``examples(dtype, array)``,
    small calls of its launchers that between them launch each of its kernels, the way the layers
    call them. So a new kernel file is found and compiled without a word here; a file without
    ``examples`` is a problem that names it."""
    found, problems = {}, []
    for module in kernel_files() if modules is None else modules:
        examples = getattr(importlib.import_module(f"minicolor.kernels.{module}"), "examples", None)
        if examples is None:
            problems.append(f"kernels/{module}.py defines CUDA kernels but no examples(dtype, array): "
                            f"the calls of its launchers that the report records (see kernels/__init__.py)")
        else:
            found[module] = examples
    return found, problems


class _DLPackOnly:
    """A NumPy array seen only through DLPack, as numba-cuda sees a CuPy array."""

    def __init__(self, array):
        self.array = array

    def __dlpack__(self, *args, **kwargs):
        return self.array.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self):
        return self.array.__dlpack_device__()


def argument_type(value):
    """The Numba type numba-cuda gives ``value`` when it is passed to a kernel on a GPU.

    On a GPU the arrays are CuPy arrays. CuPy arrays offer both ``__dlpack__`` and
    ``__cuda_array_interface__``; numba-cuda 0.30 tries DLPack first (``typeof_impl`` in
    numba/cuda/typing/typeof.py) and types them with ``_typeof_dlpack``: an Array of the same
    dtype and rank, layout C if C-contiguous (else F, else A), writable. Here each NumPy array
    goes through that same function, wrapped so that only its DLPack face shows. Python ints
    become int64, floats float64 and bools boolean, the same on both.
    """
    import numpy as np
    from numba.cuda.typing.typeof import Purpose, typeof

    if isinstance(value, np.ndarray):
        value = _DLPackOnly(value)
    return typeof(value, Purpose.argument)


@dataclass
class Compiled:
    """One kernel compiled for one signature."""
    name: str  # e.g. conv2d_tiled.gather_gemm[128x128]
    dtype: str
    kernel: object = field(repr=False)
    argtypes: tuple = ()
    threads: int = 0
    labels: list = field(default_factory=list)  # the example calls that launched it
    error: str = None
    ptx: str = None
    ptxas: dict = None
    sass: str = None
    loop: MainLoop = None


def _threads(block):
    return math.prod(block) if isinstance(block, tuple) else int(block)


def recorded_launches(dtypes=DTYPES, calls=None):
    """Call every example with recording on, nothing run: yields (module, dtype, label, launches,
    error) per call, ``launches`` a list of (kernel, grid, block, args), ``error`` None or what
    went wrong (a launcher whose signature changed, a file without examples: said by name).
    ``calls``: {module: examples function}; default every file of kernels/ (``kernel_examples``)."""
    import numpy as np

    import minicolor.kernels as kernels

    if calls is None:
        calls, problems = kernel_examples()
        for problem in problems:
            yield None, None, None, [], problem
    for module, examples in calls.items():
        for dtype in dtypes:
            for label, call in examples(np.dtype(dtype), np.zeros):
                error = None
                with kernels.recording() as launches, np.errstate(all="ignore"):
                    try:
                        call()
                    except Exception as exc:
                        error = (f"the example call {module} {label} ({dtype}) failed: "
                                 f"{type(exc).__name__}: {exc}")
                yield module, dtype, label, launches, error


def record_launches(dtypes=DTYPES, calls=None):
    """Record every example's launches (``recorded_launches``); returns (one Compiled per
    distinct (kernel, argument types), the errors)."""
    found, order, errors = {}, [], []
    for module, dtype, label, launches, error in recorded_launches(dtypes, calls):
        if error:
            errors.append(error)
        for kernel, grid, block, args in launches:
            argtypes = tuple(argument_type(a) for a in args)
            key = (id(kernel), argtypes)
            if key not in found:
                found[key] = Compiled(_display_name(kernel, label), dtype, kernel, argtypes,
                                      _threads(block))
                order.append(found[key])
            if label not in found[key].labels:
                found[key].labels.append(label)
    return order, errors


def _display_name(kernel, label):
    """module.kernel, and for a kernel made by a factory what tells its variants apart: the
    tile shape it was built for (``kernel.tiles``, set by conv2d_tiled's factories), else the
    label of the example call that first launched it."""
    module = kernel.py_func.__module__.rsplit(".", 1)[-1]
    qualname = kernel.py_func.__qualname__
    if ".<locals>." not in qualname:
        return f"{module}.{qualname}"
    tiles = getattr(kernel, "tiles", None)
    if tiles:
        return f"{module}.{kernel.py_func.__name__}[{tiles[0]}x{tiles[1]}]"
    return f"{module}.{qualname.split('.<locals>.')[0]}[{label}]"


def missing_kernels(defined, compiled):
    """Kernels in kernels/*.py that no example call reached, as 'module.qualname' strings."""
    reached = {(c.kernel.py_func.__module__.rsplit(".", 1)[-1], c.kernel.py_func.__qualname__)
               for c in compiled}
    return sorted(f"{m}.{q}" for m, q in defined - reached)


# --- compiling ----------------------------------------------------------------------------------------
class _H100:
    compute_capability = CC


class _h100_as_current_device:
    """While active, numba-cuda's ``get_current_device`` answers an sm_90 device (no driver)."""
    modules = ("numba.cuda.dispatcher", "numba.cuda.compiler")

    def __enter__(self):
        self.saved = []
        for name in self.modules:
            module = importlib.import_module(name)
            if hasattr(module, "get_current_device"):
                self.saved.append((module, module.get_current_device))
                module.get_current_device = _H100
        return self

    def __exit__(self, *exc):
        for module, original in self.saved:
            module.get_current_device = original
        return False


def compile_ptx(item):
    from numba import cuda

    options = getattr(item.kernel, "targetoptions", {})  # the kernel's own @cuda.jit options
    with _h100_as_current_device():  # launch bounds decide the register cap ptxas works to
        ptx, _ = cuda.compile_ptx(item.kernel.py_func, item.argtypes, cc=CC,
                                  fastmath=bool(options.get("fastmath", False)),
                                  launch_bounds=options.get("launch_bounds"))
    return ptx


def tool(name):
    """Path of ptxas or nvdisasm: from its pip wheel, else from PATH; None if neither."""
    try:
        for path in importlib.metadata.files(WHEELS[name]) or []:
            if path.name == name:
                return str(path.locate())
    except importlib.metadata.PackageNotFoundError:
        pass
    return shutil.which(name)


def missing_wheels():
    """Distributions of the ``kernels`` extra that are not installed."""
    missing = []
    for dist in WHEELS.values():
        try:
            importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            missing.append(dist)
    return missing


def _file_stem(item):
    return re.sub(r"[^\w.]+", "_", item.name.replace("[", ".").rstrip("]")) + "." + item.dtype


def build(items, folder, ptxas, nvdisasm):
    """Compile, assemble and disassemble each item, writing .ptx, .cubin and .sass to ``folder``;
    a progress bar on stderr (the whole takes about a minute)."""
    from tqdm.auto import tqdm

    for item in tqdm(items, desc=f"compiling for {ARCH}", unit="kernel", file=sys.stderr):
        try:
            item.ptx = compile_ptx(item)
        except Exception as exc:  # the error text is the finding: keep it, go on with the rest
            item.error = f"{type(exc).__name__}: {exc}".strip()
            continue
        stem = Path(folder) / _file_stem(item)
        Path(f"{stem}.ptx").write_text(item.ptx)
        done = subprocess.run([ptxas, f"-arch={ARCH}", "-v", "-o", f"{stem}.cubin", f"{stem}.ptx"],
                              capture_output=True, text=True)
        if done.returncode:
            item.error = f"ptxas failed: {done.stderr.strip()}"
            continue
        item.ptxas = parse_ptxas(done.stdout + done.stderr)
        done = subprocess.run([nvdisasm, "-c", f"{stem}.cubin"], capture_output=True, text=True)
        if done.returncode:
            item.error = f"nvdisasm failed: {done.stderr.strip()}"
            continue
        item.sass = done.stdout
        Path(f"{stem}.sass").write_text(item.sass)
        if item.name.split(".")[0] in MAIN_LOOP_MODULES:
            tiles = getattr(item.kernel, "tiles", None)
            item.loop = main_loop(item.sass, fma_per_pass(tiles), fma_per_step(tiles))


def fma_per_pass(tiles):
    """Multiply-adds one thread does per pass of the reduction loop (one K slice): BK * TM * TN
    of the tile shape (BM, BN, BK, TM, TN, VEC) the kernel was built with; None without one."""
    return tiles[2] * fma_per_step(tiles) if tiles else None


def fma_per_step(tiles):
    """Multiply-adds one thread does per step of a slice: TM * TN; None without a tile shape."""
    return tiles[3] * tiles[4] if tiles else None


# --- the tables -----------------------------------------------------------------------------------------
def _table(header, rows):
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w)  # noqa: E731
                               for i, (v, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


def resource_table(items, gpu=H100):
    rows = []
    for item in items:
        if item.ptxas is None:
            continue
        p = item.ptxas
        blocks, occ, binding = occupancy(p["regs"], p["smem"], item.threads, gpu)
        spill = f"{p['spill_stores']}/{p['spill_loads']}"
        rows.append([item.name, item.dtype, item.threads, p["regs"], spill, p["stack"], p["smem"], blocks,
                     f"{100 * occ:.0f}%", ", ".join(binding)])
    header = ["kernel", "dtype", "threads", "regs", "spill", "stack", "smem", "blocks", "occupancy",
              "limited by"]
    return _table(header, rows)


def _passes(item):
    """The conv passes (first words of the launcher labels) that launched ``item``, in order."""
    return list(dict.fromkeys(label.split()[0] for label in item.labels))


def loop_report(items):
    """One block per kernel with a main loop: its inner loop and one pass of its reduction loop."""
    blocks = []
    for item in items:
        loop = item.loop
        if loop is None:
            continue
        tiles = getattr(item.kernel, "tiles", None)
        if loop.reduction is None:
            how = "no barrier around the inner loop: no reduction loop"
        elif loop.unrolled:
            how = "inner product unrolled: the inner loop is the reduction loop"
            how += f" (all {tiles[2]} steps of a slice)" if tiles else ""
        elif loop.trip and loop.steps:
            how = f"inner loop x{loop.trip} per pass ({loop.steps} of the {tiles[2]} steps of a slice each)"
        elif loop.trip:
            how = f"inner loop x{loop.trip} per pass"
        else:
            how = "trip count unknown (BK * TM * TN does not fit this loop nest)"
        if loop.reduction is not None and loop.other_loops:
            how += f"; {loop.other_loops} other loop(s) counted once"
        title = f"{item.name} {item.dtype}"
        if tiles:
            title += f", {tiles[3]}x{tiles[4]} per thread"
        if item.labels:
            title += ", launched by " + ", ".join(_passes(item))
        rows = [["inner", *_mix_row(loop.inner)]]
        if loop.one_pass:
            rows.append(["pass", *_mix_row(loop.one_pass)])
        table = _table(["", "instr", "FMA", "FMA%", "instr/FMA", "LDS", "LDG", "IMAD", "div"], rows)
        blocks.append(f"{title}\n  {how}\n" + "\n".join("  " + line for line in table.splitlines()))
    return "\n\n".join(blocks)


def _mix_row(mix):
    per_fma = f"{mix.instructions / mix.fma:.2f}" if mix.fma else "-"
    return [mix.instructions, mix.fma, f"{mix.fma_percent:.1f}%", per_fma, mix.lds, mix.ldg, mix.imad,
            mix.div]


CONV_PASSES = ("forward", "grad-input", "grad-weight")  # the first word of each conv example's label

# The static targets for the conv kernels' main tiles (float32, 128 x 128):
# at least this share of FMA in the inner loop and in one pass of the reduction loop.
TARGETS = {"inner": 60.0, "pass": 50.0}
TARGET_DTYPE = "float32"


def _main_tiles():
    from minicolor.kernels import conv2d_tiled

    return conv2d_tiled.WIDE


def target_checks(items, main_tiles=None):
    """One line per conv pass: do the main tiles of that pass meet TARGETS? (text lines)"""
    main_tiles = main_tiles or _main_tiles()
    name = f"{main_tiles[0]}x{main_tiles[1]}"
    inner, one = TARGETS["inner"], TARGETS["pass"]
    lines = [f"Static targets of the conv passes on their main tiles ({name}, {TARGET_DTYPE}):\n"
             f"FMA share of the inner loop >= {inner:.0f}%, of one pass >= {one:.0f}%, no spills"]
    for conv_pass in CONV_PASSES:
        found = [item for item in items if item.dtype == TARGET_DTYPE and conv_pass in _passes(item)
                 and getattr(item.kernel, "tiles", None) == main_tiles]
        if not found:
            lines.append(f"  {conv_pass}: not checked (no {name} {TARGET_DTYPE} launch compiled)")
        for item in found:
            lines.append(f"  {conv_pass:<11}  {item.name}: " + _target_verdict(item))
    return lines


def _target_verdict(item):
    loop = item.loop
    if item.error or loop is None or loop.one_pass is None:
        return "NOT MET (no main loop figures: " + (item.error or "see the block above") + ")"
    inner, one = loop.inner.fma_percent, loop.one_pass.fma_percent
    spills = item.ptxas["spill_stores"] + item.ptxas["spill_loads"]
    met = inner >= TARGETS["inner"] and one >= TARGETS["pass"] and not spills
    return (f"inner {inner:.1f}%, pass {one:.1f}%, spills {spills} bytes: "
            + ("met" if met else "NOT MET"))


def version_table(items, main_tiles=None):
    """Both conv versions side by side, per pass, float32: the naive kernel's inner loop (one
    multiply-add per tap) against one pass of the tiled kernel's reduction loop on its main tile.
    Per multiply-add: instructions, loads from global memory (LDG) and from shared memory (LDS)."""
    main_tiles = main_tiles or _main_tiles()
    rows = []
    for conv_pass in CONV_PASSES:
        for item in sorted(items, key=lambda item: getattr(item.kernel, "tiles", None) is not None):
            if item.dtype != TARGET_DTYPE or conv_pass not in _passes(item) or item.loop is None:
                continue
            naive = getattr(item.kernel, "tiles", None) is None
            mix = item.loop.inner if naive else item.loop.one_pass
            if mix is None or not mix.fma or not (naive or item.kernel.tiles == main_tiles):
                continue
            rows.append([conv_pass, item.name, "inner loop" if naive else "one pass",
                         f"{mix.instructions / mix.fma:.2f}", f"{mix.fma_percent:.1f}%",
                         f"{mix.ldg / mix.fma:.3f}", f"{mix.lds / mix.fma:.3f}"])
    return _table(["pass", "kernel", "counted", "instr/FMA", "FMA%", "LDG/FMA", "LDS/FMA"], rows)


def report(dtypes=DTYPES, out=None, calls=None):
    """Build everything; returns (text, problems). ``problems`` is empty when all is well."""
    missing = missing_wheels()
    if missing:
        return "", [f"the kernel report needs {', '.join(missing)}, not installed here ({INSTALL_HINT})"]
    ptxas, nvdisasm = tool("ptxas"), tool("nvdisasm")
    if not ptxas or not nvdisasm:
        return "", [f"ptxas or nvdisasm not found ({INSTALL_HINT})"]
    problems = []
    items, errors = record_launches(dtypes, calls)
    problems += errors
    if calls is None:  # every kernel, in every dtype
        problems += [f"{name} ({dtype}): a kernel in kernels/ that no call of its file's examples() "
                     f"launches" for dtype in dtypes
                     for name in missing_kernels(defined_kernels(), [i for i in items if i.dtype == dtype])]
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        build(items, out, ptxas, nvdisasm)
    else:
        with tempfile.TemporaryDirectory() as folder:
            build(items, folder, ptxas, nvdisasm)
    for item in items:
        if item.error:
            problems.append(f"{item.name} ({item.dtype}) does not compile for {ARCH}: {item.error}")
        elif item.ptxas["spill_stores"] or item.ptxas["spill_loads"]:
            problems.append(f"{item.name} ({item.dtype}) spills: {item.ptxas['spill_stores']} bytes stored, "
                            f"{item.ptxas['spill_loads']} bytes loaded")
    versions = ", ".join(f"{name} {importlib.metadata.version(dist)}" for name, dist in WHEELS.items())
    text = "\n\n".join([
        f"{len(items)} kernel x dtype pairs compiled for {ARCH}, occupancy on an {H100.name}\n"
        f"tools: {versions}\n"
        "regs per thread, spill bytes stored/loaded, stack frame bytes per thread (local memory),\n"
        "smem bytes per block, blocks per SM",
        resource_table(items),
        "Main loops of the conv kernels, static SASS counts: inner = the innermost loop holding the\n"
        "multiply-adds, pass = one pass of the reduction loop around it (the inner loop counted as\n"
        "often as it runs)",
        loop_report(items),
        "What tiling buys, per multiply-add (float32; the version switch is\n"
        "minicolor.kernels.conv2d.VERSION): the naive kernels load 2 values from global memory\n"
        "for each; the tiled ones copy slices into shared memory once and read them from there,\n"
        "several values per 16-byte load",
        version_table(items),
        "\n".join(target_checks(items))])
    return text, problems


def main(argv=None):
    parser = argparse.ArgumentParser(prog="minicolor kernels", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="write each kernel's .ptx, .cubin and .sass here")
    parser.add_argument("--dtype", nargs="+", choices=DTYPES, default=list(DTYPES),
                        help="dtypes to compile for (default both)")
    args = parser.parse_args(argv)
    from minicolor.backend import simulator_enabled

    if simulator_enabled():
        print("minicolor kernels: error: Numba's CUDA simulator is enabled in this process "
              "(NUMBA_ENABLE_CUDASIM=1); run it in a fresh process", file=sys.stderr)
        return 1
    text, problems = report(args.dtype, args.out)
    if text:
        print(text)
    if text and args.out:
        print(f"\n.ptx, .cubin and .sass of each kernel written to {args.out}")
    for problem in problems:
        print(f"minicolor kernels: error: {problem}", file=sys.stderr)
    return 1 if problems else 0


def run_subprocess(argv, **kwargs):
    """Run the report in a fresh Python process with the simulator off; returns CompletedProcess."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    return subprocess.run([sys.executable, "-m", "minicolor.tools.kernel_report", *argv], env=env, **kwargs)


if __name__ == "__main__":
    sys.exit(main())

"""Devices: where a tensor's array lives, and THE table of which code runs on it.

minicolor knows three devices:

    "cpu"   NumPy arrays; the hot ops run the fast CPU path (minicolor/cpu/: compiled Numba
            loops, one matrix product per pass), checked against the NumPy references
            (minicolor/reference/), which MINICOLOR_CPU=reference runs instead.
    "cuda"  CuPy arrays on an NVIDIA GPU; the hot ops run minicolor's own Numba CUDA
            kernels (kernels/, installed as minicolor.kernels), the rest run CuPy.
    "sim"   NumPy arrays run through the *same* Numba CUDA kernels under Numba's CUDA
            simulator, so the kernel path can be tested on a machine without a GPU.
            One Python thread per CUDA thread: meant for tiny shapes only.

"sim" is less a device than a mode of the whole process. Numba decides once, when
``numba.cuda`` is first imported, whether ``cuda.jit`` compiles for a GPU or makes simulated
kernels (the environment variable NUMBA_ENABLE_CUDASIM); after that every kernel of the
process is one or the other. So asking for "sim" switches the simulator on for the process
(``enable_simulator``), and "cuda" is refused from then on, and the other way round.

Which code runs an op is decided in ONE place, ``implementation(op, device)`` below, from the
table ``DEVICES``; nothing else in minicolor compares device names to pick code. Everything
above this file writes array code once against ``xp`` (NumPy or CuPy), in the spirit of
DeZero's ``cuda.get_array_module``.
"""
import importlib
import importlib.util
import os
from typing import NamedTuple

import numpy as np


class Device(NamedTuple):
    arrays: str     # the array module of its tensors: "numpy" or "cupy"
    folders: tuple  # where its ops are looked for, in order (folders of the minicolor package)
    graphs: bool    # whether a training step can be captured as a CUDA graph (graph.py)
    gpu: bool       # whether its work runs on a GPU, queued on a CUDA stream: a call returns
    #                 before the work is done, so a clock is read only after ``synchronize``,
    #                 and CUDA events time the work on the GPU's own timeline (tools/profile.py)


# THE table. Each op is a file of the same name in one or more of these folders, holding the
# same functions with the same arguments (conv2d.py: forward, backward_data, backward_weight):
#     reference/   NumPy/CuPy (xp) references: the oracle, simple on purpose; every op has one
#     cpu/         the fast CPU path, checked against the reference
#     kernels/     hand-written Numba CUDA kernels, checked against the reference
# A device runs the first file it finds for an op in its folders: an op with no file of its own
# for a device (the classification ops have only a reference) runs its reference there.
DEVICES = {
    "cpu": Device("numpy", ("cpu", "reference"), graphs=False, gpu=False),
    "sim": Device("numpy", ("kernels", "reference"), graphs=False, gpu=False),
    "cuda": Device("cupy", ("kernels", "reference"), graphs=True, gpu=True),
}
# The one switch back from the fast CPU path to the references: MINICOLOR_CPU=reference in the
# environment, or ``use_references_on_cpu(True)``.
CPU_PATHS = {"fast": ("cpu", "reference"), "reference": ("reference",)}
if os.environ.get("MINICOLOR_CPU", "fast") not in CPU_PATHS:
    raise ValueError(f"MINICOLOR_CPU must be one of {tuple(CPU_PATHS)}, "
                     f"got {os.environ['MINICOLOR_CPU']!r}")
DEVICES["cpu"] = DEVICES["cpu"]._replace(folders=CPU_PATHS[os.environ.get("MINICOLOR_CPU", "fast")])

_FOUND = {}  # (op, folders) -> module


def implementation(op, device):
    """The module that computes ``op`` on ``device`` (see DEVICES): for example
    ``implementation("conv2d", "cuda")`` is minicolor.kernels.conv2d."""
    folders = DEVICES[device].folders
    module = _FOUND.get((op, folders))
    if module is None:
        for folder in folders:
            name = f"minicolor.{folder}.{op}"
            if folder == "reference" or _exists(name):
                module = _FOUND[(op, folders)] = importlib.import_module(name)
                break
    return module


def _exists(name):
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # its folder is not there
        return False


def use_references_on_cpu(on=True):
    """Run the NumPy references on "cpu" (True) or the fast CPU path (False); returns the
    previous setting. The same as MINICOLOR_CPU=reference, for one process from Python."""
    before = DEVICES["cpu"].folders == CPU_PATHS["reference"]
    DEVICES["cpu"] = DEVICES["cpu"]._replace(folders=CPU_PATHS["reference" if on else "fast"])
    return before


def captures_graphs(device):
    """Whether a training step on ``device`` can be captured as a CUDA graph (graph.py)."""
    return DEVICES[device].graphs


def on_gpu(device):
    """Whether ``device`` runs its work on a GPU, queued on a CUDA stream (see Device.gpu): the
    tools then time it with CUDA events and synchronize before reading a clock."""
    return DEVICES[device].gpu


def simulated(device):
    """Whether ``device`` runs the CUDA kernels in Numba's simulator (slow: see minicolor/sim.py)."""
    return runs_kernels(device) and not on_gpu(device)


def runs_kernels(device):
    """Whether ``device`` runs minicolor's own CUDA kernels (kernels/: on a GPU or simulated)."""
    return "kernels" in DEVICES[device].folders


def synchronize(device):
    """Wait until the work sent to ``device`` is done (nothing to wait for off the GPU: NumPy
    has finished when its call returns)."""
    if on_gpu(device):
        array_module(device).cuda.Device().synchronize()


def torch_device(device):
    """The PyTorch device of ``device``'s twins (nn.Module.to_torch): "cuda" or "cpu"."""
    return "cuda" if on_gpu(device) else "cpu"


class DeviceError(RuntimeError):
    """A device was asked for that this machine cannot serve."""


def check_device(device):
    """Return ``device`` if this machine can serve it, else raise a clear DeviceError."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {tuple(DEVICES)}, got {device!r}")
    if device == "cuda":
        cuda_problem = why_no_cuda()
        if cuda_problem:
            raise DeviceError(f"device 'cuda' needs CuPy and an NVIDIA driver; {cuda_problem}")
        if simulator_enabled():
            raise DeviceError("device 'cuda' is unavailable in this process: Numba's CUDA "
                              "simulator is enabled (NUMBA_ENABLE_CUDASIM=1, or device 'sim' "
                              "was used first)")
    if device == "sim":
        enable_simulator()
    return device


def why_no_cuda():
    """None if a CUDA GPU is usable through CuPy, else a sentence saying why not."""
    try:
        import cupy
    except ImportError:
        return "CuPy is not installed (pip install 'minicolor[cuda]')"
    try:
        if not cupy.cuda.is_available():
            return "CuPy is installed but finds no CUDA GPU"
        cupy.zeros(1)  # the first allocation is where a broken driver shows itself
    except Exception as exc:  # CUDARuntimeError and friends
        return f"CuPy could not use the GPU ({type(exc).__name__}: {exc})"
    return None


def cpu_count():
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def cuda_available():
    return why_no_cuda() is None


def auto_device():
    """'cuda' when a GPU is usable, else 'cpu'."""
    return "cuda" if cuda_available() else "cpu"


def resolve_device(name):
    """'auto' -> 'cuda' or 'cpu'; any other device is checked now (``check_device``)."""
    return auto_device() if name == "auto" else check_device(name)


def patch_numpy_for_numba():
    """numba-cuda 0.30 calls ``np.row_stack``, which NumPy 2.5 removed; put it back.

    ``np.row_stack`` was always an alias of ``np.vstack``, so this changes nothing else.
    It must run before ``numba.cuda`` is imported; minicolor.kernels calls it first.
    """
    if not hasattr(np, "row_stack"):
        np.row_stack = np.vstack


def enable_simulator():
    """Switch Numba's CUDA target to the simulator, or explain why it is too late.

    Numba picks the simulator when ``numba.cuda`` is first imported, if the environment
    variable NUMBA_ENABLE_CUDASIM is 1. We set it (and reload Numba's configuration if
    numba itself is already imported). Once numba.cuda has been imported for a real GPU,
    the choice is made for this process.
    """
    import sys

    if "numba.cuda" in sys.modules:
        if not simulator_enabled():
            raise DeviceError("device 'sim' needs Numba's CUDA simulator, but numba.cuda was "
                              "already imported for a real GPU in this process; set "
                              "NUMBA_ENABLE_CUDASIM=1 before importing numba")
        return
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    if "numba" in sys.modules:
        import numba.core.config

        numba.core.config.reload_config()


def simulator_enabled():
    """True if numba.cuda is (or will be, on import) Numba's CUDA simulator."""
    import sys

    if "numba.cuda" in sys.modules:
        return "simulator" in sys.modules["numba.cuda"].jit.__module__
    return os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


def keep_freed_memory():
    """Ask glibc to keep freed memory for reuse instead of returning it to the OS.

    NumPy allocates every temporary with malloc. By default glibc serves large blocks with
    mmap and gives them straight back to the kernel when freed, so the next array of that
    size starts as fresh pages and the first write to each 4 KiB page costs a page fault.
    A training step makes hundreds of multi-megabyte temporaries (im2col buffers reach
    58 MB at batch 8). Here we turn mmap off for malloc (M_MMAP_MAX = 0: every block comes
    from the heap) and stop the heap from shrinking (M_TRIM_THRESHOLD), so freed blocks are
    reused. On the 2-core test machine this made one conv forward+backward 2.6x faster
    (90 ms to 34 ms, 8x128x28x28, 3x3), and a batch-8 training step about 2x faster under load.
    This changes malloc for the whole process: set MINICOLOR_KEEP_MEMORY=0 to skip it.
    Does nothing where the C library is not glibc.
    """
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux") or os.environ.get("MINICOLOR_KEEP_MEMORY") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        ok = libc.mallopt(m_mmap_max, 0)
        ok &= libc.mallopt(m_trim_threshold, 2**31 - 1)
        return bool(ok)
    except (OSError, AttributeError):
        return False


def get_array_module(array):
    """NumPy or CuPy: whichever module owns ``array``."""
    if type(array).__module__.startswith("cupy"):
        import cupy

        return cupy
    return np


def device_of(array):
    """'cuda' for a CuPy array, else 'cpu' (a 'sim' array is a NumPy array too)."""
    return "cuda" if get_array_module(array) is not np else "cpu"


def array_module(device):
    """The array module of ``device``'s tensors: NumPy (cpu, sim) or CuPy (cuda)."""
    return importlib.import_module(DEVICES[device].arrays)


def holds(device, array):
    """Whether ``array`` is already an array of ``device``'s kind (a NumPy array for "sim")."""
    return get_array_module(array) is array_module(device)


def as_array(data, device, dtype=None):
    """``data`` as an array of ``device``: NumPy for cpu and sim, CuPy for cuda."""
    xp = array_module(device)
    return xp.asarray(data if xp is not np else to_numpy(data), dtype=dtype)


def to_numpy(array):
    """A host (NumPy) copy or view of ``array``."""
    if get_array_module(array) is not np:
        return array.get()
    return np.asarray(array)

"""How many threads the fast CPU path runs, for Numba's loops and the matrix products together.

Two kinds of threads work for the fast path: Numba's (the compiled loops, ``prange``) and a
few Python threads that share out the matrix products (products.py), each product on ONE
thread of OpenBLAS. They never run at the same time (Python calls one, then the other), and
both use the same number of threads, set here. OpenBLAS itself is held to one thread: its
own threads spin after every product, on the cores that Numba's loops need next
(products.py has the figures). NumPy's products elsewhere in the process then run on one
thread too; ``openblas_threads`` sets them back.

How many? All the cores, unless other processes keep some of them busy. A parallel loop or
matrix product splits its work into one equal share per thread and ends when the last share is
done; when another process holds a core, the thread whose core it is waits for its time slice
(several ms) while the others wait for it.

So by default (``MINICOLOR_THREADS=auto``) the fast path measures, about once a second, how
many cores the *other* processes used since the last look (Linux's /proc/stat, minus this
process's own CPU time), and runs on the cores left: ``round(cores - others)``, at least 1.
``MINICOLOR_THREADS=N`` fixes N threads instead. Where /proc/stat is missing (not Linux) auto
means all cores. NUMBA_NUM_THREADS and OPENBLAS_NUM_THREADS, when set, are upper limits.

Numba's threads wait without spinning: OpenMP's, with OMP_WAIT_POLICY=PASSIVE
(``_start_numba_threads``). By default OpenMP keeps its threads spinning for a while after each
loop, on the cores that the next loop or product needs: on the shared 2-core machine (load
average 4) a batch-1 training step once took 4,876 ms with 2 threads and 177 ms with 1.
Passive threads sleep at once; a loop costs 2 to 9 us to start (Numba's "workqueue" layer, used
before, took 37 to 45 us). When another library loaded OpenMP first (``_openmp_loaded``), the
workqueue layer runs the loops instead; it must not be entered from two Python threads at
once, and minicolor calls its parallel loops from one thread only (products.py's pool threads
run matrix products and compiled loops that are not parallel).

Results do not depend on the number of threads: every compiled loop gives each output to one
thread and sums in a fixed order, and OpenBLAS splits a product by rows and columns of the
result, never along the sum (tests/test_cpu_fast.py checks 1 and 2 threads give the same bits).
So a run that changes its thread count half-way gives the same numbers as one that does not.
"""
import contextlib
import ctypes
import os
import time

import numba

from ..backend import cpu_count

INTERVAL = 1.0  # seconds between two looks at how busy the machine is

_state = {"threads": None, "last": None, "sample": None}


def _start_numba_threads():
    """Start Numba's thread pool: OpenMP's, told to sleep rather than spin between loops.

    Unless NUMBA_THREADING_LAYER names a layer, Numba uses OpenMP (libgomp) with
    OMP_WAIT_POLICY=PASSIVE, which libgomp reads once, as it loads: here, at this first start.
    The variable is put back afterwards (child processes keep their defaults). A process holds
    one libgomp, so PyTorch imported later in the same process (the bench) runs on this one and
    its threads wait passively too. Where OpenMP cannot load, or another library loaded it
    first (_openmp_loaded: its threads would spin), the workqueue layer.
    Why: a loop costs 2 us to start on OpenMP's threads and 37 to 45 us on the workqueue's
    (an almost empty loop, 1 and 2 threads, on the 2-core machine), and a training step runs
    hundreds of loops. OpenMP's default, to spin after each loop, cost 7.7 ms a loop on a busy
    machine: its threads held the cores that the next loop needed.
    """
    if "NUMBA_THREADING_LAYER" in os.environ:
        return
    from numba.np.ufunc import parallel

    before = os.environ.get("OMP_WAIT_POLICY")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        if _openmp_loaded():  # too late for OMP_WAIT_POLICY: its threads would spin
            raise ImportError("another library loaded OpenMP first")
        numba.config.THREADING_LAYER = "omp"
        parallel._launch_threads()
    except (ValueError, ImportError, OSError):  # no usable OpenMP here
        numba.config.THREADING_LAYER = "workqueue"
        parallel._launch_threads()
    finally:
        if before is None:
            del os.environ["OMP_WAIT_POLICY"]


def _openmp_loaded():
    """Whether a library already loaded OpenMP (libgomp) into this process.

    A process holds one libgomp, whoever loads it first (PyTorch bundles its own, under the same
    name), and libgomp reads OMP_WAIT_POLICY once, as it loads. If PyTorch is imported before
    minicolor's first loop, Numba's OpenMP threads are PyTorch's libgomp's, and they spin: a
    batch-8 training step then took 879 to 1,052 ms instead of 679 to 727 on the idle 2-core
    machine. The workqueue layer does not spin (700 ms there), so it is the fallback.
    """
    return bool(_mapped_files("libgomp"))


def _mapped_files(name):
    """The paths of the files mapped into this process whose path holds ``name`` (any case);
    empty where /proc/self/maps is missing (not Linux)."""
    try:
        with open("/proc/self/maps") as maps:
            return {line.split()[-1] for line in maps if name in line.lower()}
    except OSError:
        return set()


def requested():
    """MINICOLOR_THREADS as an int, or None for "auto" (the default)."""
    value = os.environ.get("MINICOLOR_THREADS", "auto")
    if value == "auto":
        return None
    try:
        threads = int(value)
    except ValueError:
        threads = 0
    if threads < 1:
        raise ValueError(f"MINICOLOR_THREADS must be 'auto' or a positive int, got {value!r}")
    return threads


def _openblas_setter():
    """OpenBLAS's set_num_threads function, from the library NumPy loaded; None if not found.

    NumPy's wheels bundle OpenBLAS with a prefixed, 64-bit-integer symbol name; other builds
    (a system OpenBLAS) use the plain one. MKL or Accelerate: None, and they keep their threads.
    """
    for path in sorted(_mapped_files("openblas")):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_",
                     "scipy_openblas_set_num_threads", "openblas_set_num_threads"):
            if hasattr(lib, name):
                return getattr(lib, name)
    return None


def limit():
    """The most threads allowed: Numba's pool (NUMBA_NUM_THREADS), and OPENBLAS_NUM_THREADS when
    the user set it (the advice for the references on a busy machine stays good)."""
    most = numba.config.NUMBA_NUM_THREADS
    blas = os.environ.get("OPENBLAS_NUM_THREADS", "")
    return min(most, int(blas)) if blas.isdigit() and int(blas) > 0 else most


def openblas_threads(threads):
    """Let OpenBLAS (NumPy's matrix products) run on ``threads`` threads; False if it cannot be
    found (MKL, Accelerate: they keep their own threads)."""
    if "blas" not in _state:
        import numpy  # noqa: F401  (loads OpenBLAS, so that it is in /proc/self/maps)

        _state["blas"] = _openblas_setter()
    if _state["blas"] is None:
        return False
    _state["blas"](threads)
    _state["blas threads"] = threads
    return True


@contextlib.contextmanager
def openblas_on_every_core():
    """Within this block NumPy's matrix products run on every core (OpenBLAS's threads), as
    they do without minicolor; afterwards OpenBLAS is back on one thread for the fast path."""
    openblas_threads(min(cpu_count(), limit()))
    try:
        yield
    finally:
        openblas_threads(1)


def set_threads(threads):
    """Run the fast path's loops and its shares of matrix products on ``threads`` threads (each
    product on one thread of OpenBLAS)."""
    threads = max(1, min(threads, limit()))
    if _state["threads"] is None:
        _start_numba_threads()
    if _state.get("blas threads", 0) != 1:
        openblas_threads(1)
    if threads != _state["threads"]:
        numba.set_num_threads(threads)
        _state["threads"] = threads


def _sample():
    """(wall time, CPU time of every process, CPU time of this one), in seconds; None off Linux."""
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    # user nice system idle iowait irq softirq steal ...: everything but idle and iowait is busy
    ticks = [int(v) for v in fields[1:9]]
    busy = sum(ticks) - ticks[3] - ticks[4]
    own = os.times()
    return time.monotonic(), busy / os.sysconf("SC_CLK_TCK"), own.user + own.system


def others_busy(before, after):
    """Cores that other processes kept busy between two samples."""
    wall = after[0] - before[0]
    return max(0.0, ((after[1] - before[1]) - (after[2] - before[2])) / wall) if wall > 0 else 0.0


def choose(cores, others):
    """The threads to run with ``others`` of ``cores`` busy: the cores left, at least one."""
    return max(1, min(cores, int(cores - others + 0.5)))


def adapt():
    """Called by every fast op: set the thread count (at most once per INTERVAL)."""
    now = time.monotonic()
    if _state["last"] is not None and now - _state["last"] < INTERVAL:
        return
    _state["last"] = now
    fixed = requested()
    cores = cpu_count()
    if fixed is not None:
        set_threads(fixed)
        return
    sample = _sample()
    if sample is None:
        threads = cores
    elif _state["sample"] is None:  # the first look: the load average, before this process ran
        threads = choose(cores, os.getloadavg()[0])
    else:
        threads = choose(cores, others_busy(_state["sample"], sample))
    _state["sample"] = sample
    set_threads(threads)


def current():
    """The thread count the fast path runs with now (None before its first op)."""
    return _state["threads"]

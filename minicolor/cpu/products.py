"""Matrix products shared out over the cores, each on one thread of BLAS.

The fast path's products come in sets of independent ones: the 36 products of a Winograd layer
(one per position of the transformed tile), one product per image of a strided layer. Here each
core takes a share of the set, and each product runs on ONE thread of OpenBLAS
(threads.set_threads keeps OpenBLAS at one thread). NumPy lets go of Python's global lock
inside ``np.matmul``, so a few Python threads multiply at the same time.

Why not let OpenBLAS split each product over its own threads, as NumPy does by default? Because
its threads do not sleep when a product ends: they spin, calling sched_yield, for about a tenth
of a second, waiting for the next product. Between two products the fast path runs Numba's
compiled loops, on threads of their own, on the same cores. Measured on the 2-core machine
(a Winograd layer of 128 channels, 28 x 28, batch 8, all three passes; another process busy
on one core): 1,196 ms with two OpenBLAS threads, 69 ms with one. On the idle machine the
two pools still got in each other's way: two threads made a training step only 1.17x faster
than one (docs/cpu.md).

Results do not depend on the number of threads: every product is one call of ``np.matmul``
whatever the thread count (the sets are cut from the shapes alone), and a product computed by
one thread of OpenBLAS gives the same bits on any thread. Only who computes which piece
changes.
"""
from collections import deque
from concurrent.futures import ThreadPoolExecutor, wait
from functools import partial

import numpy as np

from . import threads

_pool = {"executor": None, "workers": 0}


def _executor(workers):
    """A pool of ``workers`` Python threads (besides the caller), made once, grown when asked."""
    if _pool["workers"] < workers:
        if _pool["executor"] is not None:
            _pool["executor"].shutdown()
        _pool["executor"] = ThreadPoolExecutor(workers, thread_name_prefix="minicolor-products")
        _pool["workers"] = workers
    return _pool["executor"]


def _drain(queue):
    """Call jobs taken from the front of ``queue`` until it is empty (deque.popleft is atomic,
    so two threads never take the same job)."""
    while True:
        try:
            job = queue.popleft()
        except IndexError:
            return
        job()


def share(jobs):
    """Call every job (a function of no arguments) in ``jobs`` over ``threads.current()``
    threads: the caller and pool threads take the next job from one queue until none is left.
    The jobs must be independent, and must let go of Python's lock for their long parts
    (NumPy's matmul does, and Numba's functions compiled with ``nogil=True``).

    Why a queue rather than one run of jobs per thread: a pool thread takes tens of
    microseconds to wake, while the caller starts at once; with fixed runs the caller then
    waited for the last run at every one of a step's ~100 sets. From the queue the caller
    keeps working until the pool thread joins in. cProfile of ten training steps at batch 1
    and 224 px: 9.0 ms a step spent waiting with fixed runs, 1.9 ms with the queue."""
    count = min(threads.current() or 1, len(jobs))
    queue = deque(jobs)
    if count <= 1:
        _drain(queue)
        return
    pending = [_executor(count - 1).submit(_drain, queue) for _ in range(count - 1)]
    try:
        _drain(queue)
    finally:  # on an error here, the pool threads stop after the job they hold: none runs on
        queue.clear()  # behind the caller's back, into buffers the caller may reuse
        wait(pending)
    for job in pending:
        job.result()  # an error in a pool thread is raised here


def run(products):
    """out = a @ b for every (a, b, out) in ``products``, shared out over the threads."""
    share([partial(np.matmul, a, b, out=out) for a, b, out in products])


SMALL_PRODUCT_FLOP = 4e6  # below this, products go to the threads in sets of GROUP
GROUP = 6


def stacked(a, b, out=None):
    """out[s] = a[s] @ b[s] for stacks of matrices (S, m, k) and (S, k, n): one product each.

    Small products go to the threads GROUP at a time, as one NumPy call on a stack of GROUP
    (which calls BLAS once per product, as one call per product does, so the bits are the
    same): each call costs NumPy and Python a few microseconds, and at batch 1 a Winograd
    layer's products take only 10 to 20 us each. Two threads, the 36 products of a layer
    (T x C x F; `python examples/cpu_figures.py small`, two runs): 49 x 128 x 128, 0.65 to
    0.74 ms one by one, 0.51 to 0.62 in sets of 6; 196 x 32 x 64, 0.41 to 0.42 -> 0.28 to 0.32.
    From 4 MFLOP a product up the sets were no faster or slower (392 x 128 x 128: 2.60 to
    2.64 -> 2.66 to 2.83 ms), so those stay one by one. The grouping follows the shapes
    alone, never the thread count."""
    if out is None:
        out = np.empty((a.shape[0], a.shape[1], b.shape[2]), np.result_type(a, b))
    size = GROUP if 2 * a.shape[1] * a.shape[2] * b.shape[2] < SMALL_PRODUCT_FLOP else 1
    run([(a[s:s + size], b[s:s + size], out[s:s + size]) for s in range(0, a.shape[0], size)])
    return out

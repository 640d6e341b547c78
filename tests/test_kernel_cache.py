"""The conv kernels are cached on disk (``cache=True``), and their cache keys are stable.

Without the cache every process compiles every kernel again at its first launch (about 48 s
for the conv kernels of both dtypes on the 2-core test machine). numba-cuda's cache can hold
kernels made by a factory (closures): it keys each entry by the kernel's bytecode and by its
closure's contents pickled with Numba's serializer, so a cached kernel is found again only if
that pickle is the same in a new process. This runs the conv kernel files' examples in two
fresh processes (no simulator: the simulator ignores ``cache``) and compares, for every conv
kernel, that its dispatcher has a disk cache and that the closure hash is the same in both.
The load itself needs a GPU context; docs/kernels.md gives the compile times with and without it.
"""
import os
import subprocess
import sys

import pytest

pytest.importorskip("numba_cuda")

SCRIPT = """
import hashlib
from numba.cuda.serialize import dumps
from minicolor.tools import kernel_report as kr

calls, problems = kr.kernel_examples(["conv2d_naive", "conv2d_tiled"])
items, errors = kr.record_launches(("float32", "float64"), calls)
assert not problems, problems
assert not errors, errors
for kernel in {id(i.kernel): i.kernel for i in items}.values():
    cells = tuple(c.cell_contents for c in kernel.py_func.__closure__ or ())
    print(kernel.py_func.__qualname__, getattr(kernel, "tiles", ""), type(kernel._cache).__name__,
          hashlib.sha256(dumps(cells)).hexdigest())
"""


def closure_hashes():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_conv_kernels_have_a_disk_cache_with_stable_keys():
    first, second = closure_hashes(), closure_hashes()
    assert len(first) >= 10  # naive: 3 kernels; tiled: gather and weight in several tiles
    assert all(line.split()[-2] == "CUDACache" for line in first), "\n".join(first)
    assert first == second

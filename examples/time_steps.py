"""Time overfit training steps (width 16, batch 1, 224 px) under the thread settings you give.

    env OPENBLAS_NUM_THREADS=1 python examples/time_steps.py 15
    env OPENBLAS_NUM_THREADS=2 python examples/time_steps.py 15

Prints the median and mean wall time of N steps after one warm-up, the CPU time per step (user
+ system, all threads: what spinning threads burn shows here) and the load average. The thread
settings must be in the environment before NumPy starts, hence one process per setting.
See docs/benchmarks.md, *Threads on a busy machine*.
"""
import os
import resource
import sys
import tempfile
import time

import numpy as np

from minicolor.tools.bench import _OneImage
from minicolor.models import ColorizationNet
from minicolor.train import Trainer


def main(steps):
    with tempfile.TemporaryDirectory() as scratch:
        trainer = Trainer(ColorizationNet(16), _OneImage(224), device="cpu", progress=False,
                          log_every=10**9, out_dir=scratch)
        trainer.train_step()  # warm-up
        times = []
        before = resource.getrusage(resource.RUSAGE_SELF)
        for _ in range(steps):
            start = time.perf_counter()
            trainer.train_step()
            times.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) / steps
    env = " ".join(f"{k}={os.environ[k]}" for k in ("OPENBLAS_NUM_THREADS", "OPENBLAS_THREAD_TIMEOUT")
                   if k in os.environ)
    print(f"{env or 'defaults':48s} median {np.median(times) * 1e3:6.0f} ms/step  mean "
          f"{np.mean(times) * 1e3:6.0f}  CPU {cpu * 1e3:6.0f} ms/step  load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)

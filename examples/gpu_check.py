"""The GPU check: everything a GPU session measures, in one call of under 8 minutes.

    OUT=DIR bash examples/gpu_check.sh             on a machine with an NVIDIA GPU (H100, H200)
    OUT=DIR bash examples/gpu_check.sh --dry-run   anywhere: the same stages on the CPU

A GPU is lent rarely and briefly (one call of at most 10 minutes, 15 minutes in all, nothing
outside the machine reachable), so this script runs every measurement in one go, gives each
stage its own time limit (a hang loses that stage, not the call), and leaves at most three flat
files in OUT: ``summary.md`` (every target met, not met or not run, with its figure; how to read
it: docs/kernels.md, "The GPU check"), ``results.json`` (the same figures, for scripts) and
``gpu-check-logs.tar.gz`` (every stage's log, the profiles' charts, the JSON files). summary.md
and results.json are rewritten after every stage, so a call cut short still brings back what
ran. The stages:

    probe          nvidia-smi; versions of numba-cuda, cuda-core, cupy, numpy; a trivial kernel
    install        wheels/ (if numba-cuda or cuda-core differ from pyproject's pins), then
                   pip install --no-deps --no-build-isolation -e .
    -- in parallel (correctness: their timings do not count) --
    kernels        every kernel on tiny cases, twice: the first round compiles (its time is the
                   compile time) and fills Numba's on-disk cache for the kernels that use it
                   (cache=True), in NUMBA_CACHE_DIR, which every stage shares
    gpu-tests      tests/test_*_gpu.py: every kernel against the NumPy reference, the fast
                   launch path against Numba's launch, the CUDA graph against eager steps
    memcheck       compute-sanitizer --tool memcheck on the kernels stage's tiny cases
    racecheck      compute-sanitizer --tool racecheck on the same
    launches       Numba launches per training step (width 16, 64), how many took the fast
                   path, and the step's kernels as a CUDA graph (CuPy's included)
    -- one at a time (timings) --
    launcher-host  host time per launch, fast path and Numba's (the launcher module's measure())
    profile-b1     minicolor profile --device cuda --width 16 --batch 1 (eager step and graph)
    profile-b32    the same at batch 32
    overfit-graph  minicolor overfit examples/roebling-bridge.jpg (400 steps, as a CUDA graph)
    overfit-eager  the same with --no-graph
    bench          minicolor bench: steps at widths 16, 64 and batch 1, 32; every conv layer of
                   width 64 at batch 32 (minicolor, the NumPy reference on CuPy, PyTorch); the
                   400-step overfit with compiled kernels
    ncu            Nsight Compute on the three passes of the 3x3 256-channel 56x56 conv layer
                   of width 64 at batch 32, a few metrics

The dry run (CI runs it: tests/test_gpu_check.py) runs every stage on the CPU: the kernels on
Numba's simulator at tiny sizes, the commands on ``--device cpu`` at width 1 or 2 and 16 pixels,
and stand-ins for nvidia-smi, compute-sanitizer and ncu (examples/gpu_check_cases.py, ``fake``)
that print what the real tools print. It writes the same summary.md with every target "not run
(dry run)": it tests this script, not the GPU.
"""
import argparse
import glob
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from gpu_check_summary import summary  # beside this file

ROOT = Path(__file__).resolve().parents[1]
CASES = ROOT / "examples" / "gpu_check_cases.py"
PHOTO = ROOT / "examples" / "roebling-bridge.jpg"

# --- the budget -------------------------------------------------------------------------------------
# The whole check must end within BUDGET_S of its start, install included (a device call may run
# 10 minutes; the machine's start and the transfers come on top). A stage gets its own LIMIT, or
# what is left of the budget less RESERVE_S if that is less; with under MIN_STAGE_S left it is
# not started. The limits come from the last GPU run (2026-11-28, H100, the first kernels:
# /work/shared/gpu): the GPU tests took 64 s, 22 s of it the first test (compiling the conv
# kernels: every process compiles its kernels unless Numba's cache has them); the old bench
# took several minutes because the kernels were slow, so it is cut to what the targets need.
# Expected on an H100/H200: install 10 s, probe 10, parallel stages 90 (the GPU tests), the
# timed stages 10 + 25 + 30 + 25 + 25 + 90 + 30: about 6 minutes.
BUDGET_S = 450
RESERVE_S = 10  # for the summary and the tar at the end
MIN_STAGE_S = 10
LIMITS = {"probe": 30, "install": 90, "kernels": 120, "gpu-tests": 180, "memcheck": 150,
          "racecheck": 150, "launches": 90, "launcher-host": 30, "profile-b1": 60, "profile-b32": 90,
          "overfit-graph": 60, "overfit-eager": 60, "bench": 180, "ncu": 90}
# The dry run checks this script, not a speed: on a busy CPU (CI, a fresh clone whose processes
# each compile the fast CPU path's Numba loops for the first time) its stages get SLACK times the
# limits and the budget.
DRY_RUN_SLACK = 5

# The CPU reference's losses of the bridge overfit (`minicolor overfit examples/roebling-bridge.jpg`:
# width 16, batch 1, 224 px, Adam 1e-4, seed 0) at steps 100, 200, 400: examples/overfit_bridge.py
# on the NumPy references, one OpenBLAS thread (MINICOLOR_CPU=reference OPENBLAS_NUM_THREADS=1),
# measured again after the fast CPU path's last merge, 2026-12-01: 26.20 / 25.35 / 25.31 (the fast
# CPU path, whose Winograd rounds differently from the kernels, gives 26.22 / 25.37 / 25.37).
# Update these when the CPU reference is measured again; never run the CPU overfit on the GPU machine.
CPU_LOSSES = {100: 26.20, 200: 25.35, 400: 25.31}

# Nsight Compute: a few metrics (each costs replay passes), read per kernel.
NCU_METRICS = ["gpu__time_duration.sum", "sm__throughput.avg.pct_of_peak_sustained_elapsed",
               "dram__throughput.avg.pct_of_peak_sustained_elapsed", "smsp__inst_executed.sum",
               "smsp__sass_thread_inst_executed_op_ffma_pred_on.sum", "launch__registers_per_thread",
               "launch__grid_size", "sm__warps_active.avg.pct_of_peak_sustained_active"]

# Where a CUDA toolkit keeps compute-sanitizer and ncu, besides the PATH (newest first).
TOOL_PLACES = ["/usr/local/cuda/bin/{0}", "/usr/local/cuda-*/bin/{0}", "/usr/local/cuda*/{0}/{0}",
               "/usr/local/cuda*/nsight-compute*/{0}", "/opt/nvidia/nsight-compute/*/{0}",
               "/opt/nvidia/*/{0}", "{prefix}/lib/python3*/site-packages/nvidia/*/bin/{0}",
               "{prefix}/lib/python3*/site-packages/nvidia/*/{0}/{0}"]


def find_tool(name):
    """The path of a CUDA tool (compute-sanitizer, ncu), or None."""
    found = shutil.which(name)
    if found:
        return found
    homes = [os.environ[v] for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)]
    for pattern in [f"{home}/bin/{{0}}" for home in homes] + TOOL_PLACES:
        for path in sorted(glob.glob(pattern.format(name, prefix=sys.prefix)), reverse=True):
            if os.access(path, os.X_OK) and not os.path.isdir(path):
                return path
    return None


def pinned_versions():
    """{package: version} of the '==' pins in pyproject.toml's cuda extra (numba-cuda, cuda-core):
    the versions the fast launch path (kernels/_launch.py) was written for."""
    text = (ROOT / "pyproject.toml").read_text()
    extra = re.search(r"^cuda\s*=\s*\[(.*)\]\s*$", text, re.M)  # the extra is one line
    return dict(re.findall(r'"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^"]+)"', extra.group(1) if extra else ""))


def wheel_package(path):
    """(name, version) of a wheel file, the name as pip spells it (numba_cuda -> numba-cuda)."""
    name, version = Path(path).name.split("-")[:2]
    return name.replace("_", "-").lower(), version


def wheel_requirements(path):
    """The Requires-Dist lines of a wheel that apply without extras, as packaging Requirements."""
    import zipfile

    from packaging.requirements import Requirement

    with zipfile.ZipFile(path) as wheel:
        metadata = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
        lines = wheel.read(metadata).decode().splitlines()
    requirements = [Requirement(line.split(":", 1)[1]) for line in lines if line.startswith("Requires-Dist:")]
    return [req for req in requirements if req.marker is None or req.marker.evaluate({"extra": ""})]


def choose_wheels(wheels, pins, installed):
    """(the wheels to install, notes): the wheel of each pinned package whose installed version
    differs from its pin, and of what those wheels need that the machine lacks or has too old
    (cuda-core 1.2.2 needs cuda-pathfinder >= 1.4.2, say). ``installed(name)`` is a version or None."""
    available = {wheel_package(w)[0]: w for w in wheels}
    chosen, notes = [], []
    for name, pin in pins.items():
        if installed(name) == pin:
            continue
        if name in available and wheel_package(available[name])[1] == pin:
            chosen.append(available[name])
        else:
            notes.append(f"no wheel of {name} {pin} in wheels/")
    try:
        needs = {wheel: wheel_requirements(wheel) for wheel in chosen}
    except ImportError:
        return chosen, notes + ["packaging is not installed: what the wheels need was not checked"]
    for wheel, requirements in needs.items():
        for req in requirements:
            name, have = req.name.replace("_", "-").lower(), installed(req.name)
            if have is not None and req.specifier.contains(have, prereleases=True):
                continue
            extra = available.get(name)
            if extra is not None and req.specifier.contains(wheel_package(extra)[1], prereleases=True):
                if extra not in chosen:
                    chosen.append(extra)
            else:
                notes.append(f"{' '.join(wheel_package(wheel))} needs {req}; the machine has "
                             f"{have or 'none'} and wheels/ no match")
    return chosen, notes


def installed_version(name):
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


# --- running a stage ---------------------------------------------------------------------------------
@dataclass
class Stage:
    name: str
    command: list  # argv; a list of argvs runs them one after the other in one log
    env: dict = field(default_factory=dict)  # added to the environment (None: removed)
    ok_codes: tuple = (0,)  # exit codes that mean it went well
    outcome: str = "not run"  # ok, failed (exit code N), timed out, not run
    note: str = ""
    seconds: float = 0.0
    limit: float = 0.0
    log: Path = None


class Runner:
    """Starts stages as process groups, each with a log and a time limit, within the budget."""

    def __init__(self, work, env, budget, slack=1):
        self.work, self.env, self.logs, self.slack = work, env, work / "logs", slack
        self.logs.mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic()
        self.budget = budget * slack
        self.stages = {}

    def elapsed(self):
        return time.monotonic() - self.started

    def skip(self, name, note):
        self.stages[name] = Stage(name, [], note=note)
        return self.stages[name]

    def run(self, *stages):
        """Run the stages side by side; return when each has ended or been stopped."""
        running = []
        for stage in stages:
            self.stages[stage.name] = stage
            stage.limit = min(LIMITS[stage.name] * self.slack, self.budget - RESERVE_S - self.elapsed())
            if stage.limit < MIN_STAGE_S:
                stage.note = f"out of time: {self.elapsed():.0f} s of the {self.budget} s budget used"
                continue
            stage.log = self.logs / f"{len(self.stages):02d}-{stage.name}.log"
            commands = stage.command if isinstance(stage.command[0], list) else [stage.command]
            # every command runs; the stage fails if any of them failed
            script = "rc=0; " + "; ".join(f"{shlex.join(map(str, c))} || rc=$?" for c in commands) + "; exit $rc"
            env = dict(self.env)
            for key, value in stage.env.items():
                if value is None:
                    env.pop(key, None)
                else:
                    env[key] = value
            log = open(stage.log, "w")
            log.write(f"$ {script}\n# extra environment: {stage.env}\n# limit {stage.limit:.0f} s\n\n")
            log.flush()
            print(f"[{self.elapsed():5.0f} s] {stage.name}: started (limit {stage.limit:.0f} s)", flush=True)
            process = subprocess.Popen(["bash", "-c", script], cwd=ROOT, env=env, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
            running.append((stage, process, time.monotonic(), log))
        while running:
            time.sleep(0.2)
            for item in list(running):
                stage, process, started, log = item
                code = process.poll()
                if code is None and time.monotonic() - started > stage.limit:
                    stop(process)
                    code = process.wait()
                    stage.outcome = "timed out"
                    stage.note = f"stopped at its limit of {stage.limit:.0f} s"
                if code is None:
                    continue
                running.remove(item)
                stage.seconds = time.monotonic() - started
                if stage.outcome != "timed out":
                    stage.outcome = "ok" if code in stage.ok_codes else f"failed (exit code {code})"
                log.write(f"\n# {stage.outcome} after {stage.seconds:.1f} s\n")
                log.close()
                print(f"[{self.elapsed():5.0f} s] {stage.name}: {stage.outcome} in {stage.seconds:.1f} s",
                      flush=True)
        return stages


def stop(process):
    """End a stage's process group (the stage's own processes only): TERM, then KILL."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


# --- reading what a stage printed ------------------------------------------------------------------
def read_log(stage):
    return stage.log.read_text(errors="replace") if stage and stage.log and stage.log.exists() else ""


def result_line(text):
    """The ``RESULT {json}`` line that gpu_check_cases.py prints last, as a dict ({} if none)."""
    found = re.findall(r"^RESULT (\{.*\})$", text, re.M)
    return json.loads(found[-1]) if found else {}


def read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def parse_pytest(text):
    """{'passed': 31, 'failed': 0, ...} from pytest's last summary line, and its seconds."""
    lines = [line for line in text.splitlines()
             if re.search(r"\d+ (passed|failed|skipped|errors?|deselected)\b", line)]
    if not lines:
        return {}
    counts = {word.rstrip("s") if word.startswith("error") else word: int(n)
              for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)", lines[-1])}
    seconds = re.search(r" in ([\d.]+)s", lines[-1])
    return {"counts": counts, "seconds": float(seconds.group(1)) if seconds else None}


def parse_sanitizer(text):
    """compute-sanitizer's verdict: clean, errors, unsupported (a sandbox refuses the device:
    not a failure of the code), or unknown (no summary: it did not finish)."""
    if re.search(r"device (is )?not supported", text, re.I):
        return {"verdict": "unsupported", "errors": None}
    summary = re.findall(r"ERROR SUMMARY: (\d+) error", text)
    if not summary:
        return {"verdict": "unknown", "errors": None}
    errors = int(summary[-1])
    first = [line for line in text.splitlines() if line.startswith("=========") and
             re.search(r"Invalid|hazard|Race|error", line, re.I) and "SUMMARY" not in line][:5]
    return {"verdict": "clean" if errors == 0 else "errors", "errors": errors, "first": first}


def parse_launcher_host(text):
    """{label: microseconds} from the launcher module's measure() lines."""
    return {label.strip(): float(us) for label, us in
            re.findall(r"^(.+?)\s+([\d.]+) us of host time per launch", text, re.M)}


def parse_ncu(text):
    """Nsight Compute's text output: one dict per kernel, {name, grid, block, metrics}."""
    kernels = []
    for line in text.splitlines():
        head = re.match(r"^\s+(\S.*?) \((\d+), (\d+), (\d+)\)x\((\d+), (\d+), (\d+)\), Context", line)
        if head:
            kernels.append({"name": head.group(1), "grid": [int(v) for v in head.group(2, 3, 4)],
                            "block": [int(v) for v in head.group(5, 6, 7)], "metrics": {}})
            continue
        metric = re.match(r"^\s+([a-z][a-z0-9_]*__[a-z0-9_.]+)\s+(?:(\S+)\s+)?([\d,.]+)\s*$", line)
        if metric and kernels:
            name, unit, value = metric.groups()
            kernels[-1]["metrics"][name] = (float(value.replace(",", "")), unit or "")
    return kernels


def overfit_losses(folder):
    """{step: loss} from a Trainer's metrics.jsonl."""
    losses = {}
    try:
        for line in (Path(folder) / "metrics.jsonl").read_text().splitlines():
            record = json.loads(line)
            if record.get("loss") is not None:
                losses[int(record["step"])] = record["loss"]
    except (OSError, ValueError):
        pass
    return losses


# --- the check ----------------------------------------------------------------------------------------
class Check:
    """The stages, in order, and what they found (``self.results``)."""

    def __init__(self, out, dry_run, budget, only=None):
        self.out, self.dry, self.only = Path(out).resolve(), dry_run, only
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix="minicolor-gpu-check-"))
        self.python = sys.executable
        env = dict(os.environ, PYTHONUNBUFFERED="1", MPLBACKEND="Agg", PIP_DISABLE_PIP_VERSION_CHECK="1",
                   NUMBA_CACHE_DIR=str(self.work / "numba-cache"),
                   PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        env.pop("NUMBA_ENABLE_CUDASIM", None)  # set per stage below (dry run)
        if dry_run:
            env["OPENBLAS_NUM_THREADS"] = "1"  # tiny matrices on a busy CI machine
        self.runner = Runner(self.work, env, budget, slack=DRY_RUN_SLACK if dry_run else 1)
        # sizes: the targets' on a GPU; tiny ones on the CPU
        self.small, self.big = (1, 2) if dry_run else (16, 64)  # widths
        self.batch = 2 if dry_run else 32
        self.size = 16 if dry_run else 224
        self.device = "cpu" if dry_run else "cuda"
        self.results = {"mode": "dry run" if dry_run else "gpu", "budget_s": budget,
                        "sizes": {"small_width": self.small, "big_width": self.big, "batch": self.batch,
                                  "size": self.size, "device": self.device},
                        "cpu_losses": CPU_LOSSES, "stages": {}}

    # how a stage runs its tools -----------------------------------------------------------------
    def cases(self, *args):
        return [self.python, CASES, *args]

    def tool(self, name):
        """argv prefix of a GPU tool; the stand-in in a dry run; None where it is not found."""
        if self.dry:
            return self.cases("fake", name)
        path = find_tool(name)
        self.results.setdefault("tools", {})[name] = path
        return [path] if path else None

    def sim(self):
        return {"NUMBA_ENABLE_CUDASIM": "1"} if self.dry else {}

    def cli(self, *args):
        return [self.python, "-m", "minicolor.cli", *map(str, args)]

    # the stages -------------------------------------------------------------------------------------
    def run(self):
        print(f"minicolor GPU check{' (dry run: CPU, simulator and stand-ins)' if self.dry else ''}: "
              f"work folder {self.work}, results in {self.out}", flush=True)
        try:
            self.probe_and_install()
            self.run_stages(self.parallel_stages(), side_by_side=True)
            self.run_stages(self.timed_stages(), side_by_side=self.dry)
        finally:
            self.finish()

    def probe_and_install(self):
        r, run = self.results, self.runner.run
        smi = self.tool("nvidia-smi") or ["nvidia-smi"]
        (probe,) = run(Stage("probe", [[*smi, "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                                         "--format=csv"], self.cases("probe")], env=self.sim()))
        text = read_log(probe)
        r["probe"] = result_line(text)
        gpu = re.search(r"^name, driver_version.*\n(.+)$", text, re.M)
        r["gpu"] = gpu.group(1).strip() if gpu else None
        self.note_versions(r["probe"].get("versions", {}))
        self.save()
        wheels = sorted(ROOT.glob("wheels/*.whl"))
        chosen, notes = choose_wheels(wheels, r["pins"], installed_version)
        r["wheels"] = {"carried": [w.name for w in wheels], "installed": [w.name for w in chosen], "notes": notes}
        commands = []
        if chosen:
            commands.append([self.python, "-m", "pip", "install", "--no-index", "--no-deps",
                             "--force-reinstall", *chosen])
        commands += [[self.python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-e", ROOT],
                     self.cases("probe", "--versions-only")]
        if self.dry:
            r["wheels"]["installed"] = []
            self.runner.skip("install", "dry run: nothing installed; the checkout runs from PYTHONPATH"
                             + (f" (would install {', '.join(w.name for w in chosen)})" if chosen else ""))
        else:
            (install,) = run(Stage("install", commands))
            versions = result_line(read_log(install)).get("versions")
            if versions:
                self.note_versions(versions)
        if r["differ"]:
            self.runner.env["MINICOLOR_FAST_LAUNCH"] = "0"
            r["fast_launch"] = (f"off (MINICOLOR_FAST_LAUNCH=0): {', '.join(r['differ'])}; "
                                + ("wheels/ did not fix it" if wheels else
                                   "no wheels/ folder was carried (docs/kernels.md, 'The GPU check')"))
        else:
            r["fast_launch"] = "on (numba-cuda and cuda-core are the pinned versions)"
        print(f"fast launch path: {r['fast_launch']}", flush=True)
        self.save()

    def note_versions(self, versions):
        self.results["versions"] = versions
        pins = pinned_versions()
        self.results["pins"] = pins
        self.results["differ"] = [f"{name} {versions.get(name) or 'not installed'} (pinned {pin})"
                                  for name, pin in pins.items() if versions.get(name) != pin]

    def parallel_stages(self):
        """The stages whose timings do not count: they run side by side."""
        quick = ["--quick", "--dtype", "float32"] if self.dry else []
        rounds = "1" if self.dry else "2"  # the simulator does not compile: one round shows the parsing
        stages = [Stage("kernels", self.cases("kernels", "--rounds", rounds, *quick), env=self.sim()),
                  Stage("gpu-tests", [self.python, "-m", "pytest", "-q", "-rs", "--durations=10",
                                      "-p", "no:cacheprovider",
                                      *sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("tests/test_*_gpu.py"))],
                        ok_codes=(0, 5) if self.dry else (0,))]  # 5: every test skipped (no GPU)
        sanitizer = self.tool("compute-sanitizer")
        for check in ("memcheck", "racecheck"):
            if sanitizer is None:
                self.runner.skip(check, "compute-sanitizer not found (PATH, CUDA_HOME, /usr/local/cuda*, "
                                        "/opt/nvidia, the nvidia pip wheels)")
                continue
            options = ["--tool", check, "--error-exitcode", "9", "--print-limit", "20"]
            if check == "memcheck":
                options += ["--leak-check", "no"]
            stages.append(Stage(check, [*sanitizer, *options, *self.cases("kernels", *quick)], env=self.sim()))
        sizes = ["--widths", "1", "--size", "16"] if self.dry else []
        stages.append(Stage("launches", self.cases("launches", *sizes), env=self.sim()))
        return stages

    def timed_stages(self):
        """The stages that time things: one at a time on a GPU (side by side in a dry run, where
        the times mean nothing)."""
        w, stages = self.work, []
        stages.append(Stage("launcher-host", self.cases("launcher-host", *(["--dry-run"] if self.dry else []))))
        tiny = ["--size", self.size, "--warmup", 1] if self.dry else []
        for batch, name in ((1, "profile-b1"), (self.batch, "profile-b32")):
            stages.append(Stage(name, self.cli("profile", "--device", self.device, "--width", self.small,
                                               "--batch", batch, *tiny, "--json", w / f"{name}.json",
                                               "--chart", w / f"{name}.png")))
        steps = ["--width", self.small, "--size", self.size, "--steps", 20] if self.dry else []
        for name, extra in (("overfit-graph", []), ("overfit-eager", ["--no-graph"])):
            stages.append(Stage(name, self.cli("overfit", PHOTO, "--device", self.device, "--quiet", *steps,
                                               *extra, "--out", w / name, "--json", w / f"{name}.json")))
        if self.dry:
            bench = ["--layer-batch", 1, "--warmup", 0, "--repeat", 1, "--overfit-steps", 10, "--no-torch"]
        else:
            bench = ["--layer-batch", self.batch, "--warmup", 1, "--repeat", 3, "--overfit-steps", 400]
        stages.append(Stage("bench", self.cli("bench", "--device", self.device, "--widths", self.small, self.big,
                                              "--batches", 1, self.batch, "--size", self.size,
                                              "--layer-width", self.big, *bench, "--json", w / "bench.json")))
        ncu = self.tool("ncu")
        layer = ["--width", "1", "--batch", "1", "--size", "16"] if self.dry else []
        if ncu is None:
            self.runner.skip("ncu", "ncu (Nsight Compute) not found")
        else:
            stages.append(Stage("ncu", [*ncu, "--profile-from-start", "off", "--clock-control", "none",
                                        "--metrics", ",".join(NCU_METRICS), *self.cases("ncu-layer", *layer)],
                                env=self.sim()))
        return stages

    def run_stages(self, stages, side_by_side):
        """Run the stages, read what each found into ``results``, save the summary."""
        for stage in [stage for stage in stages if self.only and stage.name not in self.only]:
            self.runner.skip(stage.name, "not among --only")
            stages.remove(stage)
        for group in ([stages] if side_by_side else [[stage] for stage in stages]):
            self.runner.run(*group)
            for stage in group:
                self.read(stage)
            self.save()

    def read(self, stage):
        """Put what a stage found into ``results`` (under its name with '_' for '-')."""
        r, w, text = self.results, self.work, read_log(stage)
        key = stage.name.replace("-", "_")
        if stage.name in ("kernels", "launches"):
            r[key] = result_line(text)
        elif stage.name == "gpu-tests":
            r[key] = parse_pytest(text)
        elif stage.name in ("memcheck", "racecheck"):
            r[key] = parse_sanitizer(text) if stage.log else None
        elif stage.name == "launcher-host":
            r[key] = parse_launcher_host(text)
            module = re.search(r"the fast launch path: (\S+)", text)
            r["launcher_module"] = module.group(1) if module else None
        elif stage.name.startswith("profile") or stage.name == "bench":
            r[key] = read_json(w / f"{stage.name}.json")
        elif stage.name.startswith("overfit"):
            r[key] = {"summary": read_json(w / f"{stage.name}.json"), "losses": overfit_losses(w / stage.name)}
        elif stage.name == "ncu":
            r[key] = {"kernels": parse_ncu(text), "layer": result_line(text),
                      "refused": bool(re.search(r"Failed to initialize the profiler|ERR_NVGPUCTRPERM", text))}
        r["numba_cache_files"] = self.cache_files()

    def cache_files(self):
        return sum(1 for p in (self.work / "numba-cache").rglob("*") if p.is_file())

    # what comes back ---------------------------------------------------------------------------------
    def save(self):
        """Write summary.md and results.json into OUT (after every stage: a call cut short keeps them)."""
        self.results["stages"] = {s.name: {"outcome": s.outcome, "seconds": round(s.seconds, 1),
                                           "limit": round(s.limit), "note": s.note,
                                           "log": s.log.name if s.log else None}
                                  for s in self.runner.stages.values()}
        self.results["elapsed_s"] = round(self.runner.elapsed(), 1)
        write(self.out / "results.json", json.dumps(self.results, indent=1, default=str))
        write(self.out / "summary.md", summary(self.results))

    def finish(self):
        """The summary and the tar of the logs (the tar even if the summary fails)."""
        try:
            self.save()
        finally:
            self.pack()
            shutil.rmtree(self.work, ignore_errors=True)
        # the targets and the stages last on stdout: the device tool returns the output's tail
        text = (self.out / "summary.md").read_text()
        print(text.split("\n## The machine", 1)[0])

    def pack(self):
        tar = self.out / "gpu-check-logs.tar.gz"
        kept = [p for p in sorted(self.work.rglob("*")) if p.is_file() and "numba-cache" not in p.parts]
        for skip in ((), (".png",)):  # the device tool brings back files of up to 16 MiB
            with tarfile.open(tar, "w:gz") as archive:
                for path in kept:
                    if path.suffix not in skip:
                        archive.add(path, arcname=str(Path("gpu-check") / path.relative_to(self.work)))
            if tar.stat().st_size < 15 * 2**20:
                break


def write(path, text):
    """Write a file whole or not at all (a call stopped mid-write keeps the previous version)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true",
                        help="every stage on the CPU (simulator, tiny sizes, stand-ins for the GPU tools)")
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu-results",
                        help="where summary.md, results.json and the logs' tar go (default $OUT, "
                             "else gpu-results)")
    parser.add_argument("--budget", type=int, default=BUDGET_S,
                        help=f"seconds for the whole check (default {BUDGET_S})")
    parser.add_argument("--only", nargs="+", metavar="STAGE", choices=list(LIMITS)[2:],
                        help="after probe and install, run only these stages (to redo a few in "
                             "the device time left)")
    args = parser.parse_args(argv)
    Check(args.out, args.dry_run, args.budget, args.only).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

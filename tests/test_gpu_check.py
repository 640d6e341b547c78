"""examples/gpu_check.sh: the one-call GPU check, run here as its dry run, and its summary logic.

The dry run runs every stage on the CPU (the kernels on the simulator, the commands at tiny
sizes, stand-ins for nvidia-smi, compute-sanitizer and ncu) and must leave the same summary.md,
within the device tool's limits on what comes back (at most 6 flat files here). The targets'
verdicts are checked on made-up GPU results, where met and not met can both be shown.
"""
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
import gpu_check  # noqa: E402
import gpu_check_cases  # noqa: E402
import gpu_check_summary  # noqa: E402


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-results")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env.update(OUT=str(out), PYTHON=sys.executable,
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
    run = subprocess.run(["bash", str(ROOT / "examples" / "gpu_check.sh"), "--dry-run"], env=env,
                         capture_output=True, text=True, timeout=600)
    return run, out


def test_dry_run_leaves_at_most_six_flat_files(dry_run):
    run, out = dry_run
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    files = sorted(out.iterdir())
    assert {f.name for f in files} == {"summary.md", "results.json", "gpu-check-logs.tar.gz"}
    assert len(files) <= 6 and all(f.is_file() and re.fullmatch(r"[A-Za-z0-9._-]+", f.name) for f in files)
    assert all(f.stat().st_size < 16 * 2**20 for f in files)
    assert "## Targets" in run.stdout  # the summary is printed last, for the device tool's output tail


def test_dry_run_summary_marks_every_target_and_claims_none(dry_run):
    _, out = dry_run
    text = (out / "summary.md").read_text()
    assert text.startswith("# minicolor GPU check: dry run on the CPU")
    rows = {row[0]: row for row in table(text, "## Targets")}
    assert len(rows) == len(gpu_check_summary.TARGETS)
    for _, target, _ in gpu_check_summary.TARGETS:
        status, figure = rows[target][1], rows[target][2]
        assert status == "not run (dry run)", (target, status)
        # every parser saw the CPU run's output (on the CPU the bench has no NumPy-reference column,
        # and the profile captures no CUDA graph)
        if "NumPy reference" not in target and "CUDA graph" not in target:
            assert figure.startswith("dry run on cpu and the simulator, not a GPU figure: "), (target, figure)


def test_dry_run_runs_every_stage_and_keeps_its_log(dry_run):
    _, out = dry_run
    stages = {row[0]: row for row in table((out / "summary.md").read_text(), "## Stages")}
    assert list(stages) == ["probe", "install", "kernels", "gpu-tests", "memcheck", "racecheck", "launches",
                            "launcher-host", "profile-b1", "profile-b32", "overfit-graph", "overfit-eager",
                            "bench", "ncu"]
    assert stages["install"][1] == "not run"
    assert all(row[1] == "ok" for name, row in stages.items() if name != "install"), stages
    with tarfile.open(out / "gpu-check-logs.tar.gz") as archive:
        names = set(archive.getnames())
    assert {f"gpu-check/logs/{row[4]}" for name, row in stages.items() if name != "install"} <= names
    assert {"gpu-check/bench.json", "gpu-check/profile-b1.png", "gpu-check/overfit-graph/metrics.jsonl"} <= names
    results = json.loads((out / "results.json").read_text())
    assert results["mode"] == "dry run" and results["launches"]["steps"][0]["launches"] > 0
    assert results["pins"] == {"numba-cuda": "0.30.4", "cuda-core": "1.2.2"}


def table(text, heading):
    """The rows of the first markdown table after ``heading``, as lists of cells."""
    part = text.split(heading, 1)[1].split("\n## ", 1)[0]
    rows = [line for line in part.splitlines() if line.startswith("| ")][1:]  # without the header
    return [[cell.strip() for cell in row.strip("|").split(" | ")] for row in rows]


# --- the verdicts, on made-up GPU results ------------------------------------------------------------
def gpu_results(**extra):
    r = {"mode": "gpu", "budget_s": 450, "cpu_losses": gpu_check.CPU_LOSSES, "fast_launch": "on",
         "sizes": {"small_width": 16, "big_width": 64, "batch": 32, "size": 224, "device": "cuda"},
         "stages": {"bench": {"outcome": "ok", "note": "", "seconds": 1, "limit": 9, "log": "x.log"}}}
    r.update(extra)
    return r


def layer_row(name, c, f, pass_name, tflops, reference_tflops, stride=1):
    flops = 1e12
    return {"layer": name, "x": [32, c, 56, 56], "w": [f, c, 3, 3], "stride": stride, "dilation": 1,
            "pass": pass_name, "flops": flops, "minicolor_s": flops / tflops / 1e12,
            "reference_s": flops / reference_tflops / 1e12}


def verdicts(r):
    return {key: (status, figure) for key, _, status, figure in gpu_check_summary.evaluate(r)}


def test_conv_targets_take_the_worst_wide_3x3_layer():
    layers = [layer_row("group3.2", 256, 256, "forward", 25, 20), layer_row("group3.4", 256, 256, "forward", 19, 20, 2),
              layer_row("group2.0", 64, 128, "forward", 5, 20),  # 64 input channels: not a target layer
              layer_row("group3.2", 256, 256, "grad-input", 16, 20)]
    found = verdicts(gpu_results(bench={"layers": layers, "steps": []}))
    assert found["conv-forward"][0] == "not met" and "worst 19.0 TFLOP/s (group3.4" in found["conv-forward"][1]
    assert found["conv-grad-input"][0] == "met"
    layers[1] = layer_row("group3.4", 256, 256, "forward", 21, 20, 2)
    assert verdicts(gpu_results(bench={"layers": layers, "steps": []}))["conv-forward"][0] == "met"
    # slower than the NumPy reference: group2.0's forward (the first layer and the head are exempt)
    status, figure = verdicts(gpu_results(bench={"layers": layers, "steps": []}))["vs-reference"]
    assert status == "not met" and "group2.0" in figure and "group3.2 (256x56x56 s1) forward" not in figure


def test_step_targets_from_bench_and_profile():
    steps = [{"width": 16, "batch": 32, "minicolor_s": 0.030}, {"width": 64, "batch": 32, "minicolor_s": 0.5}]
    found = verdicts(gpu_results(bench={"layers": [], "steps": steps},
                                 profile_b1={"step_ms": 4.0, "graph_ms": 3.5}))
    assert found["w16-b32"][0] == "met" and found["w16-b32"][1].startswith("1,067 img/s")
    assert found["w64-b32"] == ("not met", "500 ms per step")
    assert found["w16-b1-eager"][0] == "met" and found["w16-b1-graph"][0] == "not met"


def test_a_stage_that_did_not_finish_leaves_its_targets_not_run():
    r = gpu_results()
    r["stages"]["bench"].update(outcome="timed out", note="stopped at its limit of 180 s")
    found = verdicts(r)
    assert found["w64-b32"][0] == "not run (bench: timed out, stopped at its limit of 180 s)"
    assert found["w16-b1-eager"][0].startswith("not run (profile-b1: not reached")


def test_overfit_needs_the_time_and_the_cpu_losses_to_four_digits():
    def run(losses):
        return {"losses": losses, "summary": {"seconds": 20.0}}

    close = {100: 26.2049, 200: 25.35, 400: 25.3149}
    r = gpu_results(bench={"overfit": {"steps": 400, "minicolor_s": 1.2}},
                    overfit_graph=run(close), overfit_eager=run(close))
    assert verdicts(r)["overfit"][0] == "met"
    r["overfit_eager"] = run({**close, 400: 25.3151})  # 25.32 to four digits
    assert verdicts(r)["overfit"][0] == "not met"
    r = gpu_results(bench={"overfit": {"steps": 400, "minicolor_s": 1.6}},
                    overfit_graph=run(close), overfit_eager=run(close))
    assert verdicts(r)["overfit"][0] == "not met"


def test_fast_path_target_counts_every_launch():
    steps = [{"width": 16, "launches": 90, "fast": 90, "graph_kernels": 150, "graph_cupy": 60},
             {"width": 64, "launches": 90, "fast": 22, "graph_kernels": 150, "graph_cupy": 60}]
    found = verdicts(gpu_results(launches={"steps": steps, "fast_launch": True}))
    assert found["fast-path"][0] == "not met" and "90 Numba launches, 22 fast" in found["fast-path"][1]
    steps[1]["fast"] = 90
    assert verdicts(gpu_results(launches={"steps": steps, "fast_launch": True}))["fast-path"][0] == "met"
    off = verdicts(gpu_results(launches={"steps": steps, "fast_launch": False}))["fast-path"][0]
    assert off.startswith("not run (the fast launch path is off")


def test_sanitizer_verdicts():
    clean = gpu_check.parse_sanitizer("========= COMPUTE-SANITIZER\nfine\n========= ERROR SUMMARY: 0 errors\n")
    racy = gpu_check.parse_sanitizer("========= Error: Race reported between Write access ...\n"
                                     "========= RACECHECK SUMMARY: 1 hazard displayed (1 error, 0 warnings)\n"
                                     "========= ERROR SUMMARY: 1 error\n")
    refused = gpu_check.parse_sanitizer("========= Error: Device not supported\n========= ERROR SUMMARY: 1 error")
    assert clean["verdict"] == "clean" and racy == {"verdict": "errors", "errors": 1, "first": racy["first"]}
    assert racy["first"] and refused["verdict"] == "unsupported"
    assert verdicts(gpu_results(memcheck=clean, racecheck=clean))["sanitizer"][0] == "met"
    assert verdicts(gpu_results(memcheck=clean, racecheck=racy))["sanitizer"][0] == "not met"
    status = verdicts(gpu_results(memcheck=refused, racecheck=refused))["sanitizer"][0]
    assert status.startswith("not run (compute-sanitizer answered 'device not supported'")


def test_parsers_read_the_tools_output():
    ncu = """==PROF== Disconnected from process 123
  gather_gemm (1568, 4, 1)x(256, 1, 1), Context 1, Stream 7, Device 0, CC 9.0
    Section: Command line profiler metrics
    ---------------------------------------------------- ----------- ------------
    Metric Name                                          Metric Unit Metric Value
    gpu__time_duration.sum                                        ms        35.59
    launch__grid_size                                                       6,272
    smsp__inst_executed.sum                                     inst 22,728,809,472
"""
    (kernel,) = gpu_check.parse_ncu(ncu)
    assert kernel["name"] == "gather_gemm" and kernel["grid"] == [1568, 4, 1] and kernel["block"] == [256, 1, 1]
    assert kernel["metrics"] == {"gpu__time_duration.sum": (35.59, "ms"), "launch__grid_size": (6272.0, ""),
                                 "smsp__inst_executed.sum": (22728809472.0, "inst")}
    assert gpu_check.parse_pytest("....\n31 passed, 23 warnings in 63.93s (0:01:03)\n") == {
        "counts": {"passed": 31}, "seconds": 63.93}
    assert gpu_check.parse_launcher_host(
        "Numba's kernel[grid, block, stream](*args)     121.3 us of host time per launch\n"
        "kernels/_launch.py                             31.0 us of host time per launch\n") == {
        "Numba's kernel[grid, block, stream](*args)": 121.3, "kernels/_launch.py": 31.0}
    assert gpu_check_cases.split_tool_arguments(["--tool", "memcheck", "--x=1", "python", "--flag"]) == (
        ["--tool", "memcheck", "--x=1"], ["python", "--flag"])


def test_the_launcher_module_is_found_wherever_it_lives():
    import importlib

    module = importlib.import_module(gpu_check_cases.find_launcher_module())
    assert callable(module.measure) and hasattr(module, "Launcher")


def test_a_stage_is_stopped_at_its_limit_and_none_starts_past_the_budget(tmp_path, monkeypatch):
    monkeypatch.setitem(gpu_check.LIMITS, "slow", 1)
    monkeypatch.setattr(gpu_check, "MIN_STAGE_S", 0.5)
    runner = gpu_check.Runner(tmp_path, dict(os.environ), budget=30)
    (stage,) = runner.run(gpu_check.Stage("slow", ["sleep", "30"]))
    assert stage.outcome == "timed out" and stage.seconds < 15
    runner.budget = 0
    (late,) = runner.run(gpu_check.Stage("slow", ["true"]))
    assert late.outcome == "not run" and late.note.startswith("out of time")


def fake_wheel(folder, filename, requires=()):
    import zipfile

    name, version = filename.split("-")[:2]
    with zipfile.ZipFile(folder / filename, "w") as wheel:
        wheel.writestr(f"{name}-{version}.dist-info/METADATA", "\n".join(
            ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
            + [f"Requires-Dist: {r}" for r in requires]))
    return folder / filename


def test_wheels_install_what_differs_from_the_pins_and_what_it_needs(tmp_path):
    pytest.importorskip("packaging")
    wheels = [fake_wheel(tmp_path, "numba_cuda-0.30.4-cp312-cp312-manylinux_2_28_x86_64.whl",
                         ["numba>=0.60.0", "cuda-core<2.0.0,>=0.5.1", "cuda-pathfinder<2.0.0,>=1.4.0"]),
              fake_wheel(tmp_path, "cuda_core-1.2.2-cp312-cp312-manylinux_2_28_x86_64.whl",
                         ["cuda-pathfinder>=1.4.2", "numpy", 'backports.strenum; python_version < "3.0"',
                          'cuda-bindings==13.*; extra == "cu13"']),
              fake_wheel(tmp_path, "cuda_pathfinder-1.9.1-py3-none-any.whl")]
    pins = {"numba-cuda": "0.30.4", "cuda-core": "1.2.2"}
    machine = {"numba-cuda": "0.30.4", "cuda-core": "0.4.1", "cuda-pathfinder": "1.2.0", "numpy": "2.5.2"}
    chosen, notes = gpu_check.choose_wheels(wheels, pins, machine.get)
    assert [w.name.split("-")[0] for w in chosen] == ["cuda_core", "cuda_pathfinder"] and notes == []
    chosen, notes = gpu_check.choose_wheels(wheels, pins, dict(machine, **{"cuda-core": "1.2.2"}).get)
    assert chosen == [] and notes == []
    chosen, notes = gpu_check.choose_wheels(wheels[1:2], pins, {"numba-cuda": "0.31.0"}.get)
    assert [w.name.split("-")[0] for w in chosen] == ["cuda_core"]
    assert notes == ["no wheel of numba-cuda 0.30.4 in wheels/",
                     "cuda-core 1.2.2 needs cuda-pathfinder>=1.4.2; the machine has none and wheels/ no match",
                     "cuda-core 1.2.2 needs numpy; the machine has none and wheels/ no match"]


def test_the_gpu_runs_commands_are_ones_the_programs_accept(monkeypatch):
    """The stages of a real run (not run here: no GPU) call minicolor and gpu_check_cases.py
    with options both accept, and the GPU tools where they were found."""
    from minicolor import cli

    monkeypatch.setattr(gpu_check, "find_tool", lambda name: f"/opt/cuda/bin/{name}")
    check = gpu_check.Check(gpu_check.tempfile.mkdtemp(), dry_run=False, budget=450)
    try:
        stages = {s.name: s.command for s in check.parallel_stages() + check.timed_stages()}
    finally:
        gpu_check.shutil.rmtree(check.work)
    assert set(stages) == set(gpu_check.LIMITS) - {"probe", "install"}
    for name, command in stages.items():
        command = [str(part) for part in command]
        if "-m" in command and command[command.index("-m") + 1] == "minicolor.cli":
            args = cli.build_parser().parse_args(command[command.index("-m") + 2:])
            assert getattr(args, "device", "cuda") == "cuda", name
        elif str(gpu_check.CASES) in command:
            gpu_check_cases.build_parser().parse_args(command[command.index(str(gpu_check.CASES)) + 1:])
        else:
            assert name == "gpu-tests" and "tests/test_kernels_gpu.py" in command
    assert stages["memcheck"][:3] == ["/opt/cuda/bin/compute-sanitizer", "--tool", "memcheck"]
    assert stages["ncu"][0] == "/opt/cuda/bin/ncu" and "--profile-from-start" in stages["ncu"]
    bench = [str(part) for part in stages["bench"]]
    assert bench[bench.index("--widths") + 1:bench.index("--widths") + 3] == ["16", "64"]
    assert "--overfit-steps" in bench and bench[bench.index("--overfit-steps") + 1] == "400"


def test_fast_launch_counter_names_the_kernels_the_fast_path_turned_away(monkeypatch):
    import importlib
    import types

    module = importlib.import_module(gpu_check_cases.find_launcher_module())
    monkeypatch.setattr(module.Launcher, "launch", module.Launcher.launch)  # put back after the test
    monkeypatch.setattr(module.Launcher, "_launch", lambda self, kernel, *rest: kernel.py_func.__name__ == "fast")
    counter = gpu_check_cases.FastLaunchCounter(types.SimpleNamespace(launch_count=0))
    launcher = module.Launcher(driver=None)
    for name in ["fast", "gather_gemm", "gather_gemm", "fast"]:
        launcher.launch(types.SimpleNamespace(py_func=types.SimpleNamespace(__name__=name)), 1, 32, None, ())
    assert counter.count() == 2 and counter.slow == {"gather_gemm": 2}


def test_gpu_tests_target_wants_every_test_run_and_passed():
    def status(counts):
        return verdicts(gpu_results(gpu_tests={"counts": counts}))["gpu-tests"][0]

    assert status({"passed": 35}) == "met"
    assert status({"failed": 1, "passed": 34}) == "not met"
    assert status({"passed": 34, "skipped": 1}) == "not met"
    assert status({"skipped": 2}) == "not run (every test skipped: no usable GPU)"

"""summary.md of the GPU check: the targets, each met, not met or not run, with its figure.

``summary(results)`` turns what examples/gpu_check.py gathered (its ``results`` dict, also saved
as results.json) into markdown: first the targets, then the stages, then the details that the
figures come from. A target is "met" or "not met" only from a measurement on a GPU; where its
stage did not run, failed, or this is a dry run, it is "not run (why)". In a dry run the figure
column still shows what the CPU run parsed, marked as such: it proves the parsing, not the GPU.
"""
import re

# (key, target as the summary states it, evaluator). An evaluator takes the results and returns
# (met: True / False / None for not run, figure, why not run).
TARGETS = []


def target(key, text):
    """Register the decorated function as the evaluator of a target (in the summary's order)."""
    def register(evaluate):
        TARGETS.append((key, text, evaluate))
        return evaluate
    return register


def _stage_note(r, name):
    stage = r.get("stages", {}).get(name)
    if not stage:
        return f"{name}: not reached"
    if stage["outcome"] == "ok":
        return f"{name}: no figure in its output"
    return f"{name}: {stage['outcome']}" + (f", {stage['note']}" if stage.get("note") else "")


@target("gpu-tests", "the GPU tests pass (tests/test_*_gpu.py: every kernel against the NumPy "
                     "reference, the fast launch path, the CUDA graph), none skipped")
def _gpu_tests(r):
    tests = r.get("gpu_tests") or {}
    counts = tests.get("counts")
    if not counts:
        return None, "", _stage_note(r, "gpu-tests")
    figure = ", ".join(f"{n} {word}" for word, n in counts.items())
    if not counts.get("passed") and not counts.get("failed") and not counts.get("error"):
        return None, figure, "every test skipped: no usable GPU"
    return not (counts.get("failed") or counts.get("error") or counts.get("skipped")), figure, None


def _tflops(row, impl="minicolor"):
    seconds = row.get(f"{impl}_s")
    return row["flops"] / seconds / 1e12 if seconds else None


def _variants(row):
    """Other timed implementations of a bench row (a naive and a tiled conv, say)."""
    return [key[:-2] for key in row if key.endswith("_s") and key[:-2] not in ("minicolor", "reference", "torch")]


def _label(row):
    return f"{row['layer']} ({'x'.join(map(str, row['x'][1:]))} s{row['stride']})"


def _conv_target(pass_name, threshold):
    def evaluate(r):
        bench = r.get("bench")
        if not bench:
            return None, "", _stage_note(r, "bench")
        width = r["sizes"]["big_width"]  # >= 128 channels at width 64: >= 2 x width
        rows = [row for row in bench.get("layers", []) if row["pass"] == pass_name and row["w"][2:] == [3, 3]
                and row["x"][1] >= 2 * width and row["w"][0] >= 2 * width]
        if not rows:
            return None, "", "the bench timed no such layer"
        speeds = sorted((_tflops(row), _label(row)) for row in rows)
        figure = (f"worst {speeds[0][0]:.1f} TFLOP/s ({speeds[0][1]}), best {speeds[-1][0]:.1f}, "
                  f"{len(rows)} layers")
        for impl in ["reference", "torch", *_variants(rows[0])]:
            others = [_tflops(row, impl) for row in rows if row.get(f"{impl}_s")]
            if others:
                figure += f"; {impl} {min(others):.1f}-{max(others):.1f}"
        return speeds[0][0] >= threshold, figure, None
    return evaluate


target("conv-forward", "conv forward >= 20 TFLOP/s (3x3 layers with >= 128 channels, width 64, batch 32)")(
    _conv_target("forward", 20))
target("conv-grad-input", "conv grad-input >= 15 TFLOP/s (the same layers)")(_conv_target("grad-input", 15))
target("conv-grad-weight", "conv grad-weight >= 15 TFLOP/s (the same layers)")(_conv_target("grad-weight", 15))


@target("vs-reference", "every conv pass at least as fast as the NumPy reference on CuPy "
                        "(except the first layer and the head)")
def _vs_reference(r):
    bench = r.get("bench")
    if not bench:
        return None, "", _stage_note(r, "bench")
    rows = [row for row in bench.get("layers", []) if row.get("reference_s") and row["x"][1] != 1
            and not row["layer"].startswith("head")]
    if not rows:
        return None, "", "the bench has no NumPy-reference timings (it times them on cuda only)"
    slower = sorted(((row["minicolor_s"] / row["reference_s"], f"{_label(row)} {row['pass']}") for row in rows
                     if row["minicolor_s"] > row["reference_s"]), reverse=True)
    if not slower:
        ratio = max(row["minicolor_s"] / row["reference_s"] for row in rows)
        return True, f"all {len(rows)} passes (the closest at {ratio:.2f}x the reference's time)", None
    shown = ", ".join(f"{name} {ratio:.2f}x" for ratio, name in slower[:4])
    return False, f"{len(slower)} of {len(rows)} passes slower: {shown}" + (", ..." if len(slower) > 4 else ""), None


def _bench_step(r, width, batch):
    for row in (r.get("bench") or {}).get("steps", []):
        if row["width"] == width and row["batch"] == batch:
            return row
    return None


@target("w16-b32", "width 16, batch 32: >= 900 img/s")
def _w16_b32(r):
    width, batch = r["sizes"]["small_width"], r["sizes"]["batch"]
    row = _bench_step(r, width, batch)
    profile = r.get("profile_b32")
    if row:
        speed = batch / row["minicolor_s"]
        figure = f"{speed:,.0f} img/s ({row['minicolor_s'] * 1e3:.1f} ms per step, bench)"
        if row.get("torch_s"):
            figure += f"; PyTorch {batch / row['torch_s']:,.0f} img/s"
    elif profile:
        speed = batch / profile["step_ms"] * 1e3
        figure = f"{speed:,.0f} img/s ({profile['step_ms']:.1f} ms per step, profile)"
    else:
        return None, "", _stage_note(r, "bench")
    return speed >= 900, figure, None


@target("w64-b32", "width 64, batch 32: <= 400 ms per step")
def _w64_b32(r):
    row = _bench_step(r, r["sizes"]["big_width"], r["sizes"]["batch"])
    if not row:
        return None, "", _stage_note(r, "bench")
    figure = f"{row['minicolor_s'] * 1e3:.0f} ms per step"
    if row.get("torch_s"):
        figure += f"; PyTorch {row['torch_s'] * 1e3:.0f} ms"
    return row["minicolor_s"] <= 0.4, figure, None


@target("w16-b1-eager", "width 16, batch 1: <= 5 ms per step eager")
def _w16_b1_eager(r):
    profile = r.get("profile_b1")
    if not profile:
        return None, "", _stage_note(r, "profile-b1")
    figure = f"{profile['step_ms']:.2f} ms (profile: a plain step, median)"
    row = _bench_step(r, r["sizes"]["small_width"], 1)
    if row:
        figure += f"; bench {row['minicolor_s'] * 1e3:.2f} ms"
        if row.get("torch_s"):
            figure += f", PyTorch {row['torch_s'] * 1e3:.2f} ms"
    return profile["step_ms"] <= 5, figure, None


@target("w16-b1-graph", "width 16, batch 1: <= 3 ms per step as a CUDA graph")
def _w16_b1_graph(r):
    profile = r.get("profile_b1")
    if not profile:
        return None, "", _stage_note(r, "profile-b1")
    if "graph_ms" not in profile:
        if profile.get("graph_error"):
            return False, f"not captured: {profile['graph_error']}", None
        return None, "", "the profile captured no graph"
    return profile["graph_ms"] <= 3, f"{profile['graph_ms']:.2f} ms per replay", None


@target("fast-path", "every Numba launch of a step on the fast path (kernels.launch_count; CuPy's "
                     "kernels beside it)")
def _fast_path(r):
    steps = (r.get("launches") or {}).get("steps")
    if not steps:
        return None, "", _stage_note(r, "launches")
    parts = []
    for row in steps:
        text = f"width {row['width']}: {row['launches']} Numba launches"
        if "fast" in row:
            text += f", {row['fast']} fast"
        if row.get("not_fast"):
            text += " (Numba's launch: " + ", ".join(f"{k} {n}" for k, n in row["not_fast"].items()) + ")"
        if "graph_kernels" in row:
            text += f"; as a graph {row['graph_kernels']} kernels, {row['graph_cupy']} of them CuPy's"
        elif row.get("graph_error"):
            text += f"; graph not captured ({row['graph_error']})"
        parts.append(text)
    figure = "; ".join(parts)
    if not r["launches"].get("fast_launch", True):
        return None, figure, "the fast launch path is off: " + r.get("fast_launch", "")
    if any("fast" not in row for row in steps):
        return None, figure, "no fast-path count (simulator)"
    return all(row["fast"] == row["launches"] for row in steps), figure, None


@target("launch-host", "host time per fast launch <= 40 us")
def _launch_host(r):
    measured = r.get("launcher_host") or {}
    module = r.get("launcher_module")
    fast = {label: us for label, us in measured.items() if "numba" not in label.lower()}
    if not fast:
        found = f"launcher module {module}" if module else ""
        return None, found, _stage_note(r, "launcher-host")
    label, us = next(iter(fast.items()))
    figure = f"{us:.1f} us ({label})" + "".join(f"; {other}: {v:.1f} us" for other, v in measured.items()
                                                 if other != label)
    if not (r.get("fast_launch") or "").startswith("on"):
        return None, figure, "the fast launch path is off for this run's versions"
    return us <= 40, figure, None


@target("overfit", "overfit, 400 steps: <= 1.5 s, with the CPU reference's losses to four digits")
def _overfit(r):
    cpu = {int(k): v for k, v in r["cpu_losses"].items()}
    runs = {name: {int(k): v for k, v in (r.get(f"overfit_{name}") or {}).get("losses", {}).items()}
            for name in ("graph", "eager")}
    if not any(runs.values()):
        return None, "", _stage_note(r, "overfit-graph")
    ran = sorted(set(runs["graph"]) | set(runs["eager"]))
    steps = sorted(cpu) if set(cpu) & set(ran) else ran[-2:]
    losses = "; ".join(f"{name} " + "/".join(f"{run[s]:.4g}" if s in run else "-" for s in steps)
                       for name, run in runs.items())
    losses = f"losses at steps {'/'.join(map(str, steps))}: {losses}; CPU " + "/".join(
        f"{cpu[s]:.4g}" if s in cpu else "-" for s in steps)
    bench = (r.get("bench") or {}).get("overfit")
    fresh = [f"{name} {r[f'overfit_{name}']['summary']['seconds']:.1f} s" for name in ("graph", "eager")
             if (r.get(f"overfit_{name}") or {}).get("summary")]
    timing = (f"{bench['steps']} steps in {bench['minicolor_s']:.2f} s (bench, kernels compiled)" if bench
              else "no bench timing")
    figure = f"{timing}; `minicolor overfit` in a fresh process: {', '.join(fresh) or '-'}; {losses}"
    if not set(cpu) <= set(runs["graph"]):
        return None, figure, "the graph run logged no loss at steps " + "/".join(map(str, sorted(cpu)))
    if not bench or bench["steps"] != 400:
        return None, figure, "the bench's 400-step timing did not run"
    matches = all(four_digits(run[s]) == four_digits(cpu[s]) for run in runs.values() for s in cpu if s in run)
    return bench["minicolor_s"] <= 1.5 and matches, figure, None


def four_digits(value):
    return f"{value:.4g}"


@target("sanitizer", "compute-sanitizer memcheck and racecheck: no errors")
def _sanitizer(r):
    verdicts = {check: r.get(check) for check in ("memcheck", "racecheck")}
    figure = "; ".join(f"{check}: {v['verdict']}" + (f" ({v['errors']} errors)" if v.get("errors") is not None
                                                      else "") for check, v in verdicts.items() if v)
    if any(v and v["verdict"] == "errors" for v in verdicts.values()):
        return False, figure, None
    if all(v and v["verdict"] == "clean" for v in verdicts.values()):
        return True, figure, None
    if any(v and v["verdict"] == "unsupported" for v in verdicts.values()):
        return None, figure, ("compute-sanitizer answered 'device not supported': this machine is "
                              "sandboxed; an outcome of its own, not a failure of the kernels")
    missing = [c for c, v in verdicts.items() if not v or v["verdict"] == "unknown"]
    return None, figure, "; ".join(_stage_note(r, c) for c in missing)


def evaluate(r):
    """[(key, target, status, figure)] for every target."""
    rows = []
    for key, text, fn in TARGETS:
        try:
            met, figure, why = fn(r)
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:  # a result of another shape
            met, figure, why = None, "", f"could not read the figures ({type(exc).__name__}: {exc})"
        if r.get("mode") == "dry run":
            status = "not run (dry run)"
            figure = f"dry run on {r['sizes']['device']} and the simulator, not a GPU figure: {figure}" if figure else ""
        elif met is None:
            status = f"not run ({why})"
        else:
            status = "met" if met else "not met"
        rows.append((key, text, status, figure))
    return rows


# --- the document ---------------------------------------------------------------------------------------
def _table(head, rows):
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in rows]
    return lines


def summary(r):
    dry = r.get("mode") == "dry run"
    title = "dry run on the CPU" if dry else (r.get("gpu") or "GPU not identified")
    lines = [f"# minicolor GPU check: {title}", ""]
    if dry:
        lines += ["A dry run: every stage ran on the CPU (kernels on Numba's simulator, commands at tiny "
                  "sizes on `--device cpu`, stand-ins for nvidia-smi, compute-sanitizer and ncu). It tests "
                  "the check itself; no figure below is a GPU figure.", ""]
    lines += [f"{r.get('elapsed_s', 0):.0f} s of the {r['budget_s']} s budget. Fast launch path: "
              f"{r.get('fast_launch', 'not decided yet')}.", "", "## Targets", ""]
    lines += _table(["target", "status", "figure"], [row[1:] for row in evaluate(r)])
    lines += ["", "## Stages", "", "Logs: `gpu-check-logs.tar.gz`, folder `gpu-check/logs/`.", ""]
    lines += _table(["stage", "outcome", "seconds", "limit", "log", "note"],
                    [(name, s["outcome"], f"{s['seconds']:.0f}", f"{s['limit']:.0f}", s["log"] or "-", s["note"])
                     for name, s in r.get("stages", {}).items()])
    lines += ["", "## The machine", ""]
    versions = r.get("versions") or {}
    lines.append("- versions: " + (", ".join(f"{k} {v or 'not installed'}" for k, v in versions.items()) or "-"))
    lines.append("- pinned for the fast launch path (pyproject.toml, cuda extra): "
                 + ", ".join(f"{k} {v}" for k, v in (r.get("pins") or {}).items()))
    wheels = r.get("wheels") or {}
    lines.append(f"- wheels carried in wheels/: {', '.join(wheels.get('carried') or []) or 'none'}; installed: "
                 f"{', '.join(wheels.get('installed') or []) or 'none'}"
                 + "".join(f"; {note}" for note in wheels.get("notes") or []))
    for tool, path in (r.get("tools") or {}).items():
        lines.append(f"- {tool}: {path or 'not found'}")
    for section in (_compiling, _tests, _profiles, _overfit_table, _bench_tables, _ncu_table):
        try:
            lines += section(r)
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:  # results of another shape
            lines += ["", f"({section.__name__.strip('_')}: could not be shown: {type(exc).__name__}: {exc}; "
                          "see results.json)"]
    return "\n".join(lines) + "\n"


def _compiling(r):
    lines = ["", "## Compiling", ""]
    probe = r.get("probe") or {}
    if "compile_s" in probe:
        lines.append(f"- trivial kernel on {probe.get('device')}: numba.cuda import {probe['import_s']:.2f} s, "
                     f"compile + first launch {probe['compile_s']:.2f} s, result "
                     f"{'correct' if probe.get('correct') else 'WRONG'}")
    kernels = r.get("kernels") or {}
    if kernels.get("rounds_s"):
        rounds = kernels["rounds_s"]
        lines.append(f"- every kernel on tiny cases ({kernels['calls']} calls, {kernels['launches']} launches): "
                     f"{rounds[0]:.1f} s compiling and running, then {rounds[-1]:.2f} s compiled")
    for row in (r.get("launches") or {}).get("steps", []):
        if "first_step_s" in row:
            lines.append(f"- first training step of width {row['width']} in the launches stage: "
                         f"{row['first_step_s']:.1f} s (compiles what the kernels stage's cache lacks)")
    lines.append(f"- Numba's on-disk cache (NUMBA_CACHE_DIR, shared by the stages): "
                 f"{r.get('numba_cache_files', 0)} files at the end (0: nothing cached, every process compiles)")
    return lines


def _tests(r):
    lines = ["", "## GPU tests and compute-sanitizer", ""]
    tests = r.get("gpu_tests") or {}
    counts = ", ".join(f"{n} {word}" for word, n in tests.get("counts", {}).items())
    lines.append(f"- tests/test_*_gpu.py: {counts or 'no summary (see the log)'}"
                 + (f" in {tests['seconds']:.0f} s" if tests.get("seconds") else ""))
    for check in ("memcheck", "racecheck"):
        verdict = r.get(check)
        if verdict:
            lines.append(f"- {check}: {verdict['verdict']}" + (f", {verdict['errors']} errors" if verdict.get("errors")
                                                              else ""))
            lines += [f"  - `{line.strip('= ')}`" for line in verdict.get("first") or []]
    return lines


def _profiles(r):
    lines = ["", "## Profiles", ""]
    rows = []
    for key in ("profile_b1", "profile_b32"):
        p = r.get(key)
        if p:
            rows.append((f"{p['width']} / {p['batch']}", *(_ms(p.get(k)) for k in ("step_ms", "graph_ms", "host_ms")),
                         _or_dash(p.get("launches")), _or_dash(p.get("graph_kernels"))))
    if not rows:
        return lines + ["- not run"]
    lines += _table(["width / batch", "step ms (eager)", "graph ms", "host ms to send", "Numba launches",
                     "graph kernels"], rows)
    for key in ("profile_b1", "profile_b32"):
        p = r.get(key)
        if p and p.get("rows"):
            top = sorted(p["rows"], key=lambda row: -(row["forward_ms"] + row["backward_ms"]))[:5]
            lines += ["", f"Batch {p['batch']}, the 5 layers that take longest "
                          f"({'GPU' if p.get('gpu') else 'wall'} ms, forward + backward): "
                      + ", ".join(f"{row['layer']} {row['kind']} {row['forward_ms'] + row['backward_ms']:.2f}"
                                  for row in top)]
    return lines


def _ms(value):
    return "-" if value is None else f"{value:.2f}"


def _or_dash(value):
    return "-" if value is None else value


def _overfit_table(r):
    runs = {name: {int(k): v for k, v in (r.get(f"overfit_{name}") or {}).get("losses", {}).items()}
            for name in ("graph", "eager")}
    if not any(runs.values()):
        return []
    cpu = {int(k): v for k, v in r["cpu_losses"].items()}
    last = {max(losses) for losses in runs.values() if losses}
    shown = sorted(set(cpu) | last | {s for losses in runs.values() for s in losses if s % 100 == 0})
    lines = ["", "## Overfit (the bridge photo)", ""]
    lines += _table(["step", "graph", "eager", "CPU reference"],
                    [(s, *(f"{runs[n][s]:.4f}" if s in runs[n] else "-" for n in ("graph", "eager")),
                      f"{cpu[s]:.2f}" if s in cpu else "-") for s in shown])
    return lines


def _bench_tables(r):
    bench = r.get("bench")
    if not bench:
        return []
    lines = ["", "## Bench", ""]
    lines += _table(["width", "batch", "minicolor ms", "img/s", "PyTorch ms"],
                    [(row["width"], row["batch"], f"{row['minicolor_s'] * 1e3:.2f}",
                      f"{row['batch'] / row['minicolor_s']:,.0f}",
                      f"{row['torch_s'] * 1e3:.2f}" if row.get("torch_s") else "-") for row in bench.get("steps", [])])
    layers = bench.get("layers", [])
    if layers:
        impls = ["minicolor", *_variants(layers[0]), "reference", "torch"]
        impls = [i for i in impls if any(row.get(f"{i}_s") for row in layers)]
        lines += ["", "Conv layers, TFLOP/s:", ""]
        lines += _table(["layer", "pass", *impls],
                        [(_label(row), row["pass"], *(f"{_tflops(row, i):.2f}" if row.get(f"{i}_s") else "-"
                                                      for i in impls)) for row in layers])
    return lines


def _short(kernel):
    """A kernel's name without its argument types, template or ABI tag and namespaces:
    'minicolor::...::<locals>::gather_gemm[abi:...](Array<float, ...>)' -> 'gather_gemm'."""
    name = re.sub(r"\[.*$", "", kernel.split("(")[0])
    return name.split("::")[-1][:60] or kernel[:60]


def _ncu_table(r):
    ncu = r.get("ncu")
    if not ncu:
        return []
    layer = ncu.get("layer") or {}
    lines = ["", "## Nsight Compute", ""]
    if layer:
        lines.append(f"Layer {layer.get('layer')}: x {layer.get('x')}, w {layer.get('w')}; passes in order: "
                     f"{', '.join(layer.get('passes', []))}.")
    if ncu.get("refused"):
        lines.append("ncu could not read the hardware counters on this machine (a sandbox).")
    rows = []
    for k in ncu.get("kernels", []):
        m = {name: value for name, (value, unit) in k["metrics"].items()}
        units = {name: unit for name, (value, unit) in k["metrics"].items()}
        time = m.get("gpu__time_duration.sum")
        if time is not None and units.get("gpu__time_duration.sum") in ("ns", "nsecond"):
            time /= 1e6
        elif time is not None and units.get("gpu__time_duration.sum") in ("us", "usecond"):
            time /= 1e3
        ffma = m.get("smsp__sass_thread_inst_executed_op_ffma_pred_on.sum")
        per_fma = (m["smsp__inst_executed.sum"] / (ffma / 32)) if ffma and "smsp__inst_executed.sum" in m else None
        rows.append((_short(k["name"]), "x".join(map(str, k["grid"])), "x".join(map(str, k["block"])),
                     f"{time:.3f}" if time is not None else "-",
                     *(f"{m[name]:.0f}" if name in m else "-" for name in
                       ("sm__throughput.avg.pct_of_peak_sustained_elapsed",
                        "dram__throughput.avg.pct_of_peak_sustained_elapsed",
                        "sm__warps_active.avg.pct_of_peak_sustained_active", "launch__registers_per_thread")),
                     f"{per_fma:.2f}" if per_fma else "-"))
    lines += [""] + _table(["kernel", "grid", "block", "ms", "SM %", "DRAM %", "occupancy %", "registers",
                            "warp instructions per FFMA"], rows) if rows else ["- no kernel in its output"]
    return lines

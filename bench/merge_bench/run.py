"""Benchmarking one shape, in order: the models, warm-up reads, dry-run estimates, untimed ``-vv`` phase
runs, the timed rounds (the I/O floors, then every variant), the cold-read round (``--cold-reads``), the
output comparison, the report."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .compare import compare_outputs
from .data import Inputs, Workdir, mergekit_yaml_text, method_yaml_text
from .environment import source_digest
from .measure import RunResult, drop_cache, measure, phase_times
from .report import Measured, print_footer, print_report, ratios, shape_json, summaries
from .running_cluster import running_cluster
from .util import log, parse_size
from .variants import FLOOR_ONCE, KINDS, Floor, Spec, Tools, Variant, check_mergekit, floors, select_variants


@dataclass
class Bench:
    """One shape's benchmark under way: its inputs, where it writes, and what it runs."""

    args: argparse.Namespace
    inputs: Inputs
    work: Workdir
    tools: Tools
    variants: list[Variant]
    floors: list[Floor]
    mergekit_env: dict[str, str]
    """The environment of mergekit-yaml: offline, so it never looks for the models on the Hub."""

    def command(self, v: Variant, extra: list[str], dest: Path | None = None) -> list[str]:
        return self.tools.command(v, self.inputs.dirs, dest or self.work.out, extra)

    def warm(self) -> float:
        """Read every input file once (untimed); return the seconds it took.

        Before *every* timed run, not once: the page cache does not keep idle files for long on every
        machine (a long mergekit run, or a proactive reclaimer such as DAMON's, which pages out file
        pages idle for about a minute on the machines these figures come from), and a run that found
        its inputs on disk would be compared with one that found them in memory."""
        t0 = time.perf_counter()
        subprocess.run(["sh", "-c", self.inputs.read_once()], check=True)
        return time.perf_counter() - t0

    def repeats(self, v: Variant) -> int:
        if v.kind == "mergekit-yaml" and self.args.mergekit_repeat:
            return self.args.mergekit_repeat
        return self.args.repeat


def _python(ooc: str) -> str:
    """The Python beside the ooc-ties executable (it has ooc_ties and NumPy), else this one."""
    pyexe = Path(ooc).with_name("python")
    return str(pyexe) if pyexe.exists() else sys.executable


def _warm_up(b: Bench) -> None:
    log("warm-up read of the inputs (untimed)")
    log(f"warm-up read took {b.warm():.1f} s")
    exe = b.tools.mergekit
    if exe is not None:  # loads torch/mergekit once, so the first timed run does not read them from disk
        t0 = time.perf_counter()
        r = subprocess.run([str(exe), "--help"], capture_output=True, text=True, env=b.mergekit_env)
        if r.returncode != 0:
            sys.exit(f"bench: {exe} --help failed:\n{r.stderr[-2000:]}")
        log(f"mergekit-yaml --help (untimed warm-up) took {time.perf_counter() - t0:.1f} s")


def _estimates(b: Bench) -> dict[str, str]:
    """The engine's own memory estimate and block size per ooc-ties variant (dry run: reads headers only)."""
    estimates: dict[str, str] = {}
    for v in b.variants:
        if not v.engine:
            continue
        r = subprocess.run(b.command(v, ["--dry-run"]), capture_output=True, text=True)
        m = re.search(r"peak memory \(engine\): (.+)", r.stdout)
        estimates[v.name] = m.group(1) if m else (r.stdout + r.stderr).strip()[:200]
        blocks = re.search(r"blocks: (.+)", r.stdout)
        if blocks:
            estimates[v.name] += f"; blocks: {blocks.group(1)}"
    return estimates


def _phase_run(b: Bench, v: Variant) -> dict[str, Any]:
    """One untimed ``-vv`` run of ``v`` with progress bars: its phases, peak RssAnon and ooc_ties log lines."""
    b.work.clean_out()
    lines: list[tuple[float, str]] = []
    cmd = b.command(v, ["-vv"])
    log(f"phase run (untimed): {shlex.join(cmd)}")
    res = measure(cmd, b.inputs.input_bytes, v.name, -1, stderr_lines=lines)
    if res.returncode != 0:
        tail = [line for _, line in lines[-30:]]
        print("\n".join(tail), file=sys.stderr)
        if KINDS[v.kind].fatal:
            sys.exit(f"bench: phase run of {v.name} failed with exit code {res.returncode}")
        log(f"phase run of {v.name} failed with exit code {res.returncode}; its timed runs will tell")
        b.work.clean_out()
        return {"wall_s": res.wall_s, "failed": res.returncode, "stderr_tail": tail}
    phases = phase_times(lines, res.wall_s)
    phases["rss_anon_peak_mib"] = res.rss_anon_peak_kib / 1024
    engine_read = _engine_read_bytes([line for _, line in lines])
    if engine_read is not None:
        phases["engine_reads"] = engine_read / b.inputs.input_bytes
    phases["log"] = [f"{t:8.3f} {line}" for t, line in lines if "ooc_ties" in line][:200]
    log(f"  {v.name}: " + ", ".join(f"{k} {val:.2f}" for k, val in phases.items() if isinstance(val, float)))
    b.work.clean_out()
    return phases


def _engine_read_bytes(lines: list[str]) -> float | None:
    """The input bytes ooc-ties says it read, from its closing line (without ``-q``): a grid's ``read X GB of
    input``, or one merge's ``in S s, R GB/s of input read`` (R x S: to about 1 %)."""
    for line in reversed(lines):
        m = re.search(r"read ([0-9.e+]+) GB of input", line)
        if m:
            return float(m.group(1)) * 1e9
        m = re.search(r"in ([0-9.]+) s, ([0-9.]+) (GB|MB)/s of input read", line)
        if m:
            return float(m.group(1)) * float(m.group(2)) * (1e9 if m.group(3) == "GB" else 1e6)
    return None


def _floor_run(b: Bench, floor: Floor, rnd: int, rounds: int) -> RunResult:
    warm_s = b.warm()
    res = measure(floor.command(b.inputs.read_once()), b.inputs.input_bytes, floor.name, rnd)
    res.warm_read_s = warm_s
    if res.returncode != 0:
        sys.exit(f"bench: the I/O floor command failed with exit code {res.returncode}")
    log(f"round {rnd + 1}/{rounds}: {floor.name}: {res.wall_s:.2f} s (warm-up read before it {warm_s:.1f} s)")
    return res


def _report_failure(v: Variant, res: RunResult, cmd: list[str], err_path: Path | None, rnd: int) -> None:
    """A failed run of a fatal kind (an ooc-ties preset) stops the benchmark; another is logged, and the last
    line of its stderr goes into the run's note."""
    if KINDS[v.kind].fatal:
        sys.exit(f"bench: {shlex.join(cmd)} failed with exit code {res.returncode}")
    tail = err_path.read_text(errors="replace")[-3000:] if err_path and err_path.exists() else ""
    last = [line for line in tail.splitlines() if line.strip()][-1:]
    if last:
        res.note += f"; {last[0].strip()}"
    log(
        f"round {rnd + 1}: {v.name} {res.status} after {res.wall_s:.1f} s ({res.note}); "
        f"peak RssAnon {res.rss_anon_peak_kib / 1024:.0f} MiB, maxrss {res.maxrss_kib / 1024:.0f} MiB"
        + (f"\n{tail}" if tail else "")
    )


def _keep_or_clean(b: Bench, v: Variant, last: bool) -> None:
    """After a successful run: keep its output for --compare-output or --keep-output, else delete it."""
    args, work = b.args, b.work
    if args.compare_output and last and v.kind == "mergekit-yaml" and v.method is None:
        work.out.rename(work.kept_mergekit)
    elif args.compare_output and last and v.kind == "ooc" and v.preset == "mergekit" and not work.kept_ooc.exists():
        work.out.rename(work.kept_ooc)
    elif not (args.keep_output and last and v is b.variants[-1]):
        work.clean_out()


def _check_output(b: Bench, v: Variant) -> None:
    """A kind that writes leaves ``.safetensors`` files: in ``WORKDIR/out``, or in one folder per grid point; the
    ``report`` variant also ``WORKDIR/report-out/report.json``."""
    if not KINDS[v.kind].writes_output:
        return
    folders = {p.parent for p in b.work.out.rglob("*.safetensors")}
    if len(folders) != v.merges:
        sys.exit(f"bench: {b.work.out} holds .safetensors in {len(folders)} folder(s) after {v.name}, not {v.merges}")
    if v.kind == "ooc-report" and not (b.work.report_out / "report.json").is_file():
        sys.exit(f"bench: no {b.work.report_out / 'report.json'} after {v.name}")


def _timed_run(b: Bench, v: Variant, rnd: int, rounds: int) -> RunResult:
    b.work.clean_out()
    cmd = b.command(v, ["-q"])
    if rnd == 0:
        log(f"  command: {shlex.join(cmd)}")
    err_path = None if KINDS[v.kind].fatal else b.work.stderr_log(v.name)
    if err_path is not None:
        err_path.parent.mkdir(parents=True, exist_ok=True)
    warm_s = b.warm()
    res = measure(
        cmd,
        b.inputs.input_bytes,
        v.name,
        rnd,
        stderr_path=err_path,
        env=b.mergekit_env if v.kind == "mergekit-yaml" else None,
        timeout=b.args.timeout if not v.engine else None,
        oom_first=not v.engine,
    )
    res.warm_read_s = warm_s
    res.merges = v.merges
    if res.status != "ok":
        _report_failure(v, res, cmd, err_path, rnd)
        b.work.clean_out()
        return res
    _check_output(b, v)
    log(
        f"round {rnd + 1}/{rounds}: {v.name}: {res.wall_s:.2f} s, cpu {res.cpu_s:.2f} s, "
        f"maxrss {res.maxrss_kib / 1024:.0f} MiB, RssAnon peak {res.rss_anon_peak_kib / 1024:.0f} MiB, "
        f"load {res.loadavg_before:.2f}, warm-up read before it {warm_s:.1f} s"
    )
    _keep_or_clean(b, v, rnd == b.repeats(v) - 1)
    return res


def _timed_rounds(b: Bench) -> list[RunResult]:
    """The timed rounds, in alternation: the floors (``--repeat`` rounds), then each variant."""
    runs: list[RunResult] = []
    given_up: set[str] = set()  # a variant that timed out or was killed is not run again
    rounds = max([b.args.repeat, *(b.repeats(v) for v in b.variants)])
    for rnd in range(rounds):
        if rnd < b.args.repeat:
            runs += [_floor_run(b, floor, rnd, rounds) for floor in b.floors]
        for v in b.variants:
            if rnd >= b.repeats(v) or v.name in given_up:
                continue
            res = _timed_run(b, v, rnd, rounds)
            if res.status != "ok":
                given_up.add(v.name)
            runs.append(res)
    return runs


def _reads(res: RunResult, input_bytes: int) -> str:
    return (
        f"read {res.read_bytes / 1e9:.2f} GB from storage ({res.read_bytes / input_bytes:.2f}x the input; "
        f"per merge {res.read_bytes / input_bytes / res.merges:.3f}x; rusage inblock {res.inblock_bytes / 1e9:.2f} GB)"
    )


def _cold_round(b: Bench) -> list[RunResult]:
    """``--cold-reads``: the one-read floor, then every ooc-ties variant once, each right after ``drop_cache``
    of the inputs (no warm-up read): its bytes read from storage. Not in the medians of the timed rounds."""
    runs: list[RunResult] = []
    todo: list[tuple[str, list[str], int]] = [(FLOOR_ONCE.name, FLOOR_ONCE.command(b.inputs.read_once()), 1)]
    todo += [(v.name, b.command(v, ["-q"]), v.merges) for v in b.variants if v.engine]
    for name, cmd, merges in todo:
        b.work.clean_out()
        drop_cache(b.inputs.files)
        res = measure(cmd, b.inputs.input_bytes, name, 0)
        res.cold, res.merges = True, merges
        if res.returncode != 0:
            sys.exit(f"bench: cold-read run of {name} failed with exit code {res.returncode}")
        log(f"cold-read run: {name}: {res.wall_s:.2f} s, " + _reads(res, b.inputs.input_bytes))
        b.work.clean_out()
        runs.append(res)
    if runs and runs[0].read_bytes < 0.9 * b.inputs.input_bytes:
        log(
            f"WARNING: the cold {FLOOR_ONCE.name} read only {runs[0].read_bytes / 1e9:.2f} GB of "
            f"{b.inputs.input_bytes / 1e9:.2f} GB from storage: the page cache was not dropped (or read_bytes "
            "is not counted here)"
        )
    return runs


def _prepare(args: argparse.Namespace, shape: str, models: Path, specs: list[Spec]) -> tuple[Bench, dict[str, str]]:
    """The models (generated if absent), the variants that run on them, the mergekit configs they run; the
    skipped variants."""
    work = Workdir(args.workdir)
    inputs = Inputs.prepare(args.ooc_ties, shape, models)
    variants, skipped = select_variants(specs, args.budget, inputs.parameters)
    mk_exe = check_mergekit(args.mergekit_venv) if any(v.kind == "mergekit-yaml" for v in variants) else None
    if any(v.kind == "mergekit-yaml" and v.method is None for v in variants):
        work.mergekit_config.write_text(mergekit_yaml_text(inputs.dirs, args.mergekit_density))
    for method in dict.fromkeys(v.method for v in variants if v.method):
        work.method_config(method).parent.mkdir(parents=True, exist_ok=True)
        work.method_config(method).write_text(method_yaml_text(method, inputs.dirs))
    tools = Tools(args.ooc_ties, _python(args.ooc_ties), mk_exe, work)
    mk_env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return Bench(args, inputs, work, tools, variants, floors(variants), mk_env), skipped


def _measure_all(b: Bench, skipped: dict[str, str]) -> Measured:
    b.work.clear_kept()
    b.work.clean_out()
    _warm_up(b)
    estimates = _estimates(b)
    phases = {} if b.args.no_phases else {v.name: _phase_run(b, v) for v in b.variants if v.engine}
    runs = _timed_rounds(b)
    cold_runs = _cold_round(b) if b.args.cold_reads else []
    comparison = None
    if b.args.compare_output:
        comparison = compare_outputs(b.tools, b.inputs.dirs, b.work, b.args.keep_output)
    return Measured(
        inputs=b.inputs,
        variants=b.variants,
        floors=b.floors,
        commands={v.name: b.tools.command_text(v, b.inputs.dirs, b.work.out) for v in b.variants},
        skipped=skipped,
        mergekit_config=(
            b.work.mergekit_config.read_text()
            if any(v.kind == "mergekit-yaml" and v.method is None for v in b.variants)
            else None
        ),
        method_configs={
            v.method: b.work.method_config(v.method).read_text() for v in b.variants if v.method is not None
        },
        runs=runs,
        cold_runs=cold_runs,
        estimates=estimates,
        phases=phases,
        comparison=comparison,
    )


def run_shape(args: argparse.Namespace, shape: str, models: Path, specs: list[Spec]) -> dict[str, Any]:
    """Generate (if needed) and benchmark one shape; print the tables; return the report."""
    args.workdir.mkdir(parents=True, exist_ok=True)
    budget_bytes = parse_size(args.budget) if args.budget else None
    started = time.perf_counter()
    digest_before = source_digest()
    b, skipped = _prepare(args, shape, models, specs)
    running = [v for v in b.variants if v.kind == "ooc-running"]
    with contextlib.ExitStack() as stack:
        if running:
            workers = running[0].threads or 2
            address = stack.enter_context(running_cluster(args.ooc_ties, workers, args.workdir / "cluster"))
            b = dataclasses.replace(b, tools=dataclasses.replace(b.tools, cluster=address))
        m = _measure_all(b, skipped)
    summary = summaries(m)
    rt = ratios(m, summary)
    print_report(args, m, summary, rt, budget_bytes)
    total = time.perf_counter() - started
    digest_after = source_digest()
    print_footer(total, digest_before, digest_after)
    return shape_json(args, m, summary, rt, total, (digest_before, digest_after))

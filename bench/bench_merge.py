#!/usr/bin/env python3
"""Benchmark ``ooc-ties merge`` against the I/O floor of reading its inputs from a warm page cache.

    python bench/bench_merge.py --shape 1b --workdir /tmp/oocbench --repeat 3 [--budget 256MiB] [--json out.json]

* Generates ``WORKDIR/models/{base,ft1,ft2,ft3}`` once with ``ooc-ties generate SHAPE WORKDIR/models``.
* Per round (``--repeat`` rounds, alternating): the I/O floor (``cat`` every input file twice, as one
  command, after one untimed warm-up read), then every merge variant (output deleted after each run).
* Per run, for the whole child process (tree): wall time, CPU time (user+sys from ``os.wait4``), peak
  RSS (``ru_maxrss``), peak ``RssAnon`` and ``RssFile`` (sampled from ``/proc/<pid>/status`` every
  ~20 ms) and GB/s of input (input bytes counted once, whatever the number of passes).
* Reports medians per variant, ooc-ties/floor wall ratios and 1-thread/2-thread speedups, as a table
  and optionally as JSON.

Before the timed rounds, each merge variant runs once untimed with ``-vv`` and progress bars (a warm-up
of the Numba cache and the page cache) and its stderr is timestamped line by line, which gives the
time of startup, pass 1 (and its sub-passes) and pass 2. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SHAPES = ("tiny", "demo", "1b", "3b", "70b-slice")
N_FINETUNED = 3
POLL_SECONDS = 0.02
MiB = 1024 * 1024


# --------------------------------------------------------------------------------------------- helpers


def parse_size(text: str) -> int:
    """'256MiB', '2GiB', '5GB', '1000' -> bytes (only for display; ooc-ties parses the flag itself)."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?)(i?)B?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"cannot parse size {text!r}")
    number, prefix, binary = float(m.group(1)), m.group(2).upper(), bool(m.group(3))
    power = "KMGT".find(prefix) + 1 if prefix else 0
    return int(number * (1024 if binary else 1000) ** power)


def default_ooc_ties() -> str:
    beside = Path(sys.executable).with_name("ooc-ties")
    if beside.exists():
        return str(beside)
    found = shutil.which("ooc-ties")
    return found or "ooc-ties"


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ process measuring


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (via /proc/<pid>/task/<tid>/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
            except OSError:
                pass
    return out


def _status_kib(pid: int, keys: tuple[str, ...]) -> dict[str, int]:
    values: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in keys:
                    values[key] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return values


class MemoryPoller(threading.Thread):
    """Samples RssAnon / RssFile / VmRSS (summed over the process tree) until stopped; keeps the maxima."""

    KEYS = ("RssAnon", "RssFile", "VmRSS")

    def __init__(self, pid: int, interval: float = POLL_SECONDS) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.peak = {k: 0 for k in self.KEYS}  # KiB
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            totals = {k: 0 for k in self.KEYS}
            for p in _tree(self.pid):
                for k, v in _status_kib(p, self.KEYS).items():
                    totals[k] += v
            for k in self.KEYS:
                self.peak[k] = max(self.peak[k], totals[k])
            self.samples += 1
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


@dataclass
class RunResult:
    variant: str
    round: int
    wall_s: float
    cpu_s: float
    user_s: float
    sys_s: float
    maxrss_kib: int
    rss_anon_peak_kib: int
    rss_file_peak_kib: int
    vm_rss_peak_kib: int
    samples: int
    gbps: float
    loadavg_before: float
    returncode: int
    minor_faults: int = 0
    major_faults: int = 0
    voluntary_switches: int = 0
    involuntary_switches: int = 0


def measure(
    cmd: list[str],
    input_bytes: int,
    variant: str,
    rnd: int,
    *,
    stderr_lines: list | None = None,
) -> RunResult:
    """Run ``cmd``; measure wall, rusage of the child and sampled memory peaks.

    With ``stderr_lines`` the child's stderr is read line by line (split on \\n and \\r, for tqdm)
    and each line stored with its arrival time relative to the start.
    """
    load = os.getloadavg()[0]
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE if stderr_lines is not None else None,
    )
    poller = MemoryPoller(proc.pid)
    poller.start()
    reader = None
    if stderr_lines is not None:
        reader = threading.Thread(target=_read_lines, args=(proc.stderr, started, stderr_lines), daemon=True)
        reader.start()
    _, status, rusage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    poller.stop()
    proc.returncode = os.waitstatus_to_exitcode(status)  # wait4 reaped it; keep Popen consistent
    if reader is not None:
        reader.join()
        proc.stderr.close()
    cpu = rusage.ru_utime + rusage.ru_stime
    return RunResult(
        variant=variant,
        round=rnd,
        wall_s=wall,
        cpu_s=cpu,
        user_s=rusage.ru_utime,
        sys_s=rusage.ru_stime,
        maxrss_kib=rusage.ru_maxrss,
        rss_anon_peak_kib=poller.peak["RssAnon"],
        rss_file_peak_kib=poller.peak["RssFile"],
        vm_rss_peak_kib=poller.peak["VmRSS"],
        samples=poller.samples,
        gbps=input_bytes / wall / 1e9,
        loadavg_before=load,
        returncode=proc.returncode,
        minor_faults=rusage.ru_minflt,
        major_faults=rusage.ru_majflt,
        voluntary_switches=rusage.ru_nvcsw,
        involuntary_switches=rusage.ru_nivcsw,
    )


def _read_lines(stream: Any, started: float, out: list) -> None:
    buf = b""
    while True:
        chunk = stream.read1(65536)
        now = time.perf_counter() - started
        if not chunk:
            break
        buf += chunk
        parts = re.split(rb"[\r\n]", buf)
        buf = parts.pop()
        out.extend((now, p.decode(errors="replace")) for p in parts if p.strip())
    if buf.strip():
        out.append((time.perf_counter() - started, buf.decode(errors="replace")))


# ---------------------------------------------------------------------------------------- the variants


@dataclass
class Variant:
    preset: str
    threads: int | None
    budget: str | None

    @property
    def name(self) -> str:
        t = f"{self.threads}t" if self.threads else "all-cpus"
        return f"{self.preset}/{t}" + (f"/{self.budget}" if self.budget else "")

    def args(self) -> list[str]:
        out = ["--preset", self.preset]
        if self.threads:
            out += ["--threads", str(self.threads)]
        if self.budget:
            out += ["--memory-budget", self.budget]
        return out


def parse_variant(text: str) -> tuple[str, int | None]:
    preset, _, threads = text.partition(":")
    if preset not in ("paper", "mergekit"):
        raise argparse.ArgumentTypeError(f"variant {text!r}: preset must be paper or mergekit")
    if threads in ("", "all"):
        return preset, None
    try:
        n = int(threads)
    except ValueError:
        raise argparse.ArgumentTypeError(f"variant {text!r}: threads must be an integer") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"variant {text!r}: threads must be positive")
    return preset, n


# ---------------------------------------------------------------------------------------- the inputs


def model_dirs(models: Path) -> list[Path]:
    return [models / "base"] + [models / f"ft{i + 1}" for i in range(N_FINETUNED)]


def expected_config(shape: str) -> dict[str, Any] | None:
    # in a child process: importing ooc_ties (NumPy, Numba) here would inflate the children's ru_maxrss
    code = "import json, sys; from ooc_ties.synthetic import SHAPES; print(json.dumps(SHAPES[sys.argv[1]].config()))"
    r = subprocess.run([sys.executable, "-c", code, shape], capture_output=True, text=True)
    return json.loads(r.stdout) if r.returncode == 0 else None


def ensure_models(ooc: str, shape: str, models: Path) -> float | None:
    """Generate the models if absent; return the generation wall time (None if they were there)."""
    dirs = model_dirs(models)
    if all(d.is_dir() and list(d.glob("*.safetensors")) for d in dirs):
        want = expected_config(shape)
        if want is not None:
            have = json.loads((dirs[0] / "config.json").read_text())
            keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size")
            if any(have.get(k) != want[k] for k in keys):
                sys.exit(
                    f"bench: {models} holds models of another shape than {shape!r}; delete it or use another --workdir"
                )
        log(f"reusing models in {models}")
        return None
    if models.exists() and any(models.iterdir()):
        sys.exit(f"bench: {models} exists but is incomplete; delete it and run again")
    cmd = [ooc, "generate", shape, str(models), "--models", str(N_FINETUNED)]
    log(f"generating: {shlex.join(cmd)}")
    started = time.perf_counter()
    subprocess.run(cmd, check=True)
    seconds = time.perf_counter() - started
    log(f"generated in {seconds:.1f} s")
    return seconds


def input_files(models: Path) -> list[Path]:
    files: list[Path] = []
    for d in model_dirs(models):
        files += sorted(d.glob("*.safetensors"))
    return files


# ------------------------------------------------------------------------------------------ phases


def phase_times(lines: list[tuple[float, str]], wall: float) -> dict[str, Any]:
    """Startup / pass 1 / pass 2 / finish times from a timestamped ``-vv`` + progress-bar stderr."""
    first: dict[str, float] = {}
    subpasses: dict[str, float] = {}
    sub_events: list[tuple[float, str]] = []
    for t, line in lines:
        if "pass 1/2" in line:
            first.setdefault("pass1", t)
        elif "pass 2/2" in line:
            first.setdefault("pass2", t)
            if "100%" in line:
                first.setdefault("pass2_done", t)
        m = re.search(r"ooc_ties\.thresholds: pass 1: (?:.*: )?(.+?) over \d+ blocks", line)
        if m:
            sub_events.append((t, m.group(1)))
        if "ooc_ties.merge: plan:" in line:
            first.setdefault("plan", t)
    out: dict[str, Any] = {"wall_s": wall}
    p1, p2 = first.get("pass1"), first.get("pass2")
    if p1 is not None:
        out["startup_s"] = p1
    if p1 is not None and p2 is not None:
        out["pass1_s"] = p2 - p1
    if p2 is not None:
        out["pass2_and_finish_s"] = wall - p2
        if "pass2_done" in first:
            out["pass2_s"] = first["pass2_done"] - p2
            out["finish_s"] = wall - first["pass2_done"]
    # sub-passes of pass 1: from each "pass 1: X over N blocks" line to the next one (or pass 2)
    ends = [t for t, _ in sub_events[1:]] + [p2 if p2 is not None else wall]
    for (t, label), end in zip(sub_events, ends, strict=True):
        subpasses[label] = subpasses.get(label, 0.0) + (end - t)
    if subpasses:
        out["pass1_subpasses_s"] = subpasses
    return out


# ------------------------------------------------------------------------------------------ reporting


def summarize(runs: list[RunResult]) -> dict[str, Any]:
    med = statistics.median
    return {
        "runs": len(runs),
        "wall_s": med(r.wall_s for r in runs),
        "wall_min_s": min(r.wall_s for r in runs),
        "wall_max_s": max(r.wall_s for r in runs),
        "cpu_s": med(r.cpu_s for r in runs),
        "sys_s": med(r.sys_s for r in runs),
        "minor_faults": med(r.minor_faults for r in runs),
        "cpu_per_wall": med(r.cpu_s / r.wall_s for r in runs),
        "gbps": med(r.gbps for r in runs),
        "maxrss_mib": med(r.maxrss_kib for r in runs) / 1024,
        "rss_anon_peak_mib": med(r.rss_anon_peak_kib for r in runs) / 1024,
        "rss_anon_peak_max_mib": max(r.rss_anon_peak_kib for r in runs) / 1024,
        "rss_file_peak_mib": med(r.rss_file_peak_kib for r in runs) / 1024,
    }


def print_table(summary: dict[str, dict[str, Any]], floor_name: str, budget: int | None) -> None:
    floor_wall = summary[floor_name]["wall_s"]
    cols = [
        "variant",
        "runs",
        "wall s",
        "min-max s",
        "cpu s",
        "sys s",
        "cpu/wall",
        "GB/s",
        "maxRSS MiB",
        "RssAnon MiB",
        "RssFile MiB",
        "x floor",
    ]
    if budget:
        cols.append("anon/budget")
    rows = []
    for name, s in summary.items():
        row = [
            name,
            str(s["runs"]),
            f"{s['wall_s']:.2f}",
            f"{s['wall_min_s']:.2f}-{s['wall_max_s']:.2f}",
            f"{s['cpu_s']:.2f}",
            f"{s['sys_s']:.2f}",
            f"{s['cpu_per_wall']:.2f}",
            f"{s['gbps']:.2f}",
            f"{s['maxrss_mib']:.0f}",
            f"{s['rss_anon_peak_mib']:.0f}",
            f"{s['rss_file_peak_mib']:.0f}",
            "-" if name == floor_name else f"{s['wall_s'] / floor_wall:.2f}",
        ]
        if budget:
            row.append("-" if name == floor_name else f"{s['rss_anon_peak_max_mib'] * MiB / budget:.2f}")
        rows.append(row)
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    line = "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cols, widths, strict=True)))
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths, strict=True))))


def source_digest() -> str | None:
    """A digest of the ooc_ties package's Python sources (the editable install runs them as they are)."""
    import hashlib
    import importlib.util

    # find_spec does not import the package: the bench process stays small, which matters because a
    # child's ru_maxrss starts from the RSS of the process it was forked from
    spec = importlib.util.find_spec("ooc_ties")
    if spec is None or spec.origin is None:
        return None
    root = Path(spec.origin).parent
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def environment(ooc: str) -> dict[str, Any]:
    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)),
        "ooc_ties": ooc,
    }
    try:
        with open("/proc/meminfo") as f:
            env["mem_total_kib"] = int(f.readline().split()[1])
    except OSError:
        pass
    try:
        out = subprocess.run([ooc, "--version"], capture_output=True, text=True, timeout=60)
        env["ooc_ties_version"] = out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
        )
        env["git_head"] = head.stdout.strip()
        env["git_dirty"] = bool(dirty.stdout.strip())
    except OSError:
        pass
    return env


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--shape", choices=SHAPES, default="demo", help="synthetic model shape (default: demo)")
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path("/tmp/oocbench"),
        help="models go to WORKDIR/models, merge output to WORKDIR/out (default: /tmp/oocbench)",
    )
    p.add_argument("--repeat", type=int, default=3, help="timed runs of each variant (default: 3)")
    p.add_argument(
        "--variant",
        action="append",
        type=parse_variant,
        metavar="PRESET[:THREADS]",
        help="merge variant, repeatable (default: paper:2 paper:1 mergekit:2); THREADS 'all' or "
        "omitted = ooc-ties default (all CPUs)",
    )
    p.add_argument("--budget", help="add --memory-budget BUDGET to every merge variant (e.g. 256MiB)")
    p.add_argument("--json", type=Path, help="write all runs, medians and ratios to this JSON file")
    p.add_argument("--ooc-ties", default=default_ooc_ties(), help="the ooc-ties executable (default: %(default)s)")
    p.add_argument(
        "--no-phases", action="store_true", help="skip the untimed -vv warm-up run of each variant (phase timings)"
    )
    p.add_argument("--keep-output", action="store_true", help="do not delete the last merge output")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    budget_bytes = parse_size(args.budget) if args.budget else None

    ooc = args.ooc_ties
    workdir: Path = args.workdir
    models = workdir / "models"
    out_dir = workdir / "out"
    workdir.mkdir(parents=True, exist_ok=True)
    bench_started = time.perf_counter()
    digest_before = source_digest()

    generation_s = ensure_models(ooc, args.shape, models)
    files = input_files(models)
    input_bytes = sum(f.stat().st_size for f in files)
    log(f"{len(files)} input files, {input_bytes / 1e9:.3f} GB ({human_bytes(input_bytes)})")

    specs = args.variant or [("paper", 2), ("paper", 1), ("mergekit", 2)]
    variants = [Variant(preset, threads, args.budget) for preset, threads in specs]
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        p.error("duplicate variants")

    def merge_cmd(v: Variant, extra: list[str]) -> list[str]:
        dirs = model_dirs(models)
        return [ooc, "merge", "--base", str(dirs[0]), *map(str, dirs[1:]), "-o", str(out_dir), *extra, *v.args()]

    def clean_out() -> None:
        if out_dir.exists():
            shutil.rmtree(out_dir)
        for stale in workdir.glob(".out.ooc-ties-*"):  # staging folders of an interrupted merge, if any
            shutil.rmtree(stale, ignore_errors=True)

    file_args = " ".join(shlex.quote(str(f)) for f in files)
    floor_cmd = ["sh", "-c", f"cat {file_args} > /dev/null; cat {file_args} > /dev/null"]
    floor_name = "io-floor (cat x2)"

    # Warm-up: one untimed read of every input file.
    log("warm-up read of the inputs (untimed)")
    t0 = time.perf_counter()
    subprocess.run(["sh", "-c", f"cat {file_args} > /dev/null"], check=True)
    log(f"warm-up read took {time.perf_counter() - t0:.1f} s")

    # Engine estimates (dry run: reads headers only).
    estimates: dict[str, str] = {}
    for v in variants:
        r = subprocess.run(merge_cmd(v, ["--dry-run"]), capture_output=True, text=True)
        m = re.search(r"peak memory \(engine\): (.+)", r.stdout)
        estimates[v.name] = m.group(1) if m else (r.stdout + r.stderr).strip()[:200]
        blocks = re.search(r"blocks: (.+)", r.stdout)
        if blocks:
            estimates[v.name] += f"; blocks: {blocks.group(1)}"

    # Phase-timing warm-up runs (untimed in the statistics).
    phases: dict[str, Any] = {}
    if not args.no_phases:
        for v in variants:
            clean_out()
            lines: list[tuple[float, str]] = []
            cmd = merge_cmd(v, ["-vv"])
            log(f"phase run (untimed): {shlex.join(cmd)}")
            res = measure(cmd, input_bytes, v.name, -1, stderr_lines=lines)
            if res.returncode != 0:
                print("\n".join(line for _, line in lines[-30:]), file=sys.stderr)
                sys.exit(f"bench: phase run of {v.name} failed with exit code {res.returncode}")
            phases[v.name] = phase_times(lines, res.wall_s)
            phases[v.name]["rss_anon_peak_mib"] = res.rss_anon_peak_kib / 1024
            phases[v.name]["log"] = [f"{t:8.3f} {line}" for t, line in lines if "ooc_ties" in line][:200]
            log(
                f"  {v.name}: "
                + ", ".join(f"{k} {val:.2f}" for k, val in phases[v.name].items() if isinstance(val, float))
            )
            clean_out()

    # Timed rounds, in alternation.
    runs: list[RunResult] = []
    for rnd in range(args.repeat):
        res = measure(floor_cmd, input_bytes, floor_name, rnd)
        if res.returncode != 0:
            sys.exit(f"bench: the I/O floor command failed with exit code {res.returncode}")
        runs.append(res)
        log(f"round {rnd + 1}/{args.repeat}: {floor_name}: {res.wall_s:.2f} s")
        for v in variants:
            clean_out()
            cmd = merge_cmd(v, ["-q"])
            if rnd == 0:
                log(f"  command: {shlex.join(cmd)}")
            res = measure(cmd, input_bytes, v.name, rnd)
            if res.returncode != 0:
                sys.exit(f"bench: {shlex.join(cmd)} failed with exit code {res.returncode}")
            if not any(out_dir.glob("*.safetensors")):
                sys.exit(f"bench: {out_dir} holds no .safetensors after {v.name}")
            runs.append(res)
            log(
                f"round {rnd + 1}/{args.repeat}: {v.name}: {res.wall_s:.2f} s, cpu {res.cpu_s:.2f} s, "
                f"maxrss {res.maxrss_kib / 1024:.0f} MiB, RssAnon peak {res.rss_anon_peak_kib / 1024:.0f} MiB, "
                f"load {res.loadavg_before:.2f}"
            )
            if not (args.keep_output and rnd == args.repeat - 1 and v is variants[-1]):
                clean_out()

    order = [floor_name, *names]
    summary = {n: summarize([r for r in runs if r.variant == n]) for n in order}
    ratios: dict[str, Any] = {"wall_vs_io_floor": {}, "wall_vs_io_floor_paired": {}, "speedup_1t_over_2t": {}}
    floor_by_round = {r.round: r.wall_s for r in runs if r.variant == floor_name}
    for n in names:
        ratios["wall_vs_io_floor"][n] = summary[n]["wall_s"] / summary[floor_name]["wall_s"]
        ratios["wall_vs_io_floor_paired"][n] = statistics.median(
            r.wall_s / floor_by_round[r.round] for r in runs if r.variant == n
        )
    for v1 in variants:
        if v1.threads != 1:
            continue
        for v2 in variants:
            if v2.threads == 2 and v2.preset == v1.preset and v2.budget == v1.budget:
                ratios["speedup_1t_over_2t"][v1.preset] = summary[v1.name]["wall_s"] / summary[v2.name]["wall_s"]

    print()
    print(
        f"ooc-ties merge benchmark: shape {args.shape}, {N_FINETUNED} fine-tuned + base, "
        f"{input_bytes / 1e9:.3f} GB of input, {args.repeat} round(s), medians"
        + (f", memory budget {args.budget}" if args.budget else "")
    )
    print()
    print_table(summary, floor_name, budget_bytes)
    print()
    print("ooc-ties wall / I/O-floor wall (ratio of medians; median of per-round ratios):")
    for n in names:
        print(f"  {n:28s} {ratios['wall_vs_io_floor'][n]:.2f}   {ratios['wall_vs_io_floor_paired'][n]:.2f}")
    for preset, s in ratios["speedup_1t_over_2t"].items():
        print(f"speedup {preset}: 1-thread wall / 2-thread wall = {s:.2f}")
    print("engine estimate (dry run):")
    for n, e in estimates.items():
        print(f"  {n:28s} {e}")
    if phases:
        print("phases (one untimed -vv run per variant, seconds):")
        for n, ph in phases.items():
            parts = [
                f"{k.removesuffix('_s')} {ph[k]:.2f}"
                for k in ("wall_s", "startup_s", "pass1_s", "pass2_s", "finish_s", "pass2_and_finish_s")
                if k in ph
            ]
            print(f"  {n:28s} " + ", ".join(parts))
            if "pass1_subpasses_s" in ph:
                print(
                    "  "
                    + " " * 28
                    + " pass 1: "
                    + ", ".join(f"{k} {val:.2f}" for k, val in ph["pass1_subpasses_s"].items())
                )
    if generation_s is not None:
        print(f"generation: {generation_s:.1f} s")
    total = time.perf_counter() - bench_started
    print(f"benchmark total: {total:.1f} s")
    digest_after = source_digest()
    if digest_before != digest_after:
        print(
            f"WARNING: the ooc_ties sources changed during the benchmark ({digest_before} -> {digest_after}); "
            "runs may mix code versions"
        )

    if args.json:
        report = {
            "shape": args.shape,
            "repeat": args.repeat,
            "budget": args.budget,
            "input_bytes": input_bytes,
            "input_files": [str(f) for f in files],
            "generation_s": generation_s,
            "variants": {
                v.name: {
                    "preset": v.preset,
                    "threads": v.threads,
                    "budget": v.budget,
                    "command": shlex.join(merge_cmd(v, ["-q"])),
                }
                for v in variants
            },
            "io_floor_command": "cat FILES > /dev/null; cat FILES > /dev/null",
            "summary": summary,
            "ratios": ratios,
            "engine_estimates": estimates,
            "phases": phases,
            "runs": [asdict(r) for r in runs],
            "environment": environment(ooc),
            "benchmark_s": total,
            "source_digest_before": digest_before,
            "source_digest_after": digest_after,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

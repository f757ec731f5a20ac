#!/usr/bin/env python3
"""Benchmark ``ooc-ties merge`` against the I/O floor of reading its inputs from a warm page cache.

    python bench/bench_merge.py --shape 1b --workdir /tmp/oocbench --repeat 3 [--budget 256MiB] [--json out.json]

* Generates ``WORKDIR/models/{base,ft1,ft2,ft3}`` once with ``ooc-ties generate SHAPE WORKDIR/models``.
* Per round (``--repeat`` rounds, alternating): the I/O floor (``cat`` every input file twice, as one
  command), then every merge variant (output deleted after each run). Every timed run starts after an
  untimed read of the inputs, so each finds them in the page cache whatever ran before it.
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
    status: str = "ok"  # ok | failed | timeout | oom-killed | killed
    note: str = ""
    warm_read_s: float = 0.0  # the untimed read of the inputs just before this run


def _oom_first() -> None:
    """In the child, before exec: be the OOM killer's first choice (raising the score needs no privilege)."""
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass


def _oom_kills() -> int | None:
    """The cgroup's ``oom_kill`` counter (cgroup v2), else the system-wide one in /proc/vmstat, if readable."""
    for path in ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory.events.local", "/proc/vmstat"):
        try:
            with open(path) as f:
                for line in f:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            continue
    return None


def measure(
    cmd: list[str],
    input_bytes: int,
    variant: str,
    rnd: int,
    *,
    stderr_lines: list | None = None,
    stderr_path: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    oom_first: bool = False,
) -> RunResult:
    """Run ``cmd``; measure wall, rusage of the child and sampled memory peaks.

    With ``stderr_lines`` the child's stderr is read line by line (split on \\n and \\r, for tqdm)
    and each line stored with its arrival time relative to the start; with ``stderr_path`` it goes to
    that file. With ``timeout`` the child runs in its own session and its whole process group is
    killed (SIGKILL) after that many seconds; the result then has ``status`` ``timeout``. A child
    killed by SIGKILL otherwise is reported as ``oom-killed`` when the cgroup's ``oom_kill`` counter
    went up during the run, else ``killed``. ``oom_first`` sets the child's ``oom_score_adj`` to 1000, so
    that if the machine runs out of memory the OOM killer takes the child, not an unrelated process.
    """
    load = os.getloadavg()[0]
    oom_before = _oom_kills()
    err_file = open(stderr_path, "wb") if stderr_path is not None else None
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL if err_file is None else err_file,
        stderr=subprocess.PIPE if stderr_lines is not None else err_file,
        env=env,
        start_new_session=timeout is not None,
        preexec_fn=_oom_first if oom_first else None,
    )
    poller = MemoryPoller(proc.pid)
    poller.start()
    timed_out = threading.Event()
    timer = None
    if timeout is not None:

        def _kill() -> None:
            timed_out.set()
            try:
                os.killpg(proc.pid, 9)
            except OSError:
                pass

        timer = threading.Timer(timeout, _kill)
        timer.daemon = True
        timer.start()
    reader = None
    if stderr_lines is not None:
        reader = threading.Thread(target=_read_lines, args=(proc.stderr, started, stderr_lines), daemon=True)
        reader.start()
    _, status, rusage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    if timer is not None:
        timer.cancel()
    poller.stop()
    proc.returncode = os.waitstatus_to_exitcode(status)  # wait4 reaped it; keep Popen consistent
    if reader is not None:
        reader.join()
        proc.stderr.close()
    if err_file is not None:
        err_file.close()
    if timeout is not None:  # grandchildren left in the group (if any): end them
        try:
            os.killpg(proc.pid, 9)
        except OSError:
            pass
    run_status, note = "ok", ""
    if timed_out.is_set():
        run_status, note = "timeout", f"killed after the {timeout:.0f} s timeout"
    elif proc.returncode == -9:
        oom_after = _oom_kills()
        if oom_before is not None and oom_after is not None and oom_after > oom_before:
            run_status, note = "oom-killed", f"SIGKILL; cgroup oom_kill {oom_before} -> {oom_after}"
        else:
            run_status, note = "killed", "SIGKILL (not by the benchmark; the OOM killer is the usual suspect)"
    elif proc.returncode != 0:
        run_status, note = "failed", f"exit code {proc.returncode}"
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
        status=run_status,
        note=note,
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
    """One measured command: an ooc-ties merge, mergekit's ``mergekit-yaml``, or the in-RAM reference."""

    preset: str
    threads: int | None
    budget: str | None
    kind: str = "ooc"  # ooc | mergekit-yaml | reference

    @property
    def name(self) -> str:
        if self.kind == "mergekit-yaml":
            return "mergekit-yaml"
        if self.kind == "reference":
            return f"reference/{self.preset}"
        t = f"{self.threads}t" if self.threads else "all-cpus"
        return f"{self.preset}/{t}" + (f"/{self.budget}" if self.budget else "")

    def args(self) -> list[str]:
        out = ["--preset", self.preset]
        if self.threads:
            out += ["--threads", str(self.threads)]
        if self.budget:
            out += ["--memory-budget", self.budget]
        return out


def parse_variant(text: str) -> tuple[str, str, int | None]:
    """-> (kind, preset, threads). ``mergekit`` alone is mergekit itself (``mergekit-yaml``);
    ``mergekit:N`` / ``mergekit:all`` are ooc-ties' mergekit preset; ``reference[:PRESET]`` is the
    in-RAM NumPy reference (default preset paper)."""
    preset, sep, threads = text.partition(":")
    if preset in ("mergekit-yaml",) or (preset == "mergekit" and not sep):
        return "mergekit-yaml", "mergekit", None
    if preset == "reference":
        ref_preset = threads or "paper"
        if ref_preset not in ("paper", "mergekit"):
            raise argparse.ArgumentTypeError(f"variant {text!r}: reference preset must be paper or mergekit")
        return "reference", ref_preset, None
    if preset not in ("paper", "mergekit"):
        raise argparse.ArgumentTypeError(
            f"variant {text!r}: must be paper[:THREADS], mergekit:THREADS, mergekit (mergekit-yaml) or reference"
        )
    if threads in ("", "all"):
        return "ooc", preset, None
    try:
        n = int(threads)
    except ValueError:
        raise argparse.ArgumentTypeError(f"variant {text!r}: threads must be an integer") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"variant {text!r}: threads must be positive")
    return "ooc", preset, n


MERGEKIT_SETUP = (
    "python3 -m venv {d} && {d}/bin/pip install /opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
    " && {d}/bin/pip install mergekit"
)


def mergekit_yaml_text(dirs: list[Path], density: float) -> str:
    """mergekit's TIES config equivalent to ``ooc-ties merge --preset mergekit`` (weights 1, f32 math, bf16 out)."""
    lines = ["merge_method: ties", f"base_model: {json.dumps(str(dirs[0]))}", "models:"]
    for d in dirs[1:]:
        lines += [f"  - model: {json.dumps(str(d))}", f"    parameters: {{density: {density}, weight: 1.0}}"]
    lines += ["dtype: float32", "out_dtype: bfloat16", ""]
    return "\n".join(lines)


# Runs in a child (the benchmark process must not import NumPy): the in-RAM reference, writing nothing.
REFERENCE_CODE = """
import sys
from ooc_ties.config import PRESETS
from ooc_ties.reference import reference_merge
out = reference_merge(sys.argv[2], sys.argv[3:], PRESETS[sys.argv[1]])
print(sum(a.size for a in out.values()))
"""

# Runs in a child: per-tensor count of differing elements between two safetensors folders.
COMPARE_CODE = r"""
import json, sys
from pathlib import Path
import numpy as np

def index(folder):
    out = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        for name, info in header.items():
            if name != "__metadata__":
                out[name] = (f, 8 + n, info)
    return out

SIZES = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8, "I64": 8, "I32": 4, "U8": 1, "I8": 1, "BOOL": 1}
UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}

def load(entry):
    f, base, info = entry
    a, b = info["data_offsets"]
    size = SIZES[info["dtype"]]
    return np.memmap(f, dtype=UINT[size], mode="r", offset=base + a, shape=((b - a) // size,))

def as_f32(raw, dtype):
    if dtype == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    if dtype == "F16":
        return raw.view(np.float16).astype(np.float32)
    if dtype == "F32":
        return raw.view(np.float32)
    return raw.astype(np.float64)

a, b = index(sys.argv[1]), index(sys.argv[2])
report = {"only_in_a": sorted(set(a) - set(b)), "only_in_b": sorted(set(b) - set(a)), "tensors": {}}
for name in sorted(set(a) & set(b)):
    ia, ib = a[name][2], b[name][2]
    row = {"dtype_a": ia["dtype"], "dtype_b": ib["dtype"], "shape": ia["shape"]}
    if ia["dtype"] != ib["dtype"] or ia["shape"] != ib["shape"]:
        row["comparable"] = False
    else:
        ra, rb = load(a[name]), load(b[name])
        row["numel"] = int(ra.size)
        diff = np.flatnonzero(ra != rb)
        row["differing_bits"] = int(diff.size)
        if diff.size:
            fa, fb = as_f32(np.asarray(ra[diff]), ia["dtype"]), as_f32(np.asarray(rb[diff]), ib["dtype"])
            row["differing_values"] = int(np.count_nonzero(fa != fb))  # +0.0 == -0.0
            row["max_abs_diff"] = float(np.max(np.abs(fa.astype(np.float64) - fb)))
        else:
            row["differing_values"] = 0
    report["tensors"][name] = row
print(json.dumps(report))
"""


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


def count_parameters(models: Path) -> int:
    """Float parameters of the base model, from its safetensors headers (no tensor data read)."""
    total = 0
    for f in sorted((models / "base").glob("*.safetensors")):
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        for name, info in header.items():
            if name != "__metadata__" and info["dtype"] in ("BF16", "F16", "F32", "F64"):
                count = 1
                for dim in info["shape"]:
                    count *= dim
                total += count
    return total


def holds_shape(models: Path, shape: str) -> bool | None:
    """None if ``models`` holds no complete model set, else whether it is of ``shape``."""
    dirs = model_dirs(models)
    if not all(d.is_dir() and list(d.glob("*.safetensors")) for d in dirs):
        return None
    want = expected_config(shape)
    have = json.loads((dirs[0] / "config.json").read_text())
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size")
    return want is not None and all(have.get(k) == want[k] for k in keys)


def mem_total_bytes() -> int:
    with open("/proc/meminfo") as f:
        return int(f.readline().split()[1]) * 1024


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


def summarize(all_runs: list[RunResult]) -> dict[str, Any]:
    """Medians over the runs that succeeded (``status`` ok); the others are counted by status."""
    med = statistics.median
    runs = [r for r in all_runs if r.status == "ok"]
    failed = {r.status: sum(1 for x in all_runs if x.status == r.status) for r in all_runs if r.status != "ok"}
    if not runs:
        return {
            "runs": 0,
            "failed": failed,
            "wall_s": None,
            "wall_max_s": max((r.wall_s for r in all_runs), default=None),
            "rss_anon_peak_max_mib": max((r.rss_anon_peak_kib for r in all_runs), default=0) / 1024,
            "maxrss_mib": max((r.maxrss_kib for r in all_runs), default=0) / 1024,
        }
    return {
        "failed": failed,
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
        if not s["runs"]:
            status = ", ".join(f"{n} {k}" for k, n in s["failed"].items()) or "not run"
            last = f"{s['wall_max_s']:.0f} s" if s.get("wall_max_s") else "-"
            row = [
                name,
                "0",
                f"({status})",
                last,
                "-",
                "-",
                "-",
                "-",
                f"{s['maxrss_mib']:.0f}",
                f"{s['rss_anon_peak_max_mib']:.0f}",
                "-",
                "-",
            ]
            if budget:
                row.append("-")
            rows.append(row)
            continue
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
        if s["failed"]:
            row[1] += "+" + "+".join(f"{n}{k[0]}" for k, n in s["failed"].items())
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
    import importlib.util

    spec = importlib.util.find_spec("ooc_ties")  # the package the children import (PYTHONPATH may override)
    env["ooc_ties_package"] = str(Path(spec.origin).parent) if spec and spec.origin else None
    env["pythonpath"] = os.environ.get("PYTHONPATH")
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


def build_parser() -> argparse.ArgumentParser:
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
        metavar="VARIANT",
        help="repeatable: PRESET[:THREADS] is ooc-ties (PRESET paper or mergekit; THREADS a number, or 'all' / "
        "omitted for paper = all CPUs); 'mergekit' alone is mergekit itself (mergekit-yaml); "
        "'reference[:PRESET]' is the in-RAM NumPy reference (default: paper:2 paper:1 mergekit:2; "
        "with --scaling: paper:2 paper:1)",
    )
    p.add_argument("--budget", help="add --memory-budget BUDGET to every ooc-ties variant (e.g. 256MiB)")
    p.add_argument("--json", type=Path, help="write all runs, medians and ratios to this JSON file")
    p.add_argument("--ooc-ties", default=default_ooc_ties(), help="the ooc-ties executable (default: %(default)s)")
    p.add_argument(
        "--no-phases", action="store_true", help="skip the untimed -vv warm-up run of each variant (phase timings)"
    )
    p.add_argument("--keep-output", action="store_true", help="do not delete the last merge output")
    mk = p.add_argument_group("mergekit and the reference")
    mk.add_argument(
        "--mergekit-venv",
        type=Path,
        default=Path("/tmp/mk/venv"),
        help="venv with mergekit and a CPU torch; runs VENV/bin/mergekit-yaml (default: %(default)s)",
    )
    mk.add_argument(
        "--mergekit-repeat", type=int, help="timed runs of mergekit-yaml (default: --repeat); e.g. 1 on big shapes"
    )
    mk.add_argument(
        "--mergekit-density",
        type=float,
        default=0.2,
        help="density in the mergekit config (default 0.2, as ooc-ties' presets)",
    )
    mk.add_argument(
        "--timeout",
        type=float,
        default=3600.0,
        help="kill a mergekit-yaml or reference run after this many seconds (default: 3600)",
    )
    mk.add_argument(
        "--compare-output",
        action="store_true",
        help="compare mergekit-yaml's output with ooc-ties' mergekit-preset output, tensor by tensor",
    )
    sc = p.add_argument_group("scaling")
    sc.add_argument(
        "--scaling",
        action="store_true",
        help="run the variants over several shapes, one after another (generate, measure, delete)",
    )
    sc.add_argument("--shapes", default="tiny,demo,1b", help="shapes for --scaling (default: %(default)s)")
    sc.add_argument(
        "--keep-models",
        choices=SHAPES,
        help="with --scaling: do not delete the models of this shape afterwards",
    )
    return p


def check_mergekit(venv: Path) -> Path:
    exe = venv / "bin" / "mergekit-yaml"
    if not exe.exists():
        sys.exit(
            f"bench: {exe} does not exist. Create the venv (torch from the local wheel first, then mergekit):\n  "
            + MERGEKIT_SETUP.format(d=shlex.quote(str(venv)))
        )
    return exe


def run_shape(args: argparse.Namespace, shape: str, models: Path, specs: list[tuple[str, str, int | None]]) -> dict:
    """Generate (if needed) and benchmark one shape; print the tables; return the report."""
    ooc = args.ooc_ties
    workdir: Path = args.workdir
    out_dir = workdir / "out"
    keep_mk = workdir / "out-mergekit-yaml"  # kept for --compare-output
    keep_ooc = workdir / "out-ooc-mergekit"
    workdir.mkdir(parents=True, exist_ok=True)
    budget_bytes = parse_size(args.budget) if args.budget else None
    bench_started = time.perf_counter()
    digest_before = source_digest()
    pyexe = Path(ooc).with_name("python")
    python = str(pyexe) if pyexe.exists() else sys.executable

    generation_s = ensure_models(ooc, shape, models)
    files = input_files(models)
    input_bytes = sum(f.stat().st_size for f in files)
    parameters = count_parameters(models)
    log(f"{len(files)} input files, {input_bytes / 1e9:.3f} GB ({human_bytes(input_bytes)}), {parameters:,} parameters")
    dirs = model_dirs(models)

    variants = [
        Variant(preset, threads, args.budget if kind == "ooc" else None, kind) for kind, preset, threads in specs
    ]
    skipped: dict[str, str] = {}
    kept = []
    for v in variants:
        if v.kind == "reference":
            need = parameters * 4 * (2 * N_FINETUNED + 4)  # tau, |tau|, a sorted copy, base, masks, temporaries
            if parameters > 0.5e9 or need > 0.6 * mem_total_bytes():
                skipped[v.name] = (
                    f"{parameters / 1e9:.2f}e9 parameters: the in-RAM reference would need ~{need / 2**30:.1f} GiB "
                    f"(limit 0.5e9 parameters and 60% of {mem_total_bytes() / 2**30:.1f} GiB)"
                )
                log(f"skipping {v.name}: {skipped[v.name]}")
                continue
        kept.append(v)
    variants = kept
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        sys.exit("bench: duplicate variants")
    mk_exe = check_mergekit(args.mergekit_venv) if any(v.kind == "mergekit-yaml" for v in variants) else None
    mk_yaml = workdir / "mergekit-ties.yml"
    mk_env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    if mk_exe is not None:
        mk_yaml.write_text(mergekit_yaml_text(dirs, args.mergekit_density))

    def command(v: Variant, extra: list[str], dest: Path = out_dir) -> list[str]:
        if v.kind == "mergekit-yaml":
            return [str(mk_exe), str(mk_yaml), str(dest), "--no-cuda", "--no-copy-tokenizer", "--quiet"]
        if v.kind == "reference":
            return [python, "-c", REFERENCE_CODE, v.preset, *map(str, dirs)]
        return [ooc, "merge", "--base", str(dirs[0]), *map(str, dirs[1:]), "-o", str(dest), *extra, *v.args()]

    def clean_out() -> None:
        if out_dir.exists():
            shutil.rmtree(out_dir)
        for stale in workdir.glob(".out.ooc-ties-*"):  # staging folders of an interrupted merge, if any
            shutil.rmtree(stale, ignore_errors=True)

    for d in (keep_mk, keep_ooc):
        shutil.rmtree(d, ignore_errors=True)
    clean_out()

    file_args = " ".join(shlex.quote(str(f)) for f in files)
    read_once = f"cat {file_args} > /dev/null"
    floor_cmd = ["sh", "-c", f"{read_once}; {read_once}"]
    floor_name = "io-floor (cat x2)"

    def warm() -> float:
        """Read every input file once (untimed); return the seconds it took.

        Before *every* timed run, not once: the page cache does not keep idle files for long on every
        machine (a long mergekit run, or a proactive reclaimer such as DAMON's, which pages out file
        pages idle for about a minute on the machines these figures come from), and a run that found
        its inputs on disk would be compared with one that found them in memory."""
        t0 = time.perf_counter()
        subprocess.run(["sh", "-c", read_once], check=True)
        return time.perf_counter() - t0

    log("warm-up read of the inputs (untimed)")
    log(f"warm-up read took {warm():.1f} s")
    if mk_exe is not None:  # loads torch/mergekit once, so the first timed run does not read them from disk
        t0 = time.perf_counter()
        r = subprocess.run([str(mk_exe), "--help"], capture_output=True, text=True, env=mk_env)
        if r.returncode != 0:
            sys.exit(f"bench: {mk_exe} --help failed:\n{r.stderr[-2000:]}")
        log(f"mergekit-yaml --help (untimed warm-up) took {time.perf_counter() - t0:.1f} s")

    # Engine estimates (dry run: reads headers only).
    estimates: dict[str, str] = {}
    for v in variants:
        if v.kind != "ooc":
            continue
        r = subprocess.run(command(v, ["--dry-run"]), capture_output=True, text=True)
        m = re.search(r"peak memory \(engine\): (.+)", r.stdout)
        estimates[v.name] = m.group(1) if m else (r.stdout + r.stderr).strip()[:200]
        blocks = re.search(r"blocks: (.+)", r.stdout)
        if blocks:
            estimates[v.name] += f"; blocks: {blocks.group(1)}"

    # Phase-timing warm-up runs (untimed in the statistics), ooc-ties only.
    phases: dict[str, Any] = {}
    if not args.no_phases:
        for v in variants:
            if v.kind != "ooc":
                continue
            clean_out()
            lines: list[tuple[float, str]] = []
            cmd = command(v, ["-vv"])
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

    def repeats(v: Variant) -> int:
        if v.kind == "mergekit-yaml" and args.mergekit_repeat:
            return args.mergekit_repeat
        return args.repeat

    # Timed rounds, in alternation.
    runs: list[RunResult] = []
    given_up: set[str] = set()  # a variant that timed out or was killed is not run again
    rounds = max([args.repeat, *(repeats(v) for v in variants)])
    for rnd in range(rounds):
        if rnd < args.repeat:
            warm_s = warm()
            res = measure(floor_cmd, input_bytes, floor_name, rnd)
            res.warm_read_s = warm_s
            if res.returncode != 0:
                sys.exit(f"bench: the I/O floor command failed with exit code {res.returncode}")
            runs.append(res)
            log(f"round {rnd + 1}/{rounds}: {floor_name}: {res.wall_s:.2f} s (warm-up read before it {warm_s:.1f} s)")
        for v in variants:
            if rnd >= repeats(v) or v.name in given_up:
                continue
            last = rnd == repeats(v) - 1
            clean_out()
            cmd = command(v, ["-q"])
            if rnd == 0:
                log(f"  command: {shlex.join(cmd)}")
            err_path = workdir / "mergekit-stderr.log" if v.kind == "mergekit-yaml" else None
            warm_s = warm()
            res = measure(
                cmd,
                input_bytes,
                v.name,
                rnd,
                stderr_path=err_path,
                env=mk_env if v.kind == "mergekit-yaml" else None,
                timeout=args.timeout if v.kind != "ooc" else None,
                oom_first=v.kind != "ooc",
            )
            res.warm_read_s = warm_s
            if res.status != "ok":
                if v.kind == "ooc":
                    sys.exit(f"bench: {shlex.join(cmd)} failed with exit code {res.returncode}")
                tail = err_path.read_text(errors="replace")[-3000:] if err_path and err_path.exists() else ""
                log(
                    f"round {rnd + 1}: {v.name} {res.status} after {res.wall_s:.1f} s ({res.note}); "
                    f"peak RssAnon {res.rss_anon_peak_kib / 1024:.0f} MiB, maxrss {res.maxrss_kib / 1024:.0f} MiB"
                    + (f"\n{tail}" if tail else "")
                )
                given_up.add(v.name)
                runs.append(res)
                clean_out()
                continue
            if v.kind != "reference" and not any(out_dir.glob("*.safetensors")):
                sys.exit(f"bench: {out_dir} holds no .safetensors after {v.name}")
            runs.append(res)
            log(
                f"round {rnd + 1}/{rounds}: {v.name}: {res.wall_s:.2f} s, cpu {res.cpu_s:.2f} s, "
                f"maxrss {res.maxrss_kib / 1024:.0f} MiB, RssAnon peak {res.rss_anon_peak_kib / 1024:.0f} MiB, "
                f"load {res.loadavg_before:.2f}, warm-up read before it {warm_s:.1f} s"
            )
            if args.compare_output and last and v.kind == "mergekit-yaml":
                out_dir.rename(keep_mk)
            elif args.compare_output and last and v.kind == "ooc" and v.preset == "mergekit" and not keep_ooc.exists():
                out_dir.rename(keep_ooc)
            elif not (args.keep_output and last and v is variants[-1]):
                clean_out()

    # Output comparison: mergekit-yaml vs ooc-ties --preset mergekit.
    comparison: dict[str, Any] | None = None
    if args.compare_output and keep_mk.exists():
        if not keep_ooc.exists():
            v = Variant("mergekit", 2, None)
            log("compare: running ooc-ties --preset mergekit --threads 2 once (untimed) for the comparison")
            subprocess.run(command(v, ["-q"], keep_ooc), check=True)
        log(f"compare: {keep_mk} vs {keep_ooc}")
        r = subprocess.run([python, "-c", COMPARE_CODE, str(keep_mk), str(keep_ooc)], capture_output=True, text=True)
        if r.returncode != 0:
            log(f"compare failed:\n{r.stderr[-2000:]}")
        else:
            comparison = json.loads(r.stdout)
        if not args.keep_output:
            shutil.rmtree(keep_mk, ignore_errors=True)
            shutil.rmtree(keep_ooc, ignore_errors=True)
    elif args.compare_output:
        log("compare: no successful mergekit-yaml run, nothing to compare")
        shutil.rmtree(keep_ooc, ignore_errors=True)

    order = [floor_name, *names]
    summary = {n: summarize([r for r in runs if r.variant == n]) for n in order}
    ratios: dict[str, Any] = {
        "wall_vs_io_floor": {},
        "wall_vs_io_floor_paired": {},
        "speedup_1t_over_2t": {},
        "mergekit_yaml_over_ooc_ties": {},
        "mergekit_yaml_rss_anon_over_ooc_ties": {},
    }
    floor_by_round = {r.round: r.wall_s for r in runs if r.variant == floor_name}
    ok = {n for n in names if summary[n]["runs"]}
    for n in names:
        if n not in ok:
            continue
        ratios["wall_vs_io_floor"][n] = summary[n]["wall_s"] / summary[floor_name]["wall_s"]
        ratios["wall_vs_io_floor_paired"][n] = statistics.median(
            r.wall_s / floor_by_round[r.round]
            for r in runs
            if r.variant == n and r.status == "ok" and r.round in floor_by_round
        )
    for v1 in variants:
        if v1.threads != 1 or v1.kind != "ooc":
            continue
        for v2 in variants:
            if v2.kind == "ooc" and v2.threads == 2 and v2.preset == v1.preset and v2.budget == v1.budget:
                ratios["speedup_1t_over_2t"][v1.preset] = summary[v1.name]["wall_s"] / summary[v2.name]["wall_s"]
    if "mergekit-yaml" in ok:
        mk = summary["mergekit-yaml"]
        for v in variants:
            if v.kind == "ooc":
                ratios["mergekit_yaml_over_ooc_ties"][v.name] = mk["wall_s"] / summary[v.name]["wall_s"]
                ratios["mergekit_yaml_rss_anon_over_ooc_ties"][v.name] = (
                    mk["rss_anon_peak_mib"] / summary[v.name]["rss_anon_peak_mib"]
                )

    print()
    print(
        f"ooc-ties merge benchmark: shape {shape}, {N_FINETUNED} fine-tuned + base, {parameters / 1e9:.3f}e9 "
        f"parameters, {input_bytes / 1e9:.3f} GB of input, {args.repeat} round(s)"
        + (f" ({args.mergekit_repeat} for mergekit-yaml)" if args.mergekit_repeat else "")
        + ", medians"
        + (f", memory budget {args.budget}" if args.budget else "")
    )
    print()
    print_table(summary, floor_name, budget_bytes)
    print()
    print("wall / I/O-floor wall (ratio of medians; median of per-round ratios):")
    for n in names:
        if n in ok:
            print(f"  {n:28s} {ratios['wall_vs_io_floor'][n]:.2f}   {ratios['wall_vs_io_floor_paired'][n]:.2f}")
    for preset, sp in ratios["speedup_1t_over_2t"].items():
        print(f"speedup {preset}: 1-thread wall / 2-thread wall = {sp:.2f}")
    if ratios["mergekit_yaml_over_ooc_ties"]:
        print("mergekit-yaml / ooc-ties (ratio of medians): wall, peak RssAnon")
        for n, rt in ratios["mergekit_yaml_over_ooc_ties"].items():
            print(f"  {n:28s} {rt:.2f}x   {ratios['mergekit_yaml_rss_anon_over_ooc_ties'][n]:.1f}x")
    for n, why in skipped.items():
        print(f"skipped {n}: {why}")
    for n in names:
        for r in runs:
            if r.variant == n and r.status != "ok":
                print(f"{n} round {r.round + 1}: {r.status} after {r.wall_s:.1f} s ({r.note})")
    if estimates:
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
    if comparison is not None:
        print_comparison(comparison)
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

    return {
        "shape": shape,
        "parameters": parameters,
        "repeat": args.repeat,
        "mergekit_repeat": args.mergekit_repeat,
        "budget": args.budget,
        "input_bytes": input_bytes,
        "input_files": [str(f) for f in files],
        "generation_s": generation_s,
        "variants": {
            v.name: {
                "kind": v.kind,
                "preset": v.preset,
                "threads": v.threads,
                "budget": v.budget,
                "command": shlex.join(command(v, ["-q"]))
                if v.kind != "reference"
                else f"{python} -c REFERENCE_CODE {v.preset} {' '.join(map(str, dirs))}",
            }
            for v in variants
        },
        "skipped": skipped,
        "mergekit_config": mk_yaml.read_text() if mk_exe is not None else None,
        "io_floor_command": "cat FILES > /dev/null; cat FILES > /dev/null",
        "summary": summary,
        "ratios": ratios,
        "comparison": comparison,
        "engine_estimates": estimates,
        "phases": phases,
        "runs": [asdict(r) for r in runs],
        "benchmark_s": total,
        "source_digest_before": digest_before,
        "source_digest_after": digest_after,
    }


def print_comparison(c: dict[str, Any]) -> None:
    tensors = c["tensors"]
    print("output comparison, mergekit-yaml vs ooc-ties --preset mergekit (bitwise; values: +0.0 == -0.0):")
    if c["only_in_a"] or c["only_in_b"]:
        print(f"  only in mergekit-yaml: {c['only_in_a']}; only in ooc-ties: {c['only_in_b']}")
    bad = [n for n, t in tensors.items() if t.get("comparable") is False]
    if bad:
        print(f"  not comparable (dtype or shape): {bad}")
    groups: dict[str, list[int]] = {}
    for n, t in tensors.items():
        if "numel" not in t:
            continue
        kind = re.sub(r"\.\d+\.", ".N.", n)
        g = groups.setdefault(kind, [0, 0, 0, 0, 0])
        g[0] += 1
        g[1] += t["numel"]
        g[2] += t["differing_bits"]
        g[3] += t["differing_values"]
        g[4] += 1 if t["differing_bits"] else 0
    print(
        f"  {'tensor (N = any layer)':48s} {'tensors':>7s} {'elements':>13s} {'diff bits':>10s} "
        f"{'diff values':>11s} {'tensors w/ diff':>15s}"
    )
    tot = [0, 0, 0, 0, 0]
    for kind, g in groups.items():
        print(f"  {kind:48s} {g[0]:7d} {g[1]:13,d} {g[2]:10,d} {g[3]:11,d} {g[4]:15d}")
        tot = [a + b for a, b in zip(tot, g, strict=True)]
    print(
        f"  {'total':48s} {tot[0]:7d} {tot[1]:13,d} {tot[2]:10,d} {tot[3]:11,d} {tot[4]:15d}"
        + (f"  ({tot[2] / tot[1]:.2e} of elements)" if tot[1] else "")
    )
    worst = max((t.get("max_abs_diff", 0.0) for t in tensors.values()), default=0.0)
    print(f"  largest |difference| of a differing element: {worst:.3g}")


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.repeat < 1 or (args.mergekit_repeat is not None and args.mergekit_repeat < 1):
        p.error("--repeat and --mergekit-repeat must be at least 1")
    workdir: Path = args.workdir
    env_info = environment(args.ooc_ties)

    if not args.scaling:
        specs = args.variant or [("ooc", "paper", 2), ("ooc", "paper", 1), ("ooc", "mergekit", 2)]
        report = run_shape(args, args.shape, workdir / "models", specs)
        report["environment"] = env_info
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=2) + "\n")
            log(f"wrote {args.json}")
        return 0

    shapes = [x.strip() for x in args.shapes.split(",") if x.strip()]
    for sh in shapes:
        if sh not in SHAPES:
            p.error(f"--shapes: unknown shape {sh!r} (choose from {', '.join(SHAPES)})")
    specs = args.variant or [("ooc", "paper", 2), ("ooc", "paper", 1)]
    if any(kind == "mergekit-yaml" for kind, _, _ in specs):
        check_mergekit(args.mergekit_venv)  # fail before generating anything
    json_path = args.json or workdir / "scaling.json"
    started = time.perf_counter()
    results = []
    for sh in shapes:
        models = workdir / "models"
        if holds_shape(models, sh) is False or (
            models.exists() and holds_shape(models, sh) is None and any(models.iterdir())
        ):
            models = workdir / f"models-{sh}"  # WORKDIR/models holds another shape: leave it alone
        log(f"=== scaling: shape {sh} (models in {models}) ===")
        report = run_shape(args, sh, models, specs)
        results.append(report)
        if sh != args.keep_models:
            log(f"deleting {models}")
            shutil.rmtree(models, ignore_errors=True)
        out = {
            "mode": "scaling",
            "shapes": [
                {
                    k: r[k]
                    for k in (
                        "shape",
                        "parameters",
                        "input_bytes",
                        "summary",
                        "ratios",
                        "skipped",
                        "comparison",
                        "generation_s",
                        "variants",
                        "benchmark_s",
                    )
                }
                for r in results
            ],
            "repeat": args.repeat,
            "mergekit_repeat": args.mergekit_repeat,
            "reports": results,
            "environment": env_info,
            "benchmark_s": time.perf_counter() - started,
        }
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(out, indent=2) + "\n")  # after every shape: a partial result survives
    print()
    print("scaling summary (medians; GB/s of input; peak RSS / RssAnon in MiB):")
    names = list(dict.fromkeys(n for r in results for n in r["summary"]))
    head = ("shape", "parameters", "variant", "wall s", "GB/s", "maxRSS", "RssAnon")
    print("  {:10s} {:>14s} {:22s} {:>8s} {:>6s} {:>7s} {:>8s}".format(*head))
    for r in results:
        for n in names:
            s = r["summary"].get(n)
            if s is None:
                continue
            if not s["runs"]:
                print(f"  {r['shape']:10s} {r['parameters']:14,d} {n:22s} {'failed':>8s}")
                continue
            print(
                f"  {r['shape']:10s} {r['parameters']:14,d} {n:22s} {s['wall_s']:8.2f} {s['gbps']:6.2f} "
                f"{s['maxrss_mib']:7.0f} {s['rss_anon_peak_mib']:8.0f}"
            )
    log(f"wrote {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

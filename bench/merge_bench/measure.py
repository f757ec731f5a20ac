"""Measuring one command: wall time, rusage, sampled memory peaks, how it ended, and phases from ``-vv``.

Every figure is for the whole child process tree. ``measure`` runs one command; ``phase_times`` reads the
timestamped stderr of an untimed ``-vv`` run. ``drop_cache`` evicts the inputs from the page cache before a
run whose reads from storage are measured (``read_bytes``).
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

POLL_SECONDS = 0.02


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


def _read_bytes(pid: int) -> int | None:
    """``read_bytes`` of ``pid`` (all its threads, live and exited) from /proc/<pid>/io: bytes the process
    caused to be fetched from storage (page-cache hits are not counted), or None if unreadable."""
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                if line.startswith("read_bytes:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def drop_cache(files: list[Path]) -> None:
    """Evict ``files`` from the page cache: ``fsync`` (dirty pages are not dropped), then
    ``posix_fadvise(POSIX_FADV_DONTNEED)`` over each whole file, opened read-only. Pages mapped by a process
    stay."""
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


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
    """Samples RssAnon / RssFile / VmRSS (summed over the process tree) until stopped; keeps the maxima. Also
    keeps the last ``read_bytes`` of the child itself: /proc/<pid>/io counts the reaped descendants too, so
    the tree is not summed."""

    KEYS = ("RssAnon", "RssFile", "VmRSS")

    def __init__(self, pid: int, interval: float = POLL_SECONDS) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.peak = {k: 0 for k in self.KEYS}  # KiB
        self.samples = 0
        self.read_bytes = 0  # the child's last read_bytes seen
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            totals = {k: 0 for k in self.KEYS}
            for p in _tree(self.pid):
                for k, v in _status_kib(p, self.KEYS).items():
                    totals[k] += v
            self.sample_io()
            for k in self.KEYS:
                self.peak[k] = max(self.peak[k], totals[k])
            self.samples += 1
            self._stop_event.wait(self.interval)

    def sample_io(self) -> None:
        n = _read_bytes(self.pid)
        if n is not None:
            self.read_bytes = max(n, self.read_bytes)

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
    read_bytes: int = 0
    """Bytes read from storage: ``read_bytes`` of the child's /proc/<pid>/io (its threads and its reaped
    descendants), sampled and read once more when it has ended, before it is reaped. Page-cache hits are not
    counted."""
    inblock_bytes: int = 0
    """The same from ``os.wait4``: ``ru_inblock`` x 512 (the child and its reaped descendants)."""
    cold: bool = False
    """Run after ``drop_cache`` of the inputs (``--cold-reads``), not after a warm-up read."""
    merges: int = 1
    """Merges the run made (a grid's points)."""


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


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, 9)
    except OSError:
        pass


class _Watchdog:
    """Kills the child's process group after ``timeout`` seconds (if not None) and remembers that it did."""

    def __init__(self, pid: int, timeout: float | None) -> None:
        self.fired = threading.Event()
        self._timer = None
        if timeout is not None:
            self._timer = threading.Timer(timeout, self._kill, args=(pid,))
            self._timer.daemon = True
            self._timer.start()

    def _kill(self, pid: int) -> None:
        self.fired.set()
        _kill_group(pid)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


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


def _ending(returncode: int, timed_out: bool, timeout: float | None, oom_before: int | None) -> tuple[str, str]:
    """(status, note) of a finished child: ok, timeout, oom-killed, killed or failed."""
    if timed_out:
        return "timeout", f"killed after the {timeout:.0f} s timeout"
    if returncode == -9:
        oom_after = _oom_kills()
        if oom_before is not None and oom_after is not None and oom_after > oom_before:
            return "oom-killed", f"SIGKILL; cgroup oom_kill {oom_before} -> {oom_after}"
        return "killed", "SIGKILL (not by the benchmark; the OOM killer is the usual suspect)"
    if returncode != 0:
        return "failed", f"exit code {returncode}"
    return "ok", ""


def _spawn(
    cmd: list[str], err_file: Any, read_stderr: bool, env: dict[str, str] | None, own_session: bool, oom_first: bool
) -> subprocess.Popen:
    """Start ``cmd``: stdin closed; stderr piped (``read_stderr``) or to ``err_file``, stdout to ``err_file``."""
    return subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL if err_file is None else err_file,
        stderr=subprocess.PIPE if read_stderr else err_file,
        env=env,
        start_new_session=own_session,
        preexec_fn=_oom_first if oom_first else None,
    )


def _rusage_fields(rusage: Any) -> dict[str, Any]:
    """The RunResult fields that come from the child's rusage (``os.wait4``)."""
    return {
        "cpu_s": rusage.ru_utime + rusage.ru_stime,
        "user_s": rusage.ru_utime,
        "sys_s": rusage.ru_stime,
        "maxrss_kib": rusage.ru_maxrss,
        "minor_faults": rusage.ru_minflt,
        "major_faults": rusage.ru_majflt,
        "voluntary_switches": rusage.ru_nvcsw,
        "involuntary_switches": rusage.ru_nivcsw,
        "inblock_bytes": rusage.ru_inblock * 512,
    }


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
    proc = _spawn(cmd, err_file, stderr_lines is not None, env, timeout is not None, oom_first)
    poller = MemoryPoller(proc.pid)
    poller.start()
    watchdog = _Watchdog(proc.pid, timeout)
    reader = None
    if stderr_lines is not None:
        reader = threading.Thread(target=_read_lines, args=(proc.stderr, started, stderr_lines), daemon=True)
        reader.start()
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # ended, not reaped: its /proc/<pid>/io is final
    wall = time.perf_counter() - started
    poller.sample_io()
    _, status, rusage = os.wait4(proc.pid, 0)
    watchdog.cancel()
    poller.stop()
    proc.returncode = os.waitstatus_to_exitcode(status)  # wait4 reaped it; keep Popen consistent
    if reader is not None:
        reader.join()
        proc.stderr.close()
    if err_file is not None:
        err_file.close()
    if timeout is not None:  # grandchildren left in the group (if any): end them
        _kill_group(proc.pid)
    run_status, note = _ending(proc.returncode, watchdog.fired.is_set(), timeout, oom_before)
    return RunResult(
        variant=variant,
        round=rnd,
        wall_s=wall,
        rss_anon_peak_kib=poller.peak["RssAnon"],
        rss_file_peak_kib=poller.peak["RssFile"],
        vm_rss_peak_kib=poller.peak["VmRSS"],
        samples=poller.samples,
        read_bytes=poller.read_bytes,
        gbps=input_bytes / wall / 1e9,
        loadavg_before=load,
        returncode=proc.returncode,
        status=run_status,
        note=note,
        **_rusage_fields(rusage),
    )


# the debug line of each pass-1 read, whichever ooc_ties module logs it (ooc_ties.pass1.scan, before it
# ooc_ties.thresholds); a per-tensor scope puts "TENSOR: " before the label
_SUBPASS = re.compile(r"ooc_ties\.[\w.]+: pass 1: (?:.*: )?(.+?) over \d+ blocks")


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
        m = _SUBPASS.search(line)
        if m:
            sub_events.append((t, m.group(1)))
        if "ooc_ties.merge: plan:" in line:
            first.setdefault("plan", t)
    out: dict[str, Any] = {"wall_s": wall}
    p1, p2 = first.get("pass1"), first.get("pass2")
    if p1 is not None or p2 is not None:  # a merge that reads its inputs once has no pass 1
        out["startup_s"] = p1 if p1 is not None else p2
    if p1 is not None and p2 is not None:
        out["pass1_s"] = p2 - p1
    if p2 is not None:
        out["pass2_and_finish_s"] = wall - p2
        if "pass2_done" in first:
            out["pass2_s"] = first["pass2_done"] - p2
            out["finish_s"] = wall - first["pass2_done"]
    # sub-passes of pass 1: from each "pass 1: X over N blocks" line to the next one (or pass 2)
    ends = [t for t, _ in sub_events[1:]] + ([p2 if p2 is not None else wall] if sub_events else [])
    for (t, label), end in zip(sub_events, ends, strict=True):
        subpasses[label] = subpasses.get(label, 0.0) + (end - t)
    if subpasses:
        out["pass1_subpasses_s"] = subpasses
    return out

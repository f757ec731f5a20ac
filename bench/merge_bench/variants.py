"""The variants: what is run and compared, declared as data.

Four kinds of command are measured side by side (``KINDS``): an ooc-ties merge (a preset, a thread count,
perhaps a memory budget), an ooc-ties merge of a mergekit config (``--config METHOD.yml``), mergekit itself
(``mergekit-yaml``, on its TIES config or on a method's config) and the in-RAM NumPy reference; the I/O
floors (``Floor``: the inputs read twice, and once when a method's config runs) are timed in every round
as the yardstick. ``--variant`` strings name them (``parse_variant``), ``--methods`` one pair per method
(``method_specs``); ``DEFAULTS`` and ``SCALING_DEFAULTS`` are what runs without any. ``grid[:THREADS]`` is a
grid of merges in one command (``GRID_DENSITIES`` x ``GRID_LAMBDAS``, the ``paper`` preset), reported beside
the one merge of the same preset and thread count; so is ``report[:THREADS]``, one ``paper`` merge that also writes
its interference report (``--report WORKDIR/report-out``), and ``cluster[:N]``, one ``paper`` merge on
``--cluster local:N`` (``running[:N]``: on a cluster kept running, ``running_cluster``).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from .data import METHODS, N_FINETUNED, Workdir, mem_total_bytes
from .util import log


class Spec(NamedTuple):
    """A parsed ``--variant``."""

    kind: str
    preset: str
    threads: int | None
    method: str | None = None
    """The merge method whose mergekit config runs (``Workdir.method_config``); None: ``--preset``, or
    mergekit's TIES config equivalent to the ``mergekit`` preset."""


@dataclass(frozen=True)
class Floor:
    """An I/O floor: every input file read ``reads`` times with ``cat``, as one command, no computation."""

    reads: int

    @property
    def name(self) -> str:
        return f"io-floor (cat x{self.reads})"

    @property
    def text(self) -> str:
        return "; ".join(["cat FILES > /dev/null"] * self.reads)

    def command(self, read_once: str) -> list[str]:
        return ["sh", "-c", "; ".join([read_once] * self.reads)]


GRID_DENSITIES = (0.1, 0.2, 0.3)
GRID_LAMBDAS = (0.8, 1.0, 1.2)
"""The ``grid`` variant: ``--density 0.1,0.2,0.3 --lambda 0.8,1.0,1.2``, a 3x3 grid of merges in one command
(``OUT/ties-dD-lL/`` per point and ``OUT/grid.json``)."""
GRID_MERGES = len(GRID_DENSITIES) * len(GRID_LAMBDAS)


def _csv(values: tuple[float, ...]) -> str:
    return ",".join(str(x) for x in values)


FLOOR = Floor(2)
"""The yardstick of every table: a TIES merge reads its inputs at least twice."""
FLOOR_ONCE = Floor(1)
"""Also timed when a method's config runs: linear and task_arithmetic read their inputs once."""
FLOOR_NAME = FLOOR.name

MERGEKIT_SETUP = (
    "python3 -m venv {d} && {d}/bin/pip install /opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
    " && {d}/bin/pip install mergekit"
)

# Runs in a child (the benchmark process must not import NumPy): the in-RAM reference, writing nothing.
REFERENCE_CODE = """
import sys
from ooc_ties.config import PRESETS
from ooc_ties.reference import reference_merge
out = reference_merge(sys.argv[2], sys.argv[3:], PRESETS[sys.argv[1]])
print(sum(a.size for a in out.values()))
"""


@dataclass(frozen=True)
class Variant:
    """One measured command: an ooc-ties merge, mergekit's ``mergekit-yaml``, or the in-RAM reference."""

    preset: str
    threads: int | None
    budget: str | None
    kind: str = "ooc"  # a key of KINDS
    method: str | None = None  # as Spec.method

    @property
    def name(self) -> str:
        if self.kind == "mergekit-yaml":
            return "mergekit-yaml" + (f" {self.method}.yml" if self.method else "")
        if self.kind == "reference":
            return f"reference/{self.preset}"
        t = f"{self.threads}t" if self.threads else "all-cpus"
        what = f"{self.method}.yml" if self.kind == "ooc-config" else self.preset
        if self.kind == "ooc-grid":
            what += f"-grid{len(GRID_DENSITIES)}x{len(GRID_LAMBDAS)}"
        if self.kind == "ooc-report":
            what += "+report"
        if self.kind == "ooc-cluster":
            what += f"+cluster-local:{self.threads}"
        if self.kind == "ooc-running":
            what += f"+running-cluster:{self.threads}"
        return f"{what}/{t}" + (f"/{self.budget}" if self.budget else "")

    @property
    def engine(self) -> bool:
        return KINDS[self.kind].engine

    @property
    def merges(self) -> int:
        """How many merges one run makes (the points of a grid; 1 otherwise)."""
        return GRID_MERGES if self.kind == "ooc-grid" else 1

    def args(self) -> list[str]:
        """ooc-ties' options: the preset (unless a config runs), the grid's lists, threads, budget."""
        out = (
            ["--preset", self.preset]
            if self.kind in ("ooc", "ooc-grid", "ooc-report", "ooc-cluster", "ooc-running")
            else []
        )
        if self.kind == "ooc-grid":
            out += ["--density", _csv(GRID_DENSITIES), "--lambda", _csv(GRID_LAMBDAS)]
        if self.threads:
            out += ["--threads", str(self.threads)]
        if self.budget:
            out += ["--memory-budget", self.budget]
        return out


@dataclass(frozen=True)
class Tools:
    """The executables the variants run, and where their mergekit configs are."""

    ooc: str
    python: str
    """The Python beside ``ooc``, which runs the reference and the output comparison."""
    mergekit: Path | None
    """``VENV/bin/mergekit-yaml``, when a variant runs it."""
    work: Workdir
    cluster: str | None = None
    """The running cluster's scheduler address (``running:N``), once started."""

    def config(self, v: Variant) -> Path:
        """The mergekit config ``v`` runs: its method's, or the TIES one of the ``mergekit`` preset."""
        return self.work.method_config(v.method) if v.method else self.work.mergekit_config

    def command(self, v: Variant, dirs: list[Path], dest: Path, extra: list[str]) -> list[str]:
        """The command line of ``v`` over the models ``dirs``, writing to ``dest``; ``extra`` for ooc-ties."""
        return KINDS[v.kind].command(self, v, dirs, dest, extra)

    def command_text(self, v: Variant, dirs: list[Path], dest: Path) -> str:
        """The timed command as the JSON shows it."""
        if v.kind == "reference":
            return f"{self.python} -c REFERENCE_CODE {v.preset} {' '.join(map(str, dirs))}"
        return shlex.join(self.command(v, dirs, dest, ["-q"]))


def _ooc_command(t: Tools, v: Variant, dirs: list[Path], dest: Path, extra: list[str]) -> list[str]:
    return [t.ooc, "merge", "--base", str(dirs[0]), *map(str, dirs[1:]), "-o", str(dest), *extra, *v.args()]


def _report_command(t: Tools, v: Variant, dirs: list[Path], dest: Path, extra: list[str]) -> list[str]:
    return [*_ooc_command(t, v, dirs, dest, extra), "--report", str(t.work.report_out)]


def _cluster_command(t: Tools, v: Variant, dirs: list[Path], dest: Path, extra: list[str]) -> list[str]:
    return [*_ooc_command(t, v, dirs, dest, extra), "--cluster", f"local:{v.threads or 2}"]


def _running_command(t: Tools, v: Variant, dirs: list[Path], dest: Path, extra: list[str]) -> list[str]:
    return [*_ooc_command(t, v, dirs, dest, extra), "--cluster", t.cluster or "tcp://(not started)"]


def _config_command(t: Tools, v: Variant, dirs: list[Path], dest: Path, extra: list[str]) -> list[str]:
    return [t.ooc, "merge", "--config", str(t.config(v)), "-o", str(dest), *extra, *v.args()]


def _mergekit_command(t: Tools, v: Variant, dirs: list[Path], dest: Path, extra: list[str]) -> list[str]:
    return [str(t.mergekit), str(t.config(v)), str(dest), "--no-cuda", "--no-copy-tokenizer", "--quiet"]


def _reference_command(t: Tools, v: Variant, dirs: list[Path], dest: Path, extra: list[str]) -> list[str]:
    return [t.python, "-c", REFERENCE_CODE, v.preset, *map(str, dirs)]


@dataclass(frozen=True)
class Kind:
    """How a kind of variant is run and measured."""

    engine: bool
    """ooc-ties itself: takes ``--budget``, gets a dry-run estimate and an untimed ``-vv`` phase run. The
    other kinds are killed after ``--timeout`` and are the OOM killer's first choice."""
    fatal: bool
    """A failed run stops the benchmark. Otherwise it is reported (with the end of its stderr, kept in
    ``Workdir.stderr_log``) and the variant is not run again."""
    writes_output: bool
    """A successful run leaves ``.safetensors`` files in the output folder."""
    command: Callable[[Tools, Variant, list[Path], Path, list[str]], list[str]]


KINDS: dict[str, Kind] = {
    "ooc": Kind(engine=True, fatal=True, writes_output=True, command=_ooc_command),
    "ooc-grid": Kind(engine=True, fatal=True, writes_output=True, command=_ooc_command),
    "ooc-report": Kind(engine=True, fatal=True, writes_output=True, command=_report_command),
    "ooc-cluster": Kind(engine=True, fatal=True, writes_output=True, command=_cluster_command),
    "ooc-running": Kind(engine=True, fatal=True, writes_output=True, command=_running_command),
    "ooc-config": Kind(engine=True, fatal=False, writes_output=True, command=_config_command),
    "mergekit-yaml": Kind(engine=False, fatal=False, writes_output=True, command=_mergekit_command),
    "reference": Kind(engine=False, fatal=False, writes_output=False, command=_reference_command),
}


def _method(text: str, name: str) -> str:
    if name not in METHODS:
        raise argparse.ArgumentTypeError(f"variant {text!r}: unknown method {name!r} (one of {', '.join(METHODS)})")
    return name


def _threads(text: str, threads: str) -> int | None:
    if threads in ("", "all"):
        return None
    try:
        n = int(threads)
    except ValueError:
        raise argparse.ArgumentTypeError(f"variant {text!r}: threads must be an integer") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"variant {text!r}: threads must be positive")
    return n


def parse_variant(text: str) -> Spec:
    """``mergekit`` alone is mergekit itself (``mergekit-yaml``) on its TIES config; ``mergekit-yaml:METHOD``
    is mergekit on that method's config; ``method:METHOD[:THREADS]`` is ooc-ties on it (``--config``);
    ``mergekit:N`` / ``mergekit:all`` are ooc-ties' mergekit preset; ``reference[:PRESET]`` is the in-RAM
    NumPy reference (default preset paper); ``grid[:THREADS]`` is the 3x3 grid of ``paper`` merges (``GRID_*``);
    ``report[:THREADS]`` is one ``paper`` merge with ``--report``; ``cluster[:N]`` is one ``paper`` merge on
    ``--cluster local:N`` (N worker processes, default 2), beside the local merge with N threads; ``running[:N]``
    the same on a cluster of N workers the benchmark keeps running (``running_cluster``)."""
    preset, sep, threads = text.partition(":")
    if preset == "grid":
        return Spec("ooc-grid", "paper", _threads(text, threads))
    if preset == "report":
        return Spec("ooc-report", "paper", _threads(text, threads))
    if preset == "cluster":
        return Spec("ooc-cluster", "paper", _threads(text, threads) or 2)
    if preset == "running":
        return Spec("ooc-running", "paper", _threads(text, threads) or 2)
    if preset == "mergekit-yaml" or (preset == "mergekit" and not sep):
        return Spec("mergekit-yaml", "mergekit", None, _method(text, threads) if threads else None)
    if preset == "method":
        name, _, n = threads.partition(":")
        return Spec("ooc-config", "mergekit", _threads(text, n), _method(text, name))
    if preset == "reference":
        ref_preset = threads or "paper"
        if ref_preset not in ("paper", "mergekit"):
            raise argparse.ArgumentTypeError(f"variant {text!r}: reference preset must be paper or mergekit")
        return Spec("reference", ref_preset, None)
    if preset not in ("paper", "mergekit"):
        raise argparse.ArgumentTypeError(
            f"variant {text!r}: must be paper[:THREADS], mergekit:THREADS, mergekit (mergekit-yaml), "
            "method:METHOD[:THREADS], mergekit-yaml:METHOD, grid[:THREADS], report[:THREADS], cluster[:N], "
            "running[:N] or reference[:PRESET]"
        )
    return Spec("ooc", preset, _threads(text, threads))


def parse_methods(text: str) -> list[str]:
    """``all``, ``none`` or a comma-separated list of methods (``--methods``, ``--mergekit-methods``)."""
    if text == "all":
        return list(METHODS)
    names = [x.strip() for x in text.split(",") if x.strip() and text != "none"]
    return [_method(text, n) for n in names]


def method_specs(methods: list[str], mergekit_methods: list[str]) -> list[Spec]:
    """One row per method: ooc-ties on its config, then (for ``mergekit_methods``) mergekit-yaml on the same."""
    out = []
    for name in methods:
        out.append(Spec("ooc-config", "mergekit", None, name))
        if name in mergekit_methods:
            out.append(Spec("mergekit-yaml", "mergekit", None, name))
    return out


DEFAULTS: list[Spec] = [parse_variant(t) for t in ("paper:2", "paper:1", "mergekit:2")]
SCALING_DEFAULTS: list[Spec] = [parse_variant(t) for t in ("paper:2", "paper:1")]


def reference_too_big(parameters: int, mem_total: int) -> str | None:
    """Why the in-RAM reference is not run on models of ``parameters``, or None if it fits."""
    need = parameters * 4 * (2 * N_FINETUNED + 4)  # tau, |tau|, a sorted copy, base, masks, temporaries
    if parameters > 0.5e9 or need > 0.6 * mem_total:
        return (
            f"{parameters / 1e9:.2f}e9 parameters: the in-RAM reference would need ~{need / 2**30:.1f} GiB "
            f"(limit 0.5e9 parameters and 60% of {mem_total / 2**30:.1f} GiB)"
        )
    return None


def select_variants(specs: list[Spec], budget: str | None, parameters: int) -> tuple[list[Variant], dict[str, str]]:
    """The variants of ``specs`` that run on models of ``parameters`` (``budget`` for ooc-ties), and the skipped
    ones with the reason."""
    skipped: dict[str, str] = {}
    variants = []
    for kind, preset, threads, method in specs:
        v = Variant(preset, threads, budget if KINDS[kind].engine else None, kind, method)
        why = reference_too_big(parameters, mem_total_bytes()) if kind == "reference" else None
        if why is not None:
            skipped[v.name] = why
            log(f"skipping {v.name}: {why}")
            continue
        variants.append(v)
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        sys.exit("bench: duplicate variants")
    return variants, skipped


def floors(variants: list[Variant]) -> list[Floor]:
    """The floors timed in every round: twice, and once when a method's config runs."""
    return [FLOOR, FLOOR_ONCE] if any(v.method for v in variants) else [FLOOR]


def check_mergekit(venv: Path) -> Path:
    exe = venv / "bin" / "mergekit-yaml"
    if not exe.exists():
        sys.exit(
            f"bench: {exe} does not exist. Create the venv (torch from the local wheel first, then mergekit):\n  "
            + MERGEKIT_SETUP.format(d=shlex.quote(str(venv)))
        )
    return exe

"""The variants: what is run and compared, declared as data.

Three kinds of command are measured side by side (``KINDS``): an ooc-ties merge (a preset, a thread count,
perhaps a memory budget), mergekit's own TIES (``mergekit-yaml``), and the in-RAM NumPy reference; the
I/O floor (``FLOOR_NAME``) is timed in every round as the yardstick. ``--variant`` strings name them
(``parse_variant``); ``DEFAULTS`` and ``SCALING_DEFAULTS`` are what runs without any.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .data import N_FINETUNED, mem_total_bytes
from .util import log

Spec = tuple[str, str, int | None]
"""A parsed ``--variant``: (kind, preset, threads)."""

FLOOR_NAME = "io-floor (cat x2)"
FLOOR_TEXT = "cat FILES > /dev/null; cat FILES > /dev/null"

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

    @property
    def name(self) -> str:
        if self.kind == "mergekit-yaml":
            return "mergekit-yaml"
        if self.kind == "reference":
            return f"reference/{self.preset}"
        t = f"{self.threads}t" if self.threads else "all-cpus"
        return f"{self.preset}/{t}" + (f"/{self.budget}" if self.budget else "")

    @property
    def engine(self) -> bool:
        return KINDS[self.kind].engine

    def args(self) -> list[str]:
        out = ["--preset", self.preset]
        if self.threads:
            out += ["--threads", str(self.threads)]
        if self.budget:
            out += ["--memory-budget", self.budget]
        return out


@dataclass(frozen=True)
class Tools:
    """The executables the variants run, and mergekit's config."""

    ooc: str
    python: str
    """The Python beside ``ooc``, which runs the reference and the output comparison."""
    mergekit: Path | None
    """``VENV/bin/mergekit-yaml``, when a variant runs it."""
    mergekit_config: Path

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


def _mergekit_command(t: Tools, v: Variant, dirs: list[Path], dest: Path, extra: list[str]) -> list[str]:
    return [str(t.mergekit), str(t.mergekit_config), str(dest), "--no-cuda", "--no-copy-tokenizer", "--quiet"]


def _reference_command(t: Tools, v: Variant, dirs: list[Path], dest: Path, extra: list[str]) -> list[str]:
    return [t.python, "-c", REFERENCE_CODE, v.preset, *map(str, dirs)]


@dataclass(frozen=True)
class Kind:
    """How a kind of variant is run and measured."""

    engine: bool
    """ooc-ties itself: takes ``--budget``, gets a dry-run estimate and an untimed ``-vv`` phase run, and a
    failed run stops the benchmark. The other kinds are killed after ``--timeout``, are the OOM killer's
    first choice, and a failed run is reported and the variant not run again."""
    writes_output: bool
    """A successful run leaves ``.safetensors`` files in the output folder."""
    command: Callable[[Tools, Variant, list[Path], Path, list[str]], list[str]]


KINDS: dict[str, Kind] = {
    "ooc": Kind(engine=True, writes_output=True, command=_ooc_command),
    "mergekit-yaml": Kind(engine=False, writes_output=True, command=_mergekit_command),
    "reference": Kind(engine=False, writes_output=False, command=_reference_command),
}


def parse_variant(text: str) -> Spec:
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
    for kind, preset, threads in specs:
        v = Variant(preset, threads, budget if KINDS[kind].engine else None, kind)
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


def floor_command(read_once: str) -> list[str]:
    """The I/O floor: every input read twice, as one command."""
    return ["sh", "-c", f"{read_once}; {read_once}"]


def check_mergekit(venv: Path) -> Path:
    exe = venv / "bin" / "mergekit-yaml"
    if not exe.exists():
        sys.exit(
            f"bench: {exe} does not exist. Create the venv (torch from the local wheel first, then mergekit):\n  "
            + MERGEKIT_SETUP.format(d=shlex.quote(str(venv)))
        )
    return exe

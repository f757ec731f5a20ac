"""The report: medians per variant, the ratios between them, the printed tables and the JSON.

``summarize`` and ``ratios`` reduce the runs; ``print_report`` prints one shape's tables and
``shape_json`` its JSON report; ``scaling_json`` and ``print_scaling_summary`` do the same over shapes.
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import asdict, dataclass
from typing import Any

from .compare import print_comparison
from .data import N_FINETUNED, Inputs
from .measure import RunResult
from .util import MiB
from .variants import FLOOR_NAME, FLOOR_TEXT, Variant


@dataclass
class Measured:
    """Everything the benchmark of one shape measured, before it is reduced."""

    inputs: Inputs
    variants: list[Variant]
    """The variants that ran, in order (without the floor and the skipped ones)."""
    commands: dict[str, str]
    """Variant name -> its timed command, as the JSON shows it."""
    skipped: dict[str, str]
    """Variant name -> why it did not run."""
    mergekit_config: str | None
    runs: list[RunResult]
    estimates: dict[str, str]
    """ooc-ties variant name -> the engine's own estimate, from ``--dry-run``."""
    phases: dict[str, Any]
    comparison: dict[str, Any] | None

    @property
    def names(self) -> list[str]:
        return [v.name for v in self.variants]


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


def summaries(m: Measured) -> dict[str, dict[str, Any]]:
    """The floor's and every variant's summary, in that order."""
    return {n: summarize([r for r in m.runs if r.variant == n]) for n in [FLOOR_NAME, *m.names]}


def ratios(m: Measured, summary: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each variant against the floor, 1 thread against 2, and mergekit-yaml against each ooc-ties variant."""
    out: dict[str, Any] = {
        "wall_vs_io_floor": {},
        "wall_vs_io_floor_paired": {},
        "speedup_1t_over_2t": {},
        "mergekit_yaml_over_ooc_ties": {},
        "mergekit_yaml_rss_anon_over_ooc_ties": {},
    }
    floor_by_round = {r.round: r.wall_s for r in m.runs if r.variant == FLOOR_NAME}
    for n in succeeded(m, summary):
        out["wall_vs_io_floor"][n] = summary[n]["wall_s"] / summary[FLOOR_NAME]["wall_s"]
        out["wall_vs_io_floor_paired"][n] = statistics.median(
            r.wall_s / floor_by_round[r.round]
            for r in m.runs
            if r.variant == n and r.status == "ok" and r.round in floor_by_round
        )
    for v1 in m.variants:
        if v1.threads != 1 or not v1.engine:
            continue
        for v2 in m.variants:
            if v2.engine and v2.threads == 2 and v2.preset == v1.preset and v2.budget == v1.budget:
                out["speedup_1t_over_2t"][v1.preset] = summary[v1.name]["wall_s"] / summary[v2.name]["wall_s"]
    if "mergekit-yaml" in succeeded(m, summary):
        mk = summary["mergekit-yaml"]
        for v in m.variants:
            if v.engine:
                out["mergekit_yaml_over_ooc_ties"][v.name] = mk["wall_s"] / summary[v.name]["wall_s"]
                out["mergekit_yaml_rss_anon_over_ooc_ties"][v.name] = (
                    mk["rss_anon_peak_mib"] / summary[v.name]["rss_anon_peak_mib"]
                )
    return out


def succeeded(m: Measured, summary: dict[str, dict[str, Any]]) -> list[str]:
    """The variants with at least one successful run, in order."""
    return [n for n in m.names if summary[n]["runs"]]


# ----------------------------------------------------------------------------------------- the table

_COLUMNS = [
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


def _row_without_runs(name: str, s: dict[str, Any], budget: int | None) -> list[str]:
    status = ", ".join(f"{n} {k}" for k, n in s["failed"].items()) or "not run"
    last = f"{s['wall_max_s']:.0f} s" if s.get("wall_max_s") else "-"
    row = [name, "0", f"({status})", last, "-", "-", "-", "-"]
    row += [f"{s['maxrss_mib']:.0f}", f"{s['rss_anon_peak_max_mib']:.0f}", "-", "-"]
    return row + (["-"] if budget else [])


def _row(name: str, s: dict[str, Any], floor_wall: float, budget: int | None) -> list[str]:
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
        "-" if name == FLOOR_NAME else f"{s['wall_s'] / floor_wall:.2f}",
    ]
    if s["failed"]:
        row[1] += "+" + "+".join(f"{n}{k[0]}" for k, n in s["failed"].items())
    if budget:
        row.append("-" if name == FLOOR_NAME else f"{s['rss_anon_peak_max_mib'] * MiB / budget:.2f}")
    return row


def print_table(summary: dict[str, dict[str, Any]], budget: int | None) -> None:
    floor_wall = summary[FLOOR_NAME]["wall_s"]
    cols = _COLUMNS + (["anon/budget"] if budget else [])
    rows = [
        _row(name, s, floor_wall, budget) if s["runs"] else _row_without_runs(name, s, budget)
        for name, s in summary.items()
    ]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]

    def line(values: list[str]) -> str:
        cells = zip(values, widths, strict=True)
        return "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(cells))

    head = line(cols)
    print(head)
    print("-" * len(head))
    for r in rows:
        print(line(r))


# ------------------------------------------------------------------------------------ one shape's report


def _print_header(args: argparse.Namespace, inputs: Inputs) -> None:
    print(
        f"ooc-ties merge benchmark: shape {inputs.shape}, {N_FINETUNED} fine-tuned + base, "
        f"{inputs.parameters / 1e9:.3f}e9 parameters, {inputs.input_bytes / 1e9:.3f} GB of input, "
        f"{args.repeat} round(s)"
        + (f" ({args.mergekit_repeat} for mergekit-yaml)" if args.mergekit_repeat else "")
        + ", medians"
        + (f", memory budget {args.budget}" if args.budget else "")
    )


def _print_ratios(m: Measured, summary: dict[str, dict[str, Any]], rt: dict[str, Any]) -> None:
    print("wall / I/O-floor wall (ratio of medians; median of per-round ratios):")
    for n in succeeded(m, summary):
        print(f"  {n:28s} {rt['wall_vs_io_floor'][n]:.2f}   {rt['wall_vs_io_floor_paired'][n]:.2f}")
    for preset, sp in rt["speedup_1t_over_2t"].items():
        print(f"speedup {preset}: 1-thread wall / 2-thread wall = {sp:.2f}")
    if rt["mergekit_yaml_over_ooc_ties"]:
        print("mergekit-yaml / ooc-ties (ratio of medians): wall, peak RssAnon")
        for n, r in rt["mergekit_yaml_over_ooc_ties"].items():
            print(f"  {n:28s} {r:.2f}x   {rt['mergekit_yaml_rss_anon_over_ooc_ties'][n]:.1f}x")


def _print_missing(m: Measured) -> None:
    for n, why in m.skipped.items():
        print(f"skipped {n}: {why}")
    for n in m.names:
        for r in m.runs:
            if r.variant == n and r.status != "ok":
                print(f"{n} round {r.round + 1}: {r.status} after {r.wall_s:.1f} s ({r.note})")


def _print_phases(phases: dict[str, Any]) -> None:
    print("phases (one untimed -vv run per variant, seconds):")
    for n, ph in phases.items():
        parts = [
            f"{k.removesuffix('_s')} {ph[k]:.2f}"
            for k in ("wall_s", "startup_s", "pass1_s", "pass2_s", "finish_s", "pass2_and_finish_s")
            if k in ph
        ]
        print(f"  {n:28s} " + ", ".join(parts))
        if "pass1_subpasses_s" in ph:
            subs = ", ".join(f"{k} {val:.2f}" for k, val in ph["pass1_subpasses_s"].items())
            print("  " + " " * 28 + " pass 1: " + subs)


def print_report(
    args: argparse.Namespace, m: Measured, summary: dict[str, dict[str, Any]], rt: dict[str, Any], budget: int | None
) -> None:
    """One shape's tables, up to the generation time."""
    print()
    _print_header(args, m.inputs)
    print()
    print_table(summary, budget)
    print()
    _print_ratios(m, summary, rt)
    _print_missing(m)
    if m.estimates:
        print("engine estimate (dry run):")
        for n, e in m.estimates.items():
            print(f"  {n:28s} {e}")
    if m.phases:
        _print_phases(m.phases)
    if m.comparison is not None:
        print_comparison(m.comparison)
    if m.inputs.generation_s is not None:
        print(f"generation: {m.inputs.generation_s:.1f} s")


def print_footer(total: float, digest_before: str | None, digest_after: str | None) -> None:
    print(f"benchmark total: {total:.1f} s")
    if digest_before != digest_after:
        print(
            f"WARNING: the ooc_ties sources changed during the benchmark ({digest_before} -> {digest_after}); "
            "runs may mix code versions"
        )


def shape_json(
    args: argparse.Namespace,
    m: Measured,
    summary: dict[str, dict[str, Any]],
    rt: dict[str, Any],
    total: float,
    digests: tuple[str | None, str | None],
) -> dict[str, Any]:
    """One shape's JSON report (``main`` adds ``environment``)."""
    return {
        "shape": m.inputs.shape,
        "parameters": m.inputs.parameters,
        "repeat": args.repeat,
        "mergekit_repeat": args.mergekit_repeat,
        "budget": args.budget,
        "input_bytes": m.inputs.input_bytes,
        "input_files": [str(f) for f in m.inputs.files],
        "generation_s": m.inputs.generation_s,
        "variants": {
            v.name: {
                "kind": v.kind,
                "preset": v.preset,
                "threads": v.threads,
                "budget": v.budget,
                "command": m.commands[v.name],
            }
            for v in m.variants
        },
        "skipped": m.skipped,
        "mergekit_config": m.mergekit_config,
        "io_floor_command": FLOOR_TEXT,
        "summary": summary,
        "ratios": rt,
        "comparison": m.comparison,
        "engine_estimates": m.estimates,
        "phases": m.phases,
        "runs": [asdict(r) for r in m.runs],
        "benchmark_s": total,
        "source_digest_before": digests[0],
        "source_digest_after": digests[1],
    }


# ------------------------------------------------------------------------------------------- scaling

_SCALING_KEYS = (
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


def scaling_json(
    args: argparse.Namespace, results: list[dict[str, Any]], env_info: dict[str, Any], seconds: float
) -> dict[str, Any]:
    """The ``--scaling`` JSON: each shape's main figures, then every shape's full report."""
    return {
        "mode": "scaling",
        "shapes": [{k: r[k] for k in _SCALING_KEYS} for r in results],
        "repeat": args.repeat,
        "mergekit_repeat": args.mergekit_repeat,
        "reports": results,
        "environment": env_info,
        "benchmark_s": seconds,
    }


def print_scaling_summary(results: list[dict[str, Any]]) -> None:
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

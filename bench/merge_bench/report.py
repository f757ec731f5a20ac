"""The report: medians per variant, the ratios between them, the printed tables and the JSON.

``summarize`` and ``ratios`` reduce the runs (``method_rows``: one row per merge method, ooc-ties beside
mergekit-yaml on the same config); ``print_report`` prints one shape's tables and ``shape_json`` its JSON
report; ``scaling_json`` and ``print_scaling_summary`` do the same over shapes.
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
from .variants import FLOOR, FLOOR_NAME, FLOOR_ONCE, Floor, Variant


@dataclass
class Measured:
    """Everything the benchmark of one shape measured, before it is reduced."""

    inputs: Inputs
    variants: list[Variant]
    """The variants that ran, in order (without the floors and the skipped ones)."""
    floors: list[Floor]
    commands: dict[str, str]
    """Variant name -> its timed command, as the JSON shows it."""
    skipped: dict[str, str]
    """Variant name -> why it did not run."""
    mergekit_config: str | None
    """mergekit's TIES config (``mergekit-yaml`` without a method), if it ran."""
    method_configs: dict[str, str]
    """Method -> the mergekit config that ooc-ties and mergekit-yaml ran for it."""
    runs: list[RunResult]
    cold_runs: list[RunResult]
    """``--cold-reads``: one run per ooc-ties variant (and the one-read floor) after the inputs were dropped
    from the page cache; not in the medians."""
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


def cold_reads(runs: list[RunResult], input_bytes: int) -> dict[str, Any]:
    """A variant's cold-read figures (``--cold-reads``; its first such run): bytes read from storage, as
    multiples of the input bytes in all and per merge, and that run's wall."""
    if not runs:
        return {}
    r = runs[0]
    return {
        "cold_wall_s": r.wall_s,
        "cold_read_bytes": r.read_bytes,
        "cold_inblock_bytes": r.inblock_bytes,
        "cold_reads": r.read_bytes / input_bytes,
        "cold_reads_per_merge": r.read_bytes / input_bytes / r.merges,
        "merges": r.merges,
    }


def summaries(m: Measured) -> dict[str, dict[str, Any]]:
    """The floors' and every variant's summary, in that order, with its cold reads (``--cold-reads``)."""
    names = [*(f.name for f in m.floors), *m.names]
    out = {n: summarize([r for r in m.runs if r.variant == n]) for n in names}
    for n in names:
        out[n].update(cold_reads([r for r in m.cold_runs if r.variant == n], m.inputs.input_bytes))
    return out


def method_rows(m: Measured, summary: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per method, in order: its ooc-ties variant (the first, if several) and its mergekit-yaml variant (or
    None), ooc-ties' wall against the one-read floor, and mergekit-yaml's wall (ratio of medians, and the
    median of the ratios within a round: mergekit-yaml often runs once, and the round it ran in is the
    fairest comparison on a busy machine) and peak RssAnon against ooc-ties' (None where a side has no
    successful run)."""
    once = summary.get(FLOOR_ONCE.name, {}).get("wall_s")
    rows: dict[str, dict[str, Any]] = {}
    for v in m.variants:
        if v.method is None:
            continue
        row = rows.setdefault(v.method, {"ooc_ties": None, "mergekit_yaml": None})
        side = "mergekit_yaml" if v.kind == "mergekit-yaml" else "ooc_ties"
        row[side] = row[side] or v.name
    for row in rows.values():
        ooc = summary[row["ooc_ties"]] if row["ooc_ties"] else {"runs": 0}
        mk = summary[row["mergekit_yaml"]] if row["mergekit_yaml"] else {"runs": 0}
        row["x_read_once_floor"] = ooc["wall_s"] / once if ooc["runs"] and once else None
        both = ooc["runs"] and mk["runs"]
        row["mergekit_yaml_over_ooc_ties"] = mk["wall_s"] / ooc["wall_s"] if both else None
        row["mergekit_yaml_over_ooc_ties_paired"] = _paired(m.runs, row["mergekit_yaml"], row["ooc_ties"])
        row["mergekit_yaml_rss_anon_over_ooc_ties"] = (
            mk["rss_anon_peak_mib"] / ooc["rss_anon_peak_mib"] if both else None
        )
    return rows


def _paired(runs: list[RunResult], num: str | None, den: str | None) -> float | None:
    """The median over rounds where both ran successfully of ``num``'s wall / ``den``'s, or None."""
    walls: dict[str | None, dict[int, float]] = {num: {}, den: {}}
    for r in runs:
        if r.variant in walls and r.status == "ok":
            walls[r.variant][r.round] = r.wall_s
    common = sorted(walls[num].keys() & walls[den].keys()) if num and den else []
    return statistics.median(walls[num][i] / walls[den][i] for i in common) if common else None


def ratios(m: Measured, summary: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each variant against the floor, 1 thread against 2, mergekit-yaml (its TIES config) against each
    ooc-ties variant, and the per-method rows."""
    out: dict[str, Any] = {
        "wall_vs_io_floor": {},
        "wall_vs_io_floor_paired": {},
        "speedup_1t_over_2t": {},
        "mergekit_yaml_over_ooc_ties": {},
        "mergekit_yaml_rss_anon_over_ooc_ties": {},
    }
    for n in succeeded(m, summary):
        out["wall_vs_io_floor"][n] = summary[n]["wall_s"] / summary[FLOOR_NAME]["wall_s"]
        out["wall_vs_io_floor_paired"][n] = _paired(m.runs, n, FLOOR_NAME)
    ok = set(succeeded(m, summary))
    for v1 in m.variants:
        if v1.threads != 1 or not v1.engine or v1.name not in ok:
            continue
        for v2 in m.variants:
            same = (v2.kind, v2.preset, v2.method, v2.budget) == (v1.kind, v1.preset, v1.method, v1.budget)
            if same and v2.threads == 2 and v2.name in ok:
                key = f"{v1.method}.yml" if v1.method else v1.preset
                out["speedup_1t_over_2t"][key] = summary[v1.name]["wall_s"] / summary[v2.name]["wall_s"]
    if "mergekit-yaml" in ok:
        mk = summary["mergekit-yaml"]
        for v in m.variants:
            if v.kind == "ooc" and v.name in ok:
                out["mergekit_yaml_over_ooc_ties"][v.name] = mk["wall_s"] / summary[v.name]["wall_s"]
                out["mergekit_yaml_rss_anon_over_ooc_ties"][v.name] = (
                    mk["rss_anon_peak_mib"] / summary[v.name]["rss_anon_peak_mib"]
                )
    out["methods"] = method_rows(m, summary)
    out["grid_over_one_merge"] = grid_rows(m, summary)
    out["report_over_one_merge"] = grid_rows(m, summary, "ooc-report")
    out["cluster_over_one_merge"] = grid_rows(m, summary, "ooc-cluster")
    out["running_cluster_over_one_merge"] = grid_rows(m, summary, "ooc-running")
    return out


def grid_rows(m: Measured, summary: dict[str, dict[str, Any]], kind: str = "ooc-grid") -> dict[str, dict[str, Any]]:
    """Per grid variant (or ``report``/``cluster`` variant: ``kind="ooc-report"``/``"ooc-cluster"``),
    against the one merge of the same
    preset, threads and budget measured in the same run (None where either has no successful run): the ratio of
    median walls (and the median of per-round ratios), that ratio per merge of the grid, and the ratios of peak
    RSS, peak RssAnon and cold reads."""
    rows: dict[str, dict[str, Any]] = {}
    for g in m.variants:
        if g.kind != kind:
            continue
        one = next(
            (
                v
                for v in m.variants
                if v.kind == "ooc" and (v.preset, v.threads, v.budget) == (g.preset, g.threads, g.budget)
            ),
            None,
        )
        row: dict[str, Any] = {"one_merge": one.name if one else None, "merges": g.merges}
        sg, so = summary[g.name], summary[one.name] if one else {"runs": 0}
        both = bool(sg["runs"] and so["runs"])
        row["wall"] = sg["wall_s"] / so["wall_s"] if both else None
        row["wall_paired"] = _paired(m.runs, g.name, one.name) if one else None
        row["wall_per_merge"] = row["wall"] / g.merges if both else None
        row["maxrss"] = sg["maxrss_mib"] / so["maxrss_mib"] if both else None
        row["rss_anon"] = sg["rss_anon_peak_mib"] / so["rss_anon_peak_mib"] if both else None
        cold = "cold_read_bytes"
        row["cold_reads"] = sg[cold] / so[cold] if one and sg.get(cold) and so.get(cold) else None
        rows[g.name] = row
    return rows


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
    "reads/merge",
]


_FLOOR_NAMES = {FLOOR.name, FLOOR_ONCE.name}


def _reads_cell(s: dict[str, Any]) -> str:
    """Cold reads per merge (``--cold-reads``), with the whole run's reads when it made several merges."""
    if "cold_reads" not in s:
        return "-"
    per = f"{s['cold_reads_per_merge']:.3f}" if s["merges"] > 1 else f"{s['cold_reads_per_merge']:.2f}"
    return per + (f" ({s['cold_reads']:.2f}/{s['merges']})" if s["merges"] > 1 else "")


def _row_without_runs(name: str, s: dict[str, Any], budget: int | None) -> list[str]:
    status = ", ".join(f"{n} {k}" for k, n in s["failed"].items()) or "not run"
    last = f"{s['wall_max_s']:.0f} s" if s.get("wall_max_s") else "-"
    row = [name, "0", f"({status})", last, "-", "-", "-", "-"]
    row += [f"{s['maxrss_mib']:.0f}", f"{s['rss_anon_peak_max_mib']:.0f}", "-", "-", _reads_cell(s)]
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
        "-" if name in _FLOOR_NAMES else f"{s['wall_s'] / floor_wall:.2f}",
        _reads_cell(s),
    ]
    if s["failed"]:
        row[1] += "+" + "+".join(f"{n}{k[0]}" for k, n in s["failed"].items())
    if budget:
        row.append("-" if name in _FLOOR_NAMES else f"{s['rss_anon_peak_max_mib'] * MiB / budget:.2f}")
    return row


def print_table(summary: dict[str, dict[str, Any]], budget: int | None) -> None:
    """The main table; ``reads/merge`` is from the cold-read round (``--cold-reads``), the rest from the
    timed rounds."""
    floor_wall = summary[FLOOR_NAME]["wall_s"]
    cols = _COLUMNS + (["anon/budget"] if budget else [])
    rows = [
        _row(name, s, floor_wall, budget) if s["runs"] else _row_without_runs(name, s, budget)
        for name, s in summary.items()
    ]
    _print_rows(cols, rows)


def _print_rows(cols: list[str], rows: list[list[str]]) -> None:
    """A table: the first column left-aligned, the others right-aligned, a rule under the header."""
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


_METHOD_COLUMNS = [
    "method",
    "ooc-ties s",
    "GB/s",
    "maxRSS MiB",
    "RssAnon MiB",
    "x floor(1 read)",
    "mergekit-yaml s",
    "GB/s",
    "maxRSS MiB",
    "RssAnon MiB",
    "mergekit/ooc wall",
    "same round",
    "RssAnon",
]


def _side(s: dict[str, Any] | None) -> list[str]:
    """One tool's four cells of a method row: wall, GB/s, maxRSS, RssAnon (or how it ended)."""
    if s is None:
        return ["not run", "-", "-", "-"]
    if not s["runs"]:
        status = ", ".join(s["failed"]) or "not run"
        return [status, "-", f"{s['maxrss_mib']:.0f}", f"{s['rss_anon_peak_max_mib']:.0f}"]
    return [f"{s['wall_s']:.2f}", f"{s['gbps']:.2f}", f"{s['maxrss_mib']:.0f}", f"{s['rss_anon_peak_mib']:.0f}"]


def _ratio(x: float | None, digits: int) -> str:
    return "-" if x is None else f"{x:.{digits}f}x"


def print_methods(summary: dict[str, dict[str, Any]], rows: dict[str, dict[str, Any]]) -> None:
    """One row per merge method: ooc-ties --config METHOD.yml beside mergekit-yaml METHOD.yml."""
    floor = summary[FLOOR_ONCE.name]
    print(
        "per method: ooc-ties merge --config METHOD.yml beside mergekit-yaml METHOD.yml (medians; GB/s of input; "
        f"x floor(1 read): ooc-ties' wall / {FLOOR_ONCE.name}'s, {floor['wall_s']:.2f} s)"
    )
    table = []
    for method, r in rows.items():
        ooc = summary[r["ooc_ties"]] if r["ooc_ties"] else None
        mk = summary[r["mergekit_yaml"]] if r["mergekit_yaml"] else None
        cells = [method, *_side(ooc), _ratio(r["x_read_once_floor"], 2), *_side(mk)]
        cells += [_ratio(r[k], 1) for k in ("mergekit_yaml_over_ooc_ties", "mergekit_yaml_over_ooc_ties_paired")]
        cells.append(_ratio(r["mergekit_yaml_rss_anon_over_ooc_ties"], 1))
        table.append(cells)
    _print_rows(_METHOD_COLUMNS, table)


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
        print("mergekit-yaml (TIES config) / ooc-ties (ratio of medians): wall, peak RssAnon")
        for n, r in rt["mergekit_yaml_over_ooc_ties"].items():
            print(f"  {n:28s} {r:.2f}x   {rt['mergekit_yaml_rss_anon_over_ooc_ties'][n]:.1f}x")


def _print_grids(rows: dict[str, dict[str, Any]]) -> None:
    """Each grid (or ``report`` variant) against one merge of the same preset and threads, measured in the same
    run."""
    for name, r in rows.items():
        if r["wall"] is None:
            print(f"{name} / {r['one_merge']}: no successful run of one of them")
            continue
        cold = f", cold reads {r['cold_reads']:.2f}x" if r["cold_reads"] is not None else ""
        merges = f" ({r['merges']} merges / 1)" if r["merges"] > 1 else ""
        per = f"; {r['wall_per_merge']:.3f}x per merge" if r["merges"] > 1 else ""
        print(
            f"{name} / {r['one_merge']}{merges}: wall {r['wall']:.2f}x (same round "
            f"{r['wall_paired']:.2f}x{per}), maxRSS {r['maxrss']:.2f}x, "
            f"RssAnon {r['rss_anon']:.2f}x{cold}"
        )


def _print_cold(m: Measured) -> None:
    """The cold-read round: wall and bytes read from storage per run."""
    print(
        "cold-read round (--cold-reads: inputs dropped from the page cache with posix_fadvise DONTNEED before each "
        "run, one run each; read_bytes of /proc/<pid>/io and rusage inblock; reads = bytes / input bytes):"
    )
    for r in m.cold_runs:
        reads = r.read_bytes / m.inputs.input_bytes
        print(
            f"  {r.variant:28s} {r.wall_s:7.2f} s  read {r.read_bytes / 1e9:6.2f} GB (inblock "
            f"{r.inblock_bytes / 1e9:6.2f} GB)  reads {reads:.3f}  per merge {reads / r.merges:.3f}"
        )


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
        if "engine_reads" in ph:
            parts.append(f"reads (engine's own count) {ph['engine_reads']:.2f}")
        if "failed" in ph:
            parts.append(f"failed with exit code {ph['failed']}")
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
    if rt["methods"]:
        print_methods(summary, rt["methods"])
        print()
    _print_ratios(m, summary, rt)
    _print_grids(rt["grid_over_one_merge"])
    _print_grids(rt["report_over_one_merge"])
    _print_grids(rt["cluster_over_one_merge"])
    _print_grids(rt["running_cluster_over_one_merge"])
    if m.cold_runs:
        _print_cold(m)
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
        "method_configs": m.method_configs,
        "io_floor_command": FLOOR.text,
        "io_floor_commands": {f.name: f.text for f in m.floors},
        "summary": summary,
        "ratios": rt,
        "comparison": m.comparison,
        "engine_estimates": m.estimates,
        "phases": m.phases,
        "runs": [asdict(r) for r in m.runs],
        "cold_runs": [asdict(r) for r in m.cold_runs],
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

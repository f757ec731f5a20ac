"""Aggregate the seeds: results JSON, tables (Markdown) and plots (PNG)."""

from __future__ import annotations

import logging
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

START = "<!-- results:start (written by python -m bench.quality) -->"
END = "<!-- results:end -->"


def _ms(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _avg(d: dict[str, float]) -> float:
    return statistics.fmean(d.values())


def summarise(seeds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation over seeds of every reported number."""
    tasks = list(seeds[0]["tasks"])
    out: dict[str, Any] = {"tasks": tasks, "n_seeds": len(seeds), "methods": {}, "per_task": {}}
    pre_norm = [
        _avg({t: s["tasks"][t]["test"]["pretrained"] / s["tasks"][t]["test"]["finetuned"] for t in tasks})
        for s in seeds
    ]
    out["methods"]["pretrained backbone (probe heads)"] = {
        "norm": _ms(pre_norm),
        "abs": _ms([_avg({t: s["tasks"][t]["test"]["pretrained"] for t in tasks}) for s in seeds]),
        "chosen": [],
    }
    out["methods"]["fine-tuned (one model per task)"] = {
        "norm": (1.0, 0.0),
        "abs": _ms([_avg({t: s["tasks"][t]["test"]["finetuned"] for t in tasks}) for s in seeds]),
        "chosen": [],
    }
    for label in seeds[0]["methods"]:
        rows = [s["methods"][label] for s in seeds]
        out["methods"][label] = {
            "norm": _ms([_avg(r["test_norm"]) for r in rows]),
            "abs": _ms([_avg(r["test_abs"]) for r in rows]),
            "chosen": [(r["lambda"], r["density"]) for r in rows],
        }
    for t in tasks:
        row = {
            "pretrained": _ms([s["tasks"][t]["test"]["pretrained"] for s in seeds]),
            "finetuned": _ms([s["tasks"][t]["test"]["finetuned"] for s in seeds]),
        }
        for label in seeds[0]["methods"]:
            row[label] = _ms([s["methods"][label]["test_norm"][t] for s in seeds])
        out["per_task"][t] = row
    out["density"] = {
        kind: {d: _ms([_avg(s["density"][kind][d]["test_norm"]) for s in seeds]) for d in seeds[0]["density"][kind]}
        for kind in ("at_validated_lambda", "lambda_validated_per_density")
    }
    out["density_lambdas"] = [s["density"]["lambda"] for s in seeds]
    out["n_tasks"] = _summarise_subsets(seeds)
    out["task_vector_zero_share"] = _ms([_avg(s["task_vector_zero_share"]) for s in seeds])
    return out


def _summarise_subsets(seeds: Sequence[dict[str, Any]]) -> dict[str, dict[int, tuple[float, float]]]:
    """Per method and number of tasks: the mean over subsets within a seed, then mean / std over seeds."""
    methods = sorted({r["method"] for r in seeds[0]["n_tasks"]})
    sizes = sorted({r["n_tasks"] for r in seeds[0]["n_tasks"]})
    out: dict[str, dict[int, tuple[float, float]]] = {}
    for m in methods:
        out[m] = {}
        for n in sizes:
            per_seed = [
                statistics.fmean(_avg(r["test_norm"]) for r in s["n_tasks"] if r["method"] == m and r["n_tasks"] == n)
                for s in seeds
            ]
            out[m][n] = _ms(per_seed)
    return out


def _pct(ms: Sequence[float]) -> str:
    return f"{100 * ms[0]:.1f} ± {100 * ms[1]:.1f}"


def table_methods(summary: dict[str, Any]) -> str:
    lines = [
        "| method | normalised test accuracy (%) | absolute test accuracy (%) | chosen (lambda, density) per seed |",
        "|---|---|---|---|",
    ]
    for label, row in summary["methods"].items():
        chosen = "; ".join(f"{lam:g}, {d:g}" for lam, d in row["chosen"]) if row["chosen"] else "-"
        lines.append(f"| {label} | {_pct(row['norm'])} | {_pct(row['abs'])} | {chosen} |")
    return "\n".join(lines)


PER_TASK_COLUMNS = (
    "averaging",
    "task_arithmetic (validated)",
    "ties paper (validated)",
    "ties mergekit (validated)",
    "dare_ties (validated)",
    "breadcrumbs_ties (validated)",
)


def table_per_task(summary: dict[str, Any]) -> str:
    cols = [c for c in PER_TASK_COLUMNS if c in summary["per_task"][summary["tasks"][0]]]
    head = "| task | pretrained abs. | fine-tuned abs. | " + " | ".join(f"{c} norm." for c in cols) + " |"
    lines = [head, "|" + "---|" * (3 + len(cols))]
    for t, row in summary["per_task"].items():
        cells = [_pct(row["pretrained"]), _pct(row["finetuned"])] + [_pct(row[c]) for c in cols]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table_curves(summary: dict[str, Any]) -> str:
    dens = summary["density"]
    lines = ["| density | at the validated lambda | lambda validated per density |", "|---|---|---|"]
    for d in dens["at_validated_lambda"]:
        lines.append(
            f"| {d} | {_pct(dens['at_validated_lambda'][d])} | {_pct(dens['lambda_validated_per_density'][d])} |"
        )
    sizes = sorted({n for m in summary["n_tasks"].values() for n in m})
    methods = list(summary["n_tasks"])
    lines += ["", "| tasks merged | " + " | ".join(methods) + " |", "|" + "---|" * (1 + len(methods))]
    for n in sizes:
        lines.append(f"| {n} | " + " | ".join(_pct(summary["n_tasks"][m][n]) for m in methods) + " |")
    return "\n".join(lines)


def plots(summary: dict[str, Any], folder: Path) -> list[Path]:
    """accuracy per method, against the number of tasks, against density (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    labels = list(summary["methods"])
    fig, ax = plt.subplots(figsize=(8, 4.5))
    means = [100 * summary["methods"][m]["norm"][0] for m in labels]
    errs = [100 * summary["methods"][m]["norm"][1] for m in labels]
    ax.barh(range(len(labels)), means, xerr=errs, color="tab:blue", alpha=0.8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"normalised test accuracy (%), mean ± std over {summary['n_seeds']} seeds")
    ax.set_xlim(min(means) - 10, 102)
    ax.set_title(f"{len(summary['tasks'])} tasks merged")
    fig.tight_layout()
    paths.append(folder / "methods.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for m, curve in summary["n_tasks"].items():
        ns = sorted(curve)
        ax.errorbar(
            ns, [100 * curve[n][0] for n in ns], yerr=[100 * curve[n][1] for n in ns], marker="o", capsize=3, label=m
        )
    ax.set_xlabel("number of tasks merged")
    ax.set_ylabel("normalised test accuracy (%)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths.append(folder / "n_tasks.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for kind, label in (
        ("at_validated_lambda", "TIES (paper), validated lambda"),
        ("lambda_validated_per_density", "TIES (paper), lambda validated per density"),
    ):
        curve = summary["density"][kind]
        ds = list(curve)
        ax.errorbar(
            [100 * float(d) for d in ds],
            [100 * curve[d][0] for d in ds],
            yerr=[100 * curve[d][1] for d in ds],
            marker="o",
            capsize=3,
            label=label,
        )
    ta = summary["methods"].get("task_arithmetic (validated)")
    if ta:
        ax.axhline(100 * ta["norm"][0], color="gray", ls="--", label="task arithmetic (validated)")
    ax.set_xlabel("density k (% of each task vector kept)")
    ax.set_ylabel("normalised test accuracy (%)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths.append(folder / "density.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def markdown(summary: dict[str, Any], meta: dict[str, Any]) -> str:
    return "\n".join(
        [
            START,
            "",
            f"Command: `{meta['command']}` ({meta['n_seeds']} seeds: {meta['seeds']}, {len(summary['tasks'])} tasks; "
            f"wall time {meta['wall_s']:.0f} s on {meta['machine']}; backbone {meta['backbone_parameters']:,} "
            f"parameters; {meta['merges']} merges through {meta['cli_calls']} `ooc-ties` processes, "
            f"{meta['merge_s']:.0f} s of it).",
            "",
            "![accuracy per method](methods.png)",
            "",
            table_methods(summary),
            "",
            "Per task (mean ± std over seeds; absolute accuracy for the pretrained backbone with the probe head and "
            "for the fine-tuned model, normalised accuracy for the merges):",
            "",
            table_per_task(summary),
            "",
            "![accuracy against the number of tasks merged](n_tasks.png) ![accuracy against density](density.png)",
            "",
            f"TIES (paper) against density (validated lambda per seed: {summary['density_lambdas']}), and every "
            "method against the number of tasks merged (lambda validated on the subset's own tasks; TIES at density "
            "0.2), normalised test accuracy in %:",
            "",
            table_curves(summary),
            "",
            f"Share of backbone parameters left exactly unchanged by fine-tuning (mean over tasks): "
            f"{_pct(summary['task_vector_zero_share'])}%.",
            "",
            "Notes of this run: " + ("; ".join(meta["notes"]) if meta["notes"] else "none") + ".",
            "",
            END,
        ]
    )


def write_readme_section(readme: Path, text: str) -> None:
    """Replace the generated block of ``readme`` (between the markers) with ``text``."""
    doc = readme.read_text()
    if START not in doc or END not in doc:
        raise RuntimeError(f"{readme} has no results markers")
    head, rest = doc.split(START, 1)
    tail = rest.split(END, 1)[1]
    readme.write_text(head + text + tail)

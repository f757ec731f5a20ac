"""One seed of the benchmark: train, fine-tune, merge through the CLI, select on validation, test."""

from __future__ import annotations

import itertools
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file

from . import data, model
from .evaluate import Evaluator, mean, normalised
from .merging import GridCall, Point, run_grid

log = logging.getLogger(__name__)


def _steps(lo: float, hi: float, step: float) -> tuple[float, ...]:
    return tuple(round(v, 2) for v in np.arange(lo, hi + step / 2, step))


@dataclass(frozen=True)
class Grids:
    """The hyperparameters swept (and those validation may choose from)."""

    ties_lambdas: tuple[float, ...] = _steps(0.8, 1.8, 0.1)  # the paper's range for TIES
    # Added after the first run, which chose 0.8, the edge of the paper's range, on every seed: a separate
    # row validated over 0.1-1.8 (the main rows keep the ranges fixed before the first run).
    ties_low_lambdas: tuple[float, ...] = _steps(0.1, 0.7, 0.1)
    sum_lambdas: tuple[float, ...] = _steps(0.1, 1.0, 0.1)  # task arithmetic, dare_ties, breadcrumbs_ties
    ties_densities: tuple[float, ...] = (0.1, 0.2, 0.3)  # the paper's k in {10, 20, 30}%
    sparse_densities: tuple[float, ...] = (0.1, 0.2, 0.3, 0.5)  # dare_ties, breadcrumbs_ties
    ablation_densities: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)  # Figure-5-style curve
    subsets_per_size: int = 3


FULL_GRIDS = Grids()
SMOKE_GRIDS = Grids(
    ties_lambdas=(1.0,),
    ties_low_lambdas=(0.5,),
    sum_lambdas=(0.4, 1.0),
    ties_densities=(0.2,),
    sparse_densities=(0.5,),
    ablation_densities=(0.2, 1.0),
    subsets_per_size=1,
)


@dataclass(frozen=True)
class Family:
    """A row of the table: the points of one grid call it may choose from (by validation, or fixed)."""

    label: str
    call: str
    density: float | None = None  # a fixed density (the paper's default), else validated
    lam: float | None = None  # a fixed lambda, else validated
    densities: tuple[float, ...] | None = None  # the densities validation may choose from
    extra_calls: tuple[str, ...] = ()  # more grid calls whose points validation may choose from


def families(g: Grids) -> list[Family]:
    return [
        Family("averaging", "linear"),
        Family("task_arithmetic (lambda 0.4, paper default)", "task_arithmetic", lam=0.4),
        Family("task_arithmetic (validated)", "task_arithmetic"),
        Family("ties paper (d 0.2, lambda 1, paper default)", "ties_paper", density=0.2, lam=1.0),
        Family("ties paper (validated)", "ties_paper", densities=g.ties_densities),
        Family(
            "ties paper (validated, lambda from 0.1; added after the first run)",
            "ties_paper",
            densities=g.ties_densities,
            extra_calls=("ties_paper_low",),
        ),
        Family("ties mergekit (d 0.2, lambda 1)", "ties_mergekit", density=0.2, lam=1.0),
        Family("ties mergekit (validated)", "ties_mergekit", densities=g.ties_densities),
        Family("dare_ties (validated)", "dare_ties"),
        Family("breadcrumbs_ties (validated)", "breadcrumbs_ties"),
    ]


def main_calls(g: Grids) -> list[GridCall]:
    return [
        GridCall("linear", "linear"),
        GridCall("task_arithmetic", "task_arithmetic", lambdas=g.sum_lambdas),
        GridCall("ties_paper", "ties", "paper", g.ties_lambdas, sorted({*g.ties_densities, *g.ablation_densities})),
        GridCall("ties_paper_low", "ties", "paper", g.ties_low_lambdas, g.ties_densities),
        GridCall("ties_mergekit", "ties", "mergekit", g.ties_lambdas, g.ties_densities),
        GridCall("dare_ties", "dare_ties", "paper", g.sum_lambdas, g.sparse_densities),
        GridCall("breadcrumbs_ties", "breadcrumbs_ties", "paper", g.sum_lambdas, g.sparse_densities),
    ]


def task_subsets(n_tasks: int, per_size: int, seed: int) -> list[tuple[int, ...]]:
    """For every size 2..n_tasks, up to ``per_size`` distinct subsets of the tasks (all of them at n_tasks)."""
    rng = np.random.default_rng(seed + 1_000)
    subsets: list[tuple[int, ...]] = []
    for size in range(2, n_tasks + 1):
        combos = list(itertools.combinations(range(n_tasks), size))
        pick = rng.choice(len(combos), size=min(per_size, len(combos)), replace=False)
        subsets += [combos[i] for i in sorted(pick)]
    return subsets


def subset_calls(g: Grids, subsets: Sequence[tuple[int, ...]], n_tasks: int) -> list[GridCall]:
    """The number-of-tasks ablation: a subset is a merge whose other models have weight 0."""
    weights = [[1.0 if i in s else 0.0 for i in range(n_tasks)] for s in subsets]
    return [
        GridCall("subsets_linear", "linear", weights=weights),
        GridCall("subsets_task_arithmetic", "task_arithmetic", lambdas=g.sum_lambdas, weights=weights),
        GridCall("subsets_ties_paper", "ties", "paper", g.ties_lambdas, (0.2,), weights=weights),
    ]


@dataclass
class SeedRun:
    seed: int
    tasks: list[data.TaskData]
    work: Path
    grids: Grids
    ev: Evaluator | None = None
    reference: dict[str, dict[str, float]] = field(default_factory=dict)  # split -> task -> fine-tuned acc
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]


def train_all(run: SeedRun, pretext: data.Split) -> dict[str, Any]:
    """Pretrain, probe, fine-tune; save the base and every fine-tune as HF folders, the heads apart."""
    start = time.perf_counter()
    base = model.pretrain(pretext, 10, run.seed)
    model.save_backbone(base, run.work / "base", role="pretrained", seed=run.seed)
    heads: dict[str, torch.nn.Linear] = {}
    per_task: dict[str, Any] = {}
    for i, task in enumerate(run.tasks):
        heads[task.name] = model.linear_probe(base, task.train, task.n_classes, run.seed * 100 + i)
        ft = model.finetune(base, heads[task.name], task.train, run.seed * 100 + 50 + i)
        model.save_backbone(ft, run.work / f"ft-{task.name}", role="finetuned", task=task.name, seed=run.seed)
        per_task[task.name] = {
            split: {
                "pretrained": model.accuracy(base, heads[task.name], getattr(task, split)),
                "finetuned": model.accuracy(ft, heads[task.name], getattr(task, split)),
            }
            for split in ("val", "test")
        }
    model.save_heads(heads, run.work / "heads" / "heads.safetensors")
    run.ev = Evaluator(run.tasks, model.load_heads(run.work / "heads" / "heads.safetensors"))
    run.reference = {s: {t: per_task[t][s]["finetuned"] for t in run.names} for s in ("val", "test")}
    run.timings["train_s"] = time.perf_counter() - start
    log.info(
        "seed %d: trained in %.1f s (%d backbone parameters)",
        run.seed,
        run.timings["train_s"],
        model.n_parameters(base),
    )
    return per_task


def _finetuned(run: SeedRun) -> list[Path]:
    return [run.work / f"ft-{n}" for n in run.names]


def merge_all(run: SeedRun, calls: Sequence[GridCall], folder: str) -> dict[str, list[Point]]:
    out: dict[str, list[Point]] = {}
    for call in calls:
        points, seconds = run_grid(call, run.work / "base", _finetuned(run), run.work / folder / call.label)
        run.timings["merge_s"] = run.timings.get("merge_s", 0.0) + seconds
        run.timings["merges"] = run.timings.get("merges", 0) + len(points)
        out[call.label] = points
    return out


def _score(run: SeedRun, point: Point, tasks: Sequence[str], split: str) -> float:
    assert run.ev is not None
    return mean(normalised(run.ev.accs(point.folder, tasks, split), run.reference[split]))


def select(run: SeedRun, points: Sequence[Point], fam: Family, tasks: Sequence[str]) -> Point:
    """The fixed point of ``fam``, or the one with the best mean normalised validation accuracy."""
    cands = [
        p
        for p in points
        if (fam.lam is None or abs(p.lam - fam.lam) < 1e-9)
        and (fam.density is None or abs(p.density - fam.density) < 1e-9)
        and (fam.densities is None or any(abs(p.density - d) < 1e-9 for d in fam.densities))
    ]
    if not cands:
        raise RuntimeError(f"{fam.label}: no merged point matches")
    return max(cands, key=lambda p: _score(run, p, tasks, "val"))  # first of equals: grid order


def _report_point(run: SeedRun, point: Point, tasks: Sequence[str]) -> dict[str, Any]:
    assert run.ev is not None
    test = run.ev.accs(point.folder, tasks, "test")
    return {
        "point": point.name,
        "lambda": point.lam,
        "density": point.density,
        "val_norm": _score(run, point, tasks, "val"),
        "test_abs": test,
        "test_norm": normalised(test, run.reference["test"]),
    }


def evaluate_main(run: SeedRun, grids: dict[str, list[Point]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The table's rows, and TIES' (paper) density curve at its validated lambda."""
    rows = {}
    for fam in families(run.grids):
        points = [p for c in (fam.call, *fam.extra_calls) for p in grids[c]]
        rows[fam.label] = _report_point(run, select(run, points, fam, run.names), run.names)
    lam = rows["ties paper (validated)"]["lambda"]
    curve = {}
    for d in run.grids.ablation_densities:
        fam = Family(f"ties paper d {d}", "ties_paper", density=d, lam=lam)
        curve[f"{d:g}"] = _report_point(run, select(run, grids["ties_paper"], fam, run.names), run.names)
    curve_best = {}  # each density with its own validated lambda, for comparison
    for d in run.grids.ablation_densities:
        fam = Family(f"ties paper d {d}", "ties_paper", density=d)
        curve_best[f"{d:g}"] = _report_point(run, select(run, grids["ties_paper"], fam, run.names), run.names)
    return rows, {"lambda": lam, "at_validated_lambda": curve, "lambda_validated_per_density": curve_best}


def evaluate_subsets(
    run: SeedRun, grids: dict[str, list[Point]], subsets: Sequence[tuple[int, ...]]
) -> list[dict[str, Any]]:
    """Each subset's merge (lambda validated on the subset's own tasks), per method."""
    rows = []
    for label, points in grids.items():
        method = label.removeprefix("subsets_")
        for subset in subsets:
            weights = tuple(1.0 if i in subset else 0.0 for i in range(len(run.tasks)))
            mine = [p for p in points if p.weights == weights]
            tasks = [run.names[i] for i in subset]
            best = _report_point(run, select(run, mine, Family(method, label), tasks), tasks)
            rows.append({"method": method, "n_tasks": len(subset), "tasks": tasks, **best})
    return rows


def check_zero_weights(run: SeedRun) -> float:
    """Largest difference between a merge of all models where some have weight 0 and the direct merge of
    the others (TIES, paper preset): the number-of-tasks ablation relies on the two being the same."""
    subset = tuple(range(max(1, len(run.tasks) // 2)))
    weights = [[1.0 if i in subset else 0.0 for i in range(len(run.tasks))]]
    zeroed, _ = run_grid(
        GridCall("zero-weights", "ties", "paper", (1.0,), (0.2,), weights),
        run.work / "base",
        _finetuned(run),
        run.work / "check" / "zero-weights",
    )
    fts = [_finetuned(run)[i] for i in subset]
    direct, _ = run_grid(
        GridCall("direct", "ties", "paper", (1.0,), (0.2,)), run.work / "base", fts, run.work / "check" / "direct"
    )
    a = load_file(str(zeroed[0].folder / "model.safetensors"))
    b = load_file(str(direct[0].folder / "model.safetensors"))
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


def task_vector_zero_share(run: SeedRun) -> dict[str, float]:
    """Per task, the share of backbone parameters the fine-tuning left exactly unchanged (dead ReLU units
    get no gradient): a trim to a density above 1 - share removes only zeros."""
    base = load_file(str(run.work / "base" / "model.safetensors"))
    out = {}
    for name, folder in zip(run.names, _finetuned(run), strict=True):
        ft = load_file(str(folder / "model.safetensors"))
        out[name] = sum(int((ft[k] == base[k]).sum()) for k in base) / sum(v.size for v in base.values())
    return out


def run_seed(seed: int, n_tasks: int, sizes: data.Sizes, grids: Grids, work: Path) -> dict[str, Any]:
    """Everything for one seed; the merged models are deleted once evaluated."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    start = time.perf_counter()
    pretext, tasks = data.build(seed, n_tasks, sizes)
    run = SeedRun(seed, tasks, work, grids)
    run.timings["data_s"] = time.perf_counter() - start
    per_task = train_all(run, pretext)
    main = merge_all(run, main_calls(grids), "merged")
    t0 = time.perf_counter()
    rows, density = evaluate_main(run, main)
    run.timings["eval_s"] = time.perf_counter() - t0
    subsets = task_subsets(n_tasks, grids.subsets_per_size, seed)
    sub_grids = merge_all(run, subset_calls(grids, subsets, n_tasks), "subsets")
    t0 = time.perf_counter()
    sub_rows = evaluate_subsets(run, sub_grids, subsets)
    run.timings["eval_s"] += time.perf_counter() - t0
    zero_weight_diff = check_zero_weights(run)
    zero_share = task_vector_zero_share(run)
    run.timings["total_s"] = time.perf_counter() - start
    for sub in ("merged", "subsets", "check"):
        shutil.rmtree(work / sub)
    return {
        "seed": seed,
        "tasks": per_task,
        "methods": rows,
        "density": density,
        "n_tasks": sub_rows,
        "zero_weight_subset_max_abs_diff": zero_weight_diff,
        "task_vector_zero_share": zero_share,
        "timings": run.timings,
    }

"""``python -m bench.quality``: the whole benchmark, end to end (``--smoke``: 1 seed, 2 tasks, tiny sweep)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from . import data, experiment, model, report

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__)
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds [0,1,2; smoke: 0]")
    p.add_argument("--tasks", type=int, default=len(data.TASKS), help=f"tasks merged, 2..{len(data.TASKS)}")
    p.add_argument("--smoke", action="store_true", help="1 seed, 2 tasks, small data, tiny sweep; checks only")
    p.add_argument("--work", type=Path, default=Path("/tmp/ooc-ties-quality"), help="checkpoints and merges")
    p.add_argument("--out", type=Path, default=None, help="results JSON and plots [bench/quality; smoke: WORK]")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the merges use --threads 1)")
    p.add_argument("--no-readme", action="store_true", help="do not rewrite the results block of README.md")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.smoke:
        args.seeds = "0" if args.seeds == "0,1,2" else args.seeds
        args.tasks = 2 if args.tasks == len(data.TASKS) else args.tasks
        args.no_readme = True
    args.out = args.out or (args.work if args.smoke else HERE)
    return args


def check(result: dict[str, Any], strict: bool) -> tuple[list[str], list[str]]:
    """Failures and notes. Fails: fine-tunes that do not beat the pretrained backbone on average over the
    tasks (on any task if ``strict``, as the smoke run is), an accuracy outside [0, 1], a merge not scored on
    every task, or a subset merged through weights 0 unequal to the direct merge of the subset. A task whose
    fine-tune does not beat the pretrained backbone is a note in the full run (since its first run: seed 1's
    noisy-parity fine-tune scored 0.716 against 0.717)."""
    problems, notes = [], []
    seed = result["seed"]
    pre = {t: row["test"]["pretrained"] for t, row in result["tasks"].items()}
    ft = {t: row["test"]["finetuned"] for t, row in result["tasks"].items()}
    for task in ft:
        if not ft[task] > pre[task]:
            msg = f"seed {seed}: fine-tuned {task} ({ft[task]:.3f}) does not beat the pretrained ({pre[task]:.3f})"
            (problems if strict else notes).append(msg)
    if not sum(ft.values()) > sum(pre.values()):
        problems.append(f"seed {seed}: the fine-tunes do not beat the pretrained backbone on average")
    for label, row in result["methods"].items():
        for task, acc in row["test_abs"].items():
            if not 0.0 <= acc <= 1.0:
                problems.append(f"seed {seed}: {label} on {task}: accuracy {acc} not in [0, 1]")
        if set(row["test_abs"]) != set(result["tasks"]):
            problems.append(f"seed {seed}: {label} was not scored on every task")
    if result["zero_weight_subset_max_abs_diff"] > 0.0:
        problems.append(
            f"seed {seed}: weight-0 subset merge differs from the direct merge by "
            f"{result['zero_weight_subset_max_abs_diff']:g}"
        )
    return problems, notes


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({cpu}), torch {torch.__version__} with {torch.get_num_threads()} thread(s)"


def _revision() -> str:
    proc = subprocess.run(
        ["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    )
    return proc.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(message)s",
        datefmt="%H:%M:%S",
    )
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    seeds = [int(s) for s in args.seeds.split(",")]
    sizes, grids = (data.SMOKE, experiment.SMOKE_GRIDS) if args.smoke else (data.FULL, experiment.FULL_GRIDS)
    start = time.perf_counter()
    results = [experiment.run_seed(s, args.tasks, sizes, grids, args.work / f"seed{s}") for s in seeds]
    wall = time.perf_counter() - start
    checked = [check(r, strict=args.smoke) for r in results]
    problems = [p for c in checked for p in c[0]]
    notes = [n for c in checked for n in c[1]]
    summary = report.summarise(results)
    meta = {
        "command": "python -m bench.quality" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip(),
        "seeds": seeds,
        "n_seeds": len(seeds),
        "wall_s": wall,
        "machine": _machine(),
        "revision": _revision(),
        "backbone_parameters": model.n_parameters(model.Backbone()),
        "merges": sum(int(r["timings"]["merges"]) for r in results),
        "merge_s": sum(r["timings"]["merge_s"] for r in results),
        "cli_calls": len(seeds) * (len(experiment.main_calls(grids)) + 3 + 2),  # main, subsets, check
        "sizes": sizes.__dict__,
        "grids": grids.__dict__,
        "notes": notes,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    doc = {"meta": meta, "summary": summary, "seeds": results, "problems": problems, "notes": notes}
    (args.out / "results.json").write_text(json.dumps(doc, indent=1) + "\n")
    report.plots(summary, args.out)
    text = report.markdown(summary, meta)
    (args.out / "results.md").write_text(text + "\n")
    if not args.no_readme:
        report.write_readme_section(HERE / "README.md", text)
    print(report.table_methods(summary))
    log.info("wall time %.1f s; results in %s", wall, args.out)
    for n in notes:
        log.warning("note: %s", n)
    for p in problems:
        log.error("CHECK FAILED: %s", p)
    return 1 if problems else 0

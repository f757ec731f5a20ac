"""The command line: parse the options, then benchmark one shape or, with ``--scaling``, several."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from .data import SHAPES, holds_shape
from .environment import environment
from .report import print_scaling_summary, scaling_json
from .run import run_shape
from .util import log
from .variants import DEFAULTS, SCALING_DEFAULTS, Spec, check_mergekit, method_specs, parse_methods, parse_variant

DESCRIPTION = "Benchmark ``ooc-ties merge`` against the I/O floor of reading its inputs from a warm page cache."


def default_ooc_ties() -> str:
    beside = Path(sys.executable).with_name("ooc-ties")
    if beside.exists():
        return str(beside)
    found = shutil.which("ooc-ties")
    return found or "ooc-ties"


def _add_mergekit_options(p: argparse.ArgumentParser) -> None:
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


def _add_method_options(p: argparse.ArgumentParser) -> None:
    me = p.add_argument_group("merge methods")
    me.add_argument(
        "--methods",
        type=parse_methods,
        default=[],
        metavar="LIST",
        help="one row per merge method: 'all' or a comma-separated list (linear, task_arithmetic, ties, dare_ties, "
        "dare_linear, breadcrumbs, breadcrumbs_ties, della, della_linear). Each runs ooc-ties merge --config "
        "WORKDIR/methods/METHOD.yml (variant method:METHOD) and mergekit-yaml on the same file (variant "
        "mergekit-yaml:METHOD), after the --variant ones",
    )
    me.add_argument(
        "--mergekit-methods",
        type=parse_methods,
        metavar="LIST",
        help="the methods of --methods that mergekit-yaml runs too: 'all', 'none' or a list (default: all of them)",
    )


def _specs(args: argparse.Namespace, defaults: list[Spec]) -> list[Spec]:
    """The --variant specs, then the --methods pairs; ``defaults`` when there are neither."""
    mergekit = args.methods if args.mergekit_methods is None else args.mergekit_methods
    methods = method_specs(args.methods, mergekit)
    if args.variant is None and not methods:
        return defaults
    return (args.variant or []) + methods


def _add_scaling_options(p: argparse.ArgumentParser) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
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
        "'method:METHOD[:THREADS]' is ooc-ties on METHOD's mergekit config and 'mergekit-yaml:METHOD' mergekit "
        "on it (see --methods); 'grid[:THREADS]' is a 3x3 grid of paper merges (--density 0.1,0.2,0.3 --lambda "
        "0.8,1.0,1.2) in one command; 'report[:THREADS]' is one paper merge with --report WORKDIR/report-out; "
        "'cluster[:N]' is one paper merge on --cluster local:N (default 2); 'running[:N]' the same on a "
        "cluster of N workers the benchmark keeps running; "
        "'reference[:PRESET]' is the in-RAM NumPy reference (default, without --methods: "
        "paper:2 paper:1 mergekit:2; with --scaling: paper:2 paper:1)",
    )
    p.add_argument("--budget", help="add --memory-budget BUDGET to every ooc-ties variant (e.g. 256MiB)")
    p.add_argument("--json", type=Path, help="write all runs, medians and ratios to this JSON file")
    p.add_argument("--ooc-ties", default=default_ooc_ties(), help="the ooc-ties executable (default: %(default)s)")
    p.add_argument(
        "--no-phases", action="store_true", help="skip the untimed -vv warm-up run of each variant (phase timings)"
    )
    p.add_argument("--keep-output", action="store_true", help="do not delete the last merge output")
    p.add_argument(
        "--cold-reads",
        action="store_true",
        help="after the timed rounds, run the one-read floor and every ooc-ties variant once more, each after "
        "dropping the inputs from the page cache (posix_fadvise DONTNEED), and report the bytes each read from "
        "storage per merge (read_bytes of /proc/<pid>/io); not in the medians",
    )
    _add_mergekit_options(p)
    _add_method_options(p)
    _add_scaling_options(p)
    return p


def _single(args: argparse.Namespace, env_info: dict[str, Any]) -> int:
    report = run_shape(args, args.shape, args.workdir / "models", _specs(args, DEFAULTS))
    report["environment"] = env_info
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        log(f"wrote {args.json}")
    return 0


def _models_for(workdir: Path, shape: str) -> Path:
    """WORKDIR/models if it holds ``shape`` or nothing, else WORKDIR/models-SHAPE (another shape is left alone)."""
    models = workdir / "models"
    held = holds_shape(models, shape)
    if held is False or (held is None and models.exists() and any(models.iterdir())):
        models = workdir / f"models-{shape}"
    return models


def _scaling(p: argparse.ArgumentParser, args: argparse.Namespace, env_info: dict[str, Any]) -> int:
    shapes = [x.strip() for x in args.shapes.split(",") if x.strip()]
    for sh in shapes:
        if sh not in SHAPES:
            p.error(f"--shapes: unknown shape {sh!r} (choose from {', '.join(SHAPES)})")
    specs = _specs(args, SCALING_DEFAULTS)
    if any(spec.kind == "mergekit-yaml" for spec in specs):
        check_mergekit(args.mergekit_venv)  # fail before generating anything
    json_path = args.json or args.workdir / "scaling.json"
    started = time.perf_counter()
    results = []
    for sh in shapes:
        models = _models_for(args.workdir, sh)
        log(f"=== scaling: shape {sh} (models in {models}) ===")
        results.append(run_shape(args, sh, models, specs))
        if sh != args.keep_models:
            log(f"deleting {models}")
            shutil.rmtree(models, ignore_errors=True)
        out = scaling_json(args, results, env_info, time.perf_counter() - started)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(out, indent=2) + "\n")  # after every shape: a partial result survives
    print_scaling_summary(results)
    log(f"wrote {json_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.repeat < 1 or (args.mergekit_repeat is not None and args.mergekit_repeat < 1):
        p.error("--repeat and --mergekit-repeat must be at least 1")
    env_info = environment(args.ooc_ties)
    if not args.scaling:
        return _single(args, env_info)
    return _scaling(p, args, env_info)

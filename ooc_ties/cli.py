"""The ``ooc-ties`` command: a thin adapter from flags to library calls.

It parses arguments, configures logging and progress bars, calls :func:`ooc_ties.merge` (or the demo or
generator), and turns an :class:`~ooc_ties.errors.OocTiesError` into a one-line message and exit code 1.
"""

from __future__ import annotations

import gc
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from ooc_ties._version import __version__
from ooc_ties.config import (
    PRESETS,
    RescaleRule,
    Resources,
    Scope,
    TrimRule,
    ZeroSign,
    parse_preset,
    parse_size,
    parse_threads,
)
from ooc_ties.errors import OocTiesError
from ooc_ties.from_config import configured_merge
from ooc_ties.grid import GridMode, GridPoint, expand_grid, name_points
from ooc_ties.merge import MergeResult, merge, merge_grid, plan_grid, plan_merge
from ooc_ties.mergekit_yaml import load_configs
from ooc_ties.methods import METHODS
from ooc_ties.pass1.thresholds import Thresholds
from ooc_ties.plan import MAX_BLOCK_ELEMENTS
from ooc_ties.progress import tqdm_progress
from ooc_ties.sources import open_source

__all__ = ["cli", "main"]

logger = logging.getLogger(__name__)


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = (
        logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("ooc_ties")
    root.handlers[:] = [handler]
    root.setLevel(level)


def _choices(kind: type[Scope] | type[TrimRule] | type[ZeroSign] | type[RescaleRule]) -> click.Choice[str]:
    return click.Choice([m.value for m in kind])


def _throughput(nbytes: int, seconds: float) -> str:
    """``nbytes`` over ``seconds`` as a rate: in GB/s from 1 GB/s up, in MB/s below (SI units)."""
    rate = nbytes / max(seconds, 1e-9)
    if rate >= 1e9:
        return f"{rate / 1e9:.2f} GB/s"
    return f"{rate / 1e6:.0f} MB/s" if rate >= 1e8 else f"{rate / 1e6:.3g} MB/s"


def _rate(result: MergeResult) -> str:
    return f"{result.seconds:.1f} s, {_throughput(result.bytes_read, result.seconds)} of input read"


# Options that merge and convert share.
_FSYNC = click.option("--fsync", "durable", is_flag=True, help="Wait until the output is on disk before publishing it.")
_DIRECT_IO = click.option(
    "--direct-io/--no-direct-io",
    default=True,
    show_default=True,
    help="Write safetensors output past the page cache (O_DIRECT) where the file system allows it.",
)


_WHAT_TO_MERGE = [
    click.argument("finetuned", nargs=-1),
    click.option(
        "--base",
        "-b",
        help="Base model: .safetensors file, HF folder, Zarr group (path or URL) or cached Hub ID (org/name).",
    ),
    click.option(
        "--config",
        "config_path",
        type=click.Path(path_type=Path),
        help="A mergekit YAML configuration: its models, method and parameters (instead of --base, FINETUNED "
        "and the method's options).",
    ),
    click.option(
        "--method",
        help=f"The merge method (docs/methods.md): {', '.join(METHODS)}; a comma-separated list spans a grid. "
        "[default: ties]",
    ),
    click.option(
        "--preset",
        type=click.Choice(sorted(PRESETS)),
        default="paper",
        show_default=True,
        help="paper: the TIES reference code; mergekit: mergekit's ties.",
    ),
    click.option(
        "--density",
        help="Fraction of each task vector kept (largest magnitudes for ties, a band for breadcrumbs, a random "
        "drop for dare/della), in (0, 1]: one, or one per model joined by '/' (0.2/0.5); a comma-separated list "
        "spans a grid (docs/grid.md). [ties: 0.2; others: 1]",
    ),
    click.option(
        "--gamma",
        help="breadcrumbs: fraction of largest magnitudes dropped as outliers; one, or one per model joined by "
        "'/'; a comma-separated list spans a grid. [0.01]",
    ),
    click.option(
        "--epsilon",
        help="della: keep probabilities run from density - epsilon to density + epsilon; one, or one per model "
        "joined by '/'; a comma-separated list spans a grid. [0.15]",
    ),
    click.option(
        "--rescale/--no-rescale",
        default=None,
        help="Rescale the values a random drop keeps (dare_*, della*). [those: yes]",
    ),
    click.option(
        "--rescale-rule",
        type=_choices(RescaleRule),
        help="l1: keep each tensor's L1 norm (mergekit); density: times 1/density (DARE paper). [l1]",
    ),
    click.option("--seed", help="Seed of the random drops (dare_*, della*); a comma-separated list spans a grid. [0]"),
    click.option(
        "--sign-from",
        help="Elect each parameter's sign from this model's task vector (e.g. a multitask model), or from a file "
        "of signs saved by --save-signs, instead of the vote.",
    ),
    click.option(
        "--lambda", "lam", help="Scale of the merged task vector; a comma-separated list spans a grid. [default: 1.0]"
    ),
    click.option(
        "--scope",
        help="Top-k over the whole model (global) or per tensor (tensor); a comma list spans a grid. [preset]",
    ),
    click.option("--trim", type=_choices(TrimRule), help="threshold: keep all ties (paper); topk: exactly k. [preset]"),
    click.option("--zero-sign", type=_choices(ZeroSign), help="Sign where the vote is exactly 0. [preset]"),
    click.option(
        "--normalize/--no-normalize",
        default=None,
        help="Divide by the sum of the (agreeing) weights. [linear, ties, della: yes; others: no]",
    ),
    click.option(
        "--weights",
        multiple=True,
        help="Per-model weights, space- or comma-separated, one per fine-tuned model; repeat --weights to span a grid.",
    ),
]
"""The arguments and options that say what to merge (``merge`` and ``analyze``)."""


def _what_to_merge(command: Any) -> Any:
    """Decorate a command with :data:`_WHAT_TO_MERGE`."""
    for option in reversed(_WHAT_TO_MERGE):
        command = option(command)
    return command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ooc-ties")
def cli() -> None:
    """Exact out-of-core TIES-Merging of safetensors checkpoints on CPU cores."""


@cli.command("merge")
@_what_to_merge
@click.option(
    "--output",
    "-o",
    required=True,
    type=click.Path(path_type=Path),
    help="Output folder (safetensors), or OUT.zarr for a Zarr v3 group. Must not exist. A grid writes one "
    "output per merge under it, and OUT/grid.json.",
)
@click.option(
    "--grid",
    "grid_mode",
    type=click.Choice([m.value for m in GridMode]),
    default="cross",
    show_default=True,
    help="How the lists of a grid combine: every combination (cross) or the i-th values together (zip).",
)
@click.option("--dtype", type=click.Choice(["bf16", "f16", "f32"]), help="Output dtype of merged tensors. [base's]")
@click.option("--memory-budget", default="2GiB", show_default=True, help="Working memory for blocks and histograms.")
@click.option("--threads", type=int, help="Worker threads. [all CPUs]")
@click.option(
    "--block-elements",
    type=click.IntRange(min=1),
    help="Largest block, in elements (a smaller cap than the budget's; output bytes do not change).",
)
@click.option("--shard-size", default="5GB", show_default=True, help="Largest output shard.")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists (only after the merge succeeds).")
@_FSYNC
@_DIRECT_IO
@click.option(
    "--resume",
    is_flag=True,
    help="Continue an interrupted merge into OUTPUT (same inputs and options); start anew if there is none.",
)
@click.option(
    "--thresholds",
    "thresholds_in",
    type=click.Path(path_type=Path),
    help="Reuse thresholds saved by --save-thresholds (same inputs and trim options): skips pass 1.",
)
@click.option(
    "--save-thresholds",
    "thresholds_out",
    type=click.Path(path_type=Path),
    help="Save the pass-1 thresholds to this JSON file.",
)
@click.option(
    "--report",
    "report_dir",
    type=click.Path(path_type=Path),
    help="Also write the merge's interference report to this folder (docs/report.md; a grid: one per merge "
    "under it), counted while merging: no extra read.",
)
@click.option(
    "--save-signs",
    type=click.Path(path_type=Path),
    help="Write the elected sign of every parameter to this int8 safetensors file (--sign-from takes it).",
)
@click.option("--dry-run", is_flag=True, help="Print the plan and estimates; read no tensor data, write nothing.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or summary; errors only.")
@click.option("--verbose", "-v", count=True, help="More logging (-vv for debug).")
def merge_command(
    finetuned: Sequence[str],
    base: str | None,
    config_path: Path | None,
    output: Path,
    method: str | None,
    preset: str,
    density: str | None,
    gamma: str | None,
    epsilon: str | None,
    rescale: bool | None,
    rescale_rule: str | None,
    seed: str | None,
    sign_from: str | None,
    lam: str | None,
    scope: str | None,
    trim: str | None,
    zero_sign: str | None,
    normalize: bool | None,
    weights: tuple[str, ...],
    grid_mode: str,
    dtype: str | None,
    memory_budget: str,
    threads: int | None,
    block_elements: int | None,
    shard_size: str,
    overwrite: bool,
    durable: bool,
    direct_io: bool,
    resume: bool,
    thresholds_in: Path | None,
    thresholds_out: Path | None,
    report_dir: Path | None,
    save_signs: Path | None,
    dry_run: bool,
    quiet: bool,
    verbose: int,
) -> None:
    """Merge FINETUNED models onto --base (TIES by default) and write the result to --output.

    Models are safetensors files, Hugging Face folders (single or sharded), Zarr v3 groups (a folder,
    a .zip file or a URL), or Hugging Face Hub IDs (org/name[@revision]) already in the local cache.
    """
    _setup_logging(verbose, quiet)
    base, finetuned, points, single = _points(
        finetuned, base, config_path, method, preset, density, gamma, epsilon, rescale, rescale_rule, seed,
        sign_from, lam, scope, trim, zero_sign, normalize, weights, grid_mode, dtype,
    )  # fmt: skip
    resources = Resources(
        memory_budget=parse_size(memory_budget, "memory budget"),
        threads=parse_threads(threads),
        shard_size=parse_size(shard_size, "shard size"),
        durable=durable,
        direct_io=direct_io,
        max_block_elements=block_elements,
    )
    progress = None if quiet else tqdm_progress
    if not single:
        if thresholds_in is not None or thresholds_out is not None or save_signs is not None:
            raise click.UsageError(
                "--thresholds, --save-thresholds and --save-signs apply to a single merge, not a grid"
            )
        _grid(base, finetuned, output, points, resources, dry_run, overwrite, resume, quiet, progress, report_dir)
        return
    options, template_text = points[0].options, points[0].chat_template
    if dry_run:
        plan = plan_merge(base, list(finetuned), options, resources)
        click.echo(plan.describe())
        return
    given = Thresholds.load(thresholds_in) if thresholds_in is not None else None
    result = merge(
        base,
        list(finetuned),
        output,
        options,
        resources,
        overwrite=overwrite,
        progress=progress,
        thresholds=given,
        resume=resume,
        chat_template=template_text,
        report=report_dir,
        save_signs=save_signs,
    )
    if thresholds_out is not None:
        result.thresholds.save(thresholds_out)
    if not quiet:
        if result.resumed_blocks:
            click.echo(f"resumed: {result.resumed_blocks:,} of {result.plan.total_blocks:,} blocks were done", err=True)
        click.echo(
            f"merged {len(result.plan.merged)} tensors ({result.plan.merged_parameters:,} parameters) of "
            f"{result.plan.n_models} models into {result.output} in {_rate(result)}",
            err=True,
        )


def _points(
    finetuned: Sequence[str],
    base: str | None,
    config_path: Path | None,
    method: str | None,
    preset: str,
    density: str | None,
    gamma: str | None,
    epsilon: str | None,
    rescale: bool | None,
    rescale_rule: str | None,
    seed: str | None,
    sign_from: str | None,
    lam: str | None,
    scope: str | None,
    trim: str | None,
    zero_sign: str | None,
    normalize: bool | None,
    weights: tuple[str, ...],
    grid_mode: str,
    dtype: str | None,
) -> tuple[str, list[str], list[GridPoint], bool]:
    """What :data:`_WHAT_TO_MERGE` asks for: the base, the fine-tuned models, the merges (grid points) and
    whether it is a single merge (no list anywhere, one configuration)."""
    # Options that may span a grid: a list each (one value: no grid along it; None: not given).
    axes: dict[str, list[Any] | None] = {
        "method": _words(method, "--method", list(METHODS)),
        "density": _grid_numbers(density, "--density"),
        "gamma": _grid_numbers(gamma, "--gamma"),
        "epsilon": _grid_numbers(epsilon, "--epsilon"),
        "lam": _grid_floats(lam, "--lambda"),
        "weights": [tuple(_split_numbers(w)) for w in weights] or None,  # (checked by MergeOptions)
        "scope": _words(scope, "--scope", [m.value for m in Scope]),
        "seed": _grid_seeds(seed),
    }
    # (the flags a configuration leaves to the command line; ``None``: the configuration's or preset's)
    rules = {
        "trim": trim,
        "zero_sign": zero_sign,
        "out_dtype": dtype,
        "rescale_rule": rescale_rule,
        "sign_from": sign_from,
    }
    points: list[GridPoint] = []
    if config_path is not None:
        flags = {
            "FINETUNED": finetuned,
            "--base": base,
            "--method": method,
            "--density": density,
            "--gamma": gamma,
            "--epsilon": epsilon,
            "--rescale": rescale,
            "--lambda": lam,
            "--normalize": normalize,
            "--weights": weights,
        }
        clash = [name for name, value in flags.items() if value not in (None, ())]
        if clash:
            raise click.UsageError(f"--config names the models, the method and its parameters: drop {clash[0]}")
        configured = [configured_merge(c, _tensor_names) for c in load_configs(config_path)]
        first = configured[0]
        for other in configured[1:]:
            if (other.base, other.models) != (first.base, first.models):
                raise OocTiesError(
                    f"{config_path}: the configurations of a grid merge the same models onto the same base "
                    f"(the first merges {list(first.models)} onto {first.base}; another {list(other.models)} "
                    f"onto {other.base})"
                )
        base, finetuned = first.base, first.models
        grid_axes = {k: v for k, v in axes.items() if v is not None}  # (scope and seed only, by now)
        options_list = [c.options.with_(**rules) for c in configured]
        # every configuration crossed with the command line's lists, named together
        expanded = [
            (point.options, c.chat_template)
            for options, c in zip(options_list, configured, strict=True)
            for point in (expand_grid(options, grid_axes, grid_mode) if grid_axes else [GridPoint("", options)])
        ]
        names = name_points([options for options, _ in expanded])
        points = [GridPoint(n, o, t) for n, (o, t) in zip(names, expanded, strict=True)]
        single = len(configured) == 1 and not any(len(v) > 1 for v in grid_axes.values())
    else:
        if base is None or not finetuned:
            raise click.UsageError("give --base and the FINETUNED models, or --config merge.yml")
        single = all(v is None or len(v) == 1 for v in axes.values())
        grid_axes = {k: v for k, v in axes.items() if v is not None}
        common = {"rescale": rescale, "normalize": normalize, **rules}
        points = list(expand_grid(parse_preset(preset), grid_axes, grid_mode, common))
    if base is None:
        raise click.UsageError("give --base and the FINETUNED models, or --config merge.yml")
    return base, list(finetuned), points, single


def _grid(
    base: str,
    finetuned: list[str],
    output: Path,
    points: list[GridPoint],
    resources: Resources,
    dry_run: bool,
    overwrite: bool,
    resume: bool,
    quiet: bool,
    progress: Any,
    report: Path | None,
) -> None:
    """A grid of merges (``merge`` with list-valued options or a list of configurations)."""
    if dry_run:
        grid_plan = plan_grid(base, finetuned, output, points, resources)
        click.echo(grid_plan.describe())
        return
    result = merge_grid(
        base, finetuned, output, points, resources, overwrite=overwrite, progress=progress, resume=resume, report=report
    )
    if not quiet:
        alone = sum(r.bytes_read for r in result.results)
        if not result.bytes_read:
            read = "nothing read: every merge was already finished"
        else:
            read = (
                f"read {result.bytes_read / 1e9:.3g} GB of input, {alone / result.bytes_read:.2g}x less than "
                f"{len(result.points)} merges alone"
            )
        click.echo(
            f"merged {len(result.points)} grid points into {result.output} (grid.json lists them) in "
            f"{result.seconds:.1f} s, {result.batches} batch(es); {read}",
            err=True,
        )


def _words(text: str | None, flag: str, allowed: Sequence[str]) -> list[str] | None:
    """``--method`` and ``--scope``: one of ``allowed``, or a comma-separated list of them."""
    if text is None:
        return None
    words = [w.strip() for w in text.split(",")]
    for word in words:
        if word not in allowed:
            choices = ", ".join(f"'{a}'" for a in allowed)
            raise click.BadParameter(
                f"{word!r} is not one of {choices} (or a comma-separated list)", param_hint=f"'{flag}'"
            )
    return words


def _grid_numbers(text: str | None, flag: str) -> list[float | tuple[float, ...]] | None:
    """``--density`` and the like: comma-separated grid values, each one number or one per fine-tuned
    model joined by ``/`` (their range is ``MergeOptions``' to check)."""
    if text is None:
        return None
    values: list[float | tuple[float, ...]] = []
    for item in text.split(","):
        parts = [part.strip() for part in item.split("/")]
        if not all(_is_number(part) for part in parts):
            message = f"{text!r} is not a number, numbers joined by '/' (one per model), or a comma-separated list"
            raise click.BadParameter(message, param_hint=f"'{flag}'")
        numbers = tuple(float(part) for part in parts)
        values.append(numbers[0] if len(numbers) == 1 else numbers)
    return values


def _grid_floats(text: str | None, flag: str) -> list[float] | None:
    if text is None:
        return None
    values = [part.strip() for part in text.split(",")]
    if not all(_is_number(v) for v in values):
        raise click.BadParameter(
            f"{text!r} is not a number or a comma-separated list of numbers", param_hint=f"'{flag}'"
        )
    return [float(v) for v in values]


def _grid_seeds(text: str | None) -> list[int] | None:
    if text is None:
        return None
    values = [part.strip() for part in text.split(",")]
    if not all(v.isdigit() for v in values):
        raise click.BadParameter(
            f"{text!r} is not a non-negative integer or a comma-separated list of them", param_hint="'--seed'"
        )
    return [int(v) for v in values]


def _tensor_names(model: str) -> list[str]:
    """A model's tensor names, from its header (a configuration's values per tensor are resolved on them)."""
    source = open_source(model, model)
    try:
        return list(source.names)
    finally:
        source.close()


def _split_numbers(text: str) -> list[str]:
    return [part for part in text.replace(",", " ").split() if part]


@cli.command("analyze")
@_what_to_merge
@click.option(
    "--output", "-o", required=True, type=click.Path(path_type=Path), help="The report folder. Must not exist."
)
@click.option("--memory-budget", default="2GiB", show_default=True, help="Working memory for blocks and histograms.")
@click.option("--threads", type=int, help="Worker threads. [all CPUs]")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists (only after the report is complete).")
@click.option(
    "--save-signs",
    type=click.Path(path_type=Path),
    help="Write the elected sign of every parameter to this int8 safetensors file (--sign-from takes it).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or summary; errors only.")
@click.option("--verbose", "-v", count=True, help="More logging (-vv for debug).")
def analyze_command(
    finetuned: Sequence[str],
    base: str | None,
    config_path: Path | None,
    method: str | None,
    preset: str,
    density: str | None,
    gamma: str | None,
    epsilon: str | None,
    rescale: bool | None,
    rescale_rule: str | None,
    seed: str | None,
    sign_from: str | None,
    lam: str | None,
    scope: str | None,
    trim: str | None,
    zero_sign: str | None,
    normalize: bool | None,
    weights: tuple[str, ...],
    output: Path,
    memory_budget: str,
    threads: int | None,
    overwrite: bool,
    save_signs: Path | None,
    quiet: bool,
    verbose: int,
) -> None:
    """Write the interference report of merging FINETUNED onto --base to --output (docs/report.md).

    What the merge with the same options would do to each tensor: the trim, sign conflicts, the mass the
    disjoint mean discards, the similarity of the task vectors, and how density changes what is kept;
    report.json, tensors.csv, plots (with matplotlib) and index.html. Reads the inputs as the merge
    would; writes no merged model.
    """
    from ooc_ties.analyze import analyze

    _setup_logging(verbose, quiet)
    base, finetuned, points, single = _points(
        finetuned, base, config_path, method, preset, density, gamma, epsilon, rescale, rescale_rule, seed,
        sign_from, lam, scope, trim, zero_sign, normalize, weights, "cross", None,
    )  # fmt: skip
    if not single:
        raise click.UsageError(
            "analyze takes one merge: one value per option and one configuration (a grid: merge --report)"
        )
    resources = Resources(memory_budget=parse_size(memory_budget, "memory budget"), threads=parse_threads(threads))
    progress = None if quiet else tqdm_progress
    result = analyze(
        base,
        finetuned,
        output,
        points[0].options,
        resources,
        overwrite=overwrite,
        progress=progress,
        save_signs=save_signs,
    )
    if not quiet:
        whole = result.document["whole"]
        click.echo(
            f"analysed {whole['elements']:,} parameters of {result.plan.n_models} models into "
            f"{result.output}/index.html in {result.seconds:.1f} s: {whole['conflict_rate'] or 0:.2%} of the "
            f"elements have kept values of both signs",
            err=True,
        )
        if result.note:
            click.echo(result.note, err=True)


@cli.command("convert")
@click.argument("source")
@click.argument("destination", type=click.Path(path_type=Path))
@click.option("--threads", type=int, help="Worker threads. [all CPUs]")
@click.option("--shard-size", default="5GB", show_default=True, help="Largest shard of a safetensors output.")
@click.option(
    "--chunk-elements",
    default=MAX_BLOCK_ELEMENTS,
    show_default=True,
    type=click.IntRange(min=1),
    help="Largest block copied at once, and the Zarr chunk size.",
)
@click.option("--overwrite", is_flag=True, help="Replace DESTINATION if it exists (only after the copy succeeds).")
@_FSYNC
@_DIRECT_IO
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or summary; errors only.")
@click.option("--verbose", "-v", count=True, help="More logging (-vv for debug).")
def convert_command(
    source: str,
    destination: Path,
    threads: int | None,
    shard_size: str,
    chunk_elements: int,
    overwrite: bool,
    durable: bool,
    direct_io: bool,
    quiet: bool,
    verbose: int,
) -> None:
    """Copy a model between a safetensors file or folder and a Zarr v3 group (DESTINATION.zarr).

    Streams block by block in bounded memory; dtypes (bf16 too) and config/tokenizer files are kept.
    """
    from ooc_ties.convert import convert

    _setup_logging(verbose, quiet)
    resources = Resources(
        threads=parse_threads(threads),
        shard_size=parse_size(shard_size, "shard size"),
        durable=durable,
        direct_io=direct_io,
    )
    result = convert(
        source,
        destination,
        resources,
        block_elements=chunk_elements,
        overwrite=overwrite,
        progress=None if quiet else tqdm_progress,
    )
    if not quiet:
        click.echo(
            f"copied {result.tensors} tensors ({result.nbytes:,} bytes) into {result.output} "
            f"in {result.seconds:.1f} s, {_throughput(result.nbytes, result.seconds)}",
            err=True,
        )


@cli.command("generate")
@click.argument("shape", type=click.Choice(["tiny", "demo", "1b", "3b", "70b-slice"]))
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--models", "-n", default=3, show_default=True, help="Number of fine-tuned models.")
@click.option("--seed", default=0, show_default=True, help="Seed of the generator.")
@click.option("--shard-size", default="2GB", show_default=True, help="Largest shard of each model.")
def generate_command(shape: str, folder: Path, models: int, seed: int, shard_size: str) -> None:
    """Write synthetic bf16 Llama-shaped checkpoints: FOLDER/base and FOLDER/ft1..ftN."""
    from ooc_ties.synthetic import generate

    _setup_logging(0, False)
    started = time.perf_counter()
    base, fts = generate(shape, folder, n_finetuned=models, seed=seed, shard_size=parse_size(shard_size, "shard size"))
    click.echo(f"wrote {base} and {len(fts)} fine-tuned models in {time.perf_counter() - started:.1f} s", err=True)


@cli.command("demo")
@click.option(
    "--workdir", type=click.Path(path_type=Path), help="Keep the models and output here (default: a temp dir)."
)
@click.option("--threads", type=int, help="Worker threads. [all CPUs]")
def demo_command(workdir: Path | None, threads: int | None) -> None:
    """Generate a small Llama-shaped base and 3 fine-tunes, merge them, and check against the reference."""
    _setup_logging(0, False)
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="ooc-ties-demo-") as tmp:
            _demo(Path(tmp), threads)
    else:
        _demo(workdir, threads)


def _demo(root: Path, threads: int | None) -> None:
    import numpy as np

    from ooc_ties.io.checkpoint import Checkpoint
    from ooc_ties.reference import reference_merge
    from ooc_ties.synthetic import SHAPES, generate

    click.echo(
        f"generating a base and 3 fine-tuned models ({SHAPES['demo'].parameters:,} parameters each, bf16) in {root}"
    )
    base, fts = generate("demo", root / "models", n_finetuned=3)
    options = PRESETS["paper"]
    resources = Resources(threads=parse_threads(threads))
    result = merge(base, fts, root / "merged", options, resources, progress=tqdm_progress)
    g = result.thresholds.groups[""]
    click.echo(f"merged into {result.output} in {_rate(result)}")
    for t, threshold in enumerate(g):
        click.echo(f"  ft{t + 1}: |tau| >= {threshold.value:.3e} kept {threshold.kept:,} of {threshold.size:,} values")
    click.echo(f"  majority sign: {result.thresholds.majority['']:+d}")
    click.echo("checking against the in-RAM NumPy reference ...")
    expected = reference_merge(base, fts, options)
    with Checkpoint(root / "merged") as merged:
        differing = [n for n in merged.names if merged.read(n).tobytes() != expected[n].tobytes()]
    if differing:
        raise click.ClickException(f"{len(differing)} tensors differ from the reference, e.g. {differing[0]}")
    click.echo(f"OK: all {len(expected)} tensors are byte-identical to the reference ({np.__name__} in RAM)")


def _join_weights(argv: list[str]) -> list[str]:
    """Let ``--weights 1 0.5 0.5`` work: gather the numbers after ``--weights`` into one value."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        out.append(argv[i])
        if argv[i] == "--weights":
            values = []
            while i + 1 < len(argv) and _is_number(argv[i + 1]) and not Path(argv[i + 1]).exists():
                values.append(argv[i + 1])
                i += 1
            if values:
                out.append(",".join(values))
        i += 1
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: run the CLI; errors become one line on stderr and a non-zero exit."""
    args = _join_weights(list(sys.argv[1:] if argv is None else argv))
    try:
        cli.main(args=args, prog_name="ooc-ties", standalone_mode=False)
    except (OocTiesError, OSError) as exc:  # (OSError: the system failed us, an I/O error: no traceback either)
        click.echo(f"ooc-ties: error: {exc}", err=True)
        sys.exit(1)
    except click.exceptions.Abort:
        click.echo("ooc-ties: interrupted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("ooc-ties: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    finally:
        if argv is None:
            # The process ends next. Its shutdown garbage-collects every object Python, NumPy, Numba
            # and zarr made, which took 0.36 s after a 1B merge; frozen objects are skipped (the
            # operating system reclaims them), and shutdown took 0.05 s. Only when run as a program:
            # in a caller's process (tests call main(argv)) frozen objects would never be freed.
            gc.freeze()


if __name__ == "__main__":
    main()

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
from ooc_ties.config import PRESETS
from ooc_ties.errors import OocTiesError
from ooc_ties.grid import GridMode, GridPoint
from ooc_ties.merge import MergeResult, merge, merge_grid, plan_grid, plan_merge
from ooc_ties.merge_flags import What, join_weights, merges, what_to_merge
from ooc_ties.pass1.thresholds import Thresholds
from ooc_ties.plan import MAX_BLOCK_ELEMENTS
from ooc_ties.progress import tqdm_progress
from ooc_ties.resources import Resources, parse_size, parse_threads

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


def _throughput(nbytes: int, seconds: float) -> str:
    """``nbytes`` over ``seconds`` as a rate: in GB/s from 1 GB/s up, in MB/s below (SI units)."""
    rate = nbytes / max(seconds, 1e-9)
    if rate >= 1e9:
        return f"{rate / 1e9:.2f} GB/s"
    return f"{rate / 1e6:.0f} MB/s" if rate >= 1e8 else f"{rate / 1e6:.3g} MB/s"


def _rate(result: MergeResult) -> str:
    return f"{result.seconds:.1f} s, {_throughput(result.bytes_read, result.seconds)} of input read"


# Options that merge and convert share.
_CLUSTER = click.option(
    "--cluster",
    help="Run the block tasks on a Dask cluster: a scheduler address (tcp://host:8786) or local:N (N worker "
    "processes on this machine). Inputs and output must be on paths every worker reads (docs/distributed.md); "
    "needs the [dask] extra.",
)
_FSYNC = click.option("--fsync", "durable", is_flag=True, help="Wait until the output is on disk before publishing it.")
_DIRECT_IO = click.option(
    "--direct-io/--no-direct-io",
    default=True,
    show_default=True,
    help="Write safetensors output past the page cache (O_DIRECT) where the file system allows it.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ooc-ties")
def cli() -> None:
    """Exact out-of-core TIES-Merging of safetensors checkpoints on CPU cores."""


@cli.command("merge")
@what_to_merge
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
@_CLUSTER
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
    what: What,
    output: Path,
    grid_mode: str,
    dtype: str | None,
    memory_budget: str,
    threads: int | None,
    block_elements: int | None,
    shard_size: str,
    cluster: str | None,
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
    base, finetuned, points, single = merges(what, grid_mode, dtype)
    resources = Resources(
        memory_budget=parse_size(memory_budget, "memory budget"),
        threads=parse_threads(threads),
        shard_size=parse_size(shard_size, "shard size"),
        durable=durable,
        direct_io=direct_io,
        max_block_elements=block_elements,
        cluster=cluster,
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


@cli.command("analyze")
@what_to_merge
@click.option(
    "--output", "-o", required=True, type=click.Path(path_type=Path), help="The report folder. Must not exist."
)
@click.option("--memory-budget", default="2GiB", show_default=True, help="Working memory for blocks and histograms.")
@click.option("--threads", type=int, help="Worker threads. [all CPUs]")
@_CLUSTER
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists (only after the report is complete).")
@click.option(
    "--save-signs",
    type=click.Path(path_type=Path),
    help="Write the elected sign of every parameter to this int8 safetensors file (--sign-from takes it).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or summary; errors only.")
@click.option("--verbose", "-v", count=True, help="More logging (-vv for debug).")
def analyze_command(
    what: What,
    output: Path,
    memory_budget: str,
    threads: int | None,
    cluster: str | None,
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
    base, finetuned, points, single = merges(what, "cross", None)
    if not single:
        raise click.UsageError(
            "analyze takes one merge: one value per option and one configuration (a grid: merge --report)"
        )
    resources = Resources(
        memory_budget=parse_size(memory_budget, "memory budget"), threads=parse_threads(threads), cluster=cluster
    )
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


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: run the CLI; errors become one line on stderr and a non-zero exit."""
    args = join_weights(list(sys.argv[1:] if argv is None else argv))
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

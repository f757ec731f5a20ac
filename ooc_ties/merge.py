"""The merge: open, plan, pass 1 (statistics), pass 2 (merge and write), publish.

:func:`merge` is the library entry point the CLI calls, and orchestrates the stages: :mod:`ooc_ties.plan`
(headers only), :mod:`ooc_ties.pass1`, :mod:`ooc_ties.pass2`, :mod:`ooc_ties.publish`, with the resume
journal (:mod:`ooc_ties.journal`) and the staged output (:mod:`ooc_ties.io.staging`) around them.
:func:`plan_merge` stops after planning (``--dry-run``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ooc_ties import publish
from ooc_ties.blocks import GLOBAL
from ooc_ties.config import PRESETS, MergeOptions, Resources
from ooc_ties.errors import IncompatibleCheckpointsError, OptionError
from ooc_ties.inputs import MergeInputs
from ooc_ties.io.staging import StagedDirectory
from ooc_ties.io.writer import RECIPE_NAME
from ooc_ties.io.zarr_format import is_zarr_group
from ooc_ties.io.zarr_output import ChunkedSpec
from ooc_ties.journal import Journal, check_resumable, journal_header, read_header
from ooc_ties.lint import lint_inputs
from ooc_ties.mergekit_yaml import TOKENIZER_CONFIG, parse_chat_template
from ooc_ties.outputs import OutputLike, check_output_path, open_output, output_format
from ooc_ties.pass1.run import compute_thresholds
from ooc_ties.pass1.thresholds import Thresholds
from ooc_ties.pass2 import run_pass2
from ooc_ties.plan import MergePlan, TensorKind, make_plan
from ooc_ties.progress import ProgressFactory
from ooc_ties.sources import SourceLike, open_source

if TYPE_CHECKING:
    import zarr

__all__ = ["RECIPE_NAME", "MergeResult", "OutputLike", "merge", "plan_merge"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class MergeResult:
    """What a finished merge did."""

    output: Path | None
    """The published folder or ``.zarr`` group; ``None`` when written into a ``zarr.Group`` given as output."""
    plan: MergePlan
    """The plan it followed."""
    thresholds: Thresholds
    """The pass-1 results."""
    seconds: float
    """Wall time of the whole merge."""
    bytes_read: int
    """Bytes of tensor data this run read: pass 1's reads if pass 1 ran in this run (none when a
    ``resume`` found it done; only the tie counts with given ``thresholds``), the blocks this run merged
    or merged again (not those an interrupted run had merged), and the copied tensors (checked in every
    input, then read from the base)."""
    bytes_written: int
    """Bytes of tensor data written."""
    resumed_blocks: int = 0
    """Blocks an interrupted run had already merged (``resume``)."""


def _open_all(
    stack: contextlib.ExitStack, base: SourceLike, fts: Sequence[SourceLike], sign: str | None = None
) -> MergeInputs:
    def opened(spec: SourceLike, label: str) -> Any:
        source = open_source(spec, label)
        if source is not spec:  # opened here, so closed here
            stack.callback(source.close)
        return source

    return MergeInputs(
        opened(base, "<base>"),
        tuple(opened(p, f"<model {i + 1}>") for i, p in enumerate(fts)),
        opened(sign, "<sign>") if sign is not None else None,
    )


def plan_merge(
    base: SourceLike,
    finetuned: Sequence[SourceLike],
    options: MergeOptions = PRESETS["paper"],
    resources: Resources | None = None,
) -> MergePlan:
    """Open the inputs, check they line up, and plan the merge without reading tensor data."""
    with contextlib.ExitStack() as stack:
        inputs = _open_all(stack, base, finetuned, options.sign_from)
        plan = make_plan(inputs.base, inputs.fts, options, resources or Resources(), inputs.sign)
        lint_inputs(plan, inputs, sample=False)  # a dry run reads no tensor data
        return plan


def merge(
    base: SourceLike,
    finetuned: Sequence[SourceLike],
    output: OutputLike,
    options: MergeOptions = PRESETS["paper"],
    resources: Resources | None = None,
    *,
    overwrite: bool = False,
    progress: ProgressFactory | None = None,
    thresholds: Thresholds | None = None,
    resume: bool = False,
    chat_template: str | None = None,
) -> MergeResult:
    """TIES-merge ``finetuned`` models onto ``base`` and write the result to ``output``.

    Inputs (see :func:`ooc_ties.sources.open_source`): a ``.safetensors`` file or Hugging Face folder
    (single or sharded), a Zarr group (path, ``.zip``, fsspec URL or ``zarr.Group``), or a mapping of
    names to NumPy or Zarr arrays. The same inputs give the same bytes whatever their form.

    ``output``: a folder path receives ``model.safetensors`` or shards with an index, the base's config
    and tokenizer files, and ``ooc_ties_recipe.json``; a path ending in ``.zarr`` receives a Zarr v3
    group (see docs/zarr.md). Both are built under a hidden name beside the destination and renamed
    into place when complete. A ``zarr.Group`` (any store) is written in place.

    ``resume``: continue the merge an interrupted run (killed, or stopped with Ctrl-C) left beside
    ``output``, if any: pass 1 and the blocks it finished are not redone, and the output is
    byte-identical to an uninterrupted merge. A merge with other inputs or options is refused.
    Without ``resume``, such a leftover is refused (``overwrite`` deletes it).

    ``thresholds`` from an earlier merge of the same inputs (``MergeResult.thresholds``, or
    :meth:`Thresholds.load`) skip pass 1's reads; they are refused unless they were computed under the
    same density, scope, trim rule, zero-sign rule and weights, for the same tensors. ``lambda`` and the
    output dtype may differ.

    ``chat_template``: a Jinja chat template for the output's tokenizer, applied as mergekit applies a
    configuration's ``chat_template`` (:func:`~ooc_ties.mergekit_yaml.apply_chat_template`).
    """
    started = time.perf_counter()
    resources = resources or Resources()
    with contextlib.ExitStack() as stack:
        inputs = _open_all(stack, base, finetuned, options.sign_from)
        plan = make_plan(inputs.base, inputs.fts, options, resources, inputs.sign)
        out_format = output_format(output)
        if is_zarr_group(output):
            if resume:
                raise OptionError("resume needs an output path (a zarr.Group given as output is written in place)")
            target: StagedDirectory | zarr.Group = output
        else:
            path = Path(output)
            check_output_path(path, [p for source in inputs.all for p in source.local_paths()])
            identity = inputs.identity()
            recipe = publish.already_published(path, options, identity, overwrite) if resume else None
            if recipe is not None:
                return _published_result(path, plan, recipe, started)
            target = StagedDirectory(
                path, overwrite=overwrite, durable=resources.durable, resume=resume, nbytes=plan.output_bytes
            )
            theirs = read_header(target.state) if target.resumed else None
            if target.resumed and theirs is None:
                target.clear()  # killed before its journal existed: nothing in it can be trusted
            try:
                if theirs is not None:
                    plan = _replan_for(theirs, plan, inputs, resources)
                header = journal_header(plan, identity, out_format)
                if theirs is not None:
                    check_resumable(theirs, header, target.path)
            except BaseException:
                if theirs is not None:
                    target.keep()  # a refused resume leaves the partial merge as it was
                else:
                    target.abort()
                raise
            stack.push(_leave_on_exit(target))
        if chat_template is not None:  # checked before any tensor is read
            parse_chat_template(chat_template, "chat_template")
            if TOKENIZER_CONFIG not in inputs.base.side_files():
                raise OptionError(
                    f"{inputs.base.label}: chat_template is set but this base model has no tokenizer "
                    f"({TOKENIZER_CONFIG})"
                )
        logger.info("plan:\n%s", plan.describe())
        _check_copies(plan, inputs)
        lint_inputs(plan, inputs)
        specs = [ChunkedSpec(t.output, t.grid.chunks) for t in plan.tensors]
        metadata = publish.recipe_metadata(plan)
        sink = open_output(target, specs, plan.shards, metadata, out_format, direct=resources.direct_io)
        stack.callback(sink.close)
        journal = None
        if isinstance(target, StagedDirectory):
            opener = Journal.reopen if target.resumed else Journal.start
            journal = opener(target.state, header, durable=resources.durable, sync=sink.sync)
            stack.callback(journal.close)
        pass1 = journal.load_pass1() if journal is not None else None
        if pass1 is not None:
            logger.info("resume: pass 1 was done")
        else:
            pass1 = compute_thresholds(plan, inputs, progress, thresholds)
            if journal is not None:
                journal.save_pass1(pass1)
        for t, g in enumerate(pass1.thresholds.groups.get(GLOBAL, ())):
            logger.info("model %d: threshold %g keeps %d of %d values", t + 1, g.value, g.kept, g.size)
        final, resumed_blocks, merge_read = run_pass2(plan, inputs, pass1, sink, progress, journal)
        recipe = publish.recipe(plan, inputs, final, chat_template)
        sink.finish(publish.side_files(plan, inputs, recipe), recipe)
        if journal is not None:
            journal.complete()
        published = target.commit() if isinstance(target, StagedDirectory) else None
    seconds = time.perf_counter() - started
    copies = [t for t in plan.tensors if t.kind is TensorKind.COPY]
    copied = sum(t.in_nbytes + t.numel * t.in_dtypes[0].itemsize for t in copies)  # checked, then written
    read = pass1.bytes_read + merge_read + copied  # (pass 1 loaded from a journal read nothing)
    return MergeResult(published, plan, final, seconds, read, plan.output_bytes, resumed_blocks)


def _leave_on_exit(target: StagedDirectory) -> Any:
    """An exit callback: a merge stopped by an interruption or by the system (a full disk, an I/O error,
    no memory) stays for ``resume``; one that failed on its inputs or options is removed."""

    def leave(exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        if not target.done:
            if isinstance(exc, (KeyboardInterrupt, OSError, MemoryError)):
                logger.warning("stopped: the partial merge stays at %s (run again with --resume)", target.path)
                target.keep()
            else:
                target.abort()
        return False

    return leave


def _published_result(path: Path, plan: MergePlan, recipe: dict[str, Any], started: float) -> MergeResult:
    thresholds = Thresholds.from_json(recipe["thresholds"], str(path))
    return MergeResult(path.absolute(), plan, thresholds, time.perf_counter() - started, 0, 0, plan.total_blocks)


def _replan_for(theirs: dict[str, Any], plan: MergePlan, inputs: MergeInputs, resources: Resources) -> MergePlan:
    """The plan of the interrupted merge (journal header ``theirs``): same blocks, even if this run's
    memory budget or threads differ."""
    block = theirs.get("block_elements")
    if isinstance(block, int) and 0 < block < plan.block_elements:
        smaller = dataclasses.replace(resources, max_block_elements=block)
        return make_plan(inputs.base, inputs.fts, plan.options, smaller, inputs.sign)
    return plan


def _check_copies(plan: MergePlan, inputs: MergeInputs) -> None:
    """Non-float tensors are copied from the base, so every input must hold the same values."""
    for tensor in plan.tensors:
        if tensor.kind is not TensorKind.COPY:
            continue
        for start, stop in tensor.grid.blocks():
            base = inputs.base.read(tensor.name, start, stop)
            for ft in inputs.fts:
                other = ft.read(tensor.name, start, stop)
                if not np.array_equal(base, other):
                    index = start + int(np.argmax(base != other))
                    raise IncompatibleCheckpointsError(
                        f"{ft.where(tensor.name)}: this {tensor.in_dtypes[0]} tensor is copied, not merged, "
                        f"but differs from the base at element {index}"
                    )

"""The merge: open, plan, pass 1 (thresholds), pass 2 (merge and write), publish.

:func:`merge` is the library entry point the CLI calls; :func:`plan_merge` stops after planning
(``--dry-run``). Pass-2 block tasks are pure: a block's output depends only on the inputs, the pass-1
results and the options, so blocks run in any order on any number of threads with identical bytes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import shutil
import threading
import time
import types
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ooc_ties import thresholds as pass1_rules
from ooc_ties._version import __version__
from ooc_ties.config import PRESETS, MergeOptions, Resources, ZeroSign
from ooc_ties.dtypes import DType
from ooc_ties.errors import (
    IncompatibleCheckpointsError,
    NonFiniteValueError,
    OptionError,
    OutputPathError,
)
from ooc_ties.identity import InputsIdentity
from ooc_ties.inputs import MergeInputs
from ooc_ties.io.side_files import SideFileLike
from ooc_ties.io.staging import STATE_DIR, StagedDirectory, staging_path
from ooc_ties.io.writer import RECIPE_NAME, TensorSpec
from ooc_ties.io.zarr_format import RECIPE_ATTRIBUTE, is_zarr_group
from ooc_ties.io.zarr_output import ChunkedSpec
from ooc_ties.journal import Journal, check_resumable, journal_header, read_header
from ooc_ties.kernels.convert import decode_oracle
from ooc_ties.kernels.ties import merge as merge_kernel
from ooc_ties.lint import lint_inputs
from ooc_ties.model_card import CARD_NAME, library_name, model_card
from ooc_ties.outputs import Output, OutputLike, check_output_path, open_output, output_format
from ooc_ties.plan import MergePlan, TensorKind, TensorPlan, make_plan
from ooc_ties.progress import Progress, ProgressFactory, progress_bar
from ooc_ties.schedule import run_blocks
from ooc_ties.sources import SourceLike, open_source
from ooc_ties.thresholds import (
    GLOBAL,
    PATCH_SHARE,
    BlockRef,
    Pass1Result,
    Thresholds,
    compute_thresholds,
    plan_blocks,
)
from ooc_ties.write_queue import WriteQueue

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


def _open_all(stack: contextlib.ExitStack, base: SourceLike, fts: Sequence[SourceLike]) -> MergeInputs:
    def opened(spec: SourceLike, label: str) -> Any:
        source = open_source(spec, label)
        if source is not spec:  # opened here, so closed here
            stack.callback(source.close)
        return source

    return MergeInputs(opened(base, "<base>"), tuple(opened(p, f"<model {i + 1}>") for i, p in enumerate(fts)))


def plan_merge(
    base: SourceLike,
    finetuned: Sequence[SourceLike],
    options: MergeOptions = PRESETS["paper"],
    resources: Resources | None = None,
) -> MergePlan:
    """Open the inputs, check they line up, and plan the merge without reading tensor data."""
    with contextlib.ExitStack() as stack:
        inputs = _open_all(stack, base, finetuned)
        plan = make_plan(inputs.base, inputs.fts, options, resources or Resources())
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
    """
    started = time.perf_counter()
    resources = resources or Resources()
    with contextlib.ExitStack() as stack:
        inputs = _open_all(stack, base, finetuned)
        plan = make_plan(inputs.base, inputs.fts, options, resources)
        out_format = output_format(output)
        if is_zarr_group(output):
            if resume:
                raise OptionError("resume needs an output path (a zarr.Group given as output is written in place)")
            target: StagedDirectory | zarr.Group = output
        else:
            path = Path(output)
            check_output_path(path, [p for source in inputs.all for p in source.local_paths()])
            identity = inputs.identity()
            recipe = _already_published(path, options, identity, overwrite) if resume else None
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
        logger.info("plan:\n%s", plan.describe())
        _check_copies(plan, inputs)
        lint_inputs(plan, inputs)
        specs = [ChunkedSpec(TensorSpec(t.name, t.out_dtype, t.shape), t.grid.chunks) for t in plan.tensors]
        sink = open_output(target, specs, plan.shards, _recipe_metadata(plan), out_format, direct=resources.direct_io)
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
        final, resumed_blocks, merge_read = _pass2(plan, inputs, pass1, sink, progress, journal)
        recipe = _recipe(plan, inputs, final)
        sink.finish(_side_files(plan, inputs, recipe), recipe)
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


def _already_published(
    path: Path, options: MergeOptions, identity: InputsIdentity | None, overwrite: bool
) -> dict[str, Any] | None:
    """The recipe at ``path`` if it is the finished output of this very merge (same options, same
    inputs), as a resume finds it when the interrupted run was killed after publishing; its leftover
    journal, if any, is deleted. ``None`` if there is no finished output there (or ``overwrite``
    replaces one); a finished output of another merge is refused, saying how it differs."""
    if identity is None or not path.is_dir() or staging_path(path.absolute()).exists():
        return None
    try:
        if (path / RECIPE_NAME).is_file():
            recipe = json.loads((path / RECIPE_NAME).read_text(encoding="utf-8"))
        elif (path / "zarr.json").is_file():
            recipe = json.loads((path / "zarr.json").read_text(encoding="utf-8"))["attributes"][RECIPE_ATTRIBUTE]
        else:
            return None
        if recipe["version"] != __version__:
            why: str | None = f"it was written by ooc-ties {recipe['version']}, this is {__version__}"
        elif recipe["options"] != options.to_json():
            why = "it was merged with other options"
        else:
            why = InputsIdentity.from_json(recipe["thresholds"]["inputs"]).mismatch(identity)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if why is not None:
        if overwrite:
            return None
        raise OutputPathError(
            f"{path}: holds a finished merge of other inputs or options, nothing to resume ({why}); "
            "choose another path or --overwrite"
        )
    shutil.rmtree(path / STATE_DIR, ignore_errors=True)
    logger.info("%s: the interrupted merge had already finished", path)
    return dict(recipe)


def _published_result(path: Path, plan: MergePlan, recipe: dict[str, Any], started: float) -> MergeResult:
    thresholds = Thresholds.from_json(recipe["thresholds"], str(path))
    return MergeResult(path.absolute(), plan, thresholds, time.perf_counter() - started, 0, 0, plan.total_blocks)


def _replan_for(theirs: dict[str, Any], plan: MergePlan, inputs: MergeInputs, resources: Resources) -> MergePlan:
    """The plan of the interrupted merge (journal header ``theirs``): same blocks, even if this run's
    memory budget or threads differ."""
    block = theirs.get("block_elements")
    if isinstance(block, int) and 0 < block < plan.block_elements:
        smaller = dataclasses.replace(resources, max_block_elements=block)
        return make_plan(inputs.base, inputs.fts, plan.options, smaller)
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


def _recipe_metadata(plan: MergePlan) -> dict[str, str]:
    return {"format": "pt", "ooc_ties": json.dumps({"version": __version__, **plan.options.to_json()})}


def _out_storage(dtype: DType) -> np.dtype:
    """The kernel encoding of an output dtype (uint16 = bf16, int16 = f16, float32)."""
    encodings: dict[str, np.dtype] = {
        "BF16": np.dtype(np.uint16),
        "F16": np.dtype(np.int16),
        "F32": np.dtype(np.float32),
    }
    return encodings[dtype.code]


class _Pass2:
    def __init__(
        self,
        plan: MergePlan,
        inputs: MergeInputs,
        thresholds: Thresholds,
        quotas: np.ndarray,
        guessed: frozenset[str],
        sink: Output,
        journal: Journal | None,
    ) -> None:
        self.inputs = inputs
        self.quotas = quotas
        self.sink = sink
        self.journal = journal
        self.threads = plan.resources.threads
        options = plan.options
        self.weights = options.model_weights(plan.n_models)
        self.lam = np.float32(options.lam)
        self.thr: dict[str, np.ndarray] = {
            key: np.array([g.value for g in groups], np.float32) for key, groups in thresholds.groups.items()
        }
        self.zero_positive: dict[str, bool] = {
            key: options.zero_sign is ZeroSign.POSITIVE or thresholds.majority.get(key, 0) > 0
            for key in thresholds.groups
        }
        self.key = thresholds.key
        # per block: #S>0, #S<0, open elements, open elements not recorded in ``patches``
        self.votes = np.zeros((len(quotas), 4), np.int64)
        # per block and model: values the trim kept (checked against pass 1's counts)
        self.kept = np.zeros((len(quotas), plan.n_models), np.int64)
        self.guessed = guessed
        self.open_capacity = pass1_rules.OPEN_CAPACITY  # read where pass 1 reads it (one setting)
        self.patches: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.patch_room = plan.resources.memory_budget // PATCH_SHARE
        self._patch_lock = threading.Lock()
        self.redoing = False
        self.bytes_read = 0
        """Input bytes of the blocks merged (or merged again) by :meth:`run`."""
        self.writes = WriteQueue(plan.block_elements, 2 * self.threads)

    def new_state(self) -> dict[Any, np.ndarray]:
        return {"at": np.empty(self.open_capacity, np.int64)}

    def _keep_patch(self, ordinal: int, at: np.ndarray, alt: np.ndarray) -> bool:
        """Keep a block's recorded open elements, while the room for them lasts."""
        nbytes = at.nbytes + alt.nbytes
        with self._patch_lock:
            if nbytes > self.patch_room:
                return False
            self.patch_room -= nbytes
        self.patches[ordinal] = (at.copy(), alt.copy())
        return True

    def run(self, blocks: Sequence[BlockRef], bar: Progress | None) -> None:
        """Merge and write ``blocks`` on the plan's threads."""
        self.bytes_read += sum(b.in_nbytes for b in blocks)
        run_blocks(
            blocks, self.merge_block, self.new_state, threads=self.threads, cost=lambda b: b.in_nbytes, progress=bar
        )
        self.writes.drain()

    def merge_block(self, ref: BlockRef, buffers: dict[Any, np.ndarray]) -> None:
        name = ref.tensor.name
        storage = _out_storage(ref.tensor.out_dtype)
        if ("alt", storage) not in buffers:
            buffers[("alt", storage)] = np.empty(self.open_capacity, storage)
        buffer = self.writes.buffer(storage)
        out = buffer[: ref.stop - ref.start]
        base, fts = self.inputs.block(name, ref.start, ref.stop)
        key = self.key(name)
        votes = self.votes[ref.ordinal]
        votes[:] = 0
        kept = self.kept[ref.ordinal]
        kept[:] = 0
        # Open elements are recorded only where the majority sign is a guess that may need correcting.
        capacity = self.open_capacity if key in self.guessed and not self.redoing else 0
        at, alt = buffers["at"][:capacity], buffers[("alt", storage)][:capacity]
        bad = merge_kernel(
            base,
            fts,
            self.thr[key],
            self.quotas[ref.ordinal],
            self.weights,
            self.lam,
            self.zero_positive[key],
            out,
            votes,
            kept,
            at,
            alt,
        )
        if bad >= 0:
            message = self.inputs.describe_nonfinite(name, ref.start + bad, None, ref.tensor.out_dtype)
            raise NonFiniteValueError(message)
        recorded = int(votes[2] - votes[3])
        if recorded and not self._keep_patch(ref.ordinal, at[:recorded], alt[:recorded]):
            votes[3] = votes[2]
        self.inputs.release(name, ref.start, ref.stop)
        self.writes.submit(buffer, functools.partial(self._write, ref, out, votes, kept, self.redoing))

    def _write(self, ref: BlockRef, out: np.ndarray, votes: np.ndarray, kept: np.ndarray, redoing: bool) -> None:
        """Write a merged block, then journal it (run by :class:`WriteQueue`'s writer thread)."""
        self.sink.write(ref.tensor.name, ref.start, out)
        if self.journal is not None:
            if redoing:
                self.journal.redone(ref.ordinal)
            else:
                self.journal.merged(ref.ordinal, votes[:3], kept)

    def patch_block(self, ref: BlockRef) -> None:
        """Give a block's recorded open elements their result under the other (exact) sign."""
        at, alt = self.patches.pop(ref.ordinal)
        values = decode_oracle(alt)
        if not np.all(np.isfinite(values)):
            index = ref.start + int(at[np.argmin(np.isfinite(values))])
            raise NonFiniteValueError(
                self.inputs.describe_nonfinite(ref.tensor.name, index, None, ref.tensor.out_dtype)
            )
        self.sink.patch(ref.tensor.name, ref.start, ref.stop, at, alt)
        if self.journal is not None:
            self.journal.redone(ref.ordinal)

    def copy_block(self, tensor: TensorPlan, start: int, stop: int) -> None:
        values = self.inputs.base.read(tensor.name, start, stop)
        self.sink.write(tensor.name, start, values)
        self.inputs.base.release(tensor.name, start, stop)


def _pass2(
    plan: MergePlan,
    inputs: MergeInputs,
    pass1: Pass1Result,
    sink: Output,
    progress: ProgressFactory | None,
    journal: Journal | None,
) -> tuple[Thresholds, int, int]:
    """Merge and write every block not yet done; return the thresholds with every majority sign exact,
    how many blocks an interrupted run had done, and the input bytes of the blocks merged here."""
    runner = _Pass2(plan, inputs, pass1.thresholds, pass1.quotas, pass1.guessed, sink, journal)
    blocks = plan_blocks(plan.merged)
    done: dict[int, tuple[int, ...]] = {}
    redone: set[int] = set()
    if journal is not None:
        done, redone, _ = journal.finished(plan.n_models)
        for ordinal, counts in done.items():
            if 0 <= ordinal < len(blocks):
                pos, neg, open_ = counts[:3]
                runner.votes[ordinal] = (pos, neg, open_, open_)  # their open elements were not kept
                runner.kept[ordinal] = counts[3:]
        if done:
            logger.info("resume: %d of %d blocks were done", len(done), len(blocks))
    todo = [b for b in blocks if b.ordinal not in done]
    copies = [(t, start, stop) for t in plan.tensors if t.kind is TensorKind.COPY for start, stop in t.grid.blocks()]
    total = sum(b.in_nbytes for b in todo) + sum((stop - start) * t.in_dtypes[0].itemsize for t, start, stop in copies)
    try:
        with progress_bar(progress, "pass 2/2: merge", total) as bar:
            for tensor, start, stop in copies:
                runner.copy_block(tensor, start, stop)
                if bar is not None:
                    bar.advance((stop - start) * tensor.in_dtypes[0].itemsize)
            runner.run(todo, bar)
        _check_kept(runner.kept, pass1.thresholds, blocks, inputs)
        return _settle_majority(runner, pass1, blocks, progress, redone), len(done), runner.bytes_read
    finally:
        runner.writes.close()  # (after a failure, the writes not yet started are dropped)


def _check_kept(kept: np.ndarray, thresholds: Thresholds, blocks: list[BlockRef], inputs: MergeInputs) -> None:
    """Refuse a merge whose trim kept other counts than pass 1 counted, group by group and model by model.

    Pass 1 counted, from the inputs it read, how many values of each model the thresholds keep; pass 2
    counts what it kept from the inputs it reads. They differ only if those are not the same data:
    thresholds given from other inputs, a resumed merge whose inputs changed in between, or a file
    rewritten during the merge. Where the inputs have an identity (:mod:`ooc_ties.identity`) this was
    refused before reading; this check also covers arrays in memory and remote stores."""
    totals: dict[str, np.ndarray] = {}
    for ref in blocks:
        key = thresholds.key(ref.tensor.name)
        totals[key] = totals.get(key, 0) + kept[ref.ordinal]
    for key, total in totals.items():
        for t, group in enumerate(thresholds.groups[key]):
            if int(total[t]) != group.kept:
                what = "the model" if key == GLOBAL else f"tensor {key!r}"
                raise IncompatibleCheckpointsError(
                    f"{inputs.fts[t].label}: the merge kept {int(total[t]):,} values of {what} where its "
                    f"thresholds keep {group.kept:,}: this model's data is not the data the thresholds were "
                    "computed from (other inputs, or changed since)"
                )


def _settle_majority(
    runner: _Pass2,
    pass1: Pass1Result,
    blocks: list[BlockRef],
    progress: ProgressFactory | None,
    redone: set[int],
) -> Thresholds:
    """Replace guessed majority signs by the exact ones counted in pass 2, redoing blocks if needed.

    Only *open* elements (an exact zero vote between non-zero values) depend on the majority sign.
    When a guess was wrong, the open elements pass 2 recorded get their other result written in place;
    blocks with open elements it could not record (beyond :data:`OPEN_CAPACITY` per block or the room
    for patches, decided by a tie quota, or merged by an interrupted run) are merged again with the
    exact sign. ``redone``: blocks an interrupted run had already corrected.
    """
    thresholds = pass1.thresholds
    if not pass1.guessed:
        return thresholds
    exact = dict(thresholds.majority)
    redo: list[BlockRef] = []
    patch: list[BlockRef] = []
    by_key: dict[str, list[BlockRef]] = {}
    for ref in blocks:
        by_key.setdefault(thresholds.key(ref.tensor.name), []).append(ref)
    for key in sorted(pass1.guessed):
        members = by_key.get(key, [])
        votes = runner.votes[[b.ordinal for b in members]].sum(axis=0) if members else np.zeros(4, np.int64)
        exact[key] = int(np.sign(votes[0] - votes[1]))
        if (exact[key] > 0) != runner.zero_positive[key]:
            logger.info(
                "majority sign of %s: guessed %+d, exact %+d (%d open elements, %d not recorded)",
                key or "the model",
                thresholds.majority[key],
                exact[key],
                votes[2],
                votes[3],
            )
            runner.zero_positive[key] = exact[key] > 0
            for b in members:
                if runner.votes[b.ordinal, 2] == 0 or b.ordinal in redone:
                    continue
                if runner.votes[b.ordinal, 3] == 0:
                    patch.append(b)
                else:
                    redo.append(b)
    logger.info("majority sign: %d blocks corrected in place, %d merged again", len(patch), len(redo))
    for b in patch:
        runner.patch_block(b)
    runner.redoing = True
    with progress_bar(progress, "pass 2/2: redo (majority sign)", sum(b.in_nbytes for b in redo)) as bar:
        runner.run(redo, bar)
    return dataclasses.replace(thresholds, majority=types.MappingProxyType(exact))


def _recipe(plan: MergePlan, inputs: MergeInputs, thresholds: Thresholds) -> dict[str, Any]:
    return {
        "tool": "ooc-ties",
        "version": __version__,
        "base": inputs.base.label,
        "models": [ft.label for ft in inputs.fts],
        "options": plan.options.to_json(),
        "thresholds": thresholds.to_json(),
        "merged_parameters": plan.merged_parameters,
    }


def _side_files(plan: MergePlan, inputs: MergeInputs, recipe: dict[str, Any]) -> dict[str, SideFileLike]:
    """The base's side files (everything but weights: :mod:`ooc_ties.io.side_files`), with ``torch_dtype``
    in ``config.json`` set to the output dtype if one was chosen, and a model card made from ``recipe``
    as ``README.md`` in place of the base's."""
    base_files = inputs.base.side_files()
    files: dict[str, SideFileLike] = dict(base_files)
    config = base_files["config.json"].read() if "config.json" in base_files else None
    if config is not None and plan.options.out_dtype is not None:
        files["config.json"] = _retyped_config(config, plan.options.out_dtype)
    files[CARD_NAME] = model_card(recipe, library=library_name(base_files.keys(), config)).encode()
    return files


def _retyped_config(source: bytes, dtype: DType) -> bytes:
    """config.json with ``torch_dtype`` set to the output dtype (when it parses as a JSON object)."""
    try:
        config = json.loads(source)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return source
    if not isinstance(config, dict):
        return source
    names = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}
    for key in ("torch_dtype", "dtype"):
        if key in config:
            config[key] = names[dtype.code]
    return (json.dumps(config, indent=2) + "\n").encode()

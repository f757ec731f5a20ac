"""The merge: open, plan, pass 1 (thresholds), pass 2 (merge and write), publish.

:func:`merge` is the library entry point the CLI calls; :func:`plan_merge` stops after planning
(``--dry-run``). Pass-2 block tasks are pure: a block's output depends only on the inputs, the pass-1
results and the options, so blocks run in any order on any number of threads with identical bytes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import time
import types
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ooc_ties import __version__
from ooc_ties.config import PRESETS, MergeOptions, Resources, ZeroSign
from ooc_ties.dtypes import DType
from ooc_ties.errors import DiskSpaceError, IncompatibleCheckpointsError, NonFiniteValueError, OutputPathError
from ooc_ties.inputs import MergeInputs
from ooc_ties.io.checkpoint import Checkpoint
from ooc_ties.io.writer import OutputFolder, ShardWriter, TensorSpec, check_destination
from ooc_ties.kernels.ties import merge as merge_kernel
from ooc_ties.plan import MergePlan, TensorKind, TensorPlan, make_plan
from ooc_ties.progress import Progress, ProgressFactory, progress_bar
from ooc_ties.schedule import run_blocks
from ooc_ties.thresholds import GLOBAL, BlockRef, Pass1Result, Thresholds, compute_thresholds, plan_blocks

__all__ = ["RECIPE_NAME", "MergeResult", "merge", "plan_merge"]

logger = logging.getLogger(__name__)

RECIPE_NAME = "ooc_ties_recipe.json"
"""The file in the output folder that records how it was made."""

_DISK_MARGIN = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class MergeResult:
    """What a finished merge did."""

    output: Path
    """The output folder."""
    plan: MergePlan
    """The plan it followed."""
    thresholds: Thresholds
    """The pass-1 results."""
    seconds: float
    """Wall time of the whole merge."""
    bytes_read: int
    """Bytes of tensor data read over all passes."""
    bytes_written: int
    """Bytes of tensor data written."""


def _check_output_path(output: Path, inputs: Sequence[Path]) -> None:
    out = output.resolve()
    for source in inputs:
        src = source.resolve()
        if out == src or src in out.parents:
            raise OutputPathError(f"{output}: the output must not be an input or lie inside one ({source})")
        if out in src.parents:
            raise OutputPathError(f"{output}: the output must not contain an input ({source})")


def _open_all(
    stack: contextlib.ExitStack, base: str | os.PathLike[str], fts: Sequence[str | os.PathLike[str]]
) -> MergeInputs:
    opened_base = stack.enter_context(Checkpoint(base))
    opened = tuple(stack.enter_context(Checkpoint(p)) for p in fts)
    return MergeInputs(opened_base, opened)


def plan_merge(
    base: str | os.PathLike[str],
    finetuned: Sequence[str | os.PathLike[str]],
    options: MergeOptions = PRESETS["paper"],
    resources: Resources | None = None,
) -> MergePlan:
    """Open the inputs, check they line up, and plan the merge without reading tensor data."""
    with contextlib.ExitStack() as stack:
        inputs = _open_all(stack, base, finetuned)
        return make_plan(inputs.base, inputs.fts, options, resources or Resources())


def merge(
    base: str | os.PathLike[str],
    finetuned: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    options: MergeOptions = PRESETS["paper"],
    resources: Resources | None = None,
    *,
    overwrite: bool = False,
    progress: ProgressFactory | None = None,
    thresholds: Thresholds | None = None,
) -> MergeResult:
    """TIES-merge ``finetuned`` checkpoints onto ``base`` and write a model folder at ``output``.

    ``base`` and each fine-tuned model are a ``.safetensors`` file or a Hugging Face model folder
    (single file or sharded with ``model.safetensors.index.json``). ``output`` receives
    ``model.safetensors`` or shards with an index, the base folder's config and tokenizer files, and
    ``ooc_ties_recipe.json``; it is written under a temporary name and renamed into place when complete.

    ``thresholds`` from an earlier merge of the same inputs (``MergeResult.thresholds``, or
    :meth:`Thresholds.load`) skip pass 1's reads; they are refused unless they were computed under the
    same density, scope, trim rule, zero-sign rule and weights, for the same tensors. ``lambda`` and the
    output dtype may differ.
    """
    started = time.perf_counter()
    resources = resources or Resources()
    output_path = Path(output)
    with contextlib.ExitStack() as stack:
        inputs = _open_all(stack, base, finetuned)
        _check_output_path(output_path, [c.path for c in inputs.all])
        check_destination(output_path.absolute(), overwrite=overwrite)
        plan = make_plan(inputs.base, inputs.fts, options, resources)
        _check_disk(output_path, plan)
        logger.info("plan:\n%s", plan.describe())
        _check_copies(plan, inputs)
        pass1 = compute_thresholds(plan, inputs, progress, thresholds)
        for t, g in enumerate(pass1.thresholds.groups.get(GLOBAL, ())):
            logger.info("model %d: threshold %g keeps %d of %d values", t + 1, g.value, g.kept, g.size)
        with OutputFolder(output_path, overwrite=overwrite, durable=resources.durable) as folder:
            writers = _open_shards(folder, plan)
            final = _pass2(plan, inputs, pass1, writers, progress)
            _write_side_files(folder, plan, inputs, final)
            published = folder.commit()
    seconds = time.perf_counter() - started
    copied = sum(t.in_nbytes for t in plan.tensors if t.kind is TensorKind.COPY)
    read = pass1.bytes_read + plan.merge_input_bytes + 2 * copied  # copies: checked, then written
    return MergeResult(published, plan, final, seconds, read, plan.output_bytes)


def _check_disk(output: Path, plan: MergePlan) -> None:
    probe = output.absolute().parent
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    need = plan.output_bytes + _DISK_MARGIN
    if free < need:
        raise DiskSpaceError(
            f"{probe}: not enough free disk space for the output ({need:,} bytes needed, {free:,} free)"
        )


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


def _open_shards(folder: OutputFolder, plan: MergePlan) -> dict[str, ShardWriter]:
    by_name = {t.name: t for t in plan.tensors}
    writers: dict[str, ShardWriter] = {}
    metadata = _recipe_metadata(plan)
    for shard in plan.shards:
        specs = [TensorSpec(n, by_name[n].out_dtype, by_name[n].shape) for n in shard.tensors]
        writer = folder.shard(shard.file_name, specs, metadata)
        for name in shard.tensors:
            writers[name] = writer
    return writers


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
        writers: dict[str, ShardWriter],
    ) -> None:
        self.inputs = inputs
        self.quotas = quotas
        self.writers = writers
        self.block_elements = plan.block_elements
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
        self.votes = np.zeros((len(quotas), 3), np.int64)  # per block: #S>0, #S<0, open elements

    def new_state(self) -> dict[np.dtype, np.ndarray]:
        return {}

    def run(self, blocks: Sequence[BlockRef], bar: Progress | None) -> None:
        """Merge and write ``blocks`` on the plan's threads."""
        run_blocks(
            blocks, self.merge_block, self.new_state, threads=self.threads, cost=lambda b: b.in_nbytes, progress=bar
        )

    def merge_block(self, ref: BlockRef, buffers: dict[np.dtype, np.ndarray]) -> None:
        name = ref.tensor.name
        storage = _out_storage(ref.tensor.out_dtype)
        if storage not in buffers:
            buffers[storage] = np.empty(self.block_elements, storage)
        out = buffers[storage][: ref.stop - ref.start]
        base, fts = self.inputs.block(name, ref.start, ref.stop)
        key = self.key(name)
        votes = self.votes[ref.ordinal]
        votes[:] = 0
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
        )
        if bad >= 0:
            message = self.inputs.describe_nonfinite(name, ref.start + bad, None, ref.tensor.out_dtype)
            raise NonFiniteValueError(message)
        self.writers[name].write(name, ref.start, out)
        self.inputs.release(name, ref.start, ref.stop)

    def copy_block(self, tensor: TensorPlan, start: int, stop: int) -> None:
        values = self.inputs.base.read(tensor.name, start, stop)
        self.writers[tensor.name].write(tensor.name, start, values)
        self.inputs.base.release(tensor.name, start, stop)


def _pass2(
    plan: MergePlan,
    inputs: MergeInputs,
    pass1: Pass1Result,
    writers: dict[str, ShardWriter],
    progress: ProgressFactory | None,
) -> Thresholds:
    """Merge and write every block; return the thresholds with every majority sign exact."""
    runner = _Pass2(plan, inputs, pass1.thresholds, pass1.quotas, writers)
    blocks = plan_blocks(plan.merged)
    copies = [(t, start, stop) for t in plan.tensors if t.kind is TensorKind.COPY for start, stop in t.grid.blocks()]
    total = sum(b.in_nbytes for b in blocks) + sum(
        (stop - start) * t.in_dtypes[0].itemsize for t, start, stop in copies
    )
    with progress_bar(progress, "pass 2/2: merge", total) as bar:
        for tensor, start, stop in copies:
            runner.copy_block(tensor, start, stop)
            if bar is not None:
                bar.advance((stop - start) * tensor.in_dtypes[0].itemsize)
        runner.run(blocks, bar)
    return _settle_majority(runner, pass1, blocks, progress)


def _settle_majority(
    runner: _Pass2, pass1: Pass1Result, blocks: list[BlockRef], progress: ProgressFactory | None
) -> Thresholds:
    """Replace guessed majority signs by the exact ones counted in pass 2, redoing blocks if needed.

    Only *open* elements (an exact zero vote between non-zero values) depend on the majority sign, so
    when a guess was wrong only the blocks holding open elements are merged again, with the exact sign.
    """
    thresholds = pass1.thresholds
    if not pass1.guessed:
        return thresholds
    exact = dict(thresholds.majority)
    redo: list[BlockRef] = []
    by_key: dict[str, list[BlockRef]] = {}
    for ref in blocks:
        by_key.setdefault(thresholds.key(ref.tensor.name), []).append(ref)
    for key in sorted(pass1.guessed):
        members = by_key.get(key, [])
        votes = runner.votes[[b.ordinal for b in members]].sum(axis=0) if members else np.zeros(3, np.int64)
        exact[key] = int(np.sign(votes[0] - votes[1]))
        if (exact[key] > 0) != runner.zero_positive[key]:
            logger.info(
                "majority sign of %s: guessed %+d, exact %+d", key or "the model", thresholds.majority[key], exact[key]
            )
            runner.zero_positive[key] = exact[key] > 0
            redo += [b for b in members if runner.votes[b.ordinal, 2] > 0]
    with progress_bar(progress, "pass 2/2: redo (majority sign)", sum(b.in_nbytes for b in redo)) as bar:
        runner.run(redo, bar)
    return dataclasses.replace(thresholds, majority=types.MappingProxyType(exact))


def _recipe(plan: MergePlan, inputs: MergeInputs, thresholds: Thresholds) -> dict[str, Any]:
    return {
        "tool": "ooc-ties",
        "version": __version__,
        "base": str(inputs.base.path),
        "models": [str(ft.path) for ft in inputs.fts],
        "options": plan.options.to_json(),
        "thresholds": thresholds.to_json(),
        "merged_parameters": plan.merged_parameters,
    }


def _write_side_files(folder: OutputFolder, plan: MergePlan, inputs: MergeInputs, thresholds: Thresholds) -> None:
    for source in inputs.base.side_files():
        if source.name == "config.json" and plan.options.out_dtype is not None:
            folder.write_text(source.name, _retyped_config(source, plan.options.out_dtype))
        else:
            folder.copy_in(source)
    folder.write_index(plan.shards)
    folder.write_text(RECIPE_NAME, json.dumps(_recipe(plan, inputs, thresholds), indent=2) + "\n")


def _retyped_config(source: Path, dtype: DType) -> str:
    """config.json with ``torch_dtype`` set to the output dtype (when it parses as a JSON object)."""
    text = source.read_text(encoding="utf-8")
    try:
        config = json.loads(text)
    except json.JSONDecodeError:
        return text
    if not isinstance(config, dict):
        return text
    names = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}
    for key in ("torch_dtype", "dtype"):
        if key in config:
            config[key] = names[dtype.code]
    return json.dumps(config, indent=2) + "\n"

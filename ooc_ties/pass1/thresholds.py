"""Thresholds: what pass 1 computes that does not depend on the block grid, as a value to save and reuse.

Per group (:data:`~ooc_ties.blocks.GLOBAL` or a tensor name) and fine-tuned model, the trim threshold
(its float32 bit pattern), how many values equal to it are kept, and how many values it keeps in all;
per group, the majority sign; the options they were computed under (:class:`ThresholdBasis`) and the
identity of the inputs they were computed from. ``--save-thresholds`` writes them, ``--thresholds``
reads them back and skips pass 1's reads (see :meth:`Thresholds.check_fits`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ooc_ties.blocks import GLOBAL
from ooc_ties.config import MergeOptions, Scope, ZeroSign
from ooc_ties.errors import OptionError
from ooc_ties.identity import InputsIdentity

if TYPE_CHECKING:
    from ooc_ties.inputs import MergeInputs
    from ooc_ties.plan import MergePlan

__all__ = ["GroupThreshold", "ThresholdBasis", "Thresholds", "group_sizes"]

logger = logging.getLogger(__name__)

_FORMAT = "ooc-ties-thresholds/3"


@dataclass(frozen=True, slots=True)
class GroupThreshold:
    """The trim of one fine-tuned model over one group."""

    size: int
    """Values in the group."""
    pattern: int
    """Float32 bit pattern of the threshold ``t``: values with ``|tau| > t`` are kept."""
    keep_equal: int
    """How many values with ``|tau| == t`` are kept, lowest flat index first; ``-1``: all of them."""
    kept: int
    """Values kept in all."""
    sample_kept: int = -1
    """Values kept in the group's sample blocks (``vote_sample``, every 16th block, on the grid of
    :attr:`Thresholds.sample_block_elements`), counted by pass 1's sign-vote sample: pass 2 counts the
    same blocks and must agree. -1: not counted (no majority vote, or nothing trimmed); pass 2 then
    counts every block and checks :attr:`kept`."""

    @property
    def value(self) -> float:
        return float(np.uint32(self.pattern).view(np.float32))

    @classmethod
    def keep_all(cls, size: int) -> GroupThreshold:
        return cls(size, 0, -1, size)

    @classmethod
    def keep_none(cls, size: int) -> GroupThreshold:
        """Keeps nothing: the threshold is +inf and none of the values equal to it are kept."""
        return cls(size, 0x7F800000, 0, 0)


PASS1_OPTIONS = (
    "method",
    "scope",
    "density",
    "gamma",
    "epsilon",
    "seed",
    "rescale",
    "rescale_rule",
    "trim",
    "zero_sign",
    "sign_from",
    "per_tensor",
)
"""The options (keys of :meth:`MergeOptions.to_json`) pass 1's results depend on; the weights too, as
float32 values per model. ``lambda``, ``normalize`` and the output dtype do not."""


@dataclass(frozen=True, slots=True)
class ThresholdBasis:
    """The options pass 1 depends on: thresholds are valid for another merge only with the same basis.

    A projection of the options' one serialised form (:meth:`MergeOptions.to_json`), so that nothing
    here restates an option."""

    options: Mapping[str, Any]
    """The :data:`PASS1_OPTIONS` of the options' JSON (``seed`` only for a random drop; ``per_tensor`` as
    a digest)."""
    weights: tuple[float, ...]
    """Per-model weights as float32 values (the majority vote is weighted)."""

    @classmethod
    def of(cls, options: MergeOptions, n_models: int) -> ThresholdBasis:
        data = options.to_json()
        basis = {key: data.get(key) for key in PASS1_OPTIONS}
        if not options.method.sparsify.random:
            basis["seed"] = None
        basis["per_tensor"] = _digest(data.get("per_tensor"))
        return cls(types.MappingProxyType(basis), tuple(float(w) for w in options.model_weights(n_models)))

    @property
    def scope(self) -> Scope:
        return Scope(self.options["scope"])

    @property
    def zero_sign(self) -> ZeroSign:
        return ZeroSign(self.options["zero_sign"])

    def to_json(self) -> dict[str, Any]:
        return {**self.options, "weights": list(self.weights)}

    @classmethod
    def from_json(cls, b: Any) -> ThresholdBasis:
        basis = {key: b[key] for key in PASS1_OPTIONS}
        Scope(basis["scope"])  # a ValueError if not valid
        ZeroSign(basis["zero_sign"])
        return cls(types.MappingProxyType(basis), tuple(float(w) for w in b["weights"]))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ThresholdBasis) and self.to_json() == other.to_json()

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_json(), sort_keys=True))


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The result of pass 1 that does not depend on block sizes: save it, load it, merge with it again.

    The merged output does not depend on ``lambda`` or the output dtype through pass 1, so thresholds
    computed once serve any number of merges that differ only in those (see :func:`ooc_ties.merge`).
    """

    basis: ThresholdBasis
    """The options they were computed under."""
    groups: Mapping[str, tuple[GroupThreshold, ...]]
    """Per group key (:data:`GLOBAL` or a tensor name), one threshold per fine-tuned model."""
    majority: Mapping[str, int]
    """Per group key, the majority sign (+1, 0 or -1); empty unless the zero-sign rule is majority."""
    inputs: InputsIdentity | None = None
    """What the inputs were (files, sizes, times, sampled content: :mod:`ooc_ties.identity`); ``None`` if
    an input had no identity (arrays in memory, a remote store)."""
    sample_block_elements: int = 0
    """The block size of the grid whose sample blocks ``GroupThreshold.sample_kept`` counts (0: none);
    a merge on another grid (another memory budget) cannot compare them."""
    outliers: Mapping[str, tuple[GroupThreshold, ...]] = field(default_factory=lambda: types.MappingProxyType({}))
    """Breadcrumbs: per group key, the band's upper cut per model (the values it keeps are dropped as
    outliers); empty for other methods."""
    scales: Mapping[str, tuple[float, ...]] = field(default_factory=lambda: types.MappingProxyType({}))
    """Per tensor name, the float32 rescale factor of each model (mergekit's L1 rule); empty unless the
    method rescales that way. A tensor left out is not rescaled."""

    @property
    def scope(self) -> Scope:
        return self.basis.scope

    def key(self, tensor: str) -> str:
        return GLOBAL if self.scope is Scope.GLOBAL else tensor

    def for_tensor(self, tensor: str) -> tuple[GroupThreshold, ...]:
        return self.groups[self.key(tensor)]

    def to_json(self, *, samples: bool = True) -> dict[str, Any]:
        """A JSON-ready form; ``samples=False`` leaves out the sample blocks' kept counts, which depend on
        the block grid (a merge's recipe must not: its bytes are the same whatever the blocks)."""
        data = {
            "format": _FORMAT,
            "basis": self.basis.to_json(),
            "inputs": self.inputs.to_json() if self.inputs is not None else None,
            "sample_block_elements": self.sample_block_elements,
            "groups": {k: [_group_json(g, samples) for g in v] for k, v in self.groups.items()},
            "majority": dict(self.majority),
            "outliers": {k: [_group_json(g, samples) for g in v] for k, v in self.outliers.items()},
            "scales": {k: list(v) for k, v in self.scales.items()},
        }
        if not samples:
            del data["sample_block_elements"]
        return data

    @classmethod
    def from_json(cls, data: Any, where: str = "thresholds") -> Thresholds:
        """Rebuild from :meth:`to_json` output; ``where`` names the source in error messages."""
        try:
            if data["format"] != _FORMAT:
                raise OptionError(f"{where}: format {data['format']!r} is not {_FORMAT!r}")
            basis = ThresholdBasis.from_json(data["basis"])
            groups = {str(key): tuple(map(_group_from_json, entries)) for key, entries in data["groups"].items()}
            outliers = {
                str(key): tuple(map(_group_from_json, entries)) for key, entries in data.get("outliers", {}).items()
            }
            scales = {str(key): tuple(float(x) for x in v) for key, v in data.get("scales", {}).items()}
            majority = {str(k): int(v) for k, v in data["majority"].items()}
            inputs = InputsIdentity.from_json(data["inputs"]) if data["inputs"] is not None else None
            sample_block_elements = int(data.get("sample_block_elements", 0))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise OptionError(f"{where}: not a thresholds file ({type(exc).__name__}: {exc})") from None
        return cls(
            basis,
            types.MappingProxyType(groups),
            types.MappingProxyType(majority),
            inputs,
            sample_block_elements,
            types.MappingProxyType(outliers),
            types.MappingProxyType(scales),
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write as JSON."""
        Path(path).write_text(json.dumps(self.to_json(), indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Thresholds:
        """Read a file written by :meth:`save`."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise OptionError(f"{path}: cannot read thresholds ({exc.strerror})") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise OptionError(f"{path}: thresholds file is not valid JSON ({exc})") from None
        return cls.from_json(data, str(path))

    def check_fits(self, plan: MergePlan, inputs: MergeInputs) -> None:
        """Refuse thresholds computed under other options, or for other inputs, than this merge's."""
        if len(self.basis.weights) != plan.n_models:
            raise OptionError(
                f"thresholds were computed for {len(self.basis.weights)} fine-tuned models; "
                f"this merge has {plan.n_models}"
            )
        wanted = ThresholdBasis.of(plan.options, plan.n_models)
        if self.basis != wanted:
            theirs, ours = self.basis.to_json(), wanted.to_json()
            diff = ", ".join(f"{k} {theirs[k]!r} (merge has {ours[k]!r})" for k in ours if theirs[k] != ours[k])
            raise OptionError(f"thresholds were computed with other options: {diff}")
        now = inputs.identity()
        if now is None or self.inputs is None:
            logger.warning(
                "thresholds: an input is in memory or on a remote store, so only pass 2's kept counts check "
                "that they were computed for these inputs"
            )
        else:
            why = self.inputs.mismatch(now)
            if why is not None:
                raise OptionError(f"thresholds were computed for other inputs: {why}")
        sizes = group_sizes(plan)
        if set(sizes) != set(self.groups):
            missing = sorted(set(sizes) ^ set(self.groups))[0]
            raise OptionError(f"thresholds do not cover the same tensors as this merge (e.g. {missing!r})")
        for key, size in sizes.items():
            given = self.groups[key]
            if len(given) != plan.n_models or any(g.size != size for g in given):
                label = "the model" if key == GLOBAL else f"tensor {key!r}"
                raise OptionError(f"thresholds for {label} were computed for other sizes or model counts")
            if self.basis.zero_sign is ZeroSign.MAJORITY and key not in self.majority:
                raise OptionError(f"thresholds lack the majority sign of group {key!r}")


def _digest(values: Any) -> str:
    if not values:
        return ""
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def _group_json(g: GroupThreshold, samples: bool) -> dict[str, Any]:
    return {
        "size": g.size,
        "threshold": g.value,
        "pattern": g.pattern,
        "keep_equal": g.keep_equal,
        "kept": g.kept,
        **({"sample_kept": g.sample_kept} if samples else {}),
    }


def _group_from_json(g: Any) -> GroupThreshold:
    return GroupThreshold(
        int(g["size"]),
        int(g["pattern"]),
        int(g["keep_equal"]),
        int(g["kept"]),
        int(g.get("sample_kept", -1)),  # (not in a recipe: see to_json)
    )


def group_sizes(plan: MergePlan) -> dict[str, int]:
    if plan.options.scope is Scope.GLOBAL:
        return {GLOBAL: plan.merged_parameters}
    return {t.name: t.numel for t in plan.merged}

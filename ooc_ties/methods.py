"""Merge methods as data: what each method of the task-arithmetic family does, declared once.

A :class:`Method` says which of the engine's shared steps it uses: how it sparsifies each task vector
(:class:`Sparsify`: keep all, the largest magnitudes, a band below the largest, a random drop, DELLA's
rank-dependent drop), whether it elects a sign per parameter and takes the disjoint mean of the values
that agree (a *consensus*), whether it divides by the sum of the weights (*normalize*) and rescales the
kept values (*rescale*) by default, and whether it merges task vectors at all (``linear`` merges the
models themselves). The options (:class:`~ooc_ties.config.MergeOptions`), the plan's reads, pass 1's
statistics, the pass-2 kernel's arguments, the in-RAM reference and the recipe are all derived from
that declaration, with mergekit's parameter names, so adding a method is adding a declaration here.

Every method computes, per parameter, with ``tau_t = x_t - base`` in float32 (``x_t`` itself for
``linear``) and the models in the order given (docs/methods.md has each formula and how it differs
from mergekit and the papers)::

    v_t   = w_t * (sparsify_t(tau_t) * scale_t)     (scale_t = 1 unless the method rescales)
    num   = sum of v_t        over the models that agree with the elected sign (consensus), or all
    den   = sum of w_t        over the same models
    mixed = num / den         if normalize (den == 0, or |den| < 1e-8 without consensus, counts as 1)
    out   = base + lambda * mixed                   (0 + mixed for linear)
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ooc_ties.errors import OptionError

__all__ = [
    "BREADCRUMBS",
    "BREADCRUMBS_TIES",
    "DARE_LINEAR",
    "DARE_TIES",
    "DELLA",
    "DELLA_LINEAR",
    "LINEAR",
    "METHODS",
    "TASK_ARITHMETIC",
    "TIES",
    "Method",
    "Parameter",
    "Sparsify",
    "parse_method",
    "row_length",
]


def _number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise OptionError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def _density(value: object, where: str) -> float:
    number = _number(value, where)
    if not 0.0 < number <= 1.0:
        raise OptionError(f"{where}: a density must be in (0, 1], got {value!r}")
    return number


def _flag(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise OptionError(f"{where}: expected true or false, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Parameter:
    """One parameter of a method, as mergekit names it in a configuration's ``parameters``."""

    name: str
    """Its key (``weight``, ``density``, ``lambda``, ...)."""
    per_model: bool
    """Each fine-tuned model has its own value, or all share one."""
    default: object
    """The value when nothing sets it; ``None``: required."""
    check: Callable[[object, str], object]
    """Validates a value (``where`` names it in the message) and returns it."""

    def parse(self, value: object, where: str) -> object:
        return self.check(value, where)


def _fraction(value: object, where: str) -> float:
    number = _number(value, where)
    if not 0.0 <= number <= 1.0:
        raise OptionError(f"{where}: expected a fraction in [0, 1], got {value!r}")
    return number


class Sparsify(enum.Enum):
    """How a method sparsifies each task vector before the merge (mergekit's ``sparsification_method``)."""

    NONE = "none"
    """Every value is kept."""
    MAGNITUDE = "magnitude"
    """The ``density`` fraction of largest magnitudes (TIES): an order statistic from pass 1."""
    BAND = "band"
    """The ``density`` fraction of magnitudes just below the ``gamma`` fraction of largest ones (Model
    Breadcrumbs, mergekit's ``magnitude_outliers``): two order statistics from pass 1."""
    RANDOM = "random"
    """Each value kept with probability ``density`` (DARE): a seeded drop, the same in both passes."""
    DELLA = "della"
    """Each value kept with a probability from ``density - epsilon`` to ``density + epsilon`` by its
    magnitude's rank in its row (DELLA's MagPrune): a seeded drop over whole rows."""

    @property
    def ranked(self) -> bool:
        """Needs order statistics of ``|tau|`` from pass 1 (and takes ``--scope`` and ``--trim``)."""
        return self in (Sparsify.MAGNITUDE, Sparsify.BAND)

    @property
    def random(self) -> bool:
        """Draws a seeded drop mask (``--seed``)."""
        return self in (Sparsify.RANDOM, Sparsify.DELLA)


def row_length(shape: tuple[int, ...]) -> int:
    """DELLA's row: the last axis (a 1-D tensor is one row; a scalar a row of one)."""
    return shape[-1] if shape else 1


_WEIGHT = Parameter("weight", True, None, _number)
_DENSITY = Parameter("density", True, 1.0, _density)
_COMMON = (
    _WEIGHT,
    _DENSITY,
    Parameter("lambda", False, 1.0, _number),
    Parameter("int8_mask", False, False, _flag),
)
"""mergekit's parameters of the task-arithmetic family (``normalize`` and ``rescale`` are added with each
method's default); ``int8_mask`` only changes how mergekit stores a mask, never a value."""
GAMMA = Parameter("gamma", True, 0.01, _fraction)
"""Breadcrumbs: the fraction of largest magnitudes dropped as outliers (mergekit's default 0.01)."""
EPSILON = Parameter("epsilon", True, 0.15, _fraction)
"""DELLA: the half-width of the keep probabilities around ``density`` (mergekit's default 0.15)."""


@dataclass(frozen=True, slots=True)
class Method:
    """One merge method of the task-arithmetic family."""

    name: str
    """Its name, as mergekit's ``merge_method`` spells it."""
    title: str
    """How plans, logs and model cards name it."""
    paper: str
    """Where it was introduced."""
    sparsify: Sparsify
    """How each task vector is sparsified."""
    consensus: bool
    """Elects a sign per parameter and averages only the values that agree with it (TIES)."""
    normalize: bool
    """Divides by the sum of the (agreeing) weights unless told otherwise (mergekit's default)."""
    rescale: bool
    """Rescales each tensor's kept values unless told otherwise (mergekit's default)."""
    default_density: float
    """The density when none is given (1 keeps every value)."""
    summary: str
    """What it does, in a sentence (model cards)."""
    uses_base: bool = True
    """Merges task vectors (``x - base``); ``False``: the models' own values (``linear``)."""

    @property
    def trims(self) -> bool:
        """Needs pass 1's order statistics (a magnitude trim or a band)."""
        return self.sparsify.ranked

    @property
    def sparsifies(self) -> bool:
        """Takes a ``density`` (every method but ``linear`` and ``task_arithmetic``)."""
        return self.sparsify is not Sparsify.NONE

    @property
    def parameters(self) -> tuple[Parameter, ...]:
        """Its parameters in a mergekit configuration, with its own defaults."""
        if not self.uses_base:
            return (_WEIGHT, Parameter("normalize", False, self.normalize, _flag))
        extra = {Sparsify.BAND: (GAMMA,), Sparsify.DELLA: (EPSILON,)}.get(self.sparsify, ())
        return (
            *_COMMON,
            *extra,
            Parameter("normalize", False, self.normalize, _flag),
            Parameter("rescale", False, self.rescale, _flag),
        )


_TASK_VECTORS = "each task vector (fine-tuned minus base) is"
_SUM = (
    "and their weighted sum is scaled by lambda and added to the base (divided by the sum of the weights if normalized)"
)
_VOTE = (
    "a sign is elected per parameter, and the values that agree with it are averaged (weighted, if weights "
    "are given), scaled by lambda and added to the base"
)

LINEAR = Method(
    name="linear",
    title="Linear",
    paper="https://arxiv.org/abs/2203.05482",
    sparsify=Sparsify.NONE,
    consensus=False,
    normalize=True,
    rescale=False,
    default_density=1.0,
    summary="the models' own parameters are averaged, weighted (a model soup)",
    uses_base=False,
)
"""``sum_t w_t * x_t / sum_t w_t``: the weighted mean of the models themselves; the base is not used."""

TASK_ARITHMETIC = Method(
    name="task_arithmetic",
    title="Task Arithmetic",
    paper="https://arxiv.org/abs/2212.04089",
    sparsify=Sparsify.NONE,
    consensus=False,
    normalize=False,
    rescale=False,
    default_density=1.0,
    summary=f"{_TASK_VECTORS} weighted, {_SUM}",
)
"""``base + lambda * sum_t w_t * tau_t``: every task vector whole, weighted and added."""

TIES = Method(
    name="ties",
    title="TIES",
    paper="https://arxiv.org/abs/2306.01708",
    sparsify=Sparsify.MAGNITUDE,
    consensus=True,
    normalize=True,
    rescale=False,
    default_density=0.2,
    summary=f"{_TASK_VECTORS} trimmed to its largest magnitudes, {_VOTE}",
)
"""Trim, elect, disjoint mean. The default density is the paper's 0.2 (mergekit's is 1)."""

DARE_TIES = Method(
    name="dare_ties",
    title="DARE TIES",
    paper="https://arxiv.org/abs/2311.03099",
    sparsify=Sparsify.RANDOM,
    consensus=True,
    normalize=False,
    rescale=True,
    default_density=1.0,
    summary=f"{_TASK_VECTORS} randomly thinned to a fraction (density) of its values and rescaled, {_VOTE}",
)
"""DARE's random drop, then TIES' sign election and disjoint sum."""

DARE_LINEAR = Method(
    name="dare_linear",
    title="Linear DARE",
    paper="https://arxiv.org/abs/2311.03099",
    sparsify=Sparsify.RANDOM,
    consensus=False,
    normalize=False,
    rescale=True,
    default_density=1.0,
    summary=f"{_TASK_VECTORS} randomly thinned to a fraction (density) of its values and rescaled, {_SUM}",
)
"""DARE's random drop, then the weighted sum of task arithmetic."""

BREADCRUMBS = Method(
    name="breadcrumbs",
    title="Model Breadcrumbs",
    paper="https://arxiv.org/abs/2312.06795",
    sparsify=Sparsify.BAND,
    consensus=False,
    normalize=False,
    rescale=False,
    default_density=1.0,
    summary=f"{_TASK_VECTORS} cut to a band of magnitudes below its largest outliers (gamma), {_SUM}",
)
"""The magnitude band below the ``gamma`` outliers, then the weighted sum."""

BREADCRUMBS_TIES = Method(
    name="breadcrumbs_ties",
    title="Model Breadcrumbs with TIES",
    paper="https://arxiv.org/abs/2312.06795",
    sparsify=Sparsify.BAND,
    consensus=True,
    normalize=False,
    rescale=False,
    default_density=1.0,
    summary=f"{_TASK_VECTORS} cut to a band of magnitudes below its largest outliers (gamma), {_VOTE}",
)
"""The magnitude band, then TIES' sign election and disjoint sum."""

DELLA = Method(
    name="della",
    title="DELLA",
    paper="https://arxiv.org/abs/2406.11617",
    sparsify=Sparsify.DELLA,
    consensus=True,
    normalize=True,
    rescale=True,
    default_density=1.0,
    summary=(f"{_TASK_VECTORS} randomly thinned, larger magnitudes more likely kept (MagPrune), and rescaled, {_VOTE}"),
)
"""DELLA's MagPrune, then TIES' sign election and disjoint mean."""

DELLA_LINEAR = Method(
    name="della_linear",
    title="Linear DELLA",
    paper="https://arxiv.org/abs/2406.11617",
    sparsify=Sparsify.DELLA,
    consensus=False,
    normalize=False,
    rescale=True,
    default_density=1.0,
    summary=f"{_TASK_VECTORS} randomly thinned, larger magnitudes more likely kept (MagPrune), and rescaled, {_SUM}",
)
"""DELLA's MagPrune, then the weighted sum."""

METHODS: Mapping[str, Method] = {
    m.name: m
    for m in (LINEAR, TASK_ARITHMETIC, TIES, DARE_TIES, DARE_LINEAR, BREADCRUMBS, BREADCRUMBS_TIES, DELLA, DELLA_LINEAR)
}
"""Every method the engine runs, by name."""


def parse_method(value: object) -> Method:
    """A method by name (or the method itself)."""
    if isinstance(value, Method):
        return value
    if isinstance(value, str) and value in METHODS:
        return METHODS[value]
    allowed = ", ".join(f'"{name}"' for name in METHODS)
    raise OptionError(f'merge method "{value}" is invalid (expected one of: {allowed})')

"""Merge methods as data: what each method of the task-arithmetic family does, declared once.

A :class:`Method` says which of the engine's shared steps it uses: whether it trims each task vector to
its largest magnitudes (pass 1's thresholds), whether it elects a sign per parameter and takes the
disjoint mean of the values that agree (a *consensus*), and whether it divides by the sum of the weights
by default (*normalize*). The options (:class:`~ooc_ties.config.MergeOptions`), the plan's reads, the
pass-2 kernel's flags, the in-RAM reference and the recipe are all derived from that declaration, with
mergekit's parameter names, so adding a method is adding a declaration here.

Every method computes, per parameter, with ``tau_t = x_t - base`` in float32 and the models in the
order given (docs/methods.md has each formula and how it differs from mergekit and the papers)::

    v_t   = w_t * trim_t(tau_t)                     (trim_t = identity unless the method trims)
    num   = sum of v_t        over the models that agree with the elected sign (consensus), or all
    den   = sum of w_t        over the same models
    mixed = num / den         if normalize (den == 0, or |den| < 1e-8 without consensus, counts as 1)
    out   = base + lambda * mixed
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ooc_ties.errors import OptionError

__all__ = ["METHODS", "TASK_ARITHMETIC", "TIES", "Method", "Parameter", "parse_method"]


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


TASK_ARITHMETIC_PARAMETERS = (
    Parameter("weight", True, None, _number),
    Parameter("density", True, 1.0, _density),
    Parameter("lambda", False, 1.0, _number),
    Parameter("rescale", False, False, _flag),
    Parameter("int8_mask", False, False, _flag),
)
"""mergekit's parameters of the task-arithmetic family (``normalize`` is added with each method's
default); ``int8_mask`` only changes how mergekit stores a mask, never a value."""


@dataclass(frozen=True, slots=True)
class Method:
    """One merge method of the task-arithmetic family."""

    name: str
    """Its name, as mergekit's ``merge_method`` spells it."""
    title: str
    """How plans, logs and model cards name it."""
    paper: str
    """Where it was introduced."""
    trims: bool
    """Keeps only each task vector's largest magnitudes (``density``, pass 1's thresholds)."""
    consensus: bool
    """Elects a sign per parameter and averages only the values that agree with it (TIES)."""
    normalize: bool
    """Divides by the sum of the (agreeing) weights unless told otherwise (mergekit's default)."""
    default_density: float
    """The density when none is given (1 keeps every value)."""
    summary: str
    """What it does, in a sentence (model cards)."""

    @property
    def parameters(self) -> tuple[Parameter, ...]:
        """Its parameters in a mergekit configuration, with its own default for ``normalize``."""
        return (*TASK_ARITHMETIC_PARAMETERS, Parameter("normalize", False, self.normalize, _flag))


TASK_ARITHMETIC = Method(
    name="task_arithmetic",
    title="Task Arithmetic",
    paper="https://arxiv.org/abs/2212.04089",
    trims=False,
    consensus=False,
    normalize=False,
    default_density=1.0,
    summary="each task vector (fine-tuned minus base) is weighted, and their sum is scaled by lambda and added "
    "to the base (divided by the sum of the weights if normalized)",
)
"""``base + lambda * sum_t w_t * tau_t``: every task vector whole, weighted and added."""

TIES = Method(
    name="ties",
    title="TIES",
    paper="https://arxiv.org/abs/2306.01708",
    trims=True,
    consensus=True,
    normalize=True,
    default_density=0.2,
    summary="each task vector (fine-tuned minus base) is trimmed to its largest magnitudes, a sign is elected "
    "per parameter, and the values that agree with it are averaged (weighted, if weights are given), scaled "
    "by lambda and added to the base",
)
"""Trim, elect, disjoint mean. The default density is the paper's 0.2 (mergekit's is 1)."""

METHODS: Mapping[str, Method] = {m.name: m for m in (TASK_ARITHMETIC, TIES)}
"""Every method the engine runs, by name."""


def parse_method(value: object) -> Method:
    """A method by name (or the method itself)."""
    if isinstance(value, Method):
        return value
    if isinstance(value, str) and value in METHODS:
        return METHODS[value]
    allowed = ", ".join(f'"{name}"' for name in METHODS)
    raise OptionError(f'merge method "{value}" is invalid (expected one of: {allowed})')

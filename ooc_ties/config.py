"""Merge settings: frozen value objects, the two presets, and the parsers that validate user input.

:class:`MergeOptions` holds everything that decides the output bytes (:class:`~ooc_ties.resources.Resources`
holds what only decides how fast and in how much memory they are made). The CLI builds them from its flags
through the ``parse_*`` functions here, and so does the library API.
"""

from __future__ import annotations

import enum
import math
import types
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ooc_ties.dtypes import DType, parse_output_dtype
from ooc_ties.errors import OptionError
from ooc_ties.kernels.drop import parse_della_epsilon
from ooc_ties.methods import TIES, Method, Sparsify, parse_method

__all__ = [
    "PRESETS",
    "MergeOptions",
    "RescaleRule",
    "Scope",
    "TensorValues",
    "TrimRule",
    "ZeroSign",
    "parse_densities",
    "parse_density",
    "parse_lambda",
    "parse_preset",
    "parse_weights",
]


class Scope(enum.Enum):
    """Over what the top-k magnitudes are counted."""

    GLOBAL = "global"
    """One threshold per fine-tuned model over all its float parameters (the paper)."""
    TENSOR = "tensor"
    """One threshold per tensor per fine-tuned model (mergekit)."""


class TrimRule(enum.Enum):
    """Which magnitudes survive the trim, given ``n`` values and density ``k``."""

    THRESHOLD = "threshold"
    """Keep every ``|tau| >= t``, ``t`` the ``(n - floor(n*k))``-th smallest ``|tau|`` (paper code)."""
    TOPK = "topk"
    """Keep exactly the ``floor(n*k)`` largest; among equal magnitudes the lowest flat index first."""


class ZeroSign(enum.Enum):
    """The elected sign where the sum of trimmed values is exactly zero."""

    MAJORITY = "majority"
    """The sign of the count of positive minus negative elected signs over the scope (paper)."""
    POSITIVE = "positive"
    """Always positive (mergekit)."""


class RescaleRule(enum.Enum):
    """How a method that rescales (``rescale``) scales the values it keeps."""

    L1 = "l1"
    """Each tensor's kept values are scaled so that their L1 norm is the whole task vector's (mergekit)."""
    DENSITY = "density"
    """Each kept value is multiplied by ``float32(1 / density)`` (the DARE paper; random drops only)."""


def _parse_enum(kind: type[enum.Enum], value: Any, option: str) -> Any:
    if isinstance(value, kind):
        return value
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(f'"{m.value}"' for m in kind)
        raise OptionError(f'{option} "{value}" is invalid (expected one of: {allowed})') from None


def parse_densities(value: Any) -> float | tuple[float, ...]:
    """One density for every model, or one per fine-tuned model (a sequence): each in ``(0, 1]``."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        return parse_density(value)
    densities = tuple(parse_density(v) for v in value)
    if not densities:
        raise OptionError("densities must not be empty (give one density, or one per fine-tuned model)")
    return densities


def parse_density(value: float) -> float:
    """Density ``k`` of the trim: a finite number in ``(0, 1]``."""
    try:
        density = float(value)
    except (TypeError, ValueError):
        raise OptionError(f"density must be a number in (0, 1]; got {value!r}") from None
    if not (0.0 < density <= 1.0):
        raise OptionError(f"density must be in (0, 1]; got {value!r}")
    return density


def _parse_fractions(value: Any, what: str) -> float | tuple[float, ...]:
    """One fraction in ``[0, 1]`` for every model, or one per fine-tuned model."""

    def one(v: Any) -> float:
        try:
            number = float(v)
        except (TypeError, ValueError):
            raise OptionError(f"{what} must be a number in [0, 1]; got {v!r}") from None
        if not 0.0 <= number <= 1.0:
            raise OptionError(f"{what} must be in [0, 1]; got {v!r}")
        return number

    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        return one(value)
    values = tuple(one(v) for v in value)
    if not values:
        raise OptionError(f"{what} must not be empty (give one value, or one per fine-tuned model)")
    return values


def _finite_f32(value: Any, what: str) -> float:
    """``value`` as a float that stays finite when rounded to float32 (the kernels' precision)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise OptionError(f"{what} must be a number; got {value!r}") from None
    with np.errstate(over="ignore"):
        if not math.isfinite(float(np.float32(number))):
            raise OptionError(f"{what} must be finite as a float32; got {value!r}")
    return number


def parse_lambda(value: float) -> float:
    """Scaling ``lambda`` of the merged task vector: finite as a float32."""
    return _finite_f32(value, "lambda")


def parse_weights(values: Any) -> tuple[float, ...] | None:
    """Per-model weights: finite numbers, or ``None`` for all ones."""
    if values is None:
        return None
    weights = tuple(_finite_f32(value, "weights") for value in values)
    if not weights:
        raise OptionError("weights must not be empty (omit them for all ones)")
    if all(np.float32(w) == 0 for w in weights):
        raise OptionError("weights are all 0 (as float32): the merge would be the base model unchanged")
    return weights


def _as_tuple(density: float | tuple[float, ...] | None) -> tuple[float, ...]:
    return density if isinstance(density, tuple) else (1.0 if density is None else density,)


@dataclass(frozen=True, slots=True)
class TensorValues:
    """One tensor's own per-model values, where they differ from the merge's (a mergekit configuration's
    gradients and filters); ``None`` keeps the merge's value."""

    weights: tuple[float, ...] | None = None
    density: tuple[float, ...] | None = None
    gamma: tuple[float, ...] | None = None
    epsilon: tuple[float, ...] | None = None

    def to_json(self) -> dict[str, list[float]]:
        return {k: list(v) for k in ("weights", "density", "gamma", "epsilon") if (v := getattr(self, k)) is not None}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TensorValues:
        return cls(**{k: tuple(float(x) for x in v) for k, v in data.items()})


def _per_model(value: float | tuple[float, ...] | None, n_models: int, what: str) -> tuple[float, ...]:
    values = _as_tuple(value)
    if len(values) == 1:
        return values * n_models
    if len(values) != n_models:
        raise OptionError(f"{len(values)} {what} given for {n_models} fine-tuned models")
    return values


@dataclass(frozen=True, slots=True)
class MergeOptions:
    """Everything that decides the merged bytes. Presets: :data:`PRESETS`."""

    method: Method = TIES
    """The merge method (:mod:`ooc_ties.methods`; by name or as the declaration)."""
    density: float | tuple[float, ...] | None = None
    """Fraction ``k`` of task-vector magnitudes kept by the trim, in ``(0, 1]``; 1 keeps all. One for
    every model, or one per fine-tuned model. ``None``: the method's default (0.2 for TIES, the paper's;
    1 for methods that do not trim, and only 1)."""
    lam: float = 1.0
    """``lambda``: the merged task vector is scaled by it (as a float32) before adding to the base."""
    scope: Scope = Scope.GLOBAL
    """Whether the top-k is counted over the whole model or per tensor."""
    trim: TrimRule = TrimRule.THRESHOLD
    """How ties at the threshold are treated."""
    zero_sign: ZeroSign = ZeroSign.MAJORITY
    """The elected sign where the vote is exactly zero (methods with a consensus)."""
    weights: tuple[float, ...] | None = None
    """Per fine-tuned model weights (as float32), or ``None`` for all ones."""
    normalize: bool | None = None
    """Divide by the sum of the (agreeing) weights; ``None``: the method's default."""
    out_dtype: DType | None = None
    """Dtype of merged tensors; ``None`` keeps each tensor's base dtype."""
    gamma: float | tuple[float, ...] | None = None
    """Breadcrumbs: the fraction of largest magnitudes dropped as outliers, in ``[0, 1]``, one for every
    model or one per model; ``None``: 0.01 (mergekit's default) for breadcrumbs, unused otherwise."""
    epsilon: float | tuple[float, ...] | None = None
    """DELLA: the keep probabilities run from ``density - epsilon`` to ``density + epsilon``; ``None``:
    0.15 (mergekit's default) for DELLA, unused otherwise."""
    rescale: bool | None = None
    """Rescale each task vector's kept values (:class:`RescaleRule`); ``None``: the method's default."""
    rescale_rule: RescaleRule = RescaleRule.L1
    """How they are rescaled."""
    seed: int = 0
    """The seed of the random drops (DARE, DELLA): with the model's index, the tensor's name and the
    element's index it decides each drop (``ooc_ties.kernels.drop``), so the same seed gives the same
    bytes on any machine, block size and thread count."""
    sign_from: str | None = None
    """The model (a path or cached Hub ID) whose task vector elects the sign of every parameter, in place of
    the vote (TIES paper, section 7: the sign of a multitask model); the zero-sign rule applies where
    that task value is 0. Only for methods with a sign election."""
    per_tensor: Mapping[str, TensorValues] | None = None
    """Values of single tensors that differ from the merge's (:class:`TensorValues`, by tensor name;
    :meth:`for_tensor`); only with the ``tensor`` scope. ``None``: every tensor has the merge's values."""

    def __post_init__(self) -> None:
        method = parse_method(self.method)
        object.__setattr__(self, "method", method)
        density = parse_densities(method.default_density if self.density is None else self.density)
        if not method.sparsifies and density not in (1.0, (1.0,) * len(_as_tuple(density))):
            raise OptionError(
                f"density {density} does not apply to {method.name}, which keeps every value (use ties to trim)"
            )
        object.__setattr__(self, "density", density)
        self._set_method_parameters(method)
        object.__setattr__(self, "lam", parse_lambda(self.lam))
        object.__setattr__(self, "scope", _parse_enum(Scope, self.scope, "scope"))
        object.__setattr__(self, "trim", _parse_enum(TrimRule, self.trim, "trim rule"))
        object.__setattr__(self, "zero_sign", _parse_enum(ZeroSign, self.zero_sign, "zero sign"))
        object.__setattr__(self, "weights", parse_weights(self.weights))
        object.__setattr__(self, "normalize", method.normalize if self.normalize is None else bool(self.normalize))
        object.__setattr__(self, "out_dtype", parse_output_dtype(self.out_dtype))
        self._set_per_tensor()

    def _set_method_parameters(self, method: Method) -> None:
        """Validate ``gamma``, ``epsilon``, ``rescale`` and ``seed`` against the method."""
        for name, wanted, default in (
            ("gamma", Sparsify.BAND, 0.01),
            ("epsilon", Sparsify.DELLA, 0.15),
        ):
            value = getattr(self, name)
            if value is None:
                object.__setattr__(self, name, default if method.sparsify is wanted else None)
            elif method.sparsify is not wanted:
                raise OptionError(f"{name} does not apply to {method.name}")
            else:
                object.__setattr__(self, name, _parse_fractions(value, name))
        if self.epsilon is not None:
            densities, epsilons = _as_tuple(self.density), _as_tuple(self.epsilon)
            if len(densities) > 1 and len(epsilons) > 1 and len(densities) != len(epsilons):
                raise OptionError(f"{len(densities)} densities and {len(epsilons)} epsilons given")
            width = max(len(densities), len(epsilons))
            for d, e in zip(densities * (width // len(densities)), epsilons * (width // len(epsilons)), strict=True):
                parse_della_epsilon(d, e)
        if self.sign_from is not None:
            if not method.consensus:
                raise OptionError(f"sign_from applies to methods with a sign election, not to {method.name}")
            object.__setattr__(self, "sign_from", str(self.sign_from))
        rescale = method.rescale if self.rescale is None else bool(self.rescale)
        object.__setattr__(self, "rescale", rescale)
        rule = _parse_enum(RescaleRule, self.rescale_rule, "rescale rule")
        object.__setattr__(self, "rescale_rule", rule)
        if rescale and not method.sparsifies:
            raise OptionError(f"rescale does not apply to {method.name}, which keeps every value")
        if rescale and rule is RescaleRule.DENSITY and method.sparsify is not Sparsify.RANDOM:
            raise OptionError(f"rescale rule density applies to DARE's drop only, not to {method.name}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**64:
            raise OptionError(f"seed must be an integer in [0, 2**64); got {self.seed!r}")

    def _set_per_tensor(self) -> None:
        if self.per_tensor is None:
            return
        table = {
            str(name): v if isinstance(v, TensorValues) else TensorValues(**v) for name, v in self.per_tensor.items()
        }
        if table and self.scope is not Scope.TENSOR:
            raise OptionError("values per tensor (gradients, filters) need the tensor scope (--scope tensor)")
        object.__setattr__(self, "per_tensor", types.MappingProxyType(table) if table else None)
        for name in table:
            self.for_tensor(name)  # validates its values against the method

    def for_tensor(self, name: str) -> MergeOptions:
        """The options of one tensor: its own values (:attr:`per_tensor`) in place of the merge's."""
        values = self.per_tensor.get(name) if self.per_tensor is not None else None
        if values is None:
            return self
        try:
            return replace(
                self,
                weights=values.weights if values.weights is not None else self.weights,
                density=values.density if values.density is not None else self.density,
                gamma=values.gamma if values.gamma is not None else self.gamma,
                epsilon=values.epsilon if values.epsilon is not None else self.epsilon,
                per_tensor=None,
            )
        except OptionError as error:
            raise OptionError(f"tensor {name}: {error}") from None

    def with_(self, **changes: Any) -> MergeOptions:
        """A copy with some fields changed (``None`` values are ignored), validated again. Another method
        brings its own default density and normalization unless they are given too."""
        given = {k: v for k, v in changes.items() if v is not None}
        if "method" in given and parse_method(given["method"]) is not self.method:
            given = {"density": None, "normalize": None, "rescale": None, "gamma": None, "epsilon": None, **given}
        return replace(self, **given)

    @property
    def trims(self) -> bool:
        """Whether pass 1 computes thresholds (the method trims, and some model keeps less than all)."""
        return self.method.trims and min(_as_tuple(self.density)) < 1.0

    @property
    def drops(self) -> bool:
        """Whether the method draws random drops (DARE, DELLA, and some model keeps less than all)."""
        return self.method.sparsify.random and min(_as_tuple(self.density)) < 1.0

    def model_densities(self, n_models: int) -> tuple[float, ...]:
        """The density of each of ``n_models`` fine-tuned models."""
        return _per_model(self.density, n_models, "densities")

    def model_gammas(self, n_models: int) -> tuple[float, ...]:
        """Breadcrumbs' ``gamma`` of each of ``n_models`` fine-tuned models (empty for other methods)."""
        return _per_model(self.gamma, n_models, "gammas") if self.gamma is not None else ()

    def model_epsilons(self, n_models: int) -> tuple[float, ...]:
        """DELLA's ``epsilon`` of each of ``n_models`` fine-tuned models (empty for other methods)."""
        return _per_model(self.epsilon, n_models, "epsilons") if self.epsilon is not None else ()

    @property
    def majority_vote(self) -> bool:
        """Whether pass 1 counts the majority sign (a consensus method under the ``majority`` rule)."""
        return self.method.consensus and self.zero_sign is ZeroSign.MAJORITY

    def model_weights(self, n_models: int) -> np.ndarray:
        """The float32 weights for ``n_models`` fine-tuned models."""
        if self.weights is None:
            return np.ones(n_models, np.float32)
        if len(self.weights) != n_models:
            raise OptionError(f"{len(self.weights)} weights given for {n_models} fine-tuned models")
        return np.array(self.weights, np.float32)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready description (the recipe stored with the output)."""

        def listed(value: float | tuple[float, ...] | None) -> float | list[float] | None:
            return list(value) if isinstance(value, tuple) else value

        return {
            "method": self.method.name,
            "density": listed(self.density),
            "gamma": listed(self.gamma),
            "epsilon": listed(self.epsilon),
            "rescale": self.rescale,
            "rescale_rule": self.rescale_rule.value,
            "seed": self.seed,
            "sign_from": self.sign_from,
            "lambda": self.lam,
            "scope": self.scope.value,
            "trim": self.trim.value,
            "zero_sign": self.zero_sign.value,
            "normalize": self.normalize,
            "weights": list(self.weights) if self.weights is not None else None,
            "dtype": self.out_dtype.code if self.out_dtype else None,
            **(
                {"per_tensor": {name: v.to_json() for name, v in self.per_tensor.items()}}
                if self.per_tensor is not None
                else {}
            ),
        }


PRESETS: dict[str, MergeOptions] = {
    "paper": MergeOptions(scope=Scope.GLOBAL, trim=TrimRule.THRESHOLD, zero_sign=ZeroSign.MAJORITY),
    "mergekit": MergeOptions(scope=Scope.TENSOR, trim=TrimRule.TOPK, zero_sign=ZeroSign.POSITIVE),
}
"""``paper``: the TIES reference code. ``mergekit``: mergekit's ``ties`` method (docs/numerics.md)."""


def parse_preset(name: str) -> MergeOptions:
    """The options of a preset by name."""
    if name not in PRESETS:
        allowed = ", ".join(f'"{p}"' for p in PRESETS)
        raise OptionError(f'preset "{name}" is invalid (expected one of: {allowed})')
    return PRESETS[name]

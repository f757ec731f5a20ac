"""One parameter's setting in one place of a configuration, and its value for a tensor at ``t``.

**Settings** (:class:`Setting`) are written as mergekit writes them: a scalar; a *gradient*, a list of
scalars spread evenly over ``t`` in ``[0, 1]`` and interpolated piecewise linearly (a list whose values
are not all numbers, once validated, selects ``values[int(t * (n - 1))]`` instead); or a list of
``{filter, value}`` entries, where the first entry whose ``filter`` is a substring of the tensor name
wins and an entry without ``filter`` or with ``filter: "*"`` matches every tensor. A value may itself
be a gradient. Entries with another key (mergekit's old ``pattern:``, which mergekit 0.1.5 drops, so
that the entry silently matches every tensor) and empty lists (which mergekit reads as "not set") are
refused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeAlias

from ooc_ties.errors import OptionError
from ooc_ties.mergekit_yaml._messages import show

__all__ = ["NO_SETTINGS", "Rule", "Scalar", "Setting", "Value", "parse_settings"]

Scalar: TypeAlias = bool | int | float | str
"""One value as YAML gives it; the parameter's own parser decides what it means."""
Value: TypeAlias = Scalar | tuple[Scalar, ...]
"""A scalar, or a gradient: a tuple of scalars spread evenly over ``t`` in ``[0, 1]``."""

NO_SETTINGS: Mapping[str, Setting] = MappingProxyType({})
"""No settings: a place of the configuration without ``parameters``."""
_SETTING_HELP = "a number, a list of numbers (a gradient), or a list of {filter, value} entries"


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _unchecked(value: object) -> object:
    return value


def _evaluate(value: Value, t: float, parse: Callable[[object], object]) -> Any:
    """``value`` at ``t``, as mergekit's ``evaluate_setting`` computes it (same operations, same order)."""
    if not isinstance(value, tuple):
        return parse(value)
    values = [parse(v) for v in value]
    if not all(_is_number(v) for v in values):
        return values[int(t * (len(values) - 1))]
    scaled = t * (len(values) - 1)
    i0 = int(scaled)
    i1 = min(len(values) - 1, i0 + 1)
    frac = scaled - i0
    lower: Any = values[i0]
    upper: Any = values[i1]
    return parse((1 - frac) * lower + frac * upper)


@dataclass(frozen=True, slots=True)
class Rule:
    """One entry of a setting: which tensors it applies to, and its value there."""

    value: Value
    """A scalar, or a gradient (a tuple of scalars interpolated over ``t``)."""
    filter: str | None = None
    """A substring of the tensor name; ``None`` or ``"*"`` matches every tensor."""

    def matches(self, tensor_name: str) -> bool:
        """Whether this entry applies to ``tensor_name`` (mergekit: an empty name matches no filter)."""
        return self.filter is None or self.filter == "*" or (tensor_name != "" and self.filter in tensor_name)


@dataclass(frozen=True, slots=True)
class Setting:
    """One parameter's setting in one place of the configuration: a scalar, a gradient, or filters."""

    rules: tuple[Rule, ...]
    """The entries in order; a plain scalar or gradient is one entry without filter."""

    @classmethod
    def of(cls, value: Value) -> Setting:
        """A setting that is ``value`` for every tensor."""
        return cls((Rule(value),))

    def scalars(self) -> Iterator[Scalar]:
        """Every scalar written in the setting, gradients element by element."""
        for rule in self.rules:
            yield from rule.value if isinstance(rule.value, tuple) else (rule.value,)

    @property
    def is_gradient(self) -> bool:
        """Whether some entry is a gradient (so the value depends on ``t``)."""
        return any(isinstance(rule.value, tuple) for rule in self.rules)

    def at(self, tensor_name: str, t: float, parse: Callable[[object], object] | None = None) -> Any | None:
        """The value for ``tensor_name`` at ``t`` in ``[0, 1]``; ``None`` if no entry matches.

        ``parse`` validates each scalar first, as mergekit validates with the parameter's type before it
        decides between interpolating (all numbers) and selecting (anything else: booleans, strings), and
        then validates the interpolated result. Without it the YAML types decide.
        """
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"t must be in [0, 1]; got {t!r}")
        for rule in self.rules:
            if rule.matches(tensor_name):
                return _evaluate(rule.value, t, parse or _unchecked)
        return None


def _parse_scalar(value: object, where: str) -> Scalar:
    if isinstance(value, (bool, int, float, str)):
        return value
    raise OptionError(f"{where}: expected {_SETTING_HELP}; got {show(value)}")


def _parse_value(value: object, where: str) -> Value:
    if isinstance(value, list):
        if not value:
            raise OptionError(f"{where}: a gradient needs at least one value; got []")
        return tuple(_parse_scalar(v, where) for v in value)
    return _parse_scalar(value, where)


def _parse_rule(entry: Mapping[Any, Any], where: str) -> Rule:
    for key in entry:
        if key not in ("filter", "value"):
            hint = "; mergekit 0.1.5 drops it, so the entry would match every tensor" if key == "pattern" else ""
            raise OptionError(f'{where}: unknown key "{key}" in a filter entry (expected filter and value{hint})')
    if "value" not in entry:
        raise OptionError(f"{where}: a filter entry needs a value; got {show(dict(entry))}")
    filter_ = entry.get("filter")
    if filter_ is not None and not isinstance(filter_, str):
        raise OptionError(f"{where}: filter must be a string (a substring of tensor names); got {show(filter_)}")
    return Rule(_parse_value(entry["value"], where), filter_)


def _parse_setting(value: object, where: str) -> Setting:
    if isinstance(value, dict):
        return Setting((_parse_rule(value, where),))
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return Setting(tuple(_parse_rule(v, f"{where}[{i}]") for i, v in enumerate(value)))
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        raise OptionError(f"{where}: expected {_SETTING_HELP}; got {show(value)}")
    return Setting.of(_parse_value(value, where))


def parse_settings(value: object, where: str) -> Mapping[str, Setting]:
    if value is None:
        return NO_SETTINGS
    if not isinstance(value, dict):
        raise OptionError(f"{where}: expected a mapping of parameter names to settings; got {show(value)}")
    settings: dict[str, Setting] = {}
    for name, setting in value.items():
        if not isinstance(name, str):
            raise OptionError(f"{where}: parameter names must be strings; got {show(name)}")
        settings[name] = _parse_setting(setting, f"{where}.{name}")
    return MappingProxyType(settings)

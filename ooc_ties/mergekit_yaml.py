"""A mergekit YAML merge configuration: read and validated, its settings resolved per tensor, written back.

``ooc-ties merge --config merge.yml`` takes the configurations mergekit takes, with mergekit 0.1.5's
meaning, for the methods ooc-ties merges (a base, models, parameters; no layer surgery). Anything it
cannot honour exactly is refused with one line naming the file, the key and the model, never ignored.

**Keys.** ``merge_method`` (a string; the caller checks it against its registry), ``base_model``,
``models`` (a list of ``{model, parameters}``), ``parameters``, ``dtype``, ``out_dtype``,
``tokenizer_source`` (only ``base``) and ``chat_template`` (only a literal Jinja template). Refused:
``slices`` and ``modules`` (layer ranges, per-module merges), a ``tokenizer`` block and
``tokenizer_source: union`` or a model (both rebuild the vocabulary and embeddings), every other key
(mergekit silently ignores unknown keys such as ``name``), a key written twice in one mapping (YAML
keeps the last one silently), ``model+lora`` references, and a mapping as a model reference.

**Settings** (:class:`Setting`) are written as mergekit writes them: a scalar; a *gradient*, a list of
scalars spread evenly over ``t`` in ``[0, 1]`` and interpolated piecewise linearly (a list whose values
are not all numbers, once validated, selects ``values[int(t * (n - 1))]`` instead); or a list of
``{filter, value}`` entries, where the first entry whose ``filter`` is a substring of the tensor name
wins and an entry without ``filter`` or with ``filter: "*"`` matches every tensor. A value may itself
be a gradient. Entries with another key (mergekit's old ``pattern:``, which mergekit 0.1.5 drops, so
that the entry silently matches every tensor) and empty lists (which mergekit reads as "not set") are
refused.

**Resolution** (:func:`resolve`) follows mergekit's ``parameter_resolver``: a per-model parameter comes
from the model's own ``parameters``, else from the top-level ``parameters``, else its default; a shared
parameter from the top-level ``parameters``, else its default. A filter list that matches nothing in one
place falls through to the next. ``t`` is :func:`layer_t`: ``i / (n_layers - 1)`` inside decoder layer
``i`` (``1`` for a one-layer model) and ``0`` for every tensor outside the layers, the embeddings before
them *and* the final norm and ``lm_head`` after them (mergekit's planner reads pre- and post-layer
weights with a config reader whose ``t`` is 0). Where mergekit ignores a parameter the method does not
take, or a shared parameter set under one model, ooc-ties refuses it and lists the names it accepts.

**The base model listed again** under ``models``: mergekit 0.1.5 keeps it as the input flagged as the
base, and the task-arithmetic methods give it no per-model parameters. Without parameters it is dropped
here (the models are the ones whose task vectors are merged). With parameters it is refused: mergekit
ignores them for the task-arithmetic methods but weighs the base as one more input for ``linear``, so
no single reading is right for every method. (For a method that takes the base as one more input,
mergekit's ``linear``, mergekit also adds an unlisted ``base_model`` to the inputs and asks it for a
``weight``; :class:`MergekitConfig` keeps ``base_model`` apart from ``models``, so such a method's
caller must refuse ``base_model`` or add it.)

**Written back** (:func:`to_yaml`) so that ``parse_config(to_yaml(c)) == c``: the recipe beside every
output is such a configuration, and :func:`build_config` makes one from plain values (a merge given
on the command line) through the same validation.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol, TypeAlias

import yaml

from ooc_ties.errors import CheckpointFormatError, OptionError

__all__ = [
    "BUILTIN_CHAT_TEMPLATES",
    "CHAT_TEMPLATE_FILE",
    "DTYPE_NAMES",
    "KEYS",
    "LAYER_PREFIXES",
    "MergekitConfig",
    "ModelEntry",
    "ParameterSpec",
    "Rule",
    "Scalar",
    "Setting",
    "Value",
    "apply_chat_template",
    "build_config",
    "check",
    "layer_t",
    "load_config",
    "parse_chat_template",
    "parse_config",
    "parse_dtype_name",
    "parse_model_reference",
    "resolve",
    "to_yaml",
]

logger = logging.getLogger(__name__)

Scalar: TypeAlias = bool | int | float | str
"""One value as YAML gives it; the parameter's own parser decides what it means."""
Value: TypeAlias = Scalar | tuple[Scalar, ...]
"""A scalar, or a gradient: a tuple of scalars spread evenly over ``t`` in ``[0, 1]``."""

KEYS = ("merge_method", "base_model", "models", "parameters", "dtype", "out_dtype", "tokenizer_source", "chat_template")
"""The top-level keys ooc-ties reads, in the order :func:`to_yaml` writes them."""
_REFUSED_KEYS = {
    "slices": "layer slices are not supported (ooc-ties merges whole models: list them under models)",
    "modules": "per-module merges are not supported (list whole models under models)",
    "tokenizer": (
        "a tokenizer block rebuilds the vocabulary and embeddings, which ooc-ties does not do "
        "(if it only says source: base, write tokenizer_source: base instead)"
    ),
}
DTYPE_NAMES = ("bfloat16", "float16", "float32")
"""The ``dtype``/``out_dtype`` names taken (mergekit's names; mergekit also accepts a ``torch.`` prefix)."""
BUILTIN_CHAT_TEMPLATES = ("alpaca", "chatml", "exaone", "llama3", "mistral")
"""mergekit 0.1.5's built-in chat template names (its ``_data/chat_templates``), refused by name here."""
LAYER_PREFIXES = (
    "model.layers.",
    "model.language_model.layers.",
    "transformer.h.",
    "transformer.layers.",
    "gpt_neox.layers.",
    "backbone.layers.",
    "layers.",
    "bert.encoder.layer.",
    "roberta.encoder.layer.",
    "distilbert.transformer.layer.",
    "encoder.layer.",
)
"""Names of the layer stacks :func:`layer_t` knows, each followed by ``<i>.`` (from mergekit's
architecture definitions: Llama, Mistral, Qwen, Gemma, Phi-3 and most others use ``model.layers.``)."""
_LAYER = re.compile("^(?:" + "|".join(re.escape(p) for p in LAYER_PREFIXES) + r")(\d+)\.")
_NUMBERED = re.compile(r"(?:^|\.)\d+\.")

_NO_SETTINGS: Mapping[str, Setting] = MappingProxyType({})
_SETTING_HELP = "a number, a list of numbers (a gradient), or a list of {filter, value} entries"


class ParameterSpec(Protocol):
    """What :func:`check` and :func:`resolve` need to know about one parameter of a merge method."""

    @property
    def name(self) -> str:
        """The key in ``parameters``, e.g. ``"weight"``."""
        ...

    @property
    def per_model(self) -> bool:
        """Whether each model has its own value (``weight``) or all share one (``lambda``)."""
        ...

    @property
    def default(self) -> object:
        """The value when nothing sets it; ``None`` means the parameter is required."""
        ...

    def parse(self, value: object, where: str) -> object:
        """``value`` validated and converted; raises :class:`OptionError` naming ``where`` if invalid."""
        ...


# ---------------------------------------------------------------------------------------------------
# settings


def _show(value: object, limit: int = 80) -> str:
    """``repr(value)`` for a message: one line, and cut short if long (a whole template, a big mapping)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
    raise OptionError(f"{where}: expected {_SETTING_HELP}; got {_show(value)}")


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
        raise OptionError(f"{where}: a filter entry needs a value; got {_show(dict(entry))}")
    filter_ = entry.get("filter")
    if filter_ is not None and not isinstance(filter_, str):
        raise OptionError(f"{where}: filter must be a string (a substring of tensor names); got {_show(filter_)}")
    return Rule(_parse_value(entry["value"], where), filter_)


def _parse_setting(value: object, where: str) -> Setting:
    if isinstance(value, dict):
        return Setting((_parse_rule(value, where),))
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return Setting(tuple(_parse_rule(v, f"{where}[{i}]") for i, v in enumerate(value)))
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        raise OptionError(f"{where}: expected {_SETTING_HELP}; got {_show(value)}")
    return Setting.of(_parse_value(value, where))


def _parse_settings(value: object, where: str) -> Mapping[str, Setting]:
    if value is None:
        return _NO_SETTINGS
    if not isinstance(value, dict):
        raise OptionError(f"{where}: expected a mapping of parameter names to settings; got {_show(value)}")
    settings: dict[str, Setting] = {}
    for name, setting in value.items():
        if not isinstance(name, str):
            raise OptionError(f"{where}: parameter names must be strings; got {_show(name)}")
        settings[name] = _parse_setting(setting, f"{where}.{name}")
    return MappingProxyType(settings)


# ---------------------------------------------------------------------------------------------------
# the configuration


def _frozen(settings: Mapping[str, Setting]) -> Mapping[str, Setting]:
    return settings if isinstance(settings, MappingProxyType) else MappingProxyType(dict(settings))


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """One model whose task vector (or weights) the merge takes, with its own parameter settings."""

    model: str
    """A local path or a Hugging Face Hub ID, maybe with ``@revision``, as written."""
    parameters: Mapping[str, Setting] = field(default_factory=lambda: _NO_SETTINGS, hash=False)
    """This model's settings, by parameter name; they take precedence over the top-level ones."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "parameters", _frozen(self.parameters))


@dataclass(frozen=True, slots=True)
class MergekitConfig:
    """A validated mergekit merge configuration (build it with :func:`parse_config` or :func:`build_config`)."""

    merge_method: str
    """The method's name as written (``"ties"``, ``"dare_linear"``, ...); the caller checks it."""
    models: tuple[ModelEntry, ...]
    """The models in the order written, without the base model (see the module docstring)."""
    base_model: str | None = None
    """The base model's path or Hub ID, if any."""
    parameters: Mapping[str, Setting] = field(default_factory=lambda: _NO_SETTINGS, hash=False)
    """The top-level settings: shared parameters, and per-model ones for every model without its own."""
    dtype: str | None = None
    """mergekit's compute dtype (one of :data:`DTYPE_NAMES`); also the output dtype without ``out_dtype``."""
    out_dtype: str | None = None
    """The output dtype (one of :data:`DTYPE_NAMES`), if set."""
    tokenizer_source: str | None = None
    """``"base"`` or ``None``; either way the output's tokenizer is the base model's (with ``base``
    mergekit also maps every model's embeddings onto the base vocabulary: a no-op when they share it)."""
    chat_template: str | None = None
    """A literal Jinja chat template for the output (:func:`apply_chat_template`), if set."""
    source: str = field(default="<config>", compare=False, hash=False)
    """Where the configuration came from (a file name, ``"command line"``), for messages."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "parameters", _frozen(self.parameters))

    @property
    def model_names(self) -> tuple[str, ...]:
        """The models' references, in order."""
        return tuple(entry.model for entry in self.models)

    @property
    def uses_t(self) -> bool:
        """Whether some setting is a gradient, so that values depend on each tensor's :func:`layer_t`."""
        places = [self.parameters, *(entry.parameters for entry in self.models)]
        return any(setting.is_gradient for place in places for setting in place.values())


def parse_model_reference(value: object, where: str) -> str:
    """A model reference: a non-empty path or Hub ID string, at most one ``@revision``, no ``+lora``."""
    if not isinstance(value, str) or not value:
        raise OptionError(f"{where}: expected a model path or Hugging Face Hub ID (a string); got {_show(value)}")
    if "+" in value:
        raise OptionError(f'{where}: "{value}" names a LoRA adapter (model+lora): LoRA inputs are not supported yet')
    if value.count("@") > 1:
        raise OptionError(f'{where}: "{value}" has more than one "@" (expected path or path@revision)')
    return value


def parse_dtype_name(value: object, where: str) -> str:
    """A ``dtype``/``out_dtype`` name: one of :data:`DTYPE_NAMES`, maybe prefixed ``torch.`` as mergekit allows."""
    name = value[len("torch.") :] if isinstance(value, str) and value.startswith("torch.") else value
    if isinstance(name, str) and name in DTYPE_NAMES:
        return name
    allowed = ", ".join(f'"{n}"' for n in DTYPE_NAMES)
    extra = (
        " (mergekit also takes float64 and int64, which ooc-ties does not write)"
        if name in ("float64", "int64")
        else ""
    )
    raise OptionError(f"{where}: {_show(value)} is not a dtype ooc-ties takes (expected one of: {allowed}){extra}")


def parse_chat_template(value: object, where: str) -> str:
    """A literal Jinja chat template, checked as mergekit checks one; template names are refused."""
    if not isinstance(value, str):
        raise OptionError(f"{where}: expected a Jinja chat template (a string); got {_show(value)}")
    name = value.strip()
    if name == "auto":
        raise OptionError(
            f'{where}: "auto" (mergekit picks the template most input models share) is not supported: '
            "give the template text itself"
        )
    if name in BUILTIN_CHAT_TEMPLATES:
        raise OptionError(
            f'{where}: "{name}" names one of mergekit\'s built-in templates, which ooc-ties does not ship: '
            "give the template text itself"
        )
    if len(value) < 20 or "{" not in value:
        raise OptionError(
            f"{where}: expected a Jinja template of at least 20 characters with {{{{ }}}} or {{% %}} "
            f"(mergekit's rule); got {_show(value)}"
        )
    return value


def _parse_models(value: object, where: str) -> list[ModelEntry]:
    if value is None or value == []:
        raise OptionError(f"{where}: models is missing or empty (expected a list of {{model, parameters}})")
    if not isinstance(value, list):
        raise OptionError(f"{where}: models must be a list of {{model, parameters}}; got {_show(value)}")
    entries: list[ModelEntry] = []
    for i, item in enumerate(value):
        at = f"{where}: models[{i}]"
        if not isinstance(item, dict):
            raise OptionError(f"{at}: expected a mapping with model and parameters; got {_show(item)}")
        if "model" not in item:
            raise OptionError(f"{at}: the entry has no model (keys: {', '.join(map(str, item))})")
        model = parse_model_reference(item["model"], f"{at}.model")
        at = f"{at} ({model})"
        for key in item:
            if key not in ("model", "parameters"):
                raise OptionError(f'{at}: unknown key "{key}" (expected model and parameters)')
        entry = ModelEntry(model, _parse_settings(item.get("parameters"), f"{at}: parameters"))
        if any(seen.model == model for seen in entries):
            raise OptionError(f"{at}: the model is listed twice")
        entries.append(entry)
    return entries


def _drop_base(entries: list[ModelEntry], base: str | None, where: str) -> tuple[ModelEntry, ...]:
    kept = []
    for i, entry in enumerate(entries):
        if entry.model != base:
            kept.append(entry)
        elif entry.parameters:
            raise OptionError(
                f"{where}: models[{i}] ({base}) is the base model and has parameters "
                f"({', '.join(entry.parameters)}): mergekit ignores them for task-arithmetic methods and weighs "
                "the base as one more input for linear; remove them (for linear: a plain model, no base_model)"
            )
        else:
            logger.debug("%s: models[%d] is the base model %s again: dropped", where, i, base)
    if not kept:
        raise OptionError(f"{where}: models lists only the base model {base}: nothing to merge")
    return tuple(kept)


def _parse_document(document: object, where: str) -> MergekitConfig:
    if not isinstance(document, dict):
        got = "an empty file" if document is None else repr(document)
        raise OptionError(f"{where}: expected a mapping with merge_method and models; got {got}")
    for key in document:
        if key in _REFUSED_KEYS:
            raise OptionError(f"{where}: {key}: {_REFUSED_KEYS[key]}")
        if key not in KEYS:
            raise OptionError(f'{where}: unknown key "{key}" (ooc-ties reads: {", ".join(KEYS)})')
    method = document.get("merge_method")
    if not isinstance(method, str) or not method:
        raise OptionError(f"{where}: merge_method must be a method name (a string); got {_show(method)}")
    base = document.get("base_model")
    if base is not None:
        base = parse_model_reference(base, f"{where}: base_model")
    entries = _parse_models(document.get("models"), where)
    source = document.get("tokenizer_source")
    if source is not None and source != "base":
        raise OptionError(
            f"{where}: tokenizer_source: {_show(source)}: a union or another model's vocabulary needs the embeddings "
            'rebuilt, which ooc-ties does not do (expected "base" or nothing)'
        )
    dtypes = {key: document.get(key) for key in ("dtype", "out_dtype")}
    template = document.get("chat_template")
    return MergekitConfig(
        merge_method=method,
        models=_drop_base(entries, base, where),
        base_model=base,
        parameters=_parse_settings(document.get("parameters"), f"{where}: parameters"),
        dtype=None if dtypes["dtype"] is None else parse_dtype_name(dtypes["dtype"], f"{where}: dtype"),
        out_dtype=None if dtypes["out_dtype"] is None else parse_dtype_name(dtypes["out_dtype"], f"{where}: out_dtype"),
        tokenizer_source=source,
        chat_template=None if template is None else parse_chat_template(template, f"{where}: chat_template"),
        source=where,
    )


# ---------------------------------------------------------------------------------------------------
# reading YAML


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _refuse_duplicate_keys(root: Any, where: str) -> None:
    """Every mapping's explicit keys are distinct (PyYAML would keep the last one without a word)."""
    seen_nodes: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: set[tuple[str, str]] = set()
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                    if (key.tag, key.value) in keys:
                        raise OptionError(
                            f'{where}: line {key.start_mark.line + 1}: key "{key.value}" appears twice in one mapping'
                        )
                    keys.add((key.tag, key.value))
                stack += [key, value]
        elif isinstance(node, yaml.SequenceNode):
            stack += node.value


def _load_yaml(text: str, where: str) -> object:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _refuse_duplicate_keys(node, where)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = _one_line(", ".join(filter(None, (error.context, error.problem))) or "malformed")
        raise OptionError(f"{where}: not valid YAML{at}: {problem}") from None
    except yaml.YAMLError as error:
        raise OptionError(f"{where}: not valid YAML: {_one_line(error)}") from None
    finally:
        loader.dispose()


def parse_config(text: str, where: str) -> MergekitConfig:
    """The configuration in the YAML ``text``; ``where`` names it (a file name) in messages."""
    return _parse_document(_load_yaml(text, where), where)


def load_config(path: str | Path) -> MergekitConfig:
    """The configuration in the YAML file ``path``."""
    where = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise OptionError(f"{where}: the merge configuration is not UTF-8 text") from None
    except OSError as error:
        raise OptionError(f"{where}: cannot read the merge configuration: {error.strerror or error}") from None
    return parse_config(text, where)


def build_config(
    merge_method: str,
    models: Sequence[str],
    *,
    base_model: str | None = None,
    model_parameters: Mapping[str, Sequence[Scalar]] | None = None,
    parameters: Mapping[str, Scalar] | None = None,
    dtype: str | None = None,
    out_dtype: str | None = None,
    tokenizer_source: str | None = None,
    chat_template: str | None = None,
    where: str = "command line",
) -> MergekitConfig:
    """A configuration from plain values, validated as a YAML one is (a merge given on the command line).

    ``model_parameters`` maps a per-model parameter to one value per model (``{"weight": [0.3, 0.7]}``);
    ``parameters`` holds the top-level ones, shared or the same for every model (``{"density": 0.2}``).
    """
    per_model = dict(model_parameters or {})
    for name, values in per_model.items():
        if len(values) != len(models):
            raise OptionError(f"{where}: {name} has {len(values)} values for {len(models)} models")
    document: dict[str, object] = {
        "merge_method": merge_method,
        "base_model": base_model,
        "models": [
            {"model": model, "parameters": {name: values[i] for name, values in per_model.items()} or None}
            for i, model in enumerate(models)
        ],
        "parameters": dict(parameters) if parameters else None,
        "dtype": dtype,
        "out_dtype": out_dtype,
        "tokenizer_source": tokenizer_source,
        "chat_template": chat_template,
    }
    return _parse_document(document, where)


# ---------------------------------------------------------------------------------------------------
# writing YAML


def _plain_value(value: Value) -> object:
    return list(value) if isinstance(value, tuple) else value


def _plain_setting(setting: Setting) -> object:
    if len(setting.rules) == 1 and setting.rules[0].filter is None:
        return _plain_value(setting.rules[0].value)
    return [
        {"value": _plain_value(rule.value)}
        if rule.filter is None
        else {"filter": rule.filter, "value": _plain_value(rule.value)}
        for rule in setting.rules
    ]


def _plain_settings(settings: Mapping[str, Setting]) -> dict[str, object]:
    return {name: _plain_setting(setting) for name, setting in settings.items()}


# A private subclass (built with type() because PyYAML ships no type hints) keeps these styles away
# from every other user of yaml.SafeDumper: gradients as flow lists, multi-line templates as literals.
_Dumper: Any = type("_Dumper", (yaml.SafeDumper,), {})


def _represent_list(dumper: Any, data: list[object]) -> Any:
    flow = all(isinstance(v, (bool, int, float, str)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


def _represent_str(dumper: Any, data: str) -> Any:
    if any(ch in data for ch in "\x85\u2028\u2029"):
        style = '"'  # PyYAML writes these line breaks raw in other styles, and they read back as spaces
    elif "\n" in data:
        style = "|"
    else:
        style = None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(list, _represent_list)
_Dumper.add_representer(str, _represent_str)


def to_yaml(config: MergekitConfig) -> str:
    """The configuration as mergekit YAML; ``parse_config(to_yaml(config), ...) == config``."""
    document: dict[str, object] = {"merge_method": config.merge_method}
    if config.base_model is not None:
        document["base_model"] = config.base_model
    document["models"] = [
        {"model": entry.model, "parameters": _plain_settings(entry.parameters)}
        if entry.parameters
        else {"model": entry.model}
        for entry in config.models
    ]
    if config.parameters:
        document["parameters"] = _plain_settings(config.parameters)
    for key in ("dtype", "out_dtype", "tokenizer_source", "chat_template"):
        if getattr(config, key) is not None:
            document[key] = getattr(config, key)
    text: str = yaml.dump(
        document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, default_flow_style=False, width=1 << 16
    )
    return text


# ---------------------------------------------------------------------------------------------------
# resolution


def check(config: MergekitConfig, specs: Sequence[ParameterSpec]) -> None:
    """Every setting names a parameter of the method in the right place, with valid values, and every
    required parameter is set for every model; raises :class:`OptionError` naming the first problem."""
    by_name = {spec.name: spec for spec in specs}
    accepted = ", ".join(sorted(by_name)) or "none"
    places: list[tuple[str, str | None, Mapping[str, Setting]]] = [
        (f"{config.source}: parameters", None, config.parameters)
    ]
    places += [(f"{config.source}: model {e.model}: parameters", e.model, e.parameters) for e in config.models]
    for where, model, settings in places:
        for name, setting in settings.items():
            spec = by_name.get(name)
            if spec is None:
                raise OptionError(
                    f'{where}.{name}: {config.merge_method} takes no parameter "{name}" (it takes: {accepted})'
                )
            if model is not None and not spec.per_model:
                raise OptionError(
                    f"{where}.{name}: {name} is shared by all models; set it under the top-level parameters"
                )
            for value in setting.scalars():
                spec.parse(value, f"{where}.{name}")
    for spec in specs:
        if spec.default is not None:
            continue
        if not spec.per_model and spec.name not in config.parameters:
            raise OptionError(f"{config.source}: parameters.{spec.name} is required by {config.merge_method}")
        for entry in config.models if spec.per_model else ():
            if spec.name not in entry.parameters and spec.name not in config.parameters:
                raise OptionError(
                    f"{config.source}: model {entry.model}: {spec.name} is required by {config.merge_method} "
                    "(set it under the model's parameters or the top-level parameters)"
                )


def _parser(spec: ParameterSpec, where: str) -> Callable[[object], object]:
    def parse(value: object) -> object:
        return spec.parse(value, where)

    return parse


def _resolve_one(
    spec: ParameterSpec,
    places: Sequence[tuple[str, Mapping[str, Setting]]],
    tensor_name: str,
    t: float,
    source: str,
    model: str | None,
) -> object:
    for where, settings in places:
        setting = settings.get(spec.name)
        if setting is not None:
            value = setting.at(tensor_name, t, _parser(spec, f"{where}.{spec.name} (tensor {tensor_name}, t={t:g})"))
            if value is not None:
                return value
    if spec.default is None:
        whose = f"model {model}: " if model is not None else ""
        raise OptionError(
            f"{source}: {whose}{spec.name} is required but no setting matches "
            f"tensor {tensor_name} (add an entry without filter)"
        )
    return spec.parse(spec.default, f"the default of {spec.name}")


def resolve(
    config: MergekitConfig, specs: Sequence[ParameterSpec], tensor_name: str, t: float
) -> tuple[dict[str, object], list[dict[str, object]]]:
    """The parameter values for ``tensor_name`` at ``t``: the shared ones by name, and one dict per model
    (in :attr:`MergekitConfig.models` order) of the per-model ones. Precedence as mergekit: the model's own
    settings, then the top-level ones, then the default. Raises :class:`OptionError` (see :func:`check`)."""
    check(config, specs)
    top = (f"{config.source}: parameters", config.parameters)
    shared = {
        spec.name: _resolve_one(spec, (top,), tensor_name, t, config.source, None)
        for spec in specs
        if not spec.per_model
    }
    per_model = []
    for entry in config.models:
        own = (f"{config.source}: model {entry.model}: parameters", entry.parameters)
        per_model.append(
            {
                spec.name: _resolve_one(spec, (own, top), tensor_name, t, config.source, entry.model)
                for spec in specs
                if spec.per_model
            }
        )
    return shared, per_model


def layer_t(tensor_name: str, n_layers: int) -> float:
    """mergekit's ``t`` for a tensor: ``i / (n_layers - 1)`` in layer ``i`` (1 if ``n_layers == 1``), else 0.

    Layer ``i`` is a name starting with one of :data:`LAYER_PREFIXES` and ``<i>.``. Tensors outside the
    layers (embeddings, the final norm, ``lm_head``) get 0, before and after the layers alike, as in
    mergekit's planner. A name with a numbered block under another prefix (a vision tower, an encoder
    of an encoder-decoder) is refused: mergekit gives it a ``t`` of its own module, unknown here. Only
    gradients depend on ``t``: call this only when :attr:`MergekitConfig.uses_t`.
    """
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
        raise OptionError(f"the number of layers must be a positive integer; got {n_layers!r}")
    match = _LAYER.match(tensor_name)
    if match is None:
        if _NUMBERED.search(tensor_name):
            raise OptionError(
                f"tensor {tensor_name}: its layer position for gradient settings is unknown "
                f"(ooc-ties knows the stacks {', '.join(p + '<i>' for p in LAYER_PREFIXES[:3])}, ...)"
            )
        return 0.0
    index = int(match.group(1))
    if index >= n_layers:
        raise OptionError(f"tensor {tensor_name} is in layer {index} of a model with {n_layers} layers")
    return index / (n_layers - 1) if n_layers > 1 else 1.0


# ---------------------------------------------------------------------------------------------------
# chat template

CHAT_TEMPLATE_FILE = "chat_template.jinja"
"""Where the output's chat template goes (transformers 5, which mergekit 0.1.5 saves through)."""
_TOKENIZER_CONFIG = "tokenizer_config.json"
_OTHER_TEMPLATES = ("chat_template.json", "additional_chat_templates/")


def apply_chat_template(template: str, side_files: Mapping[str, bytes]) -> dict[str, bytes]:
    """The output folder's side files (by relative POSIX path) with ``template`` as its chat template.

    mergekit sets the template on the base's tokenizer and saves it with transformers, which writes the
    template to ``chat_template.jinja`` and keeps no ``chat_template`` key in ``tokenizer_config.json``;
    nothing else carries a template then. So: ``chat_template.jinja`` holds ``template`` (UTF-8, as is);
    ``tokenizer_config.json`` loses its ``chat_template`` key, if it has one (re-indented by 2; otherwise
    its bytes are untouched); a processor's ``chat_template.json`` and ``additional_chat_templates/`` go.
    Without a ``tokenizer_config.json`` there is no tokenizer to carry it: :class:`OptionError`.
    """
    template = parse_chat_template(template, "chat_template")
    if _TOKENIZER_CONFIG not in side_files:
        raise OptionError(f"chat_template is set but the base model has no tokenizer ({_TOKENIZER_CONFIG})")
    files = {name: data for name, data in side_files.items() if not name.startswith(_OTHER_TEMPLATES)}
    for name in sorted(set(side_files) - set(files)):
        logger.info("chat_template: %s left out (the output's template is %s)", name, CHAT_TEMPLATE_FILE)
    try:
        tokenizer_config = json.loads(files[_TOKENIZER_CONFIG])
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointFormatError(f"{_TOKENIZER_CONFIG}: not valid JSON: {_one_line(error)}") from None
    if isinstance(tokenizer_config, dict) and "chat_template" in tokenizer_config:
        del tokenizer_config["chat_template"]
        files[_TOKENIZER_CONFIG] = (json.dumps(tokenizer_config, indent=2, ensure_ascii=False) + "\n").encode()
    files[CHAT_TEMPLATE_FILE] = template.encode("utf-8")
    return files

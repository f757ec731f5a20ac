"""A validated mergekit merge configuration: its models, settings and keys, checked key by key.

**Keys.** ``merge_method`` (a string; the caller checks it against its registry), ``base_model``,
``models`` (a list of ``{model, parameters}``), ``parameters``, ``dtype``, ``out_dtype``,
``tokenizer_source`` (only ``base``), ``chat_template`` (only a literal Jinja template), and ``ooc_ties``, a
block of ooc-ties' own rules (:data:`EXTENSIONS`: scope, tie rule, zero sign, seed, rescale rule, sign
model) that mergekit ignores, so that every ooc-ties merge can be written as a configuration. Refused:
``slices`` and ``modules`` (layer ranges, per-module merges), a ``tokenizer`` block and
``tokenizer_source: union`` or a model (both rebuild the vocabulary and embeddings), every other key
(mergekit silently ignores unknown keys such as ``name``), a key written twice in one mapping (YAML
keeps the last one silently), ``model+lora`` references, and a mapping as a model reference.

**The base model listed again** under ``models``: mergekit 0.1.5 keeps it as the input flagged as the
base, and the task-arithmetic methods give it no per-model parameters. Without parameters it is dropped
here (the models are the ones whose task vectors are merged). With parameters it is refused: mergekit
ignores them for the task-arithmetic methods but weighs the base as one more input for ``linear``, so
no single reading is right for every method. (For a method that takes the base as one more input,
mergekit's ``linear``, mergekit also adds an unlisted ``base_model`` to the inputs and asks it for a
``weight``; :class:`MergekitConfig` keeps ``base_model`` apart from ``models``, so such a method's
caller must refuse ``base_model`` or add it.)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from ooc_ties.errors import OptionError
from ooc_ties.mergekit_yaml._messages import show
from ooc_ties.mergekit_yaml.chat_template import parse_chat_template
from ooc_ties.mergekit_yaml.settings import NO_SETTINGS, Scalar, Setting, parse_settings

__all__ = [
    "DTYPE_NAMES",
    "EXTENSIONS",
    "KEYS",
    "MergekitConfig",
    "ModelEntry",
    "build_config",
    "parse_document",
    "parse_dtype_name",
    "parse_model_reference",
]

logger = logging.getLogger(__name__)

KEYS = (
    "merge_method",
    "base_model",
    "models",
    "parameters",
    "dtype",
    "out_dtype",
    "tokenizer_source",
    "chat_template",
    "ooc_ties",
)
"""The top-level keys ooc-ties reads, in the order :func:`~ooc_ties.mergekit_yaml.writer.to_yaml` writes them."""
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


def _frozen(settings: Mapping[str, Setting]) -> Mapping[str, Setting]:
    return settings if isinstance(settings, MappingProxyType) else MappingProxyType(dict(settings))


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """One model whose task vector (or weights) the merge takes, with its own parameter settings."""

    model: str
    """A local path or a Hugging Face Hub ID, maybe with ``@revision``, as written."""
    parameters: Mapping[str, Setting] = field(default_factory=lambda: NO_SETTINGS, hash=False)
    """This model's settings, by parameter name; they take precedence over the top-level ones."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "parameters", _frozen(self.parameters))


@dataclass(frozen=True, slots=True)
class MergekitConfig:
    """A validated mergekit merge configuration (build it with
    :func:`~ooc_ties.mergekit_yaml.reader.parse_config` or :func:`build_config`)."""

    merge_method: str
    """The method's name as written (``"ties"``, ``"dare_linear"``, ...); the caller checks it."""
    models: tuple[ModelEntry, ...]
    """The models in the order written, without the base model (see the module docstring)."""
    base_model: str | None = None
    """The base model's path or Hub ID, if any."""
    parameters: Mapping[str, Setting] = field(default_factory=lambda: NO_SETTINGS, hash=False)
    """The top-level settings: shared parameters, and per-model ones for every model without its own."""
    dtype: str | None = None
    """mergekit's compute dtype (one of :data:`DTYPE_NAMES`); also the output dtype without ``out_dtype``."""
    out_dtype: str | None = None
    """The output dtype (one of :data:`DTYPE_NAMES`), if set."""
    tokenizer_source: str | None = None
    """``"base"`` or ``None``; either way the output's tokenizer is the base model's (with ``base``
    mergekit also maps every model's embeddings onto the base vocabulary: a no-op when they share it)."""
    chat_template: str | None = None
    """A literal Jinja chat template for the output
    (:func:`~ooc_ties.mergekit_yaml.chat_template.apply_chat_template`), if set."""
    ooc_ties: Mapping[str, Scalar] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    """The ``ooc_ties:`` block: ooc-ties' own rules where they differ from mergekit's (:data:`EXTENSIONS`);
    mergekit ignores the block (it ignores every key it does not know)."""
    source: str = field(default="<config>", compare=False, hash=False)
    """Where the configuration came from (a file name, ``"command line"``), for messages."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "parameters", _frozen(self.parameters))
        object.__setattr__(self, "ooc_ties", MappingProxyType(dict(self.ooc_ties)))

    @property
    def model_names(self) -> tuple[str, ...]:
        """The models' references, in order."""
        return tuple(entry.model for entry in self.models)

    @property
    def uses_t(self) -> bool:
        """Whether some setting is a gradient, so that values depend on each tensor's
        :func:`~ooc_ties.mergekit_yaml.resolution.layer_t`."""
        places = [self.parameters, *(entry.parameters for entry in self.models)]
        return any(setting.is_gradient for place in places for setting in place.values())


def parse_model_reference(value: object, where: str) -> str:
    """A model reference: a non-empty path or Hub ID string, at most one ``@revision``, no ``+lora``."""
    if not isinstance(value, str) or not value:
        raise OptionError(f"{where}: expected a model path or Hugging Face Hub ID (a string); got {show(value)}")
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
    raise OptionError(f"{where}: {show(value)} is not a dtype ooc-ties takes (expected one of: {allowed}){extra}")


def _parse_models(value: object, where: str) -> list[ModelEntry]:
    if value is None or value == []:
        raise OptionError(f"{where}: models is missing or empty (expected a list of {{model, parameters}})")
    if not isinstance(value, list):
        raise OptionError(f"{where}: models must be a list of {{model, parameters}}; got {show(value)}")
    entries: list[ModelEntry] = []
    for i, item in enumerate(value):
        at = f"{where}: models[{i}]"
        if not isinstance(item, dict):
            raise OptionError(f"{at}: expected a mapping with model and parameters; got {show(item)}")
        if "model" not in item:
            raise OptionError(f"{at}: the entry has no model (keys: {', '.join(map(str, item))})")
        model = parse_model_reference(item["model"], f"{at}.model")
        at = f"{at} ({model})"
        for key in item:
            if key not in ("model", "parameters"):
                raise OptionError(f'{at}: unknown key "{key}" (expected model and parameters)')
        entry = ModelEntry(model, parse_settings(item.get("parameters"), f"{at}: parameters"))
        if any(seen.model == model for seen in entries):
            raise OptionError(f"{at}: the model is listed twice")
        entries.append(entry)
    return entries


EXTENSIONS = ("scope", "trim", "zero_sign", "seed", "rescale_rule", "sign_from")
"""The keys of the ``ooc_ties:`` block: the rules of a merge mergekit has no key for (``MergeOptions``
fields of the same names; their values are checked there)."""


def _parse_extensions(value: object, where: str) -> dict[str, Scalar]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise OptionError(
            f"{where}: expected a mapping of ooc-ties' rules ({', '.join(EXTENSIONS)}); got {show(value)}"
        )
    for key, item in value.items():
        if key not in EXTENSIONS:
            raise OptionError(f'{where}: unknown key "{key}" (expected one of: {", ".join(EXTENSIONS)})')
        if isinstance(item, (dict, list)) or item is None:
            raise OptionError(f"{where}: {key}: expected a single value; got {show(item)}")
    return dict(value)


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


def parse_document(document: object, where: str) -> MergekitConfig:
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
        raise OptionError(f"{where}: merge_method must be a method name (a string); got {show(method)}")
    base = document.get("base_model")
    if base is not None:
        base = parse_model_reference(base, f"{where}: base_model")
    entries = _parse_models(document.get("models"), where)
    source = document.get("tokenizer_source")
    if source is not None and source != "base":
        raise OptionError(
            f"{where}: tokenizer_source: {show(source)}: a union or another model's vocabulary needs the embeddings "
            'rebuilt, which ooc-ties does not do (expected "base" or nothing)'
        )
    dtypes = {key: document.get(key) for key in ("dtype", "out_dtype")}
    template = document.get("chat_template")
    return MergekitConfig(
        merge_method=method,
        # linear takes no base (mergekit ignores it): every listed model is an input, the base included
        models=tuple(entries) if method == "linear" else _drop_base(entries, base, where),
        base_model=base,
        parameters=parse_settings(document.get("parameters"), f"{where}: parameters"),
        dtype=None if dtypes["dtype"] is None else parse_dtype_name(dtypes["dtype"], f"{where}: dtype"),
        out_dtype=None if dtypes["out_dtype"] is None else parse_dtype_name(dtypes["out_dtype"], f"{where}: out_dtype"),
        tokenizer_source=source,
        chat_template=None if template is None else parse_chat_template(template, f"{where}: chat_template"),
        ooc_ties=_parse_extensions(document.get("ooc_ties"), f"{where}: ooc_ties"),
        source=where,
    )


def build_config(
    merge_method: str,
    models: Sequence[str],
    *,
    base_model: str | None = None,
    model_parameters: Mapping[str, Sequence[object]] | None = None,
    parameters: Mapping[str, Scalar] | None = None,
    dtype: str | None = None,
    out_dtype: str | None = None,
    tokenizer_source: str | None = None,
    chat_template: str | None = None,
    ooc_ties: Mapping[str, Scalar] | None = None,
    where: str = "command line",
) -> MergekitConfig:
    """A configuration from plain values, validated as a YAML one is (a merge given on the command line).

    ``model_parameters`` maps a per-model parameter to one value per model (``{"weight": [0.3, 0.7]}``;
    a value may be a setting as YAML writes it, e.g. a filter list);
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
        "ooc_ties": dict(ooc_ties) if ooc_ties else None,
    }
    return parse_document(document, where)

"""A configuration's parameter values for one tensor: checked against the method's parameters, resolved
with mergekit's precedence, at the tensor's ``t``.

**Resolution** (:func:`resolve`) follows mergekit's ``parameter_resolver``: a per-model parameter comes
from the model's own ``parameters``, else from the top-level ``parameters``, else its default; a shared
parameter from the top-level ``parameters``, else its default. A filter list that matches nothing in one
place falls through to the next. ``t`` is :func:`layer_t`: ``i / (n_layers - 1)`` inside decoder layer
``i`` (``1`` for a one-layer model) and ``0`` for every tensor outside the layers, the embeddings before
them *and* the final norm and ``lm_head`` after them (mergekit's planner reads pre- and post-layer
weights with a config reader whose ``t`` is 0). Where mergekit ignores a parameter the method does not
take, or a shared parameter set under one model, ooc-ties refuses it and lists the names it accepts.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from ooc_ties.errors import OptionError
from ooc_ties.mergekit_yaml.config import MergekitConfig
from ooc_ties.mergekit_yaml.settings import Setting

__all__ = ["LAYER_PREFIXES", "ParameterSpec", "check", "layer_count", "layer_t", "resolve"]

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


def layer_count(tensor_names: Sequence[str]) -> int:
    """The number of layers a model's tensor names show: one more than the highest layer index under
    :data:`LAYER_PREFIXES` (1 if no name is in a layer)."""
    indices = [int(m.group(1)) for m in map(_LAYER.match, tensor_names) if m is not None]
    return max(indices) + 1 if indices else 1


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

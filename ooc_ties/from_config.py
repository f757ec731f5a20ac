"""A mergekit YAML configuration as a merge of this engine: its base, its models and its options.

``ooc-ties merge --config merge.yml -o OUT`` reads the configuration (:mod:`ooc_ties.mergekit_yaml`),
checks its parameters against the method's declaration (:mod:`ooc_ties.methods`), and merges as
mergekit would: TIES with mergekit's rules (per-tensor thresholds, exactly ``k`` values kept, a zero
vote positive: the ``mergekit`` preset) and mergekit's defaults (density 1, lambda 1, the method's
normalization). What this engine cannot do yet is refused with one line naming the key and the model,
never ignored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence, Set
from dataclasses import dataclass

from ooc_ties.config import PRESETS, MergeOptions, RescaleRule, TensorValues
from ooc_ties.dtypes import TORCH_NAMES, DType
from ooc_ties.errors import OptionError
from ooc_ties.io.side_files import MERGEKIT_CONFIG_NAME
from ooc_ties.mergekit_yaml import MergekitConfig, Scalar, build_config, check, layer_count, layer_t, resolve
from ooc_ties.methods import METHODS

__all__ = ["CONFIG_NAME", "ConfiguredMerge", "configured_merge", "mergekit_config"]

logger = logging.getLogger(__name__)


CONFIG_NAME = MERGEKIT_CONFIG_NAME
"""The configuration written beside an output whose merge mergekit can express (mergekit's own name)."""


@dataclass(frozen=True, slots=True)
class ConfiguredMerge:
    """What a configuration asks this engine to do."""

    base: str
    """The base model, as the configuration names it (a path or a cached Hub ID)."""
    models: tuple[str, ...]
    """The fine-tuned models, in the configuration's order (the base listed again is left out)."""
    options: MergeOptions
    """The method and its parameters."""
    chat_template: str | None = None
    """The output's chat template (a literal Jinja template), if the configuration sets one."""


def configured_merge(
    config: MergekitConfig, tensor_names: Callable[[str], Sequence[str]] | None = None
) -> ConfiguredMerge:
    """The merge ``config`` describes; an ``OptionError`` naming the key for what is not supported.

    Gradients and filters give single tensors values of their own: ``tensor_names(base)`` lists the
    base model's tensors (from its header) so that each is resolved as mergekit resolves it (at its
    layer's ``t``, the first matching filter); without it such a configuration is refused."""
    where = config.source
    method = METHODS.get(config.merge_method)
    if method is None:
        allowed = ", ".join(f'"{name}"' for name in METHODS)
        raise OptionError(f"{where}: merge_method {config.merge_method!r} is not supported yet (supported: {allowed})")
    models = tuple(entry.model for entry in config.models)
    if not method.uses_base:
        if config.base_model is not None and config.base_model not in models:
            raise OptionError(
                f"{where}: base_model: {method.name} merges the models listed under models and has no base: list "
                f"{config.base_model} there with a weight, or remove base_model"
            )
        base = config.base_model or models[0]  # (the layout, config and tokenizer files of the output)
    elif config.base_model is None:
        raise OptionError(f"{where}: base_model is required for {method.name} (the task vectors are taken from it)")
    else:
        base = config.base_model
    check(config, method.parameters)
    names: Sequence[str] = ("",)
    if _varies_per_tensor(config):
        if tensor_names is None:
            raise OptionError(f"{where}: gradients and filters (values per tensor) need the base model's tensor names")
        names = tensor_names(base)
    n_layers = layer_count(names)
    values = {
        name: resolve(config, method.parameters, name, layer_t(name, n_layers) if config.uses_t else 0.0)
        for name in names
    }
    shared, per_model = values[names[0]]
    if any(values[name][0] != shared for name in names):
        varying = next(p for p in shared if any(values[name][0][p] != shared[p] for name in names))
        raise OptionError(f"{where}: parameters: {varying}: a shared parameter must be the same for every tensor")

    def each_of(models: list[dict[str, object]], name: str) -> tuple[float, ...] | None:
        if not any(p.name == name for p in method.parameters):
            return None
        return tuple(float(values[name]) for values in models)  # type: ignore[arg-type]

    def each(name: str) -> tuple[float, ...] | None:
        return each_of(per_model, name)

    rescale = bool(shared.get("rescale", False))
    if rescale and not method.sparsifies:
        logger.warning("%s: rescale has no effect on %s (mergekit ignores it too)", where, method.name)
        rescale = False
    densities = each("density")
    if densities is not None and not method.sparsifies:
        if any(d != 1.0 for d in densities):
            logger.warning("%s: density has no effect on %s (mergekit ignores it too)", where, method.name)
        densities = (1.0,)
    dtype = config.out_dtype or config.dtype  # mergekit writes in dtype unless out_dtype says otherwise
    if config.dtype not in (None, "float32"):
        logger.info("%s: dtype %s: ooc-ties computes in float32 whatever it is (docs/methods.md)", where, config.dtype)
    options = PRESETS["mergekit"].with_(
        method=method,
        density=densities,
        gamma=each("gamma"),
        epsilon=each("epsilon"),
        rescale=rescale,
        weights=each("weight"),
        lam=float(shared.get("lambda", 1.0)),  # type: ignore[arg-type]
        normalize=bool(shared["normalize"]),
        out_dtype=dtype,  # (parse_output_dtype takes mergekit's names)
    )
    own = {}
    keys = (("weights", "weight"), ("density", "density"), ("gamma", "gamma"), ("epsilon", "epsilon"))
    for name in names[1:]:
        theirs = values[name][1]
        if theirs != per_model:
            fields = {field: each_of(theirs, key) if each_of(theirs, key) != each(key) else None for field, key in keys}
            if not method.sparsifies:
                fields["density"] = None  # (no effect, as in mergekit)
            if any(v is not None for v in fields.values()):
                own[name] = TensorValues(**fields)
    if own:
        options = options.with_(per_tensor=own)
    if config.ooc_ties:
        try:
            options = options.with_(**config.ooc_ties)
        except OptionError as error:
            raise OptionError(f"{where}: ooc_ties: {error}") from None
    return ConfiguredMerge(base, models, options, config.chat_template)


def mergekit_config(
    options: MergeOptions, base: str, models: Sequence[str], out_dtypes: Set[DType], chat_template: str | None = None
) -> MergekitConfig | None:
    """The configuration of a merge with ``options`` of ``base`` and ``models`` (paths as given) whose
    merged tensors are written in ``out_dtypes``: :func:`configured_merge` of it gives the same merge
    (tested). Rules mergekit has no key for (the ``paper`` preset's whole-model thresholds, ties kept at
    the cut, the majority zero sign; a seed; the DARE paper's rescale; the sign's model) go into the
    ``ooc_ties:`` block, which mergekit ignores: ``mergekit-yaml`` then runs its own rules. ``None`` if
    no configuration can say it: merged tensors written in several dtypes, a lambda for ``linear``, a
    model listed twice, or the base among the models of a method with a base (a configuration lists a
    model once, and drops the base listed again)."""
    method = options.method
    if len(out_dtypes) > 1 or len(set(models)) != len(models) or (method.uses_base and base in models):
        return None
    if not method.uses_base and options.lam != 1.0:
        return None  # (mergekit's linear has no lambda)
    n = len(models)
    per_model: dict[str, Sequence[object]] = {
        "weight": _with_filters(options, "weights", [float(w) for w in options.model_weights(n)])
    }
    if method.sparsifies:
        per_model["density"] = _with_filters(options, "density", list(options.model_densities(n)))
    if options.gamma is not None:
        per_model["gamma"] = _with_filters(options, "gamma", list(options.model_gammas(n)))
    if options.epsilon is not None:
        per_model["epsilon"] = _with_filters(options, "epsilon", list(options.model_epsilons(n)))
    shared: dict[str, float | bool] = {"normalize": bool(options.normalize)}
    if method.uses_base:
        shared["lambda"] = options.lam
    if method.sparsifies:
        shared["rescale"] = bool(options.rescale)
    dtype = next(iter(out_dtypes), None)
    return build_config(
        method.name,
        models,
        base_model=base if method.uses_base else None,
        model_parameters=per_model,
        parameters=shared,
        chat_template=chat_template,
        dtype="float32",  # what ooc-ties computes in; mergekit computes in its dtype
        out_dtype=TORCH_NAMES[dtype] if dtype is not None else None,
        ooc_ties=_own_rules(options),
        where=CONFIG_NAME,
    )


def _own_rules(options: MergeOptions) -> dict[str, Scalar]:
    """The ``ooc_ties:`` block of a merge: its rules that differ from what a configuration gives."""
    mergekit = PRESETS["mergekit"]
    rules: dict[str, Scalar] = {}
    # the scope decides the thresholds and, under the majority rule, over what the majority is counted
    if (options.method.trims or options.majority_vote) and options.scope is not mergekit.scope:
        rules["scope"] = options.scope.value
    if options.method.trims and options.trim is not mergekit.trim:
        rules["trim"] = options.trim.value
    if options.method.consensus and options.zero_sign is not mergekit.zero_sign:
        rules["zero_sign"] = options.zero_sign.value
    if options.method.sparsify.random and options.seed != 0:
        rules["seed"] = options.seed
    if options.rescale and options.rescale_rule is not RescaleRule.L1:
        rules["rescale_rule"] = options.rescale_rule.value
    if options.sign_from is not None:
        rules["sign_from"] = options.sign_from
    return rules


def _with_filters(options: MergeOptions, field: str, merged: list[float]) -> list[object]:
    """Each model's value of a parameter; where single tensors have their own (``per_tensor``), a filter
    list naming each such tensor, longest names first (a name that holds a shorter one must match
    first: mergekit takes the first filter found in the name), then the merge's value."""
    own = sorted((options.per_tensor or {}).items(), key=lambda item: (-len(item[0]), item[0]))
    values: list[object] = []
    for t, value in enumerate(merged):
        rules = [
            {"filter": name, "value": float(theirs[t])}
            for name, tensor in own
            if (theirs := getattr(tensor, field)) is not None and float(theirs[t]) != value
        ]
        values.append([*rules, {"value": value}] if rules else value)
    return values


def _varies_per_tensor(config: MergekitConfig) -> bool:
    """Whether some setting is a gradient or a filter list: values that differ from tensor to tensor."""
    places = [config.parameters, *(entry.parameters for entry in config.models)]
    return any(
        setting.is_gradient or any(rule.filter not in (None, "*") for rule in setting.rules)
        for settings in places
        for setting in settings.values()
    )

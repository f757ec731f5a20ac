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
from collections.abc import Sequence, Set
from dataclasses import dataclass

from ooc_ties.config import PRESETS, MergeOptions
from ooc_ties.dtypes import TORCH_NAMES, DType
from ooc_ties.errors import OptionError
from ooc_ties.io.side_files import MERGEKIT_CONFIG_NAME
from ooc_ties.mergekit_yaml import MergekitConfig, build_config, check, resolve
from ooc_ties.methods import METHODS, TASK_ARITHMETIC

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


def configured_merge(config: MergekitConfig) -> ConfiguredMerge:
    """The merge ``config`` describes; an ``OptionError`` naming the key for what is not supported."""
    where = config.source
    method = METHODS.get(config.merge_method)
    if method is None:
        allowed = ", ".join(f'"{name}"' for name in METHODS)
        raise OptionError(
            f"{where}: merge_method {config.merge_method!r} is not supported yet (supported: {allowed})"
        )
    if config.base_model is None:
        raise OptionError(f"{where}: base_model is required for {method.name} (the task vectors are taken from it)")
    if config.chat_template is not None:
        raise OptionError(f"{where}: chat_template is not supported yet (remove it, and set the template afterwards)")
    check(config, method.parameters)
    _refuse_per_tensor_values(config)
    shared, per_model = resolve(config, method.parameters, "", 0.0)
    if shared["rescale"]:
        raise OptionError(f"{where}: parameters: rescale: true is not supported yet for {method.name}")
    densities = tuple(float(values["density"]) for values in per_model)  # type: ignore[arg-type]
    if method is TASK_ARITHMETIC:
        if any(d != 1.0 for d in densities):
            logger.warning("%s: density has no effect on task_arithmetic (mergekit ignores it too)", where)
        densities = (1.0,)
    dtype = config.out_dtype or config.dtype  # mergekit writes in dtype unless out_dtype says otherwise
    if config.dtype not in (None, "float32"):
        logger.info("%s: dtype %s: ooc-ties computes in float32 whatever it is (docs/methods.md)", where, config.dtype)
    options = PRESETS["mergekit"].with_(
        method=method,
        density=densities,
        weights=tuple(float(values["weight"]) for values in per_model),  # type: ignore[arg-type]
        lam=float(shared["lambda"]),  # type: ignore[arg-type]
        normalize=bool(shared["normalize"]),
        out_dtype=dtype,  # (parse_output_dtype takes mergekit's names)
    )
    return ConfiguredMerge(config.base_model, tuple(entry.model for entry in config.models), options)


def mergekit_config(
    options: MergeOptions, base: str, models: Sequence[str], out_dtypes: Set[DType]
) -> MergekitConfig | None:
    """The mergekit configuration of a merge with ``options`` of ``base`` and ``models`` (paths as given)
    whose merged tensors are written in ``out_dtypes``, or ``None`` if mergekit cannot
    express it: TIES under other rules than mergekit's (the ``paper`` preset's whole-model thresholds,
    ties kept at the cut, majority zero sign), or merged tensors written in several dtypes.
    :func:`configured_merge` of it gives the same merge (tested), and ``mergekit-yaml`` runs it."""
    mergekit = PRESETS["mergekit"]
    if options.method.trims and (options.scope, options.trim, options.zero_sign) != (
        mergekit.scope,
        mergekit.trim,
        mergekit.zero_sign,
    ):
        return None
    if len(out_dtypes) > 1:
        return None
    per_model: dict[str, Sequence[float]] = {"weight": [float(w) for w in options.model_weights(len(models))]}
    if options.method.trims:
        per_model["density"] = list(options.model_densities(len(models)))
    dtype = next(iter(out_dtypes), None)
    return build_config(
        options.method.name,
        models,
        base_model=base,
        model_parameters=per_model,
        parameters={"lambda": options.lam, "normalize": bool(options.normalize)},
        dtype="float32",  # what ooc-ties computes in; mergekit computes in its dtype
        out_dtype=TORCH_NAMES[dtype] if dtype is not None else None,
        where=CONFIG_NAME,
    )


def _refuse_per_tensor_values(config: MergekitConfig) -> None:
    """Gradients and filters give each tensor its own values; the engine takes one value per model."""
    places = [("parameters", config.parameters)]
    places += [(f"model {entry.model}: parameters", entry.parameters) for entry in config.models]
    for where, settings in places:
        for name, setting in settings.items():
            if setting.is_gradient or any(rule.filter not in (None, "*") for rule in setting.rules):
                raise OptionError(
                    f"{config.source}: {where}: {name}: gradients and filters (values per tensor) are not "
                    "supported yet"
                )

"""The model card of a merged model: the ``README.md`` of its output, in place of the base's.

It is laid out as mergekit lays out its cards, so that the Hugging Face Hub reads it the same way:

- YAML front matter: ``base_model`` (the base as given, or its Hub name when it is a Hugging Face cache
  snapshot), ``library_name`` when the base folder says which library loads it (:func:`library_name`),
  and ``tags: [merge, ooc-ties]``;
- markdown: a title (naming the base), the tool, the method with every option (and the preset they match), the inputs
  as given, and the recipe (what ``ooc_ties_recipe.json`` holds) in a code block.

The recipe's thresholds are summarised (groups, values kept, the global thresholds), and the
identity of the input files is left out, so the card stays short in per-tensor scope too; the
complete record stays in ``ooc_ties_recipe.json`` (or the Zarr group's ``ooc_ties_recipe``).

:func:`model_card` is pure: a recipe in, text out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from typing import Any

from ooc_ties.config import PRESETS
from ooc_ties.methods import METHODS, TIES, Method

__all__ = ["CARD_NAME", "TAGS", "card_recipe", "hub_name", "library_name", "model_card"]

CARD_NAME = "README.md"
"""The model card's file name in a model folder."""
TAGS = ("merge", "ooc-ties")
"""The tags every card carries."""

_SNAPSHOT = re.compile(r"(?:^|/)models--([^/]+)/snapshots/[^/]+/?$")


def library_name(names: Collection[str], config: bytes | None) -> str | None:
    """The library that loads a model folder with side files ``names`` and ``config.json`` bytes
    ``config``: ``sentence-transformers`` if it has ``modules.json``, ``transformers`` if its config
    names an architecture or model type, else ``None``."""
    if "modules.json" in names:
        return "sentence-transformers"
    if config is None:
        return None
    try:
        parsed = json.loads(config)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if isinstance(parsed, dict) and ("architectures" in parsed or "model_type" in parsed):
        return "transformers"
    return None


def hub_name(label: str) -> str:
    """``org/name`` for a Hugging Face cache snapshot (``.../models--org--name/snapshots/<rev>``), else ``label``."""
    found = _SNAPSHOT.search(label.replace("\\", "/"))
    return found.group(1).replace("--", "/") if found else label


def card_recipe(recipe: Mapping[str, Any]) -> dict[str, Any]:
    """``recipe`` with its thresholds summarised (see the module docstring)."""
    shown = dict(recipe)
    thresholds = recipe.get("thresholds")
    if isinstance(thresholds, Mapping):
        shown["thresholds"] = _summary(thresholds)
    return shown


def _summary(thresholds: Mapping[str, Any]) -> dict[str, Any]:
    groups: Mapping[str, list[Mapping[str, Any]]] = thresholds.get("groups") or {}
    models = max((len(entries) for entries in groups.values()), default=0)
    summary: dict[str, Any] = {
        "groups": len(groups),
        "kept": [sum(int(entries[m]["kept"]) for entries in groups.values()) for m in range(models)],
        "of": [sum(int(entries[m]["size"]) for entries in groups.values()) for m in range(models)],
    }
    if len(groups) == 1:
        summary["threshold"] = [entry["threshold"] for entry in next(iter(groups.values()))]
    majority: Mapping[str, int] = thresholds.get("majority") or {}
    if len(majority) == 1:
        summary["majority"] = next(iter(majority.values()))
    elif majority:
        signs = list(majority.values())
        summary["majority"] = {"positive": signs.count(1), "negative": signs.count(-1), "zero": signs.count(0)}
    return summary


def _preset(options: Mapping[str, Any]) -> str | None:
    """The preset whose scope, trim and zero-sign rule ``options`` share."""
    for name, preset in PRESETS.items():
        ours = preset.to_json()
        if all(options.get(key) == ours[key] for key in ("scope", "trim", "zero_sign")):
            return name
    return None


def _fence(text: str) -> str:
    """A code fence longer than any run of backticks in ``text``."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _code(text: str) -> str:
    """``text`` as inline code."""
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    padding = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{padding}{text}{padding}{fence}"


def _yaml(value: str) -> str:
    """A YAML double-quoted scalar (a JSON string is one)."""
    return json.dumps(value, ensure_ascii=False)


def _recipe_method(recipe: Mapping[str, Any]) -> Method:
    """The method a recipe names (TIES for recipes from before methods were named)."""
    options: Mapping[str, Any] = recipe.get("options") or {}
    return METHODS.get(str(options.get("method")), TIES)


def _method(recipe: Mapping[str, Any]) -> list[str]:
    options: Mapping[str, Any] = recipe.get("options") or {}
    method = _recipe_method(recipe)
    preset = _preset(options) if method.trims else None
    weights = options.get("weights")
    preset_note = f" (preset {_code(preset)} of ooc-ties)" if preset else ""
    merged = "merged onto the base model" if method.uses_base else "merged (the base model gives only the layout)"
    lines = [
        f"The fine-tuned models were {merged} with [{method.title}]({method.paper}){preset_note}: {method.summary}.",
        "",
    ]
    if method.sparsifies:
        lines.append(f"- density: {options.get('density')} (the share of each task vector kept)")
    if options.get("gamma") is not None:
        lines.append(f"- gamma: {options.get('gamma')} (the share of largest magnitudes dropped as outliers)")
    if options.get("epsilon") is not None:
        lines.append(f"- epsilon: {options.get('epsilon')} (the spread of the keep probabilities by rank)")
    if method.trims:
        lines += [
            f"- scope: {options.get('scope')} (what a threshold is counted over)",
            f"- trim: {options.get('trim')}",
        ]
    if method.sparsify.random:
        rescale = f"rescaled ({options.get('rescale_rule')})" if options.get("rescale") else "not rescaled"
        lines.append(f"- seed: {options.get('seed')} (of the random drop, reproducible with ooc-ties); {rescale}")
    if method.consensus:
        lines.append(f"- zero sign: {options.get('zero_sign')} (the sign elected where the votes cancel)")
    lines += [
        f"- lambda: {options.get('lambda')} (the scale of the merged task vector)",
        f"- normalize: {options.get('normalize', method.normalize)} (divided by the sum of the weights)",
        f"- weights: {', '.join(str(w) for w in weights) if weights else 'equal'}",
        f"- dtype: {options.get('dtype') or 'as the inputs'}",
    ]
    if "merged_parameters" in recipe:
        lines.append(f"- merged parameters: {recipe['merged_parameters']:,}")
    return lines


def _models(recipe: Mapping[str, Any]) -> list[str]:
    lines = [f"Base model: {_code(str(recipe.get('base')))}", "", "Fine-tuned models, in merge order:", ""]
    lines += [f"{i}. {_code(str(model))}" for i, model in enumerate(recipe.get("models") or [], 1)]
    return lines


def model_card(recipe: Mapping[str, Any], *, library: str | None = None) -> str:
    """The model card of a merge made by ``recipe`` (the dict ``ooc_ties_recipe.json`` holds, whose
    ``base`` and ``models`` name the inputs as given); ``library``: the ``library_name`` to declare
    (see :func:`library_name`). The title names the base, not the output: the same merge written to
    another folder has the same bytes."""
    base = hub_name(str(recipe.get("base")))
    front = ["---", f"base_model: {_yaml(base)}"]
    if library:
        front.append(f"library_name: {_yaml(library)}")
    front += ["tags:", *(f"- {_yaml(tag)}" for tag in TAGS), "---"]
    shown = json.dumps(card_recipe(recipe), indent=2, ensure_ascii=False)
    fence = _fence(shown)
    version = f" {recipe['version']}" if recipe.get("version") else ""
    body = [
        f"# {_recipe_method(recipe).title} merge onto {base.rstrip('/').rsplit('/', 1)[-1]}",
        "",
        f"This model is a merge of pre-trained language models made with ooc-ties{version}, an out-of-core "
        "model merger.",
        "",
        "## Merge details",
        "",
        "### Method",
        "",
        *_method(recipe),
        "",
        "### Models merged",
        "",
        *_models(recipe),
        "",
        "### Recipe",
        "",
        "How the model was made, as ooc-ties records it (`ooc_ties_recipe.json`, or the attribute "
        "`ooc_ties_recipe` of a Zarr group), with the thresholds summarised: the number of groups, the values "
        "kept of each model's task vector and, in global scope, the thresholds themselves.",
        "",
        f"{fence}json",
        shown,
        fence,
    ]
    return "\n".join([*front, *body]) + "\n"

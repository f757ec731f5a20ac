"""Publishing a merge: the recipe and model card written beside the output, the side files that go with
it, and recognising an output this very merge already published (a resume that finds it done).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from ooc_ties._version import __version__
from ooc_ties.config import MergeOptions
from ooc_ties.dtypes import TORCH_NAMES, DType
from ooc_ties.errors import OutputPathError
from ooc_ties.from_config import CONFIG_NAME, mergekit_config
from ooc_ties.identity import InputsIdentity
from ooc_ties.inputs import MergeInputs
from ooc_ties.io.side_files import SideFileLike, as_side_file
from ooc_ties.io.staging import STATE_DIR, staging_path
from ooc_ties.io.writer import RECIPE_NAME
from ooc_ties.io.zarr_format import RECIPE_ATTRIBUTE
from ooc_ties.mergekit_yaml import CHAT_TEMPLATE_FILE, TOKENIZER_CONFIG, apply_chat_template, to_yaml
from ooc_ties.model_card import CARD_NAME, library_name, model_card
from ooc_ties.pass1.thresholds import Thresholds
from ooc_ties.plan import MergePlan

__all__ = ["already_published", "recipe", "recipe_metadata", "side_files"]

logger = logging.getLogger(__name__)


def already_published(
    path: Path, options: MergeOptions, identity: InputsIdentity | None, overwrite: bool
) -> dict[str, Any] | None:
    """The recipe at ``path`` if it is the finished output of this very merge (same options, same
    inputs), as a resume finds it when the interrupted run was killed after publishing; its leftover
    journal, if any, is deleted. ``None`` if there is no finished output there (or ``overwrite``
    replaces one); a finished output of another merge is refused, saying how it differs."""
    if identity is None or not path.is_dir() or staging_path(path.absolute()).exists():
        return None
    try:
        if (path / RECIPE_NAME).is_file():
            recipe = json.loads((path / RECIPE_NAME).read_text(encoding="utf-8"))
        elif (path / "zarr.json").is_file():
            recipe = json.loads((path / "zarr.json").read_text(encoding="utf-8"))["attributes"][RECIPE_ATTRIBUTE]
        else:
            return None
        if recipe["version"] != __version__:
            why: str | None = f"it was written by ooc-ties {recipe['version']}, this is {__version__}"
        elif recipe["options"] != options.to_json():
            why = "it was merged with other options"
        else:
            why = InputsIdentity.from_json(recipe["thresholds"]["inputs"]).mismatch(identity)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if why is not None:
        if overwrite:
            return None
        raise OutputPathError(
            f"{path}: holds a finished merge of other inputs or options, nothing to resume ({why}); "
            "choose another path or --overwrite"
        )
    shutil.rmtree(path / STATE_DIR, ignore_errors=True)
    logger.info("%s: the interrupted merge had already finished", path)
    return dict(recipe)


def recipe_metadata(plan: MergePlan) -> dict[str, str]:
    return {"format": "pt", "ooc_ties": json.dumps({"version": __version__, **plan.options.to_json()})}


def recipe(
    plan: MergePlan, inputs: MergeInputs, thresholds: Thresholds, chat_template: str | None = None
) -> dict[str, Any]:
    return {
        "tool": "ooc-ties",
        "version": __version__,
        "base": inputs.base.label,
        "models": [ft.label for ft in inputs.fts],
        "options": plan.options.to_json(),
        "thresholds": thresholds.to_json(samples=False),
        "merged_parameters": plan.merged_parameters,
        **({"chat_template": chat_template} if chat_template is not None else {}),
    }


def side_files(plan: MergePlan, inputs: MergeInputs, recipe: dict[str, Any]) -> dict[str, SideFileLike]:
    """The base's side files (everything but weights: :mod:`ooc_ties.io.side_files`), with ``torch_dtype``
    in ``config.json`` set to the output dtype if one was chosen, the recipe's chat template applied as
    mergekit applies it (:func:`~ooc_ties.mergekit_yaml.apply_chat_template`), a model card made from
    ``recipe`` as ``README.md`` in place of the base's, and the merge as a mergekit configuration
    (``mergekit_config.yml``) where mergekit can express it (:func:`~ooc_ties.from_config.mergekit_config`)."""
    base_files = inputs.base.side_files()
    files: dict[str, SideFileLike] = dict(base_files)
    template = recipe.get("chat_template")
    if template is not None:
        names: dict[str, bytes] = dict.fromkeys(files, b"")  # (only the tokenizer's config is read)
        if TOKENIZER_CONFIG in files:
            names[TOKENIZER_CONFIG] = as_side_file(files[TOKENIZER_CONFIG]).read()
        templated = apply_chat_template(template, names)
        files = {name: f for name, f in files.items() if name in templated}
        for name in (TOKENIZER_CONFIG, CHAT_TEMPLATE_FILE):
            files[name] = templated[name]
    config = base_files["config.json"].read() if "config.json" in base_files else None
    if config is not None and plan.options.out_dtype is not None:
        files["config.json"] = _retyped_config(config, plan.options.out_dtype)
    files[CARD_NAME] = model_card(recipe, library=library_name(base_files.keys(), config)).encode()
    files.pop(CONFIG_NAME, None)  # the base's own, if a Zarr base carried one: not this merge's
    if all(source.local_paths() for source in inputs.all):  # (arrays in memory have no name to give)
        merged_dtypes = {t.out_dtype for t in plan.merged}
        labels = [ft.label for ft in inputs.fts]
        written = mergekit_config(plan.options, inputs.base.label, labels, merged_dtypes, template)
        if written is not None:
            files[CONFIG_NAME] = to_yaml(written).encode()
    return files


def _retyped_config(source: bytes, dtype: DType) -> bytes:
    """config.json with ``torch_dtype`` set to the output dtype (when it parses as a JSON object)."""
    try:
        config = json.loads(source)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return source
    if not isinstance(config, dict):
        return source
    for key in ("torch_dtype", "dtype"):
        if key in config:
            config[key] = TORCH_NAMES[dtype]
    return (json.dumps(config, indent=2) + "\n").encode()

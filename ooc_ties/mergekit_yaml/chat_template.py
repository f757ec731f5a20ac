"""The ``chat_template`` key: a literal Jinja template, checked as mergekit checks one, and the output
folder's side files rewritten to carry it as mergekit (through transformers) saves them."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

from ooc_ties.errors import CheckpointFormatError, OptionError
from ooc_ties.mergekit_yaml._messages import one_line, show

__all__ = [
    "BUILTIN_CHAT_TEMPLATES",
    "CHAT_TEMPLATE_FILE",
    "TOKENIZER_CONFIG",
    "apply_chat_template",
    "parse_chat_template",
]

logger = logging.getLogger(__name__)

BUILTIN_CHAT_TEMPLATES = ("alpaca", "chatml", "exaone", "llama3", "mistral")
"""mergekit 0.1.5's built-in chat template names (its ``_data/chat_templates``), refused by name here."""
CHAT_TEMPLATE_FILE = "chat_template.jinja"
"""Where the output's chat template goes (transformers 5, which mergekit 0.1.5 saves through)."""
TOKENIZER_CONFIG = "tokenizer_config.json"
"""The tokenizer's configuration, where transformers 4 kept the template."""
_OTHER_TEMPLATES = ("chat_template.json", "additional_chat_templates/")


def parse_chat_template(value: object, where: str) -> str:
    """A literal Jinja chat template, checked as mergekit checks one; template names are refused."""
    if not isinstance(value, str):
        raise OptionError(f"{where}: expected a Jinja chat template (a string); got {show(value)}")
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
            f"(mergekit's rule); got {show(value)}"
        )
    return value


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
    if TOKENIZER_CONFIG not in side_files:
        raise OptionError(f"chat_template is set but the base model has no tokenizer ({TOKENIZER_CONFIG})")
    files = {name: data for name, data in side_files.items() if not name.startswith(_OTHER_TEMPLATES)}
    for name in sorted(set(side_files) - set(files)):
        logger.info("chat_template: %s left out (the output's template is %s)", name, CHAT_TEMPLATE_FILE)
    try:
        tokenizer_config = json.loads(files[TOKENIZER_CONFIG])
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointFormatError(f"{TOKENIZER_CONFIG}: not valid JSON: {one_line(error)}") from None
    if isinstance(tokenizer_config, dict) and "chat_template" in tokenizer_config:
        del tokenizer_config["chat_template"]
        files[TOKENIZER_CONFIG] = (json.dumps(tokenizer_config, indent=2, ensure_ascii=False) + "\n").encode()
    files[CHAT_TEMPLATE_FILE] = template.encode("utf-8")
    return files

"""A mergekit configuration written back as mergekit YAML.

**Written back** (:func:`to_yaml`) so that ``parse_config(to_yaml(c)) == c``: the recipe beside every
output is such a configuration, and :func:`~ooc_ties.mergekit_yaml.config.build_config` makes one from
plain values (a merge given on the command line) through the same validation. Gradients are written as
flow lists and multi-line templates as literal blocks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from ooc_ties.mergekit_yaml.config import MergekitConfig
from ooc_ties.mergekit_yaml.settings import Setting, Value

__all__ = ["to_yaml"]


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
    if config.ooc_ties:
        document["ooc_ties"] = dict(config.ooc_ties)
    text: str = yaml.dump(
        document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, default_flow_style=False, width=1 << 16
    )
    return text

"""A mergekit YAML merge configuration: read and validated, its settings resolved per tensor, written back.

``ooc-ties merge --config merge.yml`` takes the configurations mergekit takes, with mergekit 0.1.5's
meaning, for the methods ooc-ties merges (a base, models, parameters; no layer surgery). Anything it
cannot honour exactly is refused with one line naming the file, the key and the model, never ignored.

Modules, in the order a configuration flows through them:

- :mod:`~ooc_ties.mergekit_yaml.settings`: one parameter's setting (a scalar, a gradient over ``t``,
  ``{filter, value}`` rules) and its value for a tensor (:meth:`Setting.at`);
- :mod:`~ooc_ties.mergekit_yaml.chat_template`: the ``chat_template`` key, checked, and applied to the
  output's side files;
- :mod:`~ooc_ties.mergekit_yaml.config`: :class:`MergekitConfig` and :class:`ModelEntry`, the keys taken
  and refused, a document validated (:func:`build_config` from plain values);
- :mod:`~ooc_ties.mergekit_yaml.reader`: :func:`parse_config` and :func:`load_config` (YAML text or file);
- :mod:`~ooc_ties.mergekit_yaml.writer`: :func:`to_yaml`, so that ``parse_config(to_yaml(c)) == c``;
- :mod:`~ooc_ties.mergekit_yaml.resolution`: :func:`check` and :func:`resolve` against a method's
  :class:`ParameterSpec` list, and a tensor's ``t`` (:func:`layer_t`).
"""

from __future__ import annotations

from ooc_ties.mergekit_yaml.chat_template import (
    BUILTIN_CHAT_TEMPLATES,
    CHAT_TEMPLATE_FILE,
    TOKENIZER_CONFIG,
    apply_chat_template,
    parse_chat_template,
)
from ooc_ties.mergekit_yaml.config import (
    DTYPE_NAMES,
    KEYS,
    MergekitConfig,
    ModelEntry,
    build_config,
    parse_dtype_name,
    parse_model_reference,
)
from ooc_ties.mergekit_yaml.reader import load_config, load_configs, parse_config, parse_configs
from ooc_ties.mergekit_yaml.resolution import LAYER_PREFIXES, ParameterSpec, check, layer_count, layer_t, resolve
from ooc_ties.mergekit_yaml.settings import Rule, Scalar, Setting, Value
from ooc_ties.mergekit_yaml.writer import to_yaml

__all__ = [
    "BUILTIN_CHAT_TEMPLATES",
    "CHAT_TEMPLATE_FILE",
    "DTYPE_NAMES",
    "KEYS",
    "LAYER_PREFIXES",
    "TOKENIZER_CONFIG",
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
    "layer_count",
    "layer_t",
    "load_config",
    "load_configs",
    "parse_chat_template",
    "parse_config",
    "parse_configs",
    "parse_dtype_name",
    "parse_model_reference",
    "resolve",
    "to_yaml",
]

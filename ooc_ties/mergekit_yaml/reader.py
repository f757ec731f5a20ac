"""A mergekit YAML configuration read from text or a file.

The text is read as safe YAML with no key written twice in one mapping (PyYAML would keep the last one
silently); the document is then validated by :func:`~ooc_ties.mergekit_yaml.config.parse_document`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ooc_ties.errors import OptionError
from ooc_ties.mergekit_yaml._messages import one_line
from ooc_ties.mergekit_yaml.config import MergekitConfig, parse_document

__all__ = ["load_config", "parse_config"]


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
        problem = one_line(", ".join(filter(None, (error.context, error.problem))) or "malformed")
        raise OptionError(f"{where}: not valid YAML{at}: {problem}") from None
    except yaml.YAMLError as error:
        raise OptionError(f"{where}: not valid YAML: {one_line(error)}") from None
    finally:
        loader.dispose()


def parse_config(text: str, where: str) -> MergekitConfig:
    """The configuration in the YAML ``text``; ``where`` names it (a file name) in messages."""
    return parse_document(_load_yaml(text, where), where)


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

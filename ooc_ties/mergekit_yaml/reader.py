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

__all__ = ["load_config", "load_configs", "parse_config", "parse_configs"]


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


def _load_yaml(text: str, where: str, *, many: bool = False) -> Any:
    """The document in ``text``; with ``many``, the list of its documents (``---`` between them)."""
    loader = yaml.SafeLoader(text)
    try:
        if many:
            documents = []
            while loader.check_node():
                node = loader.get_node()
                _refuse_duplicate_keys(node, where)
                documents.append(loader.construct_document(node))
            return documents
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
    return parse_config(_read(path), str(path))


def _read(path: str | Path) -> str:
    where = str(path)
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise OptionError(f"{where}: the merge configuration is not UTF-8 text") from None
    except OSError as error:
        raise OptionError(f"{where}: cannot read the merge configuration: {error.strerror or error}") from None


def parse_configs(text: str, where: str) -> list[MergekitConfig]:
    """The configurations in the YAML ``text``: one document, several documents (``---`` between them),
    or documents that are lists of configurations (a grid of merges)."""
    configs: list[MergekitConfig] = []
    documents = [d for d in _load_yaml(text, where, many=True) if d is not None]
    for number, document in enumerate(documents, 1):
        items = document if isinstance(document, list) else [document]
        for index, item in enumerate(items, 1):
            label = where
            if len(documents) > 1:
                label += f" (document {number})"
            if isinstance(document, list):
                label += f" (item {index})"
            configs.append(parse_document(item, label))
    if not configs:
        configs.append(parse_document(None, where))  # (its message says what a configuration needs)
    return configs


def load_configs(path: str | Path) -> list[MergekitConfig]:
    """The configurations in the YAML file ``path`` (see :func:`parse_configs`)."""
    return parse_configs(_read(path), str(path))

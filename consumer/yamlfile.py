"""Reading the YAML files users write (config, rules): safe, strict, and every problem named.

PyYAML silently keeps the last of two equal keys, so a second `kafka:` section or a repeated
rule key would drop the first without a word: duplicates are reported instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from consumer.errors import ConfigError


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that records duplicate mapping keys."""

    duplicates: list[str]

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str) and key in seen:
                line = key_node.start_mark.line + 1
                self.duplicates.append(f"line {line}: duplicate key {key!r}")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


KeyPath = tuple[str, ...]
# In a line index: this key's value does not come from the file (an environment override).
NOT_IN_FILE = 0


def read_yaml(path: Path, label: str, what: str = "file") -> tuple[Any, list[str]]:
    """The document and its duplicate-key problems; unreadable or invalid YAML: ConfigError."""
    data, duplicates, _ = read_yaml_with_lines(path, label, what)
    return data, duplicates


def read_yaml_with_lines(
    path: Path, label: str, what: str = "file"
) -> tuple[Any, list[str], dict[KeyPath, int]]:
    """As `read_yaml`, plus the 1-based line of every key and list item, by its key path
    (list items by their index as a string): messages can point at the line to fix."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{label}: cannot read the {what}: {exc.strerror}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{label}: not UTF-8 text: {exc.reason} at byte {exc.start}"]) from exc
    loader = _StrictLoader(text)
    loader.duplicates = []
    lines: dict[KeyPath, int] = {}
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{label}: not valid YAML: {exc}"]) from exc
    finally:
        loader.dispose()
    if node is not None:
        _index_lines(node, (), lines)
    duplicates = [f"{label}: {dup} (each key may appear once)" for dup in loader.duplicates]
    return data, duplicates, lines


def _index_lines(node: yaml.Node, path: KeyPath, lines: dict[KeyPath, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            # Of duplicate keys the last wins, as it does in the document PyYAML builds.
            child = (*path, str(key_node.value))
            lines[child] = key_node.start_mark.line + 1
            _index_lines(value_node, child, lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            child = (*path, str(index))
            lines[child] = item.start_mark.line + 1
            _index_lines(item, child, lines)


def line_of(lines: dict[KeyPath, int], path: KeyPath) -> int | None:
    """The line of `path`, else of its nearest ancestor written in the file (None: none is)."""
    for end in range(len(path), 0, -1):
        found = lines.get(path[:end])
        if found is not None:
            return found if found != NOT_IN_FILE else None
    return None

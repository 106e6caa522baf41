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


def read_yaml(path: Path, label: str, what: str = "file") -> tuple[Any, list[str]]:
    """The document and its duplicate-key problems; unreadable or invalid YAML: ConfigError."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{label}: cannot read the {what}: {exc.strerror}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{label}: not UTF-8 text: {exc.reason} at byte {exc.start}"]) from exc
    loader = _StrictLoader(text)
    loader.duplicates = []
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as exc:
        raise ConfigError([f"{label}: not valid YAML: {exc}"]) from exc
    finally:
        loader.dispose()
    return data, [f"{label}: {dup} (each key may appear once)" for dup in loader.duplicates]

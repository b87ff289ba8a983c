"""Config files and dotted overrides: the only code that reads YAML.

``load_config(path, overrides)`` reads a YAML mapping, applies ``a.b.c=value``
overrides (values parsed as YAML), and builds a validated `RunConfig`. A key given
twice in one mapping is refused (plain YAML keeps the last one without a word).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from fedsim.config.coerce import from_dict
from fedsim.config.schema import RunConfig
from fedsim.errors import ConfigError


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping names the same key twice; ``key`` is the key, ``problem_mark`` where."""

    def __init__(self, key: Any, mark: yaml.Mark) -> None:
        super().__init__(None, None, f"duplicate key {key!r}", mark)
        self.key = key


class _UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a key repeated in one mapping. Keys brought in by a
    merge (``<<: *base``) may still be overridden, as YAML intends."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # unhashable: the base class says so
                continue
            if duplicate:
                raise DuplicateKeyError(key, key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _load(text: str) -> Any:
    return yaml.load(text, Loader=_UniqueKeyLoader)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into its key path and a YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. federation.rounds=5")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {text!r}: bad key {key!r}")
    try:
        value = _load(raw) if raw.strip() else None
    except DuplicateKeyError as err:
        raise ConfigError(f"override {text!r}: {err.problem}") from None
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of `data` with dotted overrides applied (sections created as needed).

    A section given by a shorthand (``server_optimizer: fedavg``) becomes a mapping
    (``{name: fedavg}``) when an override reaches inside it.
    """
    out = _deep_copy(data)
    for text in overrides:
        parts, value = parse_override(text)
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if isinstance(child, str) and i == len(parts) - 2 and part == "server_optimizer":
                child = node[part] = {"name": child}
            if not isinstance(child, dict):
                raise ConfigError(
                    f"override {text!r}: {'.'.join(parts[: i + 1])} is not a section"
                )
            node = child
        node[parts[-1]] = value
    return out


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file, bad YAML or a repeated key is a `ConfigError`."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = _load(p.read_text()) or {}
    except DuplicateKeyError as err:
        raise ConfigError(f"{p}: {err.problem} (line {err.problem_mark.line + 1}); "
                          "each key may appear once in a mapping") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{p}: not valid YAML{where}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    return data


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> RunConfig:
    """Load a YAML config, apply dotted overrides, validate, and return a frozen config."""
    return from_dict(apply_overrides(read_yaml(path), overrides))


def replace(cfg: RunConfig, overrides: Sequence[str]) -> RunConfig:
    """A copy of `cfg` with dotted overrides applied and validated again."""
    return from_dict(apply_overrides(cfg.to_dict(), overrides))

"""Building typed configs from plain mappings: keys checked, values coerced by type hint.

`from_dict(data)` walks the `RunConfig` dataclasses; every problem is a `ConfigError`
naming the dotted key and, for an unknown key, the allowed ones. A section type may
define ``from_config(value, key)`` to accept a shorthand (a server optimizer given by
name alone) and ``to_config()`` for the way back.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from fedsim.config.schema import RunConfig
from fedsim.errors import ConfigError

# Keys that moved, so an old config gets a pointer instead of a bare "unknown key".
_MOVED = {
    "federation.server_lr": "federation.server_optimizer.learning_rate (e.g. "
                            "server_optimizer: {name: fedavg, learning_rate: 1.0})",
}


def from_dict(data: Mapping[str, Any]) -> RunConfig:
    """Build a `RunConfig` from a nested mapping, checking keys and types."""
    return _build(RunConfig, data, "")


def _build(cls: type, data: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "config"
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {_describe(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        key = f"{prefix}{unknown[0]}"
        if key in _MOVED:
            raise ConfigError(f"{key}: moved to {_MOVED[key]}")
        raise ConfigError(f"{key}: unknown key (allowed: {', '.join(sorted(fields))})")
    kwargs = {k: _coerce(hints[k], v, f"{prefix}{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:  # pragma: no cover - defensive
        raise ConfigError(f"{where}: {err}") from None


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if isinstance(tp, type) and hasattr(tp, "from_config"):
        return tp.from_config(value, key)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _coerce(options[0], value, key)
        raise ConfigError(f"{key}: unsupported type")  # pragma: no cover
    if value is None:
        raise ConfigError(f"{key}: must not be empty")
    if origin is Literal:
        if value not in args:
            allowed = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{key}: must be one of {allowed}, got {value!r}")
        return value
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise ConfigError(f"{key}: expected a list, got {_describe(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} items, got {len(value)}")
        return tuple(_coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {_describe(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {_describe(value)}")
        return value
    if tp is float:
        if isinstance(value, str):
            value = parse_number(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {_describe(value)}")
        # No float setting means anything at NaN or infinity (a learning rate, a clip
        # bound, a timeout): refuse it here, once, rather than fail rounds later.
        try:
            number = float(value)
        except OverflowError:  # an integer beyond float range
            number = math.inf
        if not math.isfinite(number):
            raise ConfigError(f"{key}: must be a finite number, got {number}")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {_describe(value)}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover


# A number as users type it: YAML 1.1 reads "1e-5", "1E5" and "5e3" (no dot, or no
# signed exponent) as strings; Python's float() accepts all of them (and ".5", "inf").
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def parse_number(text: str) -> Any:
    """``text`` as a float when it spells a decimal number, else unchanged (``1e999``
    spells one too, and comes back as inf for the caller to refuse)."""
    stripped = text.strip()
    return float(stripped) if _NUMBER.fullmatch(stripped) else text


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"{type(value).__name__} {value!r}"

"""Names a package loads on first use (PEP 562), so that importing it stays cheap: the
aggregator and key holders import fedsim without ever loading JAX or OpenFHE's
heavier modules they do not need."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_names(package: str, where: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__``: ``name`` comes from module ``where[name]`` (relative to
    ``package`` unless it starts with ``fedsim``); a submodule named like the
    attribute is returned itself."""

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = where[name] if where[name].startswith("fedsim") else f"{package}.{where[name]}"
        loaded = importlib.import_module(module)
        return loaded if module.rsplit(".", 1)[-1] == name else getattr(loaded, name)

    return __getattr__

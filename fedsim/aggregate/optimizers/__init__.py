"""Server optimizers by name: fedsim's presets, any registered one, or any optax alias.

``federation.server_optimizer: {name: adam, learning_rate: 0.01, b2: 0.99}`` builds
``optax.adam(learning_rate=0.01, b2=0.99)``; the options are checked against the
function's signature when the config is built, so a typo is a one-line error, not a
traceback ten minutes in. The optimizer sees the negative averaged client delta as its
gradient (Reddi et al. 2021, "Adaptive Federated Optimization"): FedAvg is SGD with
rate 1 on it, FedAdam is Adam. Every module in this folder is imported with it, so a
new optimizer is one file with a function decorated by `register_server_optimizer`.
"""

from __future__ import annotations

import importlib
import inspect
import math
import pkgutil
from collections.abc import Callable, Mapping
from typing import Any

from fedsim.errors import ConfigError

__all__ = ["check_options", "make_server_optimizer", "optimizer_names",
           "register_server_optimizer"]

Factory = Callable[..., Any]  # (**options) -> optax.GradientTransformation
_REGISTRY: dict[str, Factory] = {}


def register_server_optimizer(name: str) -> Callable[[Factory], Factory]:
    """Decorator: make ``fn(**options) -> optax.GradientTransformation`` available as
    ``federation.server_optimizer: {name: <name>, ...options}``."""

    def register(fn: Factory) -> Factory:
        known = _REGISTRY.get(name)
        if known is not None and known.__qualname__ != fn.__qualname__:
            raise ConfigError(f"server optimizer {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return register


def optimizer_names() -> tuple[str, ...]:
    """fedsim's registered names (any optax optimizer alias works too)."""
    return tuple(_REGISTRY)


def _resolve(name: str, key: str) -> tuple[Factory, str]:
    if name in _REGISTRY:
        return _REGISTRY[name], f"server optimizer {name!r}"
    import optax

    fn = getattr(optax, name, None) if name in getattr(optax, "__all__", ()) else None
    if fn is None or not callable(fn) or "learning_rate" not in _parameters(fn):
        raise ConfigError(f"{key}.name: {name!r} is neither a fedsim server optimizer "
                          f"({', '.join(_REGISTRY)}) nor an optax optimizer "
                          "(an optax function with a learning_rate, e.g. adam, yogi, sgd)")
    return fn, f"optax.{name}"


def _parameters(fn: Factory) -> Mapping[str, inspect.Parameter]:
    return inspect.signature(fn).parameters


def check_options(name: str, options: Mapping[str, Any], *, key: str) -> None:
    """Raise `ConfigError` naming ``key.<option>`` unless ``options`` fit ``name``'s
    signature: known names, every required one given, numbers where numbers go."""
    fn, what = _resolve(name, key)
    params = {p.name: p for p in _parameters(fn).values()
              if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    for option, value in options.items():
        if option not in params:
            raise ConfigError(f"{key}.{option}: not an option of {what} "
                              f"(options: {', '.join(params)})")
        default = params[option].default
        numeric = option == "learning_rate" or (
            isinstance(default, (int, float)) and not isinstance(default, bool))
        if numeric and (isinstance(value, bool) or not isinstance(value, (int, float))
                        or not math.isfinite(value)):
            raise ConfigError(f"{key}.{option}: expected a finite number, got {value!r}")
        if isinstance(default, bool) and not isinstance(value, bool):
            raise ConfigError(f"{key}.{option}: expected true or false, got {value!r}")
    missing = [p for p, spec in params.items()
               if spec.default is inspect.Parameter.empty and p not in options]
    if missing:
        raise ConfigError(f"{key}.{missing[0]}: required by {what}")


def make_server_optimizer(name: str, options: Mapping[str, Any]) -> Any:
    """The optax ``GradientTransformation`` for ``name`` with ``options``."""
    import optax

    check_options(name, options, key="federation.server_optimizer")
    fn, what = _resolve(name, "federation.server_optimizer")
    opt = fn(**options)
    if not isinstance(opt, optax.GradientTransformation):
        raise ConfigError(f"federation.server_optimizer: {what} did not return an optax "
                          f"GradientTransformation")
    return opt


for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: (m.name != "presets", m.name)):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

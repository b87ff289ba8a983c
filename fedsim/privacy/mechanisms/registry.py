"""The registry of noise mechanisms, by name."""

from __future__ import annotations

from fedsim.errors import PrivacyError
from fedsim.privacy.mechanisms.base import Mechanism

_REGISTRY: dict[str, type[Mechanism]] = {}


def register_mechanism(cls: type[Mechanism]) -> type[Mechanism]:
    """Class decorator: make ``cls`` available as ``privacy.mechanism: <cls.name>``."""
    if not (isinstance(cls, type) and issubclass(cls, Mechanism)):
        raise PrivacyError(f"{cls!r} is not a fedsim.privacy.Mechanism subclass")
    known = _REGISTRY.get(cls.name)
    if known is not None and known.__qualname__ != cls.__qualname__:
        raise PrivacyError(f"mechanism {cls.name!r} is already registered by {known!r}")
    _REGISTRY[cls.name] = cls
    return cls


def mechanism_names() -> tuple[str, ...]:
    """Registered mechanism names, built-ins first."""
    return tuple(_REGISTRY)


def mechanism_class(name: str) -> type[Mechanism]:
    """The mechanism registered as ``name``; `PrivacyError` naming the allowed ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        allowed = ", ".join(repr(m) for m in _REGISTRY)
        raise PrivacyError(f"mechanism: must be one of {allowed}, got {name!r}") from None


def make_mechanism(mechanism: str, clip: float, noise_multiplier: float) -> Mechanism:
    """``mechanism_class(mechanism)(clip, noise_multiplier)``, validated."""
    return mechanism_class(mechanism)(clip=clip, noise_multiplier=noise_multiplier)

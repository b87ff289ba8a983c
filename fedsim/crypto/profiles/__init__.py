"""The registry of CKKS profiles: the one place every other module reads them from.

A profile is a frozen `Profile`; one module per profile in this folder registers it
with `register_profile`. Modules here are imported in every process that imports this
package (the driver and every actor), so a new profile is one new file: the config,
the contexts, the key holders and the benchmarks all find it by name. Nothing here
imports OpenFHE: `fedsim.crypto.context` maps a profile to OpenFHE parameters.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass

from fedsim.errors import CryptoError

__all__ = ["Profile", "get_profile", "profile_names", "register_profile"]


@dataclass(frozen=True)
class Profile:
    """One CKKS parameter set (depth 0, FIXEDMANUAL, 60-bit first modulus, BV).

    Attributes:
        name: what ``crypto.profile`` says.
        security_bits: 128, 192 or 256 (OpenFHE's HEStd_*_classic), or 0 for none.
        ring_dim: 0 lets OpenFHE choose the smallest ring for ``security_bits``.
        complex_packing: two reals per slot (COMPLEX data type): half the ciphertexts.
        flooding: OpenFHE's noise-flooding decryption (estimate, then evaluate).
        insecure: refused unless the user allows insecure profiles (tests).
        summary: one line for help texts and reports.
    """

    name: str
    security_bits: int
    ring_dim: int = 0
    complex_packing: bool = False
    flooding: bool = True
    insecure: bool = False
    summary: str = ""

    def __post_init__(self) -> None:
        if self.security_bits not in (0, 128, 192, 256):
            raise CryptoError(f"profile {self.name!r}: security_bits must be 0, 128, 192 or "
                              f"256, got {self.security_bits}")
        if self.security_bits == 0 and not (self.insecure and self.ring_dim):
            raise CryptoError(f"profile {self.name!r}: without a security level it must be "
                              "marked insecure and give its ring_dim")


_REGISTRY: dict[str, Profile] = {}


def register_profile(profile: Profile) -> Profile:
    """Add ``profile`` to the registry (a name can be registered once)."""
    if profile.name in _REGISTRY and _REGISTRY[profile.name] != profile:
        raise CryptoError(f"crypto profile {profile.name!r} is already registered")
    _REGISTRY[profile.name] = profile
    return profile


def profile_names() -> tuple[str, ...]:
    """Registered profile names, built-ins first."""
    return tuple(_REGISTRY)


def get_profile(name: str) -> Profile:
    """The profile called ``name``; `CryptoError` naming the allowed ones otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise CryptoError(f"unknown crypto profile {name!r}; allowed: "
                          f"{', '.join(profile_names())}") from None


def _discover() -> None:
    for builtin in ("secure", "fast", "test"):
        importlib.import_module(f"{__name__}.{builtin}")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_discover()

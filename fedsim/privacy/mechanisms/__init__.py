"""Noise mechanisms for the client-level aggregate, one file each, found by name.

Every module in this folder is imported with the package; a module that defines a
`Mechanism` subclass decorated with `register_mechanism` makes it available as
``privacy.mechanism: <name>`` in every process. Built in: ``gaussian``, ``laplace``.
A mechanism draws integer noise on its lattice (`Mechanism.lattice_scale`) with the
samplers of `fedsim.privacy.mechanisms.discrete`, re-exported here.
"""

from __future__ import annotations

import importlib
import pkgutil

from fedsim.errors import PrivacyError
from fedsim.privacy.mechanisms.base import Mechanism
from fedsim.privacy.mechanisms.discrete import discrete_gaussian, discrete_laplace
from fedsim.privacy.mechanisms.registry import (
    make_mechanism,
    mechanism_class,
    mechanism_names,
    register_mechanism,
)

__all__ = [
    "Mechanism",
    "check_survivors",
    "discrete_gaussian",
    "discrete_laplace",
    "make_mechanism",
    "mechanism_class",
    "mechanism_names",
    "register_mechanism",
]

for _builtin in ("gaussian", "laplace"):
    importlib.import_module(f"{__name__}.{_builtin}")
for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name not in ("base", "registry", "discrete") and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")


def check_survivors(contributors: int, min_clients: int) -> None:
    """Refuse a distributed-noise round with fewer contributors than the calibration.

    Distributed shares are calibrated so that ``min_clients`` of them make the whole
    noise; with ``contributors < min_clients`` the decrypted sum carries less noise
    than the accountant assumed, so it must not be decrypted.

    Raises:
        PrivacyError: ``contributors < min_clients`` or ``min_clients < 1``.
    """
    if min_clients < 1:
        raise PrivacyError(f"min_clients: must be >= 1, got {min_clients}")
    if contributors < min_clients:
        raise PrivacyError(
            f"only {contributors} clients contributed noise shares but the noise is "
            f"calibrated for at least min_clients={min_clients}; refusing to release the "
            f"round"
        )

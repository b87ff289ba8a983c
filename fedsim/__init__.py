"""fedsim: privacy-preserving federated learning among hospitals, simulated on Ray.

The public API is what ``__all__`` lists; everything else lives in submodules.
"""

from fedsim.config import RunConfig, load_config
from fedsim.errors import (
    ConfigError,
    CryptoError,
    DataError,
    FedSimError,
    PrivacyError,
    ProtocolError,
)
from fedsim.results import Run, load_run

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "CryptoError",
    "DataError",
    "FedSimError",
    "PrivacyError",
    "ProtocolError",
    "Run",
    "RunConfig",
    "load_config",
    "load_run",
    "run_federated",
]


def __getattr__(name: str):
    # Lazy: importing fedsim must not pull in JAX for key holders and the aggregator.
    if name == "run_federated":
        from fedsim.runner import run_federated

        return run_federated
    raise AttributeError(name)

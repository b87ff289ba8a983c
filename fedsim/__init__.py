"""fedsim: privacy-preserving federated learning among hospitals, simulated on Ray.

The public API is what ``__all__`` lists; everything else lives in submodules. Heavy
names (the run loop, JAX) load on first use: the aggregator and key holders import
``fedsim`` without importing JAX.
"""

from __future__ import annotations

from fedsim._lazy import lazy_names
from fedsim.config import RunConfig, load_config
from fedsim.errors import (
    ConfigError,
    CryptoError,
    DataError,
    FedSimError,
    PrivacyError,
    ProtocolError,
)

__version__ = "0.1.0"

_LAZY = {
    "Run": "fedsim.run.results",
    "load_run": "fedsim.run.results",
    "run_federated": "fedsim.run.runner",
    "Federation": "fedsim.protocol.federation",
    "Callback": "fedsim.protocol.loop",
    "run_rounds": "fedsim.protocol.loop",
    "RoundRecord": "fedsim.protocol.records",
    "InProcessBackend": "fedsim.protocol.backend",
    "Step": "fedsim.aggregate.steps",
    "register_server_optimizer": "fedsim.aggregate.optimizers",
    "Mechanism": "fedsim.privacy.mechanisms",
    "register_mechanism": "fedsim.privacy.mechanisms",
    "Profile": "fedsim.crypto.profiles",
    "register_profile": "fedsim.crypto.profiles",
}

__all__ = [
    "Callback",
    "ConfigError",
    "CryptoError",
    "DataError",
    "FedSimError",
    "Federation",
    "InProcessBackend",
    "Mechanism",
    "PrivacyError",
    "Profile",
    "ProtocolError",
    "RoundRecord",
    "Run",
    "RunConfig",
    "Step",
    "load_config",
    "load_run",
    "register_mechanism",
    "register_profile",
    "register_server_optimizer",
    "run_federated",
    "run_rounds",
]
__getattr__ = lazy_names(__name__, _LAZY)

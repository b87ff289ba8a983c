"""One root exception for fedsim, with a subclass per concern.

The CLI turns any ``FedSimError`` into one line on stderr and exit code 2; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class FedSimError(Exception):
    """Root of every error fedsim raises on purpose."""


class ConfigError(FedSimError):
    """A configuration key is unknown, has the wrong type or an impossible value."""


class DataError(FedSimError):
    """Input data is missing, malformed or unusable."""


class CryptoError(FedSimError):
    """Encryption, key handling or decryption failed or was refused."""


class PrivacyError(FedSimError):
    """A differential-privacy setting whose guarantee cannot be stated."""


class ProtocolError(FedSimError):
    """A federated round cannot proceed (too few clients, refused decryption, ...)."""

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


class NoReceipt(ProtocolError):
    """Fewer live key holders that opened the evaluation a deployment receipt is asked
    for than ``fedsim verify`` needs (holders lost or replaced by a restart since, or the
    run resumed with a new key ceremony): no receipt that could never verify is written."""


class Refusal(ProtocolError):
    """A party refused a request outside its own policy (a key holder, checking a
    decryption); ``party`` and ``round`` (None at set-up) say who and when."""

    def __init__(self, message: str, *, party: str, round: int | None = None) -> None:
        super().__init__(message)
        self.party = party
        self.round = round

    def __reduce__(self):  # crosses Ray as an actor's error: keep the fields
        return (_refusal, (str(self), self.party, self.round))


def _refusal(message: str, party: str, round: int | None) -> Refusal:
    return Refusal(message, party=party, round=round)


class ReceiptConflict(Refusal):
    """Key holders' deployment receipts of one round do not all attest the model the
    coordinator deploys (another model named, or a signature that does not verify under
    the holder's set-up identity): the run is stopped and cannot be completed by a
    resume (new holders would sign anything the coordinator kept); ``party`` names every
    holder whose receipt fails, however many agree."""


class RoundFailed(ProtocolError):
    """A round that can be run again with every party restarted from the last
    checkpoint (`federation.max_restarts`); ``role`` names the party at fault, or
    ``quorum`` for a round short of ``min_clients``."""

    def __init__(self, role: str, message: str) -> None:
        super().__init__(message)
        self.role = role


class PartyLost(RoundFailed):
    """A party's process is gone (its actor died, or was stopped); ``role`` names it."""


class Interrupted(Exception):
    """A run stopped by SIGINT or SIGTERM (not a user mistake: exit code 130); the
    message says how far it got and how to resume it."""

"""A key holder: one secret-key share and the policy for using it.

The share lives inside `fedsim.crypto.KeyShareHolder` and never leaves it. Before a
partial decryption the holder checks the aggregate's manifest: the right run, a
round newer than any it decrypted, at least ``min_clients`` contributors, and the
aggregate's bytes match the manifest's digest. A refusal raises `ProtocolError` and
is kept in `refusals` so the coordinator can record it.
"""

from __future__ import annotations

from fedsim.errors import ProtocolError
from fedsim.protocol.manifest import Manifest, digest


class KeyHolder:
    """Policy wrapper around one `KeyShareHolder`; the plain class behind a Ray actor."""

    def __init__(
        self,
        run_id: str,
        context_bytes: bytes,
        *,
        index: int,
        num_holders: int,
        threshold: int | None,
        min_clients: int,
    ) -> None:
        from fedsim.crypto import KeyShareHolder

        self.run_id = run_id
        self.index = index
        self.min_clients = min_clients
        self._share = KeyShareHolder(context_bytes, index, num_holders, threshold)
        # rounds decrypted, per key used: this holder's own, or a recovered one's index
        self._decrypted: dict[int, set[int]] = {}
        self.refusals: list[str] = []

    def __reduce__(self):
        raise TypeError("a KeyHolder holds a secret-key share and must never be pickled")

    # ---- key ceremony
    def keygen(self, previous_public_key: bytes | None) -> bytes:
        """Generate this holder's share; returns the public key chained so far."""
        return self._share.keygen(previous_public_key)

    def shamir_shares(self) -> dict[int, bytes]:
        """Shamir shares of this holder's key for the other holders (t-of-n only)."""
        return self._share.shamir_shares()

    def receive_share(self, owner: int, share: bytes) -> None:
        self._share.receive_share(owner, share)

    def share_of(self, owner: int) -> bytes:
        """What this holder holds of ``owner``'s key, to help recover it when ``owner`` is gone."""
        return self._share.share_of(owner)

    def recover(self, missing: int, shares: dict[int, bytes]) -> None:
        """Stand in for a missing holder from at least ``threshold`` Shamir shares."""
        self._share.recover(missing, shares)

    # ---- decryption
    def check(self, manifest: Manifest, aggregate: bytes, *, key_index: int | None = None) -> None:
        """Raise `ProtocolError` (and record it) unless the manifest may be decrypted."""
        done = self._decrypted.get(self.index if key_index is None else key_index, set())
        problem = None
        if manifest.run_id != self.run_id:
            problem = f"aggregate is from run {manifest.run_id!r}, not {self.run_id!r}"
        elif manifest.round in done:
            problem = f"round {manifest.round} was already decrypted"
        elif done and manifest.round < max(done):
            problem = f"round {manifest.round} is older than round {max(done)}"
        elif manifest.count < self.min_clients:
            problem = (
                f"aggregate of round {manifest.round} has {manifest.count} contributor(s); "
                f"at least {self.min_clients} required"
            )
        elif len(set(manifest.contributors)) != manifest.count:
            problem = "manifest lists a contributor twice"
        elif digest(aggregate) != manifest.aggregate_digest:
            problem = f"aggregate of round {manifest.round} does not match its manifest digest"
        if problem is not None:
            message = f"keyholder-{self.index} refuses: {problem}"
            self.refusals.append(message)
            raise ProtocolError(message)

    def partial_decrypt(
        self,
        manifest: Manifest,
        aggregate: bytes,
        *,
        lead: bool,
        on_behalf_of: int | None = None,
    ) -> bytes:
        """This holder's partial decryption of an approved aggregate.

        With ``on_behalf_of``, the share recovered for that missing holder is used,
        under the same checks, counted separately per key.
        """
        key_index = self.index if on_behalf_of is None else on_behalf_of
        self.check(manifest, aggregate, key_index=key_index)
        self._decrypted.setdefault(key_index, set()).add(manifest.round)
        return self._share.partial_decrypt(aggregate, lead=lead, on_behalf_of=on_behalf_of)

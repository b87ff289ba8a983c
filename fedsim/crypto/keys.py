"""``KeyShareHolder``: one key holder's secret-key share, kept for its whole life.

The plain class behind a key-holder actor. It generates its share of the joint CKKS key
(OpenFHE's chained ``KeyGen`` / ``MultipartyKeyGen``: the joint secret is the sum of
the holders' secrets) and answers partial decryptions (``MultipartyDecryptLead`` for
the lead, ``MultipartyDecryptMain`` otherwise); with a flooding context OpenFHE floods
every share, see FLOODING.md. No method returns the share, and the object refuses to be
pickled or copied. Deciding WHAT to decrypt is the protocol's job
(`fedsim.protocol.keyholder`); this class only does the cryptography.

t-of-n (``threshold`` t given; Mouchet, Troncoso-Pastoriza, Bossuat and Hubaux, PETS
2021; as in Lattigo's threshold scheme). Every holder i Shamir-shares its secret s_i
with a random polynomial f_i of degree t - 1, f_i(0) = s_i, per RNS modulus
(``fedsim.crypto.shamir``), and gives f_i(j) to holder j, who keeps the sum of what it
received, S_j = sum_i f_i(j): a Shamir share of the joint secret s = sum_i s_i. Any set
T of at least t holders decrypts with the Lagrange-weighted keys lambda_j(T) S_j,
whose sum over T is s. No key is ever rebuilt, so losing a holder hands nobody a second
one; fewer than t holders together learn nothing about s. OpenFHE's
``ShareKeys``/``RecoverSharedKey`` cannot move shares between processes in these
bindings (``DCRTPoly`` has no serialization, ``PrivateKey`` no setter), so the
residues go through the key's JSON serialization (``fedsim.crypto._secret_key``).
``outgoing_shares`` and ``receive_share`` are for the holder's own protocol code, which
seals every share for its receiver (`fedsim.crypto.identity`); nothing relays them in
the clear.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NoReturn

import numpy as np
import openfhe as fhe

from fedsim.crypto import _secret_key, shamir
from fedsim.crypto.batch import encode_batch, iter_batch
from fedsim.crypto.cipher import deserialize_items
from fedsim.crypto.context import CKKSContext
from fedsim.errors import CryptoError

_BLOCK = 64  # ciphertexts per MultipartyDecrypt call


class KeyShareHolder:
    """Holds secret-key share ``index`` of ``num_holders`` (t-of-n when ``threshold``)."""

    def __init__(
        self, context_bytes: bytes, index: int, num_holders: int, threshold: int | None = None
    ) -> None:
        self._context = CKKSContext.from_bytes(context_bytes)
        if not 0 <= index < num_holders:
            raise CryptoError(f"key holder index {index} outside 0..{num_holders - 1}")
        if num_holders > self._context.max_key_holders:
            raise CryptoError(
                f"{num_holders} key holders, but the context's flooding is sized for at most "
                f"{self._context.max_key_holders}; create it with a larger max_key_holders"
            )
        if threshold is not None and not num_holders / 2 < threshold <= num_holders:
            raise CryptoError(
                f"threshold {threshold} for {num_holders} key holders must satisfy "
                f"{num_holders}/2 < threshold <= {num_holders}"
            )
        self.index = index
        self.num_holders = num_holders
        self.threshold = threshold
        self._secret: Any = None
        self._moduli: tuple[int, ...] = ()
        self._public_key: bytes | None = None
        self._outgoing: dict[int, bytes] | None = None
        self._held: dict[int, shamir.Share] = {}  # owner -> f_owner(this holder)
        self._weighted: dict[tuple[int, ...], Any] = {}  # participants -> lambda_j S_j key

    # Never pickled, never copied: the share lives and dies in this process.
    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        raise CryptoError("KeyShareHolder holds a secret-key share and cannot be pickled")

    def __reduce__(self) -> NoReturn:
        raise CryptoError("KeyShareHolder holds a secret-key share and cannot be pickled")

    def __getstate__(self) -> NoReturn:
        raise CryptoError("KeyShareHolder holds a secret-key share and cannot be pickled")

    def __repr__(self) -> str:
        mode = f"{self.threshold}-of-{self.num_holders}" if self.threshold else "n-of-n"
        return f"KeyShareHolder(index={self.index}, {mode}, has_key={self._secret is not None})"

    @property
    def public_key(self) -> bytes | None:
        """What ``keygen`` returned (the joint public key for the last holder)."""
        return self._public_key

    def keygen(self, previous_public_key: bytes | None) -> bytes:
        """Generate this share; chain on the previous holder's public key (None for 0)."""
        if self._secret is not None:
            raise CryptoError(f"key holder {self.index} already generated its key share")
        if (previous_public_key is None) != (self.index == 0):
            raise CryptoError(
                "holder 0 starts the key chain (previous_public_key=None); "
                f"holder {self.index} needs the previous holder's public key"
            )
        cc = self._context.openfhe
        if previous_public_key is None:
            pair = cc.KeyGen()
        else:
            try:
                previous = fhe.DeserializePublicKeyString(previous_public_key, fhe.BINARY)
                pair = cc.MultipartyKeyGen(previous)
            except RuntimeError as exc:
                raise CryptoError(f"previous public key unusable: {exc}") from exc
        self._secret = pair.secretKey
        self._moduli = tuple(_secret_key.read(pair.secretKey).moduli)
        self._public_key = fhe.Serialize(pair.publicKey, fhe.BINARY)
        return self._public_key

    def partial_decrypt(self, aggregate: bytes | Iterable[bytes | memoryview], *, lead: bool,
                        participants: tuple[int, ...] | None = None) -> bytes:
        """Partial decryption (a share batch) of an aggregate: a ciphertext batch, or its
        serialized ciphertexts one at a time (`fedsim.crypto.CiphertextSum.items`).

        Exactly one share per fusion is the lead. n-of-n: this holder's own secret, and
        ``participants`` must be every holder (or None). t-of-n: the key is
        lambda_j(participants) S_j, for a set of at least ``threshold`` holders that
        includes this one.
        """
        if isinstance(aggregate, (bytes, bytearray, memoryview, np.ndarray)):
            aggregate = iter_batch(aggregate, kind="ciphertext")
        key = self._key_for(participants)
        cc = self._context.openfhe
        decrypt = cc.MultipartyDecryptLead if lead else cc.MultipartyDecryptMain
        payloads: list[bytes] = []
        block: list[Any] = []

        def flush() -> None:
            try:
                shares = decrypt(block, key)
            except RuntimeError as exc:
                raise CryptoError(f"partial decryption failed: {exc}") from exc
            payloads.extend(fhe.Serialize(share, fhe.BINARY) for share in shares)
            block.clear()

        # A block of ciphertexts per OpenFHE call (fewer crossings of the Python
        # boundary); peak memory stays near input + output bytes.
        for ct in deserialize_items(self._context, aggregate, kind="ciphertext"):
            block.append(ct)
            if len(block) == _BLOCK:
                flush()
        if block:
            flush()
        return encode_batch(payloads, kind="lead-share" if lead else "share")

    def _key_for(self, participants: tuple[int, ...] | None) -> Any:
        secret = self._require_secret()
        everyone = tuple(range(self.num_holders))
        if self.threshold is None:
            if participants not in (None, everyone):
                raise CryptoError(f"n-of-n decryption needs every holder, got {participants}")
            return secret
        if participants is None:
            raise CryptoError("t-of-n decryption needs the set of participating holders")
        chosen = tuple(sorted(set(participants)))
        if len(chosen) != len(participants) or not set(chosen) <= set(everyone):
            raise CryptoError(f"participants must be distinct holders of 0..{self.num_holders - 1}"
                              f", got {participants}")
        if self.index not in chosen or len(chosen) < self.threshold:
            raise CryptoError(f"holder {self.index} decrypts only as one of at least "
                              f"{self.threshold} participants, got {list(chosen)}")
        if chosen not in self._weighted:
            combined = self._combined()
            moduli = self._moduli
            towers = [shamir.scale(tower, shamir.lagrange_at_zero(self.index, chosen, q), q)
                      for tower, q in zip(combined, moduli, strict=True)]
            self._weighted[chosen] = _secret_key.write(_secret_key.read(secret), towers)
        return self._weighted[chosen]

    def _combined(self) -> list[Any]:
        """S_j = sum over owners of f_owner(j): this holder's share of the joint secret."""
        if self.index not in self._held:
            self.outgoing_shares()  # makes f_self, and keeps f_self(j) for this holder
        missing = set(range(self.num_holders)) - set(self._held)
        if missing:
            raise CryptoError(f"holder {self.index} has no Shamir share from holder(s) "
                              f"{sorted(missing)}; the t-of-n set-up is incomplete")
        return shamir.add([share.towers for share in self._held.values()], self._moduli)

    # ---- t-of-n set-up -----------------------------------------------------------
    def outgoing_shares(self) -> dict[int, bytes]:
        """f_self(j) for every OTHER holder j, serialized (same answer on every call).

        For this holder's protocol code only, which seals each for its receiver.
        """
        if self.threshold is None:
            raise CryptoError("n-of-n key holders have no Shamir shares; set a threshold")
        if self._outgoing is None:
            residues = _secret_key.read(self._require_secret())
            split = shamir.split(residues.towers, residues.moduli, threshold=self.threshold,
                                 holders=range(self.num_holders))
            shares = {h: shamir.Share(self._context.fingerprint, self.index, h, self.threshold,
                                      self.num_holders, tuple(residues.moduli), tuple(towers))
                      for h, towers in split.items()}
            self._held[self.index] = shares.pop(self.index)
            self._outgoing = {h: s.to_bytes() for h, s in shares.items()}
        return dict(self._outgoing)

    def receive_share(self, owner: int, share: bytes) -> None:
        """Keep f_owner(this holder), from holder ``owner`` (once)."""
        if owner == self.index or owner in self._held:
            raise CryptoError(f"holder {self.index} already holds a share of holder {owner}")
        self._held[owner] = self._parse(share, owner=owner, holder=self.index)
        self._weighted.clear()

    def _parse(self, blob: bytes, *, owner: int, holder: int) -> shamir.Share:
        share = shamir.Share.from_bytes(blob)
        self._require_secret()
        ring = self._context.ring_dimension
        if (
            share.context != self._context.fingerprint
            or share.moduli != self._moduli
            or any(t.size != ring for t in share.towers)
        ):
            raise CryptoError(f"share of holder {owner}'s key is for another context")
        if (share.owner, share.holder) != (owner, holder):
            raise CryptoError(
                f"share is holder {share.holder}'s share of holder {share.owner}'s key, "
                f"expected holder {holder}'s share of holder {owner}'s key"
            )
        if (share.threshold, share.num_holders) != (self.threshold, self.num_holders):
            raise CryptoError(
                f"share made for {share.threshold}-of-{share.num_holders}, "
                f"this holder is {self.threshold}-of-{self.num_holders}"
            )
        return share

    def _require_secret(self) -> Any:
        if self._secret is None:
            raise CryptoError(f"key holder {self.index} has no key yet; call keygen first")
        return self._secret

    def _secret_probe(self, length: int = 64, *, text: bool = False) -> bytes:
        """TEST ONLY, private: a slice of the serialized secret to search leaks for.

        Default: ``length`` bytes from the middle of the residue block exactly as it
        appears in ``Serialize(sk, BINARY)``. ``text=True``: the decimal digits of one
        residue as they appear in ``Serialize(sk, JSON)``.
        """
        secret = self._require_secret()
        if text:
            tower = _secret_key.read(secret).towers[0]
            return str(int(tower[tower.size // 2])).encode("ascii")
        raw = _secret_key.binary_coefficients(secret)
        middle = max(0, len(raw) // 2 - length // 2)
        return raw[middle : middle + length]

"""``KeyShareHolder``: one key holder's secret-key share, kept for its whole life.

The plain class behind a key-holder actor. It generates its share of the joint CKKS key
(OpenFHE's chained ``KeyGen`` / ``MultipartyKeyGen``) and answers partial decryptions
(``MultipartyDecryptLead`` for the lead, ``MultipartyDecryptMain`` otherwise); with a
flooding context (``secure``, ``test``) OpenFHE floods every share, see FLOODING.md. No
method returns the share or its serialization, and the object refuses to be pickled or
copied. Deciding WHAT to decrypt (current round, enough contributors) is the protocol's
job; this class only does the cryptography.

t-of-n (``threshold`` given). OpenFHE's ``ShareKeys``/``RecoverSharedKey`` cannot move
shares between processes in these bindings (``DCRTPoly`` has no serialization,
``PrivateKey`` no setter), so fedsim Shamir-shares each holder's secret residues itself
(``fedsim.crypto.shamir``) through the key's JSON serialization
(``fedsim.crypto._secret_key``); the tests check the result against OpenFHE's in-process
``RecoverSharedKey``. Flow: every holder sends ``shamir_shares()[j]`` to holder j, who
calls ``receive_share``. When holder m is gone, a survivor collects ``share_of(m)`` from
at least ``threshold - 1`` other survivors, calls ``recover(m, shares)`` and then also
answers ``partial_decrypt(..., on_behalf_of=m)``.

Warnings. Recovery hands the missing holder's WHOLE key share to the recovering holder:
that holder then holds two shares, which counts against the collusion threshold. Shamir
shares are secret-key material: in a deployment they travel only over authenticated,
encrypted channels between key holders, never through the coordinator or object store.
"""

from __future__ import annotations

from typing import Any, NoReturn

import openfhe as fhe

from fedsim.crypto import _secret_key, shamir
from fedsim.crypto.batch import encode_batch
from fedsim.crypto.cipher import iter_ciphertexts
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
        self._held: dict[int, shamir.Share] = {}
        self._recovered: dict[int, Any] = {}

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

    def partial_decrypt(
        self, aggregate: bytes, *, lead: bool, on_behalf_of: int | None = None
    ) -> bytes:
        """Partial decryption (a share batch) of an aggregate ciphertext batch.

        Exactly one share per fusion is the lead. ``on_behalf_of`` decrypts with a key
        recovered by ``recover`` instead of this holder's own.
        """
        if on_behalf_of is None:
            key = self._require_secret()
        elif on_behalf_of in self._recovered:
            key = self._recovered[on_behalf_of]
        else:
            raise CryptoError(f"holder {self.index} has not recovered holder {on_behalf_of}")
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
        for ct in iter_ciphertexts(self._context, aggregate, kind="ciphertext"):
            block.append(ct)
            if len(block) == _BLOCK:
                flush()
        if block:
            flush()
        return encode_batch(payloads, kind="lead-share" if lead else "share")

    # ---- t-of-n -------------------------------------------------------------------
    def shamir_shares(self) -> dict[int, bytes]:
        """This holder's key split for every OTHER holder (same answer on every call)."""
        if self.threshold is None:
            raise CryptoError("n-of-n key holders have no Shamir shares; set a threshold")
        if self._outgoing is None:
            residues = _secret_key.read(self._require_secret())
            split = shamir.split(
                residues.towers,
                residues.moduli,
                threshold=self.threshold,
                holders=range(self.num_holders),
            )
            shares = {
                h: shamir.Share(
                    self._context.fingerprint,
                    self.index,
                    h,
                    self.threshold,
                    self.num_holders,
                    tuple(residues.moduli),
                    tuple(towers),
                )
                for h, towers in split.items()
            }
            self._held[self.index] = shares.pop(self.index)
            self._outgoing = {h: s.to_bytes() for h, s in shares.items()}
        return dict(self._outgoing)

    def receive_share(self, owner: int, share: bytes) -> None:
        """Keep holder ``owner``'s Shamir share addressed to this holder."""
        self._held[owner] = self._parse(share, owner=owner, holder=self.index)

    def share_of(self, owner: int) -> bytes:
        """The share of ``owner``'s key this holder keeps (for a recovering holder)."""
        if owner not in self._held:
            raise CryptoError(f"holder {self.index} holds no share of holder {owner}'s key")
        return self._held[owner].to_bytes()

    def recover(self, missing: int, shares: dict[int, bytes]) -> None:
        """Rebuild holder ``missing``'s key from ``threshold`` shares (own one included).

        ``shares`` maps holder index to that holder's ``share_of(missing)``. Extra shares
        beyond the threshold are checked for consistency.
        """
        if self.threshold is None:
            raise CryptoError("n-of-n key holders cannot recover a missing holder")
        if missing == self.index or not 0 <= missing < self.num_holders:
            raise CryptoError(f"holder {self.index} cannot recover holder {missing}")
        points = {h: self._parse(s, owner=missing, holder=h) for h, s in shares.items()}
        if missing in self._held:
            points.setdefault(self.index, self._held[missing])
        if len(points) < self.threshold:
            raise CryptoError(
                f"recovering holder {missing}'s key needs {self.threshold} shares, "
                f"got {len(points)} (holders {sorted(points)})"
            )
        moduli = next(iter(points.values())).moduli
        base = dict(sorted(points.items())[: self.threshold])
        for h, extra in points.items():
            if h not in base:
                expected = shamir.interpolate(
                    {k: v.towers for k, v in base.items()}, moduli, at=shamir.point(h)
                )
                if any((a != b).any() for a, b in zip(expected, extra.towers, strict=True)):
                    raise CryptoError(f"share of holder {missing}'s key from {h} is inconsistent")
        towers = shamir.interpolate({k: v.towers for k, v in base.items()}, moduli)
        template = _secret_key.read(self._require_secret())
        self._recovered[missing] = _secret_key.write(template, towers)

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

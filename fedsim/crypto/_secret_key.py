"""Read and write the coefficient vectors of an OpenFHE CKKS secret key (private).

The Python bindings expose no setter for a ``PrivateKey`` and no serialization for the
``DCRTPoly`` it holds, but ``Serialize(sk, JSON)`` carries the key's residues per RNS
modulus and ``DeserializePrivateKeyString(text, JSON)`` reads them back. Verified for
openfhe 1.6.1.0.22.4: the residues sit at ``value0.ptr_wrapper.data.s.v[i].v.ptr_wrapper
.data.v`` (modulus at ``...data.m.v``), in EVALUATION (NTT) format; changing them and
deserializing yields a key that decrypts with the changed secret. Every operation fedsim
applies (sums, Shamir shares, Lagrange interpolation) is linear, so the NTT format is
no obstacle.

Nothing here returns key material to callers outside ``fedsim.crypto``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import openfhe as fhe

from fedsim.errors import CryptoError


@dataclass
class KeyResidues:
    """A secret key as residue vectors (uint64, one per RNS modulus) and its JSON frame."""

    frame: dict[str, Any]
    towers: list[np.ndarray]
    moduli: list[int]


def _tower_nodes(frame: dict[str, Any]) -> list[dict[str, Any]]:
    try:
        return frame["value0"]["ptr_wrapper"]["data"]["s"]["v"]
    except (KeyError, TypeError) as exc:
        raise CryptoError("unsupported OpenFHE secret-key JSON layout") from exc


def read(secret_key: fhe.PrivateKey) -> KeyResidues:
    """Return the residues of ``secret_key``."""
    frame = json.loads(fhe.Serialize(secret_key, fhe.JSON))
    towers, moduli = [], []
    for node in _tower_nodes(frame):
        try:
            data = node["v"]["ptr_wrapper"]["data"]
            towers.append(np.array(data["v"], dtype=np.uint64))
            moduli.append(int(data["m"]["v"]))
        except (KeyError, TypeError) as exc:
            raise CryptoError("unsupported OpenFHE secret-key JSON layout") from exc
    return KeyResidues(frame, towers, moduli)


def write(template: KeyResidues, towers: list[np.ndarray]) -> fhe.PrivateKey:
    """Return a new ``PrivateKey`` like ``template`` but holding ``towers``."""
    nodes = _tower_nodes(template.frame)
    if len(towers) != len(nodes):
        raise CryptoError(f"expected {len(nodes)} RNS towers, got {len(towers)}")
    for node, tower, q in zip(nodes, towers, template.moduli, strict=True):
        data = node["v"]["ptr_wrapper"]["data"]
        if tower.shape != (len(data["v"]),) or np.any(tower >= np.uint64(q)):
            raise CryptoError("secret-key residues do not fit this context's ring")
        data["v"] = tower.tolist()
    try:
        return fhe.DeserializePrivateKeyString(json.dumps(template.frame), fhe.JSON)
    except RuntimeError as exc:  # OpenFHE raises RuntimeError on malformed input
        raise CryptoError(f"OpenFHE refused the rebuilt secret key: {exc}") from exc


def add(keys: list[fhe.PrivateKey]) -> fhe.PrivateKey:
    """Return the key whose secret is the sum of ``keys`` (the joint key of a key chain)."""
    parts = [read(k) for k in keys]
    total = []
    for i, q in enumerate(parts[0].moduli):
        acc = np.zeros_like(parts[0].towers[i], dtype=object)
        for part in parts:
            acc = (acc + part.towers[i].astype(object)) % q
        total.append(acc.astype(np.uint64))
    return write(parts[0], total)


def binary_coefficients(secret_key: fhe.PrivateKey) -> bytes:
    """The raw residue block as it appears inside ``Serialize(sk, BINARY)`` (tests only)."""
    blob = fhe.Serialize(secret_key, fhe.BINARY)
    raw = read(secret_key).towers[0].astype("<u8").tobytes()
    if blob.find(raw) < 0:
        raise CryptoError("secret-key residues not found in the BINARY serialization")
    return raw

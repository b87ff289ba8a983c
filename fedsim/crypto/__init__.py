"""CKKS threshold encryption for fedsim: profiles, contexts, packing, batches, key shares.

No Ray and no JAX here: key holders and the aggregator import only this package. Names
load on first use, so `fedsim.crypto.profiles` (read by the config) needs no OpenFHE.
"""

from __future__ import annotations

from fedsim._lazy import lazy_names

_WHERE = {
    "CKKSContext": "context",
    "ByteSum": "cipher",
    "CiphertextSum": "cipher",
    "Encryptor": "cipher",
    "ObjectSum": "cipher",
    "fuse": "fusion",
    "fuse_bytes": "fusion",
    "fuse_bytes_timed": "fusion",
    "fuse_timed": "fusion",
    "learn_share_layout": "fusion",
    "summation_for": "cipher",
    "KeyShareHolder": "keys",
    "Packer": "packing",
    "TreeSpec": "packing",
    "check_range": "packing",
    "flatten_tree": "packing",
    "unflatten_tree": "packing",
    "batch_kind": "batch",
    "decode_batch": "batch",
    "encode_batch": "batch",
    "Profile": "profiles",
    "get_profile": "profiles",
    "profile_names": "profiles",
    "register_profile": "profiles",
    "Opener": "opening",
    "UpdateSealer": "sealing",
    "raw": "raw",
    "slot_scale": "sealing",
}

__all__ = sorted(_WHERE)
__getattr__ = lazy_names(__name__, _WHERE)

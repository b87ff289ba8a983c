"""CKKS threshold encryption for fedsim: context profiles, packing, batches, key holders.

No Ray and no JAX here: key holders and the aggregator import only this package.
"""

from fedsim.crypto import raw
from fedsim.crypto.batch import batch_kind, decode_batch, encode_batch
from fedsim.crypto.cipher import CiphertextSum, Encryptor, fuse, fuse_timed
from fedsim.crypto.context import PROFILES, CKKSContext
from fedsim.crypto.keys import KeyShareHolder
from fedsim.crypto.packing import Packer, TreeSpec, check_range, flatten_tree, unflatten_tree

__all__ = [
    "PROFILES",
    "CKKSContext",
    "CiphertextSum",
    "Encryptor",
    "KeyShareHolder",
    "Packer",
    "TreeSpec",
    "batch_kind",
    "check_range",
    "decode_batch",
    "encode_batch",
    "flatten_tree",
    "fuse",
    "fuse_timed",
    "raw",
    "unflatten_tree",
]

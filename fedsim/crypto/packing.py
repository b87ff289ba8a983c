"""Parameter trees to flat vectors, and flat vectors to CKKS slot rows.

Pure numpy: nothing here touches OpenFHE, so clients can pack and check ranges before
any ciphertext exists.

* ``flatten_tree`` turns nested dicts / lists / tuples of arrays (Flax params, or
  anything with ``__array__``) into one float64 vector in a deterministic order (dict
  keys sorted by their string form) plus a picklable ``TreeSpec``; ``unflatten_tree``
  restores the exact structure, shapes and dtypes (integer and bool leaves are rounded
  to the nearest value first, since decrypted sums are approximate).
* ``Packer`` lays a vector out as ``[num_ciphertexts, values_per_ciphertext]`` rows with
  ``reserved`` values (by default one: the contribution weight) in the last slots of
  the last row, zeros elsewhere.
* ``check_range`` refuses packed updates whose sum over ``contributors`` could leave the
  range a context decrypts correctly: CKKS wraps silently, so this must be checked.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedsim.errors import CryptoError

# A tree skeleton: ("dict", ((key, node), ...)) | ("list", (node, ...)) |
# ("tuple", (node, ...)) | ("none",) | ("leaf", leaf_index).
Node = tuple


@dataclass(frozen=True)
class TreeSpec:
    """What ``unflatten_tree`` needs: the skeleton and, per leaf, path, shape and dtype.

    ``dtypes`` holds numpy dtype strings, or ``"py:int"`` / ``"py:float"`` / ``"py:bool"``
    for leaves that were plain Python scalars (they come back as such).
    """

    skeleton: Node
    paths: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]

    @property
    def num_values(self) -> int:
        """Length of the flat vector."""
        return int(sum(math.prod(s) for s in self.shapes))


def flatten_tree(tree: Any) -> tuple[np.ndarray, TreeSpec]:
    """Flatten ``tree`` into one contiguous float64 vector and its ``TreeSpec``."""
    leaves: list[np.ndarray] = []
    paths: list[str] = []
    dtypes: list[str] = []

    def visit(node: Any, path: str) -> Node:
        if isinstance(node, Mapping):
            items = sorted(node.items(), key=lambda kv: str(kv[0]))
            return ("dict", tuple((k, visit(v, f"{path}/{k}")) for k, v in items))
        if isinstance(node, (list, tuple)):
            kind = "list" if isinstance(node, list) else "tuple"
            return (kind, tuple(visit(v, f"{path}/{i}") for i, v in enumerate(node)))
        if node is None:
            return ("none",)
        if isinstance(node, (bool, int, float)) and not isinstance(node, np.generic):
            dtypes.append(f"py:{type(node).__name__}")
            array = np.asarray(node, dtype=np.float64)
        elif hasattr(node, "__array__") or isinstance(node, np.generic):
            array = np.asarray(node)
            if array.dtype.kind not in "biuf":
                raise CryptoError(f"leaf {path or '/'} has dtype {array.dtype}; only numbers pack")
            dtypes.append(array.dtype.str)
        else:
            raise CryptoError(f"leaf {path or '/'} is a {type(node).__name__}, not an array")
        leaves.append(array)
        paths.append(path or "/")
        return ("leaf", len(leaves) - 1)

    skeleton = visit(tree, "")
    shapes = tuple(tuple(int(d) for d in a.shape) for a in leaves)
    vector = np.empty(sum(a.size for a in leaves), dtype=np.float64)
    offset = 0
    for array in leaves:
        vector[offset : offset + array.size] = array.reshape(-1)
        offset += array.size
    return vector, TreeSpec(skeleton, tuple(paths), shapes, tuple(dtypes))


def unflatten_tree(vector: np.ndarray, spec: TreeSpec) -> Any:
    """Rebuild the tree ``flatten_tree`` described by ``spec`` from ``vector``."""
    vector = np.asarray(vector)
    if vector.ndim != 1 or vector.size != spec.num_values:
        raise CryptoError(
            f"vector of shape {vector.shape} does not match the tree ({spec.num_values} values)"
        )
    offsets = np.cumsum([0] + [math.prod(s) for s in spec.shapes])

    def leaf(i: int) -> Any:
        chunk = vector[offsets[i] : offsets[i + 1]].reshape(spec.shapes[i])
        dtype = spec.dtypes[i]
        if dtype.startswith("py:"):
            value = float(chunk)
            return {
                "py:float": float,
                "py:int": lambda v: int(round(v)),
                "py:bool": lambda v: bool(round(v)),
            }[dtype](value)
        target = np.dtype(dtype)
        if target.kind in "biu":
            chunk = np.rint(chunk)
        return chunk.astype(target)

    def build(node: Node) -> Any:
        kind = node[0]
        if kind == "leaf":
            return leaf(node[1])
        if kind == "dict":
            return {k: build(v) for k, v in node[1]}
        if kind == "list":
            return [build(v) for v in node[1]]
        if kind == "tuple":
            return tuple(build(v) for v in node[1])
        return None

    return build(spec.skeleton)


def check_range(packed: np.ndarray, contributors: int, bound: float) -> None:
    """Raise ``CryptoError`` unless ``contributors * max|packed| <= bound``.

    ``bound`` is a context's ``value_bound``: the largest magnitude of any slot of a
    decrypted sum that still decrypts correctly. Beyond it CKKS wraps around silently.
    """
    if contributors < 1:
        raise CryptoError(f"contributors must be at least 1, got {contributors}")
    packed = np.asarray(packed)
    if not np.all(np.isfinite(packed)):
        raise CryptoError("packed update holds NaN or infinite values")
    peak = float(np.max(np.abs(packed))) if packed.size else 0.0
    worst = contributors * peak
    if worst > bound:
        # No value in the text: it may reach the coordinator, and the peak is a client's.
        raise CryptoError(
            f"the sum of {contributors} contributions could exceed the bound {bound:.4g} "
            "this context decrypts correctly; scale updates down (clip them, normalise "
            "weights by the expected total)"
        )


class Packer:
    """Lays a vector of ``num_values`` floats and ``reserved`` more values in CKKS slot rows.

    The reserved values fill the last ``reserved`` slots of the last row, in order; by
    convention the contribution weight is the last of them.
    """

    check_range = staticmethod(check_range)

    def __init__(self, num_values: int, values_per_ciphertext: int, *, reserved: int = 1) -> None:
        if num_values < 0 or values_per_ciphertext < 1 or reserved < 1:
            raise CryptoError(
                f"bad packing: num_values={num_values}, "
                f"values_per_ciphertext={values_per_ciphertext}, reserved={reserved}"
            )
        self.num_values = num_values
        self.values_per_ciphertext = values_per_ciphertext
        self.reserved = reserved
        self.num_ciphertexts = -(-(num_values + reserved) // values_per_ciphertext)

    @property
    def shape(self) -> tuple[int, int]:
        """Shape of a packed array."""
        return (self.num_ciphertexts, self.values_per_ciphertext)

    def pack(self, vector: np.ndarray, *reserved: float) -> np.ndarray:
        """Return a float64 array of ``shape``: values, zero padding, reserved values last."""
        vector = np.asarray(vector, dtype=np.float64)
        if vector.shape != (self.num_values,):
            raise CryptoError(f"expected a vector of {self.num_values} values, got {vector.shape}")
        if len(reserved) != self.reserved:
            raise CryptoError(f"expected {self.reserved} reserved value(s), got {len(reserved)}")
        packed = np.zeros(self.shape, dtype=np.float64)
        flat = packed.reshape(-1)
        flat[: self.num_values] = vector
        flat[flat.size - self.reserved :] = reserved
        return packed

    def unpack_all(self, packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(vector, reserved values)`` from a packed (or decrypted, summed) array."""
        packed = np.asarray(packed, dtype=np.float64)
        if packed.shape != self.shape:
            raise CryptoError(f"expected packed shape {self.shape}, got {packed.shape}")
        flat = packed.reshape(-1)
        return flat[: self.num_values].copy(), flat[flat.size - self.reserved :].copy()

    def unpack(self, packed: np.ndarray) -> tuple[np.ndarray, float]:
        """Return ``(vector, weight)``: the vector and the last reserved value."""
        vector, reserved = self.unpack_all(packed)
        return vector, float(reserved[-1])

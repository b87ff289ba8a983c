"""A running modular sum of residue arrays read from serialized batches
(`fedsim.crypto.raw`), added unreduced: what the byte-level ciphertext sum and the
fusion of decryption shares both keep."""

from __future__ import annotations

import numpy as np

from fedsim.crypto import raw
from fedsim.errors import CryptoError


class LazySum:
    """A running sum of batches' residues (`read_batch` then `add_batch`), added
    unreduced and reduced modulo q only when read (`reduced`) or before an add that
    could wrap uint64 (60-bit moduli leave room for 16 batches)."""

    def __init__(self, layout: raw.Layout) -> None:
        self.layout = layout
        self.residues: np.ndarray | None = None
        self._capacity = raw.lazy_capacity(layout)
        self._unreduced = 0  # batches summed since the residues were last reduced

    @property
    def count(self) -> int:
        """Items per batch (0 before the first)."""
        return 0 if self.residues is None else self.residues.shape[0]

    def add(self, blob: bytes | memoryview, *, kind: str, crc: bool = True) -> None:
        """Add a batch with `add_batch`'s checks; a refused one leaves the sum as is."""
        if self.residues is None:
            self.residues, self._unreduced = raw.read_batch(blob, self.layout, kind=kind,
                                                        crc=crc), 1
            return
        lazy = self._unreduced < self._capacity
        if not lazy:
            self._reduce()
        raw.add_batch(self.residues, blob, self.layout, kind=kind, crc=crc, lazy=lazy)
        self._unreduced = self._unreduced + 1 if lazy else 1

    def reduced(self) -> np.ndarray:
        """The residues modulo q (reduced in place); raises before the first batch."""
        if self.residues is None:
            raise CryptoError("no batch has been added; nothing to return")
        self._reduce()
        return self.residues

    def _reduce(self) -> None:
        if self._unreduced > 1:
            raw.reduce_residues(self.residues, self.layout)
        self._unreduced = 1

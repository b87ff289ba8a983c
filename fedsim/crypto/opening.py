"""Coordinator side of threshold decryption, pure crypto: shares in, the sum out.

`Opener` fuses one partial-decryption batch per key holder into the packed sum,
unpacks the vector and its reserved slots and divides the public scale out. It holds
no secret key and calls no party: asking the key holders is the protocol's business
(`fedsim.protocol.schemes.threshold`). Fusion sums the shares in their serialized
bytes once their layout is learned from the first round's shares (`fuse_bytes`); a
round whose shares do not fit that layout (shares of keys rebuilt through JSON, as the
t-of-n Lagrange-weighted keys are, carry other metadata) is fused through OpenFHE
objects (`fuse`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from fedsim.crypto import raw
from fedsim.crypto.context import CKKSContext
from fedsim.crypto.fusion import fuse_bytes_timed, fuse_timed, learn_share_layout
from fedsim.crypto.packing import Packer
from fedsim.errors import CryptoError


class Opener:
    """Shares of one aggregate -> ``[vector..., reserved...]`` as float64, unscaled."""

    def __init__(self, context: CKKSContext, num_values: int, *, reserved: int) -> None:
        self.context = context
        self.packer = Packer(num_values, context.values_per_ciphertext, reserved=reserved)
        self._layout: raw.Layout | None = None
        self._layout_learned = False

    @property
    def num_ciphertexts(self) -> int:
        return self.packer.num_ciphertexts

    def open(self, shares: Sequence[bytes], *, scale: float) -> tuple[np.ndarray, float]:
        """The unscaled flat sum and the seconds spent fusing."""
        t0 = time.perf_counter()
        if not self._layout_learned:
            self._layout = learn_share_layout(self.context, shares)
            self._layout_learned = True
        packed = None
        if self._layout is not None:
            try:
                packed, _ = fuse_bytes_timed(self.context, shares, self._layout)
            except CryptoError:
                packed = None  # another share layout: OpenFHE objects check everything
        if packed is None:
            packed, _ = fuse_timed(self.context, shares)
        vector, reserved = self.packer.unpack_all(packed)
        flat = np.concatenate([vector, reserved]) / scale
        return flat, time.perf_counter() - t0

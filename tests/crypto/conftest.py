"""Shared fixtures: contexts are built once per session (the noise estimation is random)."""

from __future__ import annotations

import pytest

from fedsim.crypto import CKKSContext, KeyShareHolder
from fedsim.errors import CryptoError


@pytest.fixture(scope="session")
def test_ctx() -> CKKSContext:
    return CKKSContext.create("test", allow_insecure=True)


@pytest.fixture(scope="session")
def fast_ctx() -> CKKSContext:
    return CKKSContext.create("fast")


@pytest.fixture(scope="session")
def secure_ctx() -> CKKSContext:
    return CKKSContext.create("secure")


def _make_holders(
    ctx: CKKSContext, n: int = 3, threshold: int | None = None
) -> tuple[list[KeyShareHolder], bytes]:
    """``n`` holders with a chained joint key; returns (holders, joint public key)."""
    blob = ctx.to_bytes()
    holders = [KeyShareHolder(blob, i, n, threshold) for i in range(n)]
    key = None
    for holder in holders:
        key = holder.keygen(key)
    return holders, key


@pytest.fixture
def make_holders():
    """The ``_make_holders`` factory (a fixture, so tests need no conftest import)."""
    return _make_holders


@pytest.fixture
def holders(test_ctx: CKKSContext) -> tuple[list[KeyShareHolder], bytes]:
    return _make_holders(test_ctx)


def _rejected(total, batch, contributor: str, match: str) -> None:
    """``total.add`` refuses ``batch`` naming ``contributor``, and the sum is unchanged."""
    before = (total.result(), total.count, total.digests)
    with pytest.raises(CryptoError, match=match) as info:
        total.add(batch, contributor=contributor)
    assert contributor in str(info.value)
    assert (total.result(), total.count, total.digests) == before


@pytest.fixture
def rejected():
    """The ``_rejected`` check (a fixture, so tests need no conftest import)."""
    return _rejected

"""Fixtures for the cluster tests: one two-node loopback Ray cluster per module."""

from __future__ import annotations

import pytest
from raycluster import LocalCluster


@pytest.fixture(scope="module")
def cluster():
    """A head and one worker node (2 CPUs each), stopped by pid afterwards."""
    c = LocalCluster()
    try:
        yield c.start(workers=1)
    finally:
        c.stop()

"""Shared small synthetic tables for the data-layer tests (fixed seeds, fast to build)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from fedsim.data import SynthSpec, generate_ehr

_SMALL = SynthSpec(num_hospitals=4, patients_per_hospital=300, seed=7)


@pytest.fixture(scope="session")
def small_spec() -> SynthSpec:
    return _SMALL


@pytest.fixture(scope="session")
def small_table() -> pa.Table:
    return generate_ehr(_SMALL)


@pytest.fixture(scope="session")
def small_split_table() -> pa.Table:
    return generate_ehr(_SMALL, with_split=True)

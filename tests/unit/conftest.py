"""Fixtures shared by the unit tests."""

from __future__ import annotations

from types import ModuleType

import pytest

import native
from tests.helpers import skip_or_fail
from tests.unit.schedkit import FakeClock


@pytest.fixture(params=["extension", "fallback"])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    """Each native test runs on the compiled extension and on the fallback."""
    if request.param == "extension":
        if native.extension is None:
            skip_or_fail(f"extension not loaded: {native.LOAD_ERROR}")
        return native.extension
    return native.fallback


@pytest.fixture
def clock() -> FakeClock:
    """The scheduler tests' injected clock, starting at 0."""
    return FakeClock()

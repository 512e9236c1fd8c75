"""The lab measures the build a user runs: bytecode compiled, the native extension loaded."""

from __future__ import annotations

import pytest

from perf.lab.netns import LabError
from perf.lab.systems import damselfly


def test_prepare_reports_the_native_build_and_the_commit():
    build = damselfly.prepare()
    assert build["native"] is True
    assert build["commit"] != ""


def test_prepare_refuses_to_measure_the_fallback(monkeypatch):
    monkeypatch.setenv("DAMSELFLY_NO_NATIVE", "1")
    with pytest.raises(LabError, match="pure-Python fallback"):
        damselfly.prepare()


def test_the_commit_is_unknown_without_git(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert damselfly._commit() == "unknown"

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


def test_lab_processes_start_without_site_and_with_its_path():
    import os
    import sys

    import aiohttp

    assert damselfly._module("engine.cli.dfget")[:3] == [sys.executable, "-S", "-m"]
    path = damselfly._env()["PYTHONPATH"].split(os.pathsep)
    assert path[0] == damselfly.REPO                      # the tree under test comes first
    assert any(aiohttp.__file__.startswith(p + os.sep) for p in path[1:])


def test_prepare_refuses_a_path_that_cannot_start_damselfly(monkeypatch):
    monkeypatch.setattr(damselfly, "_path", lambda: damselfly.REPO)   # no site-packages
    with pytest.raises(LabError, match="cannot import damselfly"):
        damselfly.prepare()

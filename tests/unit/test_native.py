"""The native facade: which implementation is chosen, the kill switch, and
that the facade's functions reach it. The behaviour of each call is tested,
for both implementations, in test_native_io.py and test_native_atomics.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import native
from tests.helpers import REPO, skip_or_fail
from engine.errors import BadInput, IOFailure


PROBE = r"""
import json, mmap, os, socket, sys, tempfile
import native
out = {"NATIVE": native.NATIVE, "LOAD_ERROR": native.LOAD_ERROR,
       "extension_loaded": native.extension is not None,
       "words": native.SharedWords.__module__}
with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "f")
    with open(path, "w+b") as f:
        f.write(b"hello world")
        f.flush()
        a, b = socket.socketpair()
        with a, b:
            out["sent"] = native.sendfile(a.fileno(), f.fileno(), 6, 100)
            out["got"] = b.recv(100).decode()
        f.truncate(64)
        with mmap.mmap(f.fileno(), 64) as mm:
            with native.SharedWords(mm, lock_fd=f.fileno(), offset=16) as w:
                out["old"] = w.fetch_add(0, 5)
                out["new"] = w.load(0)
        try:
            native.punch_hole(f.fileno(), 0, 8)
            out["punch"] = "ok"
        except Exception as exc:
            out["punch"] = type(exc).__name__
print(json.dumps(out))
"""


def _probe(kill_switch: str | None) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k != "DAMSELFLY_NO_NATIVE"}
    if kill_switch is not None:
        env["DAMSELFLY_NO_NATIVE"] = kill_switch
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_extension_is_built() -> None:
    """pip install (-e) must have compiled native._native."""
    if os.environ.get("DAMSELFLY_NO_NATIVE", "") not in ("", "0"):
        pytest.skip("the kill switch is set for this run")
    assert native.extension is not None, native.LOAD_ERROR
    assert native.NATIVE is True
    assert native.LOAD_ERROR is None


def test_kill_switch_selects_the_fallback() -> None:
    out = _probe("1")
    assert out["NATIVE"] is False
    assert out["extension_loaded"] is False
    assert out["LOAD_ERROR"] == "disabled by DAMSELFLY_NO_NATIVE"
    assert out["words"] == "native.fallback"
    assert (out["sent"], out["got"]) == (5, "world")
    assert (out["old"], out["new"]) == (0, 5)
    assert out["punch"] == "IOFailure"


@pytest.mark.parametrize("value", [None, "", "0"])
def test_without_kill_switch_the_extension_is_used(value: str | None) -> None:
    if native.extension is None:
        skip_or_fail(f"extension not loaded: {native.LOAD_ERROR}")
    out = _probe(value)
    assert out["NATIVE"] is True
    assert out["words"] == "native.extension"
    assert (out["sent"], out["got"]) == (5, "world")
    assert (out["old"], out["new"]) == (0, 5)
    assert out["punch"] == "ok"


def test_facade_functions_validate_and_reach_the_implementation(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"")
    with open(path, "r+b") as f:
        native.fallocate(f.fileno(), 0, 4096)
        assert os.fstat(f.fileno()).st_size == 4096
        native.sync_file_range(f.fileno(), 0, 0)
        native.fadvise(f.fileno(), 0, 0, native.Advice.SEQUENTIAL)
        with pytest.raises(BadInput):
            native.fallocate(f.fileno(), -1, 4096)
        if native.NATIVE:
            native.punch_hole(f.fileno(), 0, 4096)
        else:
            with pytest.raises(IOFailure):
                native.punch_hole(f.fileno(), 0, 4096)
        assert os.fstat(f.fileno()).st_size == 4096


def test_advice_values_are_the_platform_constants() -> None:
    assert [(a.name, int(a)) for a in native.Advice] == [
        ("NORMAL", os.POSIX_FADV_NORMAL),
        ("SEQUENTIAL", os.POSIX_FADV_SEQUENTIAL),
        ("RANDOM", os.POSIX_FADV_RANDOM),
        ("WILLNEED", os.POSIX_FADV_WILLNEED),
        ("DONTNEED", os.POSIX_FADV_DONTNEED),
        ("NOREUSE", os.POSIX_FADV_NOREUSE),
    ]


def test_both_implementations_export_the_same_names() -> None:
    assert native.extension is None or set(native.extension.__all__) == set(native.fallback.__all__)
    for name in native.fallback.__all__:
        assert hasattr(native, name), name

"""dfget starts once per download (40 at once in the swarm lab, on 2 cores):
what it imports is CPU on every download's critical path.

These modules are imported only where they are used (engine.types,
engine.cli, engine.cli.daemonclient, engine.config); measured, the four
together were ~15 ms of dfget's ~100 ms of CPU per start. The check runs
in a fresh interpreter without site's .pth hooks (-S), whose own imports
(an editable install's finder, for one) would hide what dfget pulls in.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig

from tests.helpers import REPO

LAZY = ("hashlib", "logging", "subprocess", "tomllib")


def test_dfget_imports_none_of_the_modules_it_does_not_need():
    paths = [REPO, sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    code = ("import sys, engine.cli.dfget\n"
            f"print(' '.join(m for m in {LAZY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(paths)},
                         check=True, timeout=60).stdout.strip()
    assert out == ""


def test_the_lazy_modules_still_work_where_they_are_used(tmp_path):
    from engine.cli import setup_logging
    from engine.config import read_toml
    from engine.types import Digest, TaskId

    assert TaskId.of("a", "b") == TaskId.of("a", "b") != TaskId.of("ab")
    assert Digest.sha256_of(b"x") == Digest.parse(
        "sha256:2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881")
    assert Digest.parse("md5:" + "0" * 32).hasher().name == "md5"
    path = tmp_path / "c.toml"
    path.write_text('log_level = "info"\n')
    assert read_toml(str(path)) == {"log_level": "info"}
    setup_logging("warning", "test")


def test_servers_collect_young_garbage_in_larger_batches_and_freeze_startup():
    """In a fresh interpreter: tune_gc must not change the test process's collector."""
    code = ("import gc\nfrom engine.cli import GC_GEN0, tune_gc\n"
            "before = gc.get_threshold()\ntune_gc()\n"
            "print(gc.get_threshold() == (GC_GEN0, *before[1:]), gc.get_freeze_count() > 1000)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, check=True, timeout=60).stdout.split()
    assert out == ["True", "True"]

"""dfget's and dfdaemon's command lines: parsing into a request, no daemon involved."""

from __future__ import annotations

import pytest

from engine.cli import exit_codes_text
from engine.cli import dfget
from engine.daemon.config import SPEC as DAEMON, parse_duration, parse_size
from engine.errors import BadInput, ConfigError
from engine.types import Digest


def _command(argv: list[str], cwd: str, env: dict | None = None):
    args: dict = {}
    loaded = dfget.SPEC.load(argv, env or {}, parser=dfget.parser(), extra=args)
    return loaded.config, dfget.build_command(loaded.config, args, cwd)


def test_every_flag_reaches_the_request(tmp_path):
    config, cmd = _command([
        "http://origin/f?sig=1&x=2", "-o", "out.bin", "--header", "Authorization: Bearer a:b",
        "-H", "X-Two:  2 ", "--filter", "sig,exp", "--filter", "token", "--digest",
        "SHA256:" + "AB" * 32, "--tag", "t1", "--limit", "10M", "--timeout", "2m",
        "--no-back-source", "--link"], str(tmp_path))
    assert cmd.url == "http://origin/f?sig=1&x=2"
    assert cmd.output == str(tmp_path / "out.bin")
    assert cmd.headers == {"Authorization": "Bearer a:b", "X-Two": "2"}
    assert cmd.filter_params == ("sig", "exp", "token")
    assert cmd.digest == Digest("sha256", "ab" * 32)
    assert (cmd.tag, cmd.limit, cmd.timeout) == ("t1", 10 << 20, 120.0)
    assert cmd.back_source is False and cmd.link is True
    assert config.autostart is True


def test_progress_events_are_asked_for_only_when_shown(tmp_path):
    """--json shows every event; without it and without a terminal (pytest's
    stderr is not one) nothing would show them, so none are asked for."""
    assert _command(["http://o/a", "-o", "x", "--json"], str(tmp_path))[1].progress is True
    quiet = _command(["http://o/a", "-o", "x"], str(tmp_path))[1]
    assert quiet.progress is False
    assert quiet.to_wire()["progress"] is False


def test_url_by_flag_and_defaults_from_the_environment(tmp_path):
    config, cmd = _command(["-u", "https://o/x", "-o", str(tmp_path / "abs")], "/",
                           env={"DFGET_SUPERNODE": "a:1,b:2", "DFGET_DATA_DIR": "/d"})
    assert cmd.url == "https://o/x" and cmd.output == str(tmp_path / "abs")
    assert config.supernode == ["a:1", "b:2"] and config.data_path == "/d"
    assert config.socket_path == "/d/dfdaemon.sock"
    assert dfget.daemon_args(config) == ["--idle-exit", "10m", "--supernode", "a:1,b:2"]


@pytest.mark.parametrize("argv", [
    ["-o", "x"],                                      # no URL
    ["http://o/a", "-u", "http://o/b", "-o", "x"],    # two URLs
    ["http://o/a"],                                   # no output
    ["http://o/a", "-o", "missing/dir/x"],            # output dir does not exist
    ["http://o/a", "-o", "."],                        # output is a directory
    ["http://o/a", "-o", "x", "--header", "NoColon"],
    ["http://o/a", "-o", "x", "--digest", "sha1:00"],
    ["ftp://o/a", "-o", "x"],
])
def test_bad_requests_are_bad_input(tmp_path, argv):
    with pytest.raises(BadInput):
        _command(argv, str(tmp_path))


@pytest.mark.parametrize("argv", [
    ["http://o/a", "-o", "x", "--limit", "fast"],
    ["http://o/a", "-o", "x", "--timeout", "soon"],
])
def test_bad_options_are_config_errors(tmp_path, argv):
    with pytest.raises(ConfigError):
        _command(argv, str(tmp_path))


def test_sizes_and_durations():
    assert parse_size("0") == 0 and parse_size("512K") == 512 << 10
    assert parse_size("10M") == parse_size("10MiB") == parse_size("10mb") == 10 << 20
    assert parse_size("1.5G") == 3 << 29
    assert parse_duration("3h") == 10800 and parse_duration("90") == 90
    assert parse_duration("1.5m") == 90
    for bad in ("", "-1M", "10X", "M"):
        with pytest.raises(BadInput):
            parse_size(bad)


def test_daemon_options_are_declared_once_and_checked():
    loaded = DAEMON.load(["--workers", "3", "--upload-limit", "1G", "--task-ttl", "1d"],
                         env={"DFDAEMON_SUPERNODE": "sn:8002"})
    c = loaded.config
    assert (c.worker_count, c.upload_limit_bytes, c.task_ttl_seconds) == (3, 1 << 30, 86400)
    assert c.supernode_urls == ["http://sn:8002"] and loaded.sources["supernode"].startswith("env")
    with pytest.raises(ConfigError):
        DAEMON.load(["--workers", "300"], env={})
    with pytest.raises(ConfigError):
        DAEMON.load(["--idle-exit", "whenever"], env={})


def test_the_exit_code_table_names_every_error_class():
    text = exit_codes_text()
    for line, name in [("  2 ", "BadInput"), ("  4 ", "NotEnoughSpace"), ("  8 ", "Integrity"),
                       ("  9 ", "DaemonUnavailable"), ("  7 ", "SupernodeError")]:
        assert any(row.startswith(line) and name in row for row in text.splitlines()), name
    assert dfget.parser().epilog == text

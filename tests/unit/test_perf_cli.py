"""perf/swarm.py's command line: what it builds, and the usage errors it refuses (exit 2)."""

from __future__ import annotations

import pytest

from perf import swarm as swarm_cli
from perf.lab.netns import Lab, LabError


def _config(*argv: str):
    return swarm_cli.config_from(swarm_cli.parser().parse_args(list(argv)))


def test_defaults_are_the_issue_sweep_on_jumbo_frames():
    cfg = _config()
    assert cfg.n_values == [1, 2, 5, 10, 20, 40]
    assert (cfg.file_mib, cfg.origin_mbit, cfg.host_up_mbit, cfg.host_down_mbit) == (
        100, 200, 100, 100)
    assert cfg.mtu == 9000 and cfg.repeat == 1
    assert cfg.to_json()["mtu"] == 9000          # the report states it


def test_options_reach_the_config():
    cfg = _config("--n", "20", "5", "20", "--mtu", "1500", "--host-mbit", "25",
                  "--host-up-mbit", "10", "--repeat", "3")
    assert cfg.n_values == [5, 20]
    assert (cfg.mtu, cfg.host_up_mbit, cfg.host_down_mbit, cfg.repeat) == (1500, 10, 25, 3)


@pytest.mark.parametrize("argv", [["--mtu", "100"], ["--mtu", "65536"], ["--mtu", "jumbo"],
                                  ["--repeat", "0"]])
def test_bad_values_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        swarm_cli.parser().parse_args(argv)
    assert exc.value.code == 2
    assert argv[0] in capsys.readouterr().err


def test_a_lab_refuses_an_mtu_no_link_can_take():
    # Checked before anything is built, so this needs no root.
    with pytest.raises(LabError, match="MTU"):
        Lab(mtu=70000)

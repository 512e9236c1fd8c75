"""The benchmark report: targets, markdown table and chart from a results dict."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from perf.lab import report
from tests.helpers import skip_or_fail


def _system(median, slowest, origin=1.0, ok=True, cpu=0.5):
    return {"ok": ok, "median_s": median, "slowest_s": slowest, "origin_bytes_per_file": origin,
            "cpu_mean": cpu, "cpu_bound": cpu > 0.9, "failures": {} if ok else {"h1": "boom"}}


def _results():
    def point(n, p2p, nginx, aria2):
        return {"n": n, "bound": {"t_s": 8.39},
                "systems": {"damselfly": _system(*p2p), "nginx": _system(*nginx, origin=n),
                            "aria2": _system(*aria2, origin=2.5)}}

    return {"generated": "2026-01-01T00:00:00+00:00",
            "machine": {"hostname": "box", "cores": 2},
            "config": {"systems": ["nginx", "damselfly", "aria2"], "file_mib": 100,
                       "origin_mbit": 200, "host_up_mbit": 100, "host_down_mbit": 100},
            "fairness": "Fairness: one host outside the N.",
            "points": [point(5, (9.0, 9.2), (21.0, 21.5), (14.0, 15.0)),
                       point(10, (9.2, 9.6), (42.0, 43.0), (12.0, 14.0)),
                       point(40, (9.5, 10.2), (168.0, 170.0), (11.0, 13.0))],
            "sim": [{"n": 10000, "pieces": 100, "median_s": 9.9, "t_s": 10.0, "bound_s": 8.39,
                     "ratio": 1.19, "scheduler_cpu_s": 50.0, "wall_s": 120.0,
                     "source": "nominal rates"}]}


def test_targets_are_judged_from_the_figures():
    got = {t["target"]: (t["value"], t["pass"]) for t in report.targets(_results())}
    assert got["T_p2p(40) / T_p2p(5) (median)"] == (pytest.approx(1.056, abs=1e-3), True)
    assert got["bound / T_p2p(40), median host"] == (pytest.approx(0.883, abs=1e-3), False)
    assert got["bound / T_p2p(40), slowest host"] == (pytest.approx(0.823, abs=1e-3), True)
    assert got["T_nginx(40) / T_p2p(40) (median)"] == (pytest.approx(17.684, abs=1e-3), True)
    assert got["T_p2p(10) / T_aria2(10) (median)"] == (pytest.approx(0.767, abs=1e-3), True)
    assert got["T_p2p(40) / T_aria2(40) (median)"][1] is False
    assert got["damselfly origin bytes / file size (worst N)"] == (1.0, True)
    assert got["sim T / bound at N=10000"] == (1.19, True)


def test_a_failed_system_is_not_measured_and_is_named_in_the_table():
    results = _results()
    results["points"][2]["systems"]["damselfly"] = _system(None, None, ok=False)
    got = {t["target"]: t["pass"] for t in report.targets(results)}
    assert got["bound / T_p2p(40), median host"] is None
    md = report.markdown(results)
    assert "| 40 | 8.39 | 168.00 / 170.00 | 40.00 | 50 % | FAILED |" in md
    assert "N=40 damselfly failed: h1: boom" in md


def test_markdown_has_a_row_per_n_and_the_machine():
    md = report.markdown(_results())
    assert "on box:" in md and "Fairness: one host outside the N." in md
    assert "| 5 | 8.39 | 21.00 / 21.50 | 5.00 | 50 % | 9.00 / 9.20 | 1.00 | 50 % |" in md
    assert "| 10000 | 100 | 9.90 | 10.00 | 8.39 | 1.190 |" in md
    assert "| sim T / bound at N=10000 | 1.19 | <= 1.2 | pass |" in md


def test_markdown_names_the_labs_network_settings_where_recorded():
    results = _results()
    assert "Bridge netfilter" not in report.markdown(results)    # older results
    results["points"][0]["lab"] = {"bridge_netfilter": "absent", "tcp_congestion_control": "cubic"}
    md = report.markdown(results)
    assert "Bridge netfilter: off (module not loaded); TCP congestion control: cubic." in md
    results["points"][0]["lab"]["bridge_netfilter"] = "on"
    assert "Bridge netfilter: ON (could not be turned off" in report.markdown(results)


def test_the_cpu_cell_gives_cpu_seconds_when_the_run_measured_them():
    results = _results()
    results["points"][0]["systems"]["damselfly"].update(cpu_mean=0.95, cpu_bound=True,
                                                        cpu_seconds=24.81)
    md = report.markdown(results)
    assert "| 9.00 / 9.20 | 1.00 | 95 % ! (24.8 CPU-s) |" in md


def test_the_cpu_monitor_window_ends_at_the_first_stop():
    import time

    from perf.lab.cpu import CpuMonitor

    monitor = CpuMonitor(interval=0.05)
    monitor.stop()                                   # not started: nothing to end
    assert not monitor.started
    with monitor:
        time.sleep(0.2)
        monitor.stop()
        time.sleep(0.3)                              # after the stop: not counted
    summary = monitor.summary()
    assert 0.2 <= summary["cpu_window_s"] < 0.45
    assert 0.0 <= summary["cpu_seconds"] <= summary["cpu_window_s"] * (os.cpu_count() or 1)


def test_markdown_says_which_build_of_damselfly_was_measured():
    results = _results()
    assert "damselfly at" not in report.markdown(results)
    results["damselfly_build"] = {"commit": "abc1234+dirty", "native": True}
    assert "damselfly at abc1234+dirty, native extension." in report.markdown(results)


def test_repeated_runs_report_the_median_run_and_list_every_run():
    from perf.lab.run import representative

    runs = [_system(10.0, 10.5), _system(9.0, 9.4), _system(12.0, 12.9)]
    chosen = representative(runs)
    assert (chosen["median_s"], chosen["slowest_s"]) == (10.0, 10.5)
    assert [r["median_s"] for r in chosen["runs"]] == [10.0, 9.0, 12.0]
    assert representative(runs[:2])["median_s"] == 9.0   # even count: the lower middle
    assert "runs" not in representative(runs[:1])
    failed = representative([runs[0], _system(None, None, ok=False), runs[1]])
    assert failed["ok"] is False and len(failed["runs"]) == 3

    results = _results()
    results["points"][2]["systems"]["damselfly"] = chosen
    md = report.markdown(results)
    assert "| 40 | 8.39 | 168.00 / 170.00 | 40.00 | 50 % | 10.00 / 10.50 |" in md
    assert "- N=40 damselfly: 10.00 (10.50), 9.00 (9.40), 12.00 (12.90)" in md


def test_write_makes_json_markdown_and_png(tmp_path):
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        skip_or_fail("matplotlib is missing (pip install -e '.[perf]')")
    paths = {k: Path(v) for k, v in report.write(_results(), str(tmp_path)).items()}
    data = json.loads(paths["json"].read_text())
    assert data["targets"] and data["points"][0]["n"] == 5
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths["md"].read_text().startswith("Generated 2026-01-01")

"""The network lab, for real: namespaces, tc, the goodput probe, and the quick profile.

Needs root (``ip netns``, ``tc``); the tools the systems drive (nginx, aria2,
opentracker, curl) are installed by ``perf.lab.tools.ensure`` when missing.
Correctness only: every copy matches the file's sha256 and nothing of the
lab is left afterwards. Timings are the benchmark's business, not the tests'.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from tests.helpers import skip_or_fail

pytestmark = [pytest.mark.lab, pytest.mark.slow]


@pytest.fixture(scope="module", autouse=True)
def _root_and_tools():
    if os.geteuid() != 0:
        skip_or_fail("the network lab needs root")
    from perf.lab import tools
    from perf.lab.netns import LabError

    try:
        tools.ensure(["ip", "tc", "nginx", "curl", "aria2c", "opentracker"])
    except LabError as exc:
        skip_or_fail(str(exc))


def _ours() -> list[str]:
    from perf.lab.netns import list_namespaces

    return [n for n in list_namespaces() if n.startswith(f"dfl-{os.getpid()}-")]


def test_lab_shapes_hosts_and_removes_everything():
    from perf.lab import probe
    from perf.lab.netns import Lab, sh
    from perf.lab.procs import Procs

    with Lab(mtu=9000) as lab:
        hosts = [lab.add_host(f"h{i}", 10 + i, up_mbit=50, down_mbit=80) for i in range(2)]
        server = lab.add_host("origin", 1, up_mbit=120, down_mbit=120)
        sink = lab.add_host("sink", 250)
        assert len(_ours()) == 5                       # the switch and four hosts
        for ns, dev in [(lab.switch, "br0"), (lab.switch, hosts[0].switch_port),
                        (hosts[0].ns, "eth0"), (sink.ns, "eth0")]:
            link = json.loads(sh("ip", "-n", ns, "-j", "link", "show", dev).stdout)[0]
            assert link["mtu"] == 9000, (ns, dev)
        # The switch forwards without iptables, whatever the machine's own setting.
        nf = "/proc/sys/net/bridge/bridge-nf-call-iptables"
        if lab.settings["bridge_netfilter"] == "off":
            assert sh("ip", "netns", "exec", lab.switch, "cat", nf).stdout.strip() == "0"
        else:   # this test runs as root in the machine's namespace: never "on" here
            assert lab.settings["bridge_netfilter"] == "absent" and not os.path.exists(nf)
        assert lab.settings["tcp_congestion_control"] not in ("", "?")
        with Procs(os.path.join(lab.dir, "logs")) as procs:
            sleeper = procs.start(hosts[0], ["sleep", "600"], log="sleep.log")
            good = probe.measure(lab, procs, hosts, [server], sink, seconds=2.5, warmup=1.0)
        assert sleeper.poll() is not None               # Procs killed it
        for h in hosts:
            # Goodput is a few percent under the shaped rate (headers, ACKs), never over.
            assert 0.75 * 50e6 < good.up[h.name] < 50e6
            assert 0.75 * 80e6 < good.down[h.name] < 80e6
        assert 0.75 * 120e6 < good.up["origin"] < 120e6
        sent = lab.sent_bytes()
        assert sent["h0"] > 5_000_000 and sent["origin"] > 10_000_000
        stray = subprocess.Popen(hosts[1].cmd("sleep", "600"), start_new_session=True)
    assert stray.wait(timeout=10) != 0                  # Lab.close killed what was inside
    assert _ours() == []
    assert not os.path.exists(lab.dir)


def test_leftovers_of_a_dead_lab_are_removed():
    from perf.lab.netns import cleanup_leftovers, list_namespaces, sh

    dead = subprocess.Popen(["true"])
    dead.wait()
    name = f"dfl-{dead.pid}-orphan"
    sh("ip", "netns", "add", name)
    try:
        assert name in cleanup_leftovers()
        assert name not in list_namespaces()
    finally:
        sh("ip", "netns", "del", name, check=False)


def test_quick_profile_every_copy_matches_and_nothing_is_left(tmp_path):
    from perf import swarm as swarm_cli
    from perf.lab import report

    args = swarm_cli.parser().parse_args(["--quick", "--no-sim", "--out", str(tmp_path)])
    cfg = swarm_cli.config_from(args)
    assert max(cfg.n_values) <= 4 and cfg.file_mib == 16
    started = time.monotonic()
    results = swarm_cli.run_sweep(cfg, None, log=lambda *_: None)
    elapsed = time.monotonic() - started
    problems = []
    for point in results["points"]:
        assert point["namespaces_left"] == []
        for name, r in point["systems"].items():
            if not r["ok"]:
                problems.append((point["n"], name, r.get("error"), r.get("failures"),
                                 r.get("log_tails")))
            else:
                assert len(r["times"]) == point["n"]
                # CPU is measured while the clients run, not through the teardown.
                assert r["slowest_s"] - 0.1 <= r["cpu_window_s"] <= r["slowest_s"] + 1.0, \
                    (point["n"], name, r["slowest_s"], r["cpu_window_s"])
    assert not problems, problems
    assert _ours() == []
    assert results["damselfly_build"]["native"] is True
    md = report.markdown(results)
    assert "| 4 |" in md
    print(f"quick profile: {elapsed:.0f} s")

"""The real ``supernode`` command: ready line and ready file, a download, SIGTERM -> exit 0."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import sys

import aiohttp
import orjson

from tests.helpers import run
from tests.integration.origin import Origin
from tests.integration.snharness import MiB, blob
from tests.integration.snpeer import TestPeer

READY = re.compile(rb"supernode listening on (http://127\.0\.0\.1:(\d+)) upload-port (\d+)\n")


def _command() -> list[str]:
    script = shutil.which("supernode")
    return [script] if script else [sys.executable, "-m", "supernode.cli"]


def test_cli_serves_and_stops_on_sigterm(tmp_path):
    data = blob(2 * MiB + 9)
    ready_file = tmp_path / "ready.json"

    async def main():
        async with Origin() as origin:
            origin.add("f", data)
            env = {**os.environ, "DAMSELFLY_SUPERNODE_UPLOAD_PORT": "0",
                   "DAMSELFLY_SUPERNODE_PENDING_WAIT_MS": "20"}
            proc = await asyncio.create_subprocess_exec(
                *_command(), "--port", "0", "--data-dir", str(tmp_path / "data"),
                "--ready-file", str(ready_file), "--log-level", "warning",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
            try:
                line = await asyncio.wait_for(proc.stdout.readline(), 30)
                m = READY.fullmatch(line)
                assert m, line
                url, port, upload_port = m.group(1).decode(), int(m.group(2)), int(m.group(3))
                ready = orjson.loads(ready_file.read_bytes())
                assert ready == {"url": url, "port": port, "upload_port": upload_port,
                                 "pid": proc.pid}
                async with aiohttp.ClientSession() as s:
                    async with s.get(url + "/healthz") as resp:
                        assert resp.status == 200
                    async with TestPeer(s, url, "cli-peer") as peer:
                        result = await peer.download(origin.url("f"))
                assert result.action == "done" and result.data == data
                assert origin.requests["f"] == 1
                proc.send_signal(signal.SIGTERM)
                code = await asyncio.wait_for(proc.wait(), 10)
                stderr = await proc.stderr.read()
                assert code == 0, stderr
                assert not ready_file.exists()
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
    run(main())


def test_cli_reports_bad_config_with_its_exit_code(tmp_path):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            *_command(), "--port", "70000", stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 3
        assert err.decode().strip() == ("supernode: flag --port: port must be within 0..65535")
    run(main())


def test_cli_print_config_merges_env_and_flags(tmp_path):
    conf = tmp_path / "supernode.toml"
    conf.write_text('negative_ttl = 3.5\nport = 1\n')

    async def main():
        env = {**os.environ, "DAMSELFLY_SUPERNODE_PORT": "2"}
        proc = await asyncio.create_subprocess_exec(
            *_command(), "--config", str(conf), "--upload-port", "7", "--print-config",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err
        text = out.decode()
        assert "port = 2  # env DAMSELFLY_SUPERNODE_PORT" in text
        assert "upload_port = 7  # flag --upload-port" in text
        assert f"negative_ttl = 3.5  # file {conf}" in text
    run(main())

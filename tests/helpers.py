"""Test harness shared by every layer: a strict event-loop runner.

``run(coro)`` runs a coroutine on a fresh uvloop loop and fails the test when
anything escaped: an exception the loop had to log (a callback that raised,
a task whose error nobody read) or a task still pending at the end (a leak).
Tests are plain functions calling ``run``; no asyncio plugin is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket

import uvloop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout under test


def run(coro, timeout: float = 120.0):
    loop = uvloop.new_event_loop()
    escaped: list[dict] = []
    loop.set_exception_handler(lambda _loop, context: escaped.append(context))
    try:
        result = loop.run_until_complete(asyncio.wait_for(coro, timeout))
        leaked = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in leaked:
            task.cancel()
        if leaked:
            loop.run_until_complete(asyncio.gather(*leaked, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()
    assert not leaked, f"tasks leaked past the test: {leaked}"
    assert not escaped, f"the loop logged errors: {escaped}"
    return result


def skip_or_fail(reason: str) -> None:
    """Skip on a developer's machine; under CI=true a missing tool is a failure."""
    import os

    import pytest

    if os.environ.get("CI") == "true":
        pytest.fail(f"required under CI: {reason}")
    pytest.skip(reason)


@contextlib.contextmanager
def dead_port():
    """host:port of a bound loopback socket that never listens: refused at once."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()

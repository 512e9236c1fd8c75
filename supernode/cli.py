"""``supernode``: parse the configuration, run the server until SIGTERM/SIGINT.

CLI -> Config -> Server (uvicorn's shape): this module only merges the
options (flags > env > TOML > defaults, engine.config), sets up logging and
the event loop, and runs ``SupernodeServer``. Once both ports are bound it
prints one machine-readable line to stdout::

    supernode listening on http://127.0.0.1:PORT upload-port UPLOAD_PORT

and, with ``--ready-file PATH``, writes ``{"url", "port", "upload_port",
"pid"}`` as JSON there atomically (the file is removed again on exit).
SIGTERM or SIGINT stops it cleanly with exit status 0. Errors print one line
and exit with the code of their class in engine.errors (3 bad config, 5 I/O,
e.g. a port already in use).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

import orjson

from engine.cli import tune_gc
from engine.errors import DamselflyError, from_oserror
from engine.meta import write_atomically
from supernode.config import SPEC, SupernodeConfig
from supernode.server import SupernodeServer

log = logging.getLogger("supernode")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        loaded = SPEC.load(argv)
    except DamselflyError as exc:
        print(f"supernode: {exc}", file=sys.stderr)
        return exc.exit_code
    config = loaded.config
    if loaded.print_requested:
        sys.stdout.write(SPEC.dump(config, loaded.sources))
        return 0
    logging.basicConfig(level=config.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if config.uvloop:
            import uvloop
            factory = uvloop.new_event_loop
        else:
            factory = asyncio.new_event_loop
        tune_gc()
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(serve(config))
    except DamselflyError as exc:
        print(f"supernode: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        pass  # a second Ctrl-C during shutdown
    return 0


async def serve(config: SupernodeConfig) -> None:
    """Run until SIGTERM or SIGINT; readiness is announced only once both ports are bound."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with SupernodeServer(config) as node:
            # The file first: whoever reads the line may look for the file at once.
            if config.ready_file:
                write_atomically(config.ready_file, orjson.dumps({
                    "url": node.url, "port": node.port, "upload_port": node.upload_port,
                    "pid": os.getpid()}))
            print(f"supernode listening on {node.url} upload-port {node.upload_port}",
                  flush=True)
            try:
                await stop.wait()
                log.info("stopping")
            finally:
                if config.ready_file:
                    _unlink(config.ready_file)
    except OSError as exc:
        # Binding (address in use, not permitted) is the usual one here.
        raise from_oserror(exc, f"starting the supernode on {config.host}") from exc
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


if __name__ == "__main__":
    sys.exit(main())

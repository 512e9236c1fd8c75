"""dfdaemon: the damselfly peer daemon (a coordinator and its worker processes).

Every option is listed by ``dfdaemon --help`` (see engine.daemon.config);
``--print-config`` shows the merged configuration and where each value came
from. Readiness: with ``--ready-file PATH`` the daemon writes
``{"pid", "upload_port", "socket", ...}`` there once its workers listen and
its socket accepts; ``--ready-fd N`` writes the same line to an inherited
pipe (what dfget uses when it starts a daemon). SIGTERM or SIGINT stops the
daemon and its workers cleanly. Exit codes are those of engine.errors
(``dfdaemon --help`` lists them); 3 means the configuration is unusable,
including "another dfdaemon already uses this data directory".
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from engine.cli import exit_codes_text, run_main, setup_logging
from engine.daemon.config import SPEC


def parser() -> argparse.ArgumentParser:
    p = SPEC.parser()
    p.epilog = exit_codes_text()
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    return p


def main(argv: Sequence[str] | None = None) -> int:
    def body() -> int:
        loaded = SPEC.load(argv, parser=parser())
        if loaded.print_requested:
            sys.stdout.write(SPEC.dump(loaded.config, loaded.sources))
            return 0
        setup_logging(loaded.config.log_level, "dfdaemon")
        import uvloop

        from engine.daemon.coordinator import Coordinator

        uvloop.run(Coordinator(loaded.config).run())
        return 0

    return run_main("dfdaemon", body)


if __name__ == "__main__":
    sys.exit(main())

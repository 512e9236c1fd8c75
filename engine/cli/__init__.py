"""What the command-line programs share: turning errors into exit codes, and
loading a ConfigSpec together with per-invocation arguments.

CLI -> Config -> Server (uvicorn's shape): a program's ``main`` only parses
into its config, hands it to the thing that runs, and maps a DamselflyError
to one line on stderr plus the error's ``exit_code`` (engine.errors).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from engine import errors
from engine.config import ConfigSpec, Loaded, read_toml
from engine.errors import DamselflyError

INTERRUPTED = 130


def exit_codes_text() -> str:
    """The exit-code table, built from engine.errors so it cannot drift from it."""
    rows: dict[int, list[str]] = {}
    for name in dir(errors):
        cls = getattr(errors, name)
        if isinstance(cls, type) and issubclass(cls, DamselflyError):
            rows.setdefault(cls.exit_code, []).append(name)
    lines = ["exit codes:", "  0    success"]
    for code in sorted(rows):
        names = ", ".join(sorted(rows[code]))
        if code == 2:
            names += " (and command-line usage errors)"
        lines.append(f"  {code:<4} {names}")
    lines.append(f"  {INTERRUPTED}  interrupted (Ctrl-C)")
    return "\n".join(lines)


def run_main(prog: str, body: Callable[[], int | None]) -> int:
    """Run ``body``; a DamselflyError becomes one line on stderr and its exit code."""
    try:
        return body() or 0
    except DamselflyError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return INTERRUPTED


def load_with(spec: ConfigSpec, parser: argparse.ArgumentParser, argv: Sequence[str] | None,
              extra: Sequence[str], env: Mapping[str, str] | None = None
              ) -> tuple[Loaded, dict[str, Any]]:
    """Parse ``argv`` with ``parser`` (spec.parser() plus per-invocation arguments
    named in ``extra``) and merge the spec's options: flags > env > TOML > defaults.

    Mirrors ConfigSpec.load, which cannot take a parser with more arguments.
    """
    env = os.environ if env is None else env
    args = vars(parser.parse_args(argv))
    own = {name: args.pop(name) for name in extra if name in args}
    path = args.pop("config", None) or env.get(spec.config_env) or None
    print_requested = bool(args.pop("print_config", False))
    loaded = spec.merge(args, env, read_toml(path) if path else {}, path or "")
    return Loaded(loaded.config, loaded.sources, print_requested), own


def setup_logging(level: str, prog: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format=f"%(asctime)s {prog}[%(process)d] %(levelname)s "
                               "%(name)s: %(message)s")

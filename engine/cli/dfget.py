"""dfget: download one URL through the host's dfdaemon (P2P), like wget.

    dfget URL -o PATH [--header "Name: value"]... [--digest sha256:HEX]
          [--tag T] [--filter PARAM[,PARAM]]... [--supernode HOST:PORT,...]
          [--timeout 10m] [--limit 10M] [--no-back-source] [--json]

dfget resolves PATH against its working directory and hands the request to
the daemon on ``<data-dir>/dfdaemon.sock`` (starting a daemon when none runs;
it exits by itself after ``--daemon-idle-exit``). The daemon writes PATH
atomically: it appears whole or not at all, and a digest mismatch leaves
nothing there. On a terminal dfget draws a progress bar on stderr; otherwise
it is quiet. ``--json`` prints every event from the daemon as one JSON
line on stdout (accepted, progress, done or error).

Exit codes (from engine.errors; ``dfget --help`` prints the same table)::

    0    success
    1    an unexpected failure (also a worker that kept crashing)
    2    bad input: an invalid URL, header, digest, output path; usage errors
    3    configuration error
    4    not enough disk space (precheck) or disk full while writing
    5    piece store or I/O failure
    6    the origin failed (an HTTP error status, a broken promise of length)
    7    the supernode is unreachable or refused (with --no-back-source)
    8    the file does not match --digest (nothing is left at PATH)
    9    no dfdaemon could be reached or started
    10   timed out (--timeout) or cancelled because the daemon shut down
    130  interrupted
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from engine.cli import exit_codes_text, run_main
from engine.cli.daemonclient import connect_or_start, converse
from engine.config import ConfigSpec, option
from engine.daemon.config import HostOptions, parse_duration, parse_size
from engine.errors import BadInput, DaemonUnavailable
from engine.localapi import DownloadCommand, error_from_event
from engine.types import Digest


def _size_or_none(value: str) -> str | None:
    try:
        parse_size(value) if value else None
    except BadInput as exc:
        return f"is invalid: {exc}"
    return None


def _duration_or_none(value: str) -> str | None:
    try:
        parse_duration(value) if value else None
    except BadInput as exc:
        return f"is invalid: {exc}"
    return None


@dataclass(frozen=True, slots=True)
class DfgetConfig(HostOptions):
    timeout: str = option("", "give up after this long, e.g. 10m (default: no limit)",
                          check=_duration_or_none, metavar="DURATION")
    limit: str = option("", "this download's rate limit in bytes/s, e.g. 10M",
                        check=_size_or_none, metavar="SIZE")
    back_source: bool = option(True, "let the download fall back to the origin")
    json: bool = option(False, "print the daemon's events as JSON lines on stdout")
    progress: bool = option(True, "draw a progress bar when stderr is a terminal")
    autostart: bool = option(True, "start a dfdaemon when none runs")
    daemon_idle_exit: str = option("10m", "an auto-started daemon exits after this long "
                                   "without requests or uploads",
                                   check=_duration_or_none, metavar="DURATION")


SPEC = ConfigSpec(DfgetConfig, env_prefix="DFGET", prog="dfget",
                  description="Download a URL through the host's dfdaemon (P2P).")


def parser() -> argparse.ArgumentParser:
    p = SPEC.parser()
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = exit_codes_text()
    p.add_argument("url", nargs="?", help="the URL to download")
    p.add_argument("-u", "--url", dest="url_flag", metavar="URL", help="the URL (as -u)")
    p.add_argument("-o", "--output", help="where to write the file (required)")
    p.add_argument("--header", "-H", action="append", metavar="'NAME: VALUE'",
                   help="a request header for the origin (repeatable)")
    p.add_argument("--digest", metavar="ALGO:HEX", help="expected sha256:... or md5:...")
    p.add_argument("--tag", help="keeps apart tasks whose URLs would otherwise merge")
    p.add_argument("--filter", action="append", metavar="PARAM[,PARAM]",
                   help="query parameters left out of the task id (repeatable)")
    way = p.add_mutually_exclusive_group()
    way.add_argument("--link", action="store_true",
                     help="the output must be a hard link to the cache (fail otherwise); "
                          "by default it is one where the filesystem allows")
    way.add_argument("--copy", action="store_true",
                     help="write the output as a copy of its own, to be edited in place")
    return p


def build_command(config: DfgetConfig, args: dict, cwd: str) -> DownloadCommand:
    """The request for the daemon; every problem is BadInput (exit 2)."""
    url, url_flag = args.get("url"), args.get("url_flag")
    if bool(url) == bool(url_flag):
        raise BadInput("give the URL once: as an argument or with -u")
    headers: dict[str, str] = {}
    for line in args.get("header") or ():
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise BadInput(f"header must look like 'Name: value', got {line!r}")
        headers[name.strip()] = value.strip()
    filters = [p.strip() for item in args.get("filter") or () for p in item.split(",")
               if p.strip()]
    if not args.get("output"):
        raise BadInput("say where the file goes with -o PATH")
    output = os.path.abspath(os.path.join(cwd, os.path.expanduser(args["output"])))
    parent = os.path.dirname(output)
    if not os.path.isdir(parent):
        raise BadInput(f"the output directory {parent} does not exist")
    if os.path.isdir(output):
        raise BadInput(f"the output {output} is a directory")
    digest = args.get("digest")
    return DownloadCommand(
        url or url_flag, output, headers, Digest.parse(digest) if digest else None,
        args.get("tag") or "", tuple(filters),
        parse_size(config.limit) if config.limit else None, config.back_source,
        parse_duration(config.timeout) if config.timeout else None, bool(args.get("link")),
        # Progress events nobody shows cost the daemon CPU (40 quiet dfgets
        # in the lab: 400 events/s through worker, coordinator and dfget).
        config.json or (config.progress and sys.stderr.isatty()), bool(args.get("copy")))


def daemon_args(config: DfgetConfig) -> list[str]:
    """What an auto-started daemon needs from us (the rest it reads from its own env)."""
    out = ["--idle-exit", config.daemon_idle_exit]
    if config.supernode:
        out += ["--supernode", ",".join(config.supernode)]
    return out


class Display:
    """Shows events: JSON lines, a tqdm bar on a terminal, or nothing."""

    def __init__(self, json_lines: bool, bar: bool) -> None:
        self.json_lines, self.bar_wanted, self.bar = json_lines, bar, None

    def show(self, event: dict) -> None:
        if self.json_lines:
            sys.stdout.buffer.write(orjson.dumps(event) + b"\n")
            sys.stdout.flush()
        kind = event.get("event")
        if self.bar_wanted and kind == "progress" and event.get("length") is not None:
            if self.bar is None:
                from tqdm import tqdm
                self.bar = tqdm(total=event["length"], unit="B", unit_scale=True,
                                unit_divisor=1024, file=sys.stderr, leave=True)
            self.bar.update(event["done_bytes"] - self.bar.n)
        if kind == "done" and self.bar_wanted:
            if self.bar is not None:
                self.bar.update(event["length"] - self.bar.n)
            print(_summary(event), file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _summary(e: dict) -> str:
    mib = 1 << 20
    return (f"{e['output']}: {e['length'] / mib:.1f} MiB in {e['seconds']:.1f} s "
            f"(peers {e['from_peers'] / mib:.1f}, CDN {e['from_cdn'] / mib:.1f}, "
            f"origin {e['from_origin'] / mib:.1f} MiB) sha256 {e['sha256']}")


def main(argv: Sequence[str] | None = None) -> int:
    def body() -> int:
        args: dict = {}
        loaded = SPEC.load(argv, parser=parser(), extra=args)
        config: DfgetConfig = loaded.config
        if loaded.print_requested:
            sys.stdout.write(SPEC.dump(config, loaded.sources))
            return 0
        command = build_command(config, args, os.getcwd())
        sock = connect_or_start(config.data_path, config.socket_path, daemon_args(config),
                                config.autostart)
        display = Display(config.json, config.progress and sys.stderr.isatty()
                          and not config.json)
        try:
            for event in converse(sock, command.to_wire()):
                display.show(event)
                if event.get("event") == "error":
                    raise error_from_event(event)
                if event.get("event") == "done":
                    return 0
        finally:
            display.close()
        raise DaemonUnavailable("dfdaemon closed the connection without an answer")

    return run_main("dfget", body)


if __name__ == "__main__":
    sys.exit(main())

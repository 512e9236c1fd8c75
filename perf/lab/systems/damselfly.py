"""damselfly: nginx origin, the supernode (scheduler + CDN), a dfdaemon and a dfget per client.

The supernode runs on ``setup.sn_host``: the origin host itself by default
(one host outside the N, as for the other systems), or a host of its own.
Every daemon listens on its host's lab address only (``--listen-ip``), and
the supernode on its host's; the CDN fetches the file from nginx once.

All daemons are up (their ready files written) before the clock starts, as
the other systems' servers are; then every client's ``dfget`` starts at once
and its exit marks its completion. Bytes the origin sent: nginx's log. Each
output is dfget's default, a hard link to the host's cache: the file is
written once per host, as aria2 (which seeds from its output) and curl do.

``prepare`` runs once per sweep, before any clock: it compiles the repo's
bytecode (under PYTHONDONTWRITEBYTECODE every process would otherwise compile
its modules from source as it starts, 40 dfgets at once included) and refuses
to measure the pure-Python fallback of ``native`` instead of the extension.

Python starts without ``site`` (``-S``), its path given instead: the tree
under test, then the paths ``site`` gave this interpreter (``_env``). The
``.pth`` hooks that ``site`` runs are this machine's, not damselfly's: here
an editable install's import finder and the sandbox's CA injector, ~30 ms of
CPU per start, which a regular install on a real host does not pay. With 20
dfgets starting at once on 2 cores, the first byte moved ~0.4 s later with
them (perf/README.md).
"""

from __future__ import annotations

import ast
import compileall
import functools
import os
import subprocess
import sys

import orjson

from perf.lab.netns import LabError
from perf.lab.procs import Finish, read_log
from perf.lab.systems.common import REPO, Outcome, Setup, clean_env, wait_file
from perf.lab.systems.nginx import Nginx


def _module(name: str) -> list[str]:
    return [sys.executable, "-S", "-m", name]


def _env() -> dict:
    """``clean_env`` with the path ``site`` would have built, the tree first."""
    return clean_env(PYTHONPATH=_path())


@functools.cache
def _path() -> str:
    """The tree, then the entries ``site`` adds to this interpreter's path
    (asked of two fresh interpreters, so how the lab itself was started
    does not leak in)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def path_of(*flags: str) -> list[str]:
        out = subprocess.run([sys.executable, *flags, "-c", "import sys; print(repr(sys.path))"],
                             capture_output=True, text=True, check=True, timeout=60, env=env,
                             cwd="/").stdout
        return [p for p in ast.literal_eval(out) if p and os.path.isabs(p)]

    bare = set(path_of("-S"))
    added = [p for p in path_of() if p not in bare and p != REPO]
    return os.pathsep.join([REPO, *dict.fromkeys(added)])


def prepare() -> dict:
    """Bytecode compiled, the native extension loadable as the lab's processes load it.

    Returns what the report records about the build: the commit (``+dirty``
    when the tree has changes) and whether the native extension is in use.
    """
    for package in ("engine", "supernode", "native"):
        compileall.compile_dir(os.path.join(REPO, package), quiet=1)
    # As the lab's processes start (``_module``, ``_env``): whatever they need must load.
    code = ("import aiohttp, uvloop, engine.cli.dfget, engine.cli.dfdaemon, supernode.cli\n"
            "import native; print(native.NATIVE); print(native.LOAD_ERROR)")
    check = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True,
                           text=True, env=_env(), cwd=REPO, timeout=60, check=False)
    lines = check.stdout.splitlines()
    if check.returncode:
        raise LabError(f"the lab's Python (-S, PYTHONPATH {_path()}) cannot "
                       f"import damselfly from {REPO}: {check.stderr.strip()[-500:]}")
    if not lines or lines[0] != "True":
        why = lines[1] if len(lines) > 1 else "no answer"
        raise LabError(f"the native extension does not load from {REPO} ({why}); the lab "
                       "would measure the pure-Python fallback. Build it with `pip install "
                       "--no-build-isolation -e .` in that tree")
    return {"commit": _commit(), "native": True}


def _commit() -> str:
    """The short commit of REPO, ``+dirty`` with uncommitted changes; "unknown"
    outside a git checkout or without git."""
    try:
        head = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=False)
        if head.returncode:
            return "unknown"
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain",
                                "--untracked-files=no"],
                               capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty else "")


def run_damselfly(setup: Setup) -> Outcome:
    procs, opts = setup.procs, setup.options
    env = _env()
    root = os.path.join(setup.work, "www")
    os.makedirs(root, exist_ok=True)
    os.link(setup.file_path, os.path.join(root, setup.file_name))
    origin = Nginx(procs, setup.origin, root, os.path.join(setup.work, "nginx"))

    sn_dir = os.path.join(setup.work, "supernode")
    os.makedirs(sn_dir, exist_ok=True)
    sn_ready = os.path.join(sn_dir, "ready.json")
    supernode = procs.start(setup.sn_host, [
        *_module("supernode.cli"), "--host", setup.sn_host.ip, "--port", "0",
        "--upload-port", "0", "--data-dir", os.path.join(sn_dir, "data"),
        "--ready-file", sn_ready, "--log-level", "warning",
        *opts.get("supernode_args", ())], log="supernode.log", env=env)
    wait_file(sn_ready, supernode)
    with open(sn_ready, "rb") as f:
        port = orjson.loads(f.read())["port"]
    sn_addr = f"{setup.sn_host.ip}:{port}"

    daemons = {}
    for host in setup.clients:
        d = setup.client_dir(host)
        daemons[host.name] = (d, procs.start(host, [
            *_module("engine.cli.dfdaemon"), "--data-dir", os.path.join(d, "data"),
            "--supernode", sn_addr, "--listen-ip", host.ip,
            "--workers", str(opts.get("workers", 1)), "--peer-id", host.name,
            "--ready-file", os.path.join(d, "ready.json"), "--log-level", "warning",
            *opts.get("dfdaemon_args", ())], log=f"dfdaemon-{host.name}.log", env=env))
    for d, proc in daemons.values():
        wait_file(os.path.join(d, "ready.json"), proc, timeout=60)

    finish, outputs, clients = Finish(), {}, {}
    t0 = setup.start_clock()
    for host in setup.clients:
        d = daemons[host.name][0]
        out = os.path.join(d, setup.file_name)
        outputs[host.name] = out
        proc = procs.start(host, [
            *_module("engine.cli.dfget"), "--data-dir", os.path.join(d, "data"),
            "--no-autostart", "--no-progress", setup.url(), "-o", out],
            log=f"dfget-{host.name}.log", env=env)
        clients[host.name] = proc
        finish.watch(host.name, proc)
    finish.join(setup.timeout)
    setup.clients_done()
    outcome = Outcome({n: t - t0 for n, t in finish.times.items()}, outputs,
                      origin_bytes=origin.bytes_sent())
    for name, code in finish.codes.items():
        if code:
            outcome.failures[name] = f"dfget exit {code}: {read_log(clients[name], 500)}"
    for name, (_, proc) in daemons.items():
        if proc.poll() is not None:
            outcome.notes.append(f"dfdaemon on {name} exited {proc.returncode} during the "
                                 f"run: {read_log(proc, 300)}")
    return outcome

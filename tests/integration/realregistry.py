"""A real container registry for tests: distribution v2.8 plus skopeo.

Tests of the registry mirror need an origin that speaks the real Docker
Registry HTTP API v2 and a real client that pulls through the mirror. This
module provides both, on loopback only, with no TLS and no auth:

* ``ensure_tools()`` installs the Debian packages ``docker-registry``
  (``/usr/bin/docker-registry``, distribution 2.8) and ``skopeo`` when missing.
* ``run_registry(tmp_path)`` runs a registry on a free loopback port with
  filesystem storage under ``tmp_path``; its log (stdout+stderr) holds one
  access line per HTTP request, which ``Registry.blob_gets`` parses to tell
  what reached the origin.
* ``push(image, registry)`` copies an image (``tests.integration.ociimage``)
  into the registry with skopeo.
* ``pull_via_mirror(...)`` pulls it back with skopeo, configured by a
  registries.conf to go through a mirror first.

Usage::

    ensure_tools()
    image = ociimage.make_image(tmp_path, [b"a" * 100_000, os.urandom(1 << 20)])
    with run_registry(tmp_path) as registry:
        digest = push(image, registry)
        result = pull_via_mirror(registry, mirror_host_port, "demo/app", "1",
                                 tmp_path / "pulled", tmp_path)
        assert result.returncode == 0, result.stderr
        assert registry.blob_gets(image.layer_digests[0]) == 1

What skopeo 1.9.3 does with a mirror (observed): it asks the mirror first,
by tag too, and takes the manifest and every blob from whichever endpoint
served the manifest. It falls back to the registry itself when the mirror is
unreachable or fails the manifest (404, 500), but not when the mirror fails
a blob (the pull fails). For an ``insecure`` endpoint it first tries HTTPS on
the same port (a TLS ClientHello reaches the plain-HTTP mirror) and then
plain HTTP; every request comes on a new connection (``Connection: close``).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.integration.ociimage import Image

# command -> Debian package
TOOLS = {"docker-registry": "docker-registry", "skopeo": "skopeo"}

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_ACCEPT = ", ".join([OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_LIST])

READY_TIMEOUT = 20.0
SKOPEO_TIMEOUT = 120.0
APT_TIMEOUT = 900.0

# No proxy for loopback, whatever the environment says.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def ensure_tools() -> None:
    """Install ``docker-registry`` and ``skopeo`` with apt-get if missing.

    Raises RuntimeError when something is missing and we are not root, or
    when apt-get fails; never skips silently. Serialised with a file lock so
    parallel test workers don't fight over apt's locks.
    """
    if not _missing_packages():
        return
    if os.geteuid() != 0:
        raise RuntimeError(f"{' '.join(_missing_packages())} missing and not root: "
                           "run as root or apt-get install them first")
    with open("/tmp/damselfly-apt.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        missing = _missing_packages()          # another worker may have done it
        if missing:
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            wait_lock = ["-o", "DPkg::Lock::Timeout=300"]
            for cmd in (["apt-get", *wait_lock, "update", "-q"],
                        ["apt-get", *wait_lock, "install", "-y", "-q",
                         "--no-install-recommends", *missing]):
                r = subprocess.run(cmd, env=env, capture_output=True, text=True,
                                   timeout=APT_TIMEOUT, stdin=subprocess.DEVNULL)
                if r.returncode != 0:
                    raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n"
                                       f"{_tail(r.stdout + r.stderr)}")
    still = _missing_packages()
    if still:
        raise RuntimeError(f"apt-get installed {still} but their commands are not on PATH")


def _missing_packages() -> list[str]:
    return sorted({pkg for cmd, pkg in TOOLS.items() if shutil.which(cmd) is None})


def _require(cmd: str) -> str:
    path = shutil.which(cmd)
    if path is None:
        raise RuntimeError(f"{cmd} is not installed: call realregistry.ensure_tools() first "
                           f"(Debian package {TOOLS[cmd]})")
    return path


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _clean_env() -> dict[str, str]:
    """The environment minus proxy settings: everything here is loopback."""
    return {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}


# --- the registry -----------------------------------------------------------

# distribution 2.8 writes one Apache "combined" line per request to stdout:
#   127.0.0.1 - - [27/Nov/2026:04:44:38 +0000] "GET /v2/ HTTP/1.1" 200 2 "" "curl/7.88.1"
_ACCESS = re.compile(r'^(?P<remote>\S+) \S+ \S+ \[(?P<time>[^\]]+)\] '
                     r'"(?P<method>[A-Z]+) (?P<uri>\S+) (?P<proto>[^"]+)" '
                     r'(?P<status>\d{3}) (?P<size>\d+|-) "(?P<referer>[^"]*)" "(?P<agent>[^"]*)"$')


@dataclass(frozen=True)
class Access:
    """One access-log line of the registry."""
    method: str
    uri: str          # path and query string, as requested
    status: int
    size: int         # body bytes written
    agent: str

    @property
    def path(self) -> str:
        return self.uri.split("?", 1)[0]


@dataclass
class Registry:
    host: str
    port: int
    root: Path        # filesystem storage
    log_path: Path
    process: subprocess.Popen = field(repr=False)

    @property
    def host_port(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def requests(self) -> list[Access]:
        """Every request the registry logged so far, in order.

        The line is written as the handler returns, just before the last
        buffered bytes of the response go out: read it once the client is done.
        """
        found = []
        for line in self.log().splitlines():
            m = _ACCESS.match(line)
            if m:
                size = 0 if m["size"] == "-" else int(m["size"])
                found.append(Access(m["method"], m["uri"], int(m["status"]), size, m["agent"]))
        return found

    def blob_gets(self, digest: str, status: int | None = None) -> int:
        """GETs (not HEADs) of ``/v2/<any repo>/blobs/<digest>``, of any status
        unless ``status`` is given (200 means: the registry sent the blob)."""
        pattern = re.compile(r"/v2/.+/blobs/" + re.escape(digest))
        return sum(1 for a in self.requests()
                   if a.method == "GET" and pattern.fullmatch(a.path)
                   and (status is None or a.status == status))


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _registry_config(root: Path, host: str, port: int) -> str:
    """The config as JSON, which is also YAML (no quoting surprises)."""
    return json.dumps({
        "version": 0.1,
        "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
        "storage": {
            "filesystem": {"rootdirectory": str(root)},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {"addr": f"{host}:{port}", "secret": "damselfly-tests"},
    }, indent=2)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def _wait_ready(registry: Registry, timeout: float) -> str | None:
    """None once ``GET /v2/`` answers 200; else why not (exited, timed out)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if registry.process.poll() is not None:
            return f"exited with {registry.process.returncode}"
        try:
            with _OPENER.open(registry.url + "/v2/", timeout=1) as resp:
                if resp.status == 200:
                    return None
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.05)
    return f"not ready after {timeout:.0f}s"


@contextlib.contextmanager
def run_registry(tmp_path: str | os.PathLike, host: str = "127.0.0.1",
                 ready_timeout: float = READY_TIMEOUT,
                 name: str = "registry") -> Iterator[Registry]:
    """Run ``docker-registry serve`` on ``host`` (loopback) and a free port.

    Storage is ``<tmp_path>/<name>/data``, config and log beside it. A port
    that someone grabbed between our probe and the registry's bind is retried
    with another one. The process is terminated (then killed) on exit.
    """
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"loopback only, not {host}")
    binary = _require("docker-registry")
    base = Path(tmp_path) / name
    root = base / "data"
    root.mkdir(parents=True, exist_ok=True)
    log_path = base / "registry.log"
    for attempt in range(3):
        port = _free_port(host)
        config = base / "config.yml"
        config.write_text(_registry_config(root, host, port))
        with open(log_path, "wb") as log:  # the child keeps its own copy of the fd
            process = subprocess.Popen([binary, "serve", str(config)], stdin=subprocess.DEVNULL,
                                       stdout=log, stderr=subprocess.STDOUT, env=_clean_env())
        registry = Registry(host, port, root, log_path, process)
        try:
            why = _wait_ready(registry, ready_timeout)
            if why is None:
                yield registry
                return
            if "address already in use" in registry.log() and attempt < 2:
                continue
            raise RuntimeError(f"docker-registry on {registry.host_port} {why}; "
                               f"log {log_path}:\n{_tail(registry.log())}")
        finally:
            _stop(process)
    raise AssertionError("unreachable")


# --- skopeo -----------------------------------------------------------------

def _skopeo(args: list[str], tmp_dir: Path, timeout: float) -> subprocess.CompletedProcess:
    tmp_dir.mkdir(parents=True, exist_ok=True)
    cmd = [_require("skopeo"), "--insecure-policy", "--tmpdir", str(tmp_dir), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=_clean_env())


def manifest_digest(registry: Registry, repo: str, reference: str) -> str:
    """The Docker-Content-Digest the registry reports for ``repo:reference``."""
    req = urllib.request.Request(f"{registry.url}/v2/{repo}/manifests/{reference}",
                                 headers={"Accept": MANIFEST_ACCEPT})
    with _OPENER.open(req, timeout=10) as resp:
        resp.read()
        return resp.headers["Docker-Content-Digest"]


def push(image: Image, registry: Registry, repo: str = "demo/app", tag: str = "1",
         timeout: float = SKOPEO_TIMEOUT) -> str:
    """Copy the image into the registry; return the manifest digest it holds.

    skopeo 1.9 keeps the OCI manifest as is (no conversion, the layers are
    already gzip), so this equals ``image.manifest_digest``.
    """
    r = _skopeo(["copy", "--dest-tls-verify=false", f"oci:{image.layout_dir}:1",
                 f"docker://{registry.host_port}/{repo}:{tag}"],
                image.layout_dir.parent / "skopeo-tmp", timeout)
    if r.returncode != 0:
        raise RuntimeError(f"skopeo push to {registry.host_port}/{repo}:{tag} failed "
                           f"({r.returncode}):\n{_tail(r.stderr)}")
    return manifest_digest(registry, repo, tag)


def write_registries_conf(path: Path, registry: Registry, mirror_host_port: str) -> Path:
    """containers-registries.conf(5), v2 format: ``registry`` behind one mirror."""
    path.write_text(
        "unqualified-search-registries = []\n\n"
        "[[registry]]\n"
        f'location = "{registry.host_port}"\n'
        "insecure = true\n\n"
        "[[registry.mirror]]\n"
        f'location = "{mirror_host_port}"\n'
        "insecure = true\n")
    return path


def pull_via_mirror(registry: Registry, mirror_host_port: str, repo: str, tag: str,
                    dest_dir: str | os.PathLike, tmp_path: str | os.PathLike,
                    timeout: float = SKOPEO_TIMEOUT, debug: bool = False,
                    ) -> subprocess.CompletedProcess:
    """``skopeo copy docker://<registry>/<repo>:<tag> dir:<dest_dir>`` with the
    mirror configured; the caller checks ``returncode``.

    Beware: skopeo falls back to the registry itself when the mirror fails,
    so success alone doesn't prove the mirror served anything; look at the
    registry's log (``blob_gets``) or the mirror's own counters. ``debug``
    adds skopeo's --debug trace (which endpoint it tried) to stderr.
    """
    tmp = Path(tmp_path)
    conf = write_registries_conf(tmp / "registries.conf", registry, mirror_host_port)
    Path(dest_dir).mkdir(parents=True, exist_ok=True)
    args = ["--registries-conf", str(conf), *(["--debug"] if debug else []),
            "copy", "--src-tls-verify=false",
            f"docker://{registry.host_port}/{repo}:{tag}", f"dir:{dest_dir}"]
    return _skopeo(args, tmp / "skopeo-tmp", timeout)

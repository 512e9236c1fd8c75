"""The one error hierarchy of damselfly.

Every failure that crosses a module boundary is one of these. Foreign
exceptions (OSError, cffi, aiohttp, orjson) are mapped where they are caught,
with ``raise ... from exc`` so the cause stays visible::

    DamselflyError                      exit 1 unless a subclass says otherwise
    ├── LocalError                      our side: the input, the config, this host
    │   ├── BadInput                    exit 2   an argument or request is invalid
    │   │   └── (supernode.scheduler.errors: IllegalTransition, UnknownTask,
    │   │        UnknownPeer — events the scheduler core cannot accept)
    │   ├── ConfigError                 exit 3   configuration cannot be used
    │   ├── StoreError                  exit 5   the piece store is unusable/torn
    │   │   └── TaskNotFound                     no such task in the store
    │   ├── IOFailure                   exit 5   an OS call failed (errno kept)
    │   │   ├── BadFileDescriptor                closed or wrong kind of fd
    │   │   └── DiskFull                exit 4   ENOSPC/EDQUOT while writing
    │   ├── NotEnoughSpace              exit 4   precheck: needed vs free
    │   ├── DaemonUnavailable           exit 9   dfget cannot reach or start dfdaemon
    │   └── ClosedByUs                  exit 10  we gave up: --timeout, or shutting down
    └── RemoteError                              someone else misbehaved
        ├── OriginError                 exit 6   the origin failed (status kept)
        ├── SupernodeError              exit 7   scheduler unreachable or refused
        ├── PeerError                            a peer failed a piece transfer
        │   └── CorruptPiece                     a piece failed its digest
        ├── BrokenByPeer                         the other side reset/closed
        └── IntegrityError              exit 8   the whole file failed its digest

Retrying elsewhere can help with a RemoteError, never with a LocalError.
The CLIs print ``str(error)`` on one line and exit with ``error.exit_code``.
"""

from __future__ import annotations

import errno as _errno


class DamselflyError(Exception):
    """Base of every error damselfly raises on purpose."""

    exit_code = 1


class LocalError(DamselflyError):
    """The problem is on our side: bad input, bad config, this host's state."""


class BadInput(LocalError, ValueError):
    """An argument, flag or request field is invalid."""

    exit_code = 2


class ConfigError(LocalError):
    """The merged configuration cannot be used."""

    exit_code = 3


class StoreError(LocalError):
    """The piece store cannot be used, or a task in it is torn."""

    exit_code = 5


class TaskNotFound(StoreError, KeyError):
    """No task with that id is in the store."""

    def __str__(self) -> str:  # KeyError would quote the message.
        return str(self.args[0]) if self.args else "task not found"


class IOFailure(LocalError, OSError):
    """An operating-system call failed; ``errno`` holds the cause."""

    exit_code = 5


class BadFileDescriptor(IOFailure):
    """The file descriptor is closed or of the wrong kind for the call."""


class DiskFull(IOFailure):
    """The filesystem ran out of space (or quota) while writing."""

    exit_code = 4


class NotEnoughSpace(LocalError):
    """The disk-space precheck failed before anything was written."""

    exit_code = 4

    def __init__(self, path: str, needed: int, free: int, reserved: int = 0) -> None:
        self.path, self.needed, self.free, self.reserved = path, needed, free, reserved
        super().__init__(
            f"not enough disk space in {path}: need {_mib(needed)}, "
            f"free {_mib(free)} of which {_mib(reserved)} is reserved by other tasks"
        )


class DaemonUnavailable(LocalError):
    """dfget could neither reach nor start a dfdaemon."""

    exit_code = 9


class ClosedByUs(LocalError):
    """We closed or cancelled the transfer ourselves (shutdown, timeout)."""

    exit_code = 10


class RemoteError(DamselflyError):
    """A peer, the supernode or the origin misbehaved; elsewhere may work."""


class OriginError(RemoteError):
    """The origin answered with an error or broke its promise (length)."""

    exit_code = 6

    def __init__(self, message: str, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class SupernodeError(RemoteError):
    """The supernode is unreachable or refused the request."""

    exit_code = 7


class PeerError(RemoteError):
    """A peer failed to deliver a piece."""


class CorruptPiece(PeerError):
    """A piece's bytes do not match its sha256."""


class BrokenByPeer(RemoteError):
    """The other side reset or closed the connection mid-transfer."""


class IntegrityError(RemoteError):
    """The finished file does not match the expected digest."""

    exit_code = 8


def from_oserror(exc: OSError, what: str) -> DamselflyError:
    """Map an OSError raised while doing ``what`` into the hierarchy.

    The caller raises the result ``from exc``.
    """
    code = exc.errno
    message = f"{what}: {exc.strerror or exc}"
    if code == _errno.EBADF:
        return BadFileDescriptor(code, message)
    if code in (_errno.ENOSPC, _errno.EDQUOT):
        return DiskFull(code, message)
    if code in (_errno.EPIPE, _errno.ECONNRESET, _errno.ENOTCONN):
        return BrokenByPeer(message)
    if code in (_errno.EINVAL, _errno.EOVERFLOW, _errno.ESPIPE, _errno.ENOTSOCK):
        return BadInput(message)
    return IOFailure(code, message)


def _mib(n: int) -> str:
    return f"{n / 1048576:.1f} MiB"

"""File operations the piece store needs, kept out of its lifecycle code.

``file_digest`` hashes with pread into one reused buffer rather than through
the mmap: hashing the mapping would fault every page of the file into the
caller's RSS. ``copy_file`` copies in the kernel (reflink, copy_file_range,
sendfile as the last resort across filesystems on older kernels).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import secrets

from engine.errors import StoreError, from_oserror


def temp_path(output: str) -> str:
    """A temporary name next to ``output`` for a file renamed onto it when
    whole: hidden, ``.dfpart``, and unique, so that two downloads to the same
    path never write (or remove, or rename) each other's partial file."""
    head, name = os.path.split(output)
    return os.path.join(head, f".{name}.{os.getpid()}-{secrets.token_hex(4)}.dfpart")


def remove_quietly(path: str) -> None:
    """Unlink ``path`` if it is there; a cleanup that must not raise."""
    try:
        os.unlink(path)
    except OSError:
        pass


def file_digest(fd: int, length: int, algorithm: str = "sha256",
                chunk: int = 4 << 20) -> str:
    """Hex digest of the first ``length`` bytes of ``fd``, read with pread."""
    h = hashlib.new(algorithm)
    buf = bytearray(min(chunk, max(length, 1)))
    view = memoryview(buf)
    offset = 0
    try:
        while offset < length:
            n = os.preadv(fd, [view[:min(chunk, length - offset)]], offset)
            if n == 0:
                raise StoreError("task data ended early while hashing")
            h.update(view[:n])
            offset += n
    except OSError as exc:
        raise from_oserror(exc, "reading task data") from exc
    finally:
        view.release()
    return h.hexdigest()


_FICLONE = 0x40049409
_NO_KERNEL_COPY = (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP)


def copy_file(src_fd: int, dst: str, length: int) -> None:
    """Copy in the kernel: reflink if the filesystem shares blocks, else
    copy_file_range, else sendfile (across filesystems on older kernels)."""
    out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        if reflink(src_fd, out):
            return
        copy_range(src_fd, out, 0, length)
        os.fsync(out)
    finally:
        os.close(out)


def reflink(src_fd: int, out_fd: int) -> bool:
    """Make ``out_fd`` share every block of ``src_fd``; False where the
    filesystem cannot (ext4, tmpfs, two filesystems)."""
    try:
        fcntl.ioctl(out_fd, _FICLONE, src_fd)
    except OSError:
        return False
    return True


def copy_range(src_fd: int, out_fd: int, offset: int, length: int) -> None:
    """Copy ``length`` bytes at ``offset`` of ``src_fd`` to the same offset of
    ``out_fd`` in the kernel (copy_file_range, else sendfile). Raises OSError."""
    end = offset + length
    copy = os.copy_file_range
    while offset < end:
        try:
            n = copy(src_fd, out_fd, end - offset, offset, offset)
        except OSError as exc:
            if copy is _sendfile_to or exc.errno not in _NO_KERNEL_COPY:
                raise
            copy = _sendfile_to
            continue
        if n == 0:
            raise StoreError("task data ended early while copying")
        offset += n


def _sendfile_to(src_fd: int, out_fd: int, count: int, offset: int, out_offset: int) -> int:
    # os.sendfile writes at the output's file position: put it where this range goes.
    os.lseek(out_fd, out_offset, os.SEEK_SET)
    return os.sendfile(out_fd, src_fd, offset, count)

"""OutputFile: pieces streamed while they arrive, the rest copied at the end,
renamed into place whole, or nothing at the path at all."""

from __future__ import annotations

import errno
import hashlib
import os

import pytest

from engine.download.output import OutputFile
from engine.errors import DiskFull
from engine.meta import TaskMeta
from engine.pieces import PieceLayout
from engine.store import PieceStore
from engine.types import TaskId

PIECE = 1 << 20
DATA = os.urandom(3 * PIECE + 1234)  # an unaligned tail: buffered, the rest O_DIRECT
LAYOUT = PieceLayout(len(DATA), PIECE)


@pytest.fixture
def task(tmp_path):
    store = PieceStore(str(tmp_path / "store"))
    task = store.create(TaskMeta.new(TaskId.of("output-test"), "http://o/f", LAYOUT))
    for i in LAYOUT.indices():
        r = LAYOUT.range(i)
        task.write_piece(i, DATA[r.start:r.end])
        task.commit_piece(i, hashlib.sha256(DATA[r.start:r.end]).hexdigest())
    task.finish(hashlib.sha256(DATA).hexdigest())
    yield task
    task.close()


def _stream(output: OutputFile, task, index: int, data: bytes | None = None) -> None:
    r = LAYOUT.range(index)
    body = DATA[r.start:r.end] if data is None else data
    with memoryview(bytearray(body)) as view:
        output.write(task.fd, view, r.start)


def _leftovers(folder) -> list[str]:
    return [n for n in os.listdir(folder) if n.endswith(".dfpart")]


def test_streamed_pieces_are_kept_and_the_rest_is_copied_at_the_end(task, tmp_path):
    path = tmp_path / "out"
    output = OutputFile(str(path))
    for i in (0, 3):
        _stream(output, task, i)
        output.mark(i, LAYOUT.range(i).start, LAYOUT.size_of(i))
    # Piece 1 arrived but never verified (a corrupt attempt): it must be copied over.
    _stream(output, task, 1, os.urandom(PIECE))
    assert not path.exists()  # nothing at the path until finish
    assert output.streamed == 2 * PIECE + 1234
    output.finish(task)
    assert path.read_bytes() == DATA
    assert not _leftovers(tmp_path)


def test_an_output_that_saw_nothing_is_copied_whole(task, tmp_path):
    path = tmp_path / "out"
    OutputFile(str(path)).finish(task)
    assert path.read_bytes() == DATA


def test_abort_leaves_nothing_and_later_writes_are_ignored(task, tmp_path):
    path = tmp_path / "out"
    output = OutputFile(str(path))
    _stream(output, task, 0)
    output.abort()
    _stream(output, task, 1)  # a buffer still queued when the download gave up
    assert not path.exists() and not _leftovers(tmp_path)
    with pytest.raises(Exception, match="abandoned"):
        output.finish(task)


def test_a_failed_write_fails_finish_and_leaves_nothing(task, tmp_path, monkeypatch):
    path = tmp_path / "out"
    output = OutputFile(str(path))
    _stream(output, task, 0)

    def full(fd, data, position):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    _stream(output, task, 1)
    monkeypatch.undo()
    _stream(output, task, 2)  # after a failure the output takes nothing more
    with pytest.raises(DiskFull, match="No space"):
        output.finish(task)
    assert not path.exists() and not _leftovers(tmp_path)


def test_a_directory_is_refused_up_front(tmp_path):
    with pytest.raises(Exception, match="directory"):
        OutputFile(str(tmp_path))


def test_two_outputs_to_one_path_keep_their_partial_files_apart(task, tmp_path):
    """Two downloads to the same path at once: one giving up must not remove
    or replace the other's partial file, and the survivor lands whole."""
    path = tmp_path / "out"
    first, second = OutputFile(str(path)), OutputFile(str(path))
    assert first.tmp != second.tmp
    for output in (first, second):
        _stream(output, task, 0)
        output.mark(0, 0, PIECE)
    first.abort()
    second.finish(task)
    assert path.read_bytes() == DATA
    assert not _leftovers(tmp_path)

"""Piece store: preallocation, shared bitmap, finalising, restart, disk prechecks."""

from __future__ import annotations

import errno
import hashlib
import multiprocessing
import os
import subprocess

import pytest

from engine.diskspace import DiskBudget
from engine.errors import (BadInput, DamselflyError, DiskFull, IntegrityError, NotEnoughSpace,
                           StoreError, TaskNotFound)
from engine.meta import TaskMeta, redact_url
from engine.pieces import PieceLayout
from engine.store import PieceStore
from engine.types import TaskId

PIECE = 1 << 20


def _content(length: int) -> bytes:
    return os.urandom(length)


def _meta(length: int, url: str = "http://origin/file") -> TaskMeta:
    return TaskMeta.new(TaskId.of(url, str(length)), url, PieceLayout(length, PIECE))


def _fill(store: PieceStore, data: bytes, finish: bool = True, url: str = "http://o/f"):
    task = store.create(_meta(len(data), url))
    for i in task.layout.indices():
        r = task.layout.range(i)
        task.write_piece(i, data[r.start:r.end])
        assert task.commit_piece(i, hashlib.sha256(data[r.start:r.end]).hexdigest())
    if finish:
        task.finish(hashlib.sha256(data).hexdigest())
    return task


@pytest.mark.parametrize("length", [0, 1, PIECE, PIECE + 1, 3 * PIECE + 7])
def test_fill_finish_export_roundtrip(tmp_path, length):
    data = _content(length)
    store = PieceStore(str(tmp_path / "store"))
    task = _fill(store, data)
    out = tmp_path / "out" / "fïlé ünïcode.bin"
    out.parent.mkdir()
    task.export(str(out))
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert task.meta.sha256 == hashlib.sha256(data).hexdigest()
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temp left
    task.close()


def test_data_file_is_preallocated(tmp_path):
    store = PieceStore(str(tmp_path))
    task = store.create(_meta(8 * PIECE))
    st = os.stat(os.path.join(task.path, "data"))
    assert st.st_size == 8 * PIECE
    assert st.st_blocks * 512 >= 8 * PIECE
    task.close()


def _linked(tmp_path, data: bytes):
    """A complete task in a store under tmp_path/s, exported as a hard link."""
    store = PieceStore(str(tmp_path / "s"))
    task = _fill(store, data)
    out = tmp_path / "linked"
    task.export(str(out), link=True)
    return store, task, out


def _link_fails(monkeypatch, code: int) -> None:
    def fail(src, dst):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "link", fail)


def test_hard_link_export_shares_the_inode(tmp_path):
    data = _content(PIECE + 5)
    _, task, out = _linked(tmp_path, data)
    assert os.stat(out).st_ino == os.stat(os.path.join(task.path, "data")).st_ino
    assert out.read_bytes() == data
    task.close()


def test_an_output_edited_in_place_takes_its_linked_task_out_of_the_store(tmp_path):
    store, task, out = _linked(tmp_path, _content(2 * PIECE))
    task_id = task.task_id
    task.close()
    store.open(task_id).close()  # untouched: still the complete task
    with open(out, "r+b") as f:  # the user edits "their" file in place
        f.seek(PIECE)
        f.write(b"edited")
    with pytest.raises(StoreError, match="written after it was complete"):
        store.open(task_id)
    assert store.complete_tasks() == []
    assert store.scan() == [] and not os.path.exists(store.task_path(task_id))
    assert out.read_bytes()[PIECE:PIECE + 6] == b"edited"  # the user's file is theirs


def test_a_replaced_output_leaves_the_cache_intact(tmp_path):
    store, task, out = _linked(tmp_path, _content(PIECE + 9))
    task.close()
    tmp = tmp_path / "new"
    tmp.write_bytes(b"a new version")  # an editor's save: write aside, rename over
    os.replace(tmp, out)
    task = store.open(task.task_id)
    assert task.complete and not task.changed_since_complete()
    task.close()


@pytest.mark.parametrize("refusal", ["EXDEV", "EPERM", "EMLINK"])
def test_a_refused_link_becomes_a_copy_only_when_allowed(tmp_path, monkeypatch, refusal):
    data = _content(PIECE + 3)
    store = PieceStore(str(tmp_path / "s"))
    task = _fill(store, data)
    out = tmp_path / "out"
    _link_fails(monkeypatch, getattr(errno, refusal))
    with pytest.raises(DamselflyError):
        task.export(str(out), link=True)
    assert not out.exists() and os.listdir(tmp_path) == ["s"]
    task.export(str(out), link=True, copy_if_refused=True)
    assert os.stat(out).st_ino != os.stat(os.path.join(task.path, "data")).st_ino
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(data).digest()
    task.close()


def test_a_link_error_that_a_copy_would_not_fix_is_raised(tmp_path, monkeypatch):
    store = PieceStore(str(tmp_path / "s"))
    task = _fill(store, _content(PIECE))
    _link_fails(monkeypatch, errno.ENOSPC)
    with pytest.raises(DiskFull):
        task.export(str(tmp_path / "out"), link=True, copy_if_refused=True)
    assert os.listdir(tmp_path) == ["s"]
    task.close()


def test_export_replaces_atomically_and_refuses_incomplete(tmp_path):
    store = PieceStore(str(tmp_path / "s"))
    task = store.create(_meta(2 * PIECE))
    out = tmp_path / "out"
    out.write_bytes(b"old contents")
    with pytest.raises(StoreError):
        task.export(str(out))
    assert out.read_bytes() == b"old contents"
    task.close()


def test_corrupt_piece_is_not_published(tmp_path):
    store = PieceStore(str(tmp_path))
    task = store.create(_meta(2 * PIECE))
    task.write_piece(0, b"x" * PIECE)
    with pytest.raises(IntegrityError):
        task.commit_piece(0, hashlib.sha256(b"y" * PIECE).hexdigest())
    assert not task.has(0)
    with pytest.raises(BadInput):
        task.write_piece(1, b"short")
    task.close()


def test_whole_file_digest_mismatch_is_refused(tmp_path):
    data = _content(PIECE)
    store = PieceStore(str(tmp_path))
    task = _fill(store, data, finish=False)
    with pytest.raises(IntegrityError):
        task.finish(hashlib.sha256(b"other").hexdigest())
    assert not task.complete
    task.close()


def _set_bit_in_child(root: str, task_hex: str, index: int, data: bytes) -> None:
    task = PieceStore(root).open(TaskId(task_hex))
    task.write_piece(index, data)
    task.commit_piece(index, hashlib.sha256(data).hexdigest())
    task.close()


def test_another_process_sees_a_piece_the_moment_its_bit_is_set(tmp_path):
    root = str(tmp_path)
    store = PieceStore(root)
    task = store.create(_meta(2 * PIECE))
    assert not task.has(1)
    piece = _content(PIECE)
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=_set_bit_in_child, args=(root, task.task_id.hex, 1, piece))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    assert task.has(1) and not task.has(0)
    with task.view(1) as view:
        assert bytes(view) == piece
    task.close()


def test_restart_serves_complete_tasks_and_discards_torn_ones(tmp_path):
    root = str(tmp_path)
    store = PieceStore(root)
    good = _fill(store, _content(2 * PIECE))
    torn = _fill(store, _content(PIECE), url="http://o/torn")
    lying = _fill(store, b"z" * PIECE, finish=False, url="http://o/lying")
    lying.save_meta()
    for t in (good, torn, lying):
        t.close()
    meta_path = os.path.join(torn.path, "meta")
    with open(meta_path, "r+b") as f:  # a torn write
        f.truncate(os.path.getsize(meta_path) // 2)
    with open(os.path.join(lying.path, "data"), "r+b") as f:  # page cache lost
        f.write(b"\0" * 16)

    kept = PieceStore(root).scan()
    assert [m.task_id for m in kept] == [good.task_id]
    assert not os.path.exists(torn.path) and not os.path.exists(lying.path)
    reopened = PieceStore(root).open(good.task_id)
    assert reopened.complete and reopened.bitmap.complete()
    reopened.close()
    with pytest.raises(TaskNotFound):
        PieceStore(root).open(torn.task_id)


def test_a_completion_not_yet_synced_is_checked_after_a_restart(tmp_path):
    root = str(tmp_path)
    store = PieceStore(root)
    data = _content(2 * PIECE)
    intact = _fill(store, data, finish=False)
    intact.finish(hashlib.sha256(data).hexdigest(), rehash=False, durable=False)
    other = _content(PIECE)
    lost = _fill(store, other, finish=False, url="http://o/lost")
    lost.finish(hashlib.sha256(other).hexdigest(), rehash=False, durable=False)
    for t in (intact, lost):
        assert t.complete and not t.meta.synced       # servable and exportable at once
        t.close()
    with open(os.path.join(lost.path, "data"), "r+b") as f:  # never reached the disk
        f.write(b"\0" * 16)
    st = os.stat(os.path.join(lost.path, "data"))
    os.utime(os.path.join(lost.path, "data"), ns=(st.st_atime_ns, lost.meta.data_mtime_ns))

    kept = PieceStore(root).scan()
    assert [m.task_id for m in kept] == [intact.task_id] and kept[0].synced
    assert not os.path.exists(lost.path)               # a complete task, yet never served
    reopened = PieceStore(root).open(intact.task_id)
    assert reopened.complete and reopened.meta.synced  # the scan synced what it checked
    reopened.close()


def test_sync_makes_a_lazy_completion_durable_once(tmp_path):
    store = PieceStore(str(tmp_path))
    data = _content(PIECE + 5)
    task = _fill(store, data, finish=False)
    task.finish(hashlib.sha256(data).hexdigest(), durable=False)
    on_disk = PieceStore(str(tmp_path)).open(task.task_id)
    assert on_disk.complete and not on_disk.meta.synced
    on_disk.sync()
    on_disk.close()
    again = PieceStore(str(tmp_path)).open(task.task_id)
    assert again.meta.synced and again.meta.sha256 == hashlib.sha256(data).hexdigest()
    again.sync()                                       # nothing left to do
    again.close()
    task.close()


def test_data_size_disagreeing_with_meta_is_detected(tmp_path):
    store = PieceStore(str(tmp_path))
    task = _fill(store, _content(PIECE))
    task.close()
    os.truncate(os.path.join(task.path, "data"), PIECE - 1)
    with pytest.raises(StoreError, match="size"):
        store.open(task.task_id)
    assert store.scan() == []


def test_precheck_counts_other_reservations(tmp_path):
    budget = DiskBudget(floor_bytes=0)
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    held = budget.reserve(str(tmp_path), "a", now=0, later=free // 2 + 1)
    with pytest.raises(NotEnoughSpace) as info:
        budget.check(str(tmp_path), free // 2 + 1)
    assert info.value.reserved == free // 2 + 1
    assert "need" in str(info.value) and "free" in str(info.value)
    held.release()
    budget.check(str(tmp_path), free // 2 + 1)


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_task_larger_than_the_disk_is_refused_before_writing(small_fs):
    store = PieceStore(str(small_fs), DiskBudget(floor_bytes=0))
    with pytest.raises(NotEnoughSpace) as info:
        store.create(_meta(8 * PIECE))
    assert info.value.exit_code == 4
    assert os.listdir(small_fs / "tasks") == []
    assert store.budget.reserved == 0


def test_redact_url_drops_secrets():
    assert redact_url("https://user:pw@host:8443/a/b?X-Amz-Signature=s#frag") == \
        "https://host:8443/a/b"


def test_pieces_published_by_a_process_that_died_keep_their_digests(tmp_path):
    root = str(tmp_path)
    data = _content(2 * PIECE)
    task = PieceStore(root).create(_meta(len(data)))
    ctx = multiprocessing.get_context("fork")
    for i in (0, 1):  # each child publishes one piece and exits without saving meta
        child = ctx.Process(target=_set_bit_in_child,
                            args=(root, task.task_id.hex, i, data[i * PIECE:(i + 1) * PIECE]))
        child.start()
        child.join(30)
        assert child.exitcode == 0
    task.close()
    reopened = PieceStore(root).open(task.task_id)
    assert all(reopened.meta.piece_digests)
    reopened.finish(hashlib.sha256(data).hexdigest())
    assert reopened.complete
    reopened.close()
    assert [m.task_id for m in PieceStore(root).scan()] == [task.task_id]

"""Lazy sync: a completion made durable later, on the owner's thread, or at flush."""

from __future__ import annotations

import asyncio
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

from engine.lazysync import LazySyncs
from engine.meta import TaskMeta
from engine.pieces import PieceLayout
from engine.store import PieceStore
from engine.types import TaskId
from tests.helpers import run

PIECE = 1 << 20


def _completed(store: PieceStore, name: str) -> TaskId:
    data = os.urandom(PIECE + 11)
    url = f"http://o/{name}"
    task = store.create(TaskMeta.new(TaskId.of(url), url, PieceLayout(len(data), PIECE)))
    for i in task.layout.indices():
        r = task.layout.range(i)
        task.write_piece(i, data[r.start:r.end])
        task.commit_piece(i, hashlib.sha256(data[r.start:r.end]).hexdigest())
    task.finish(hashlib.sha256(data).hexdigest(), rehash=False, durable=False)
    task.close()
    return task.task_id


def _synced(store: PieceStore, task_id: TaskId) -> bool:
    task = store.open(task_id)
    try:
        return task.complete and task.meta.synced
    finally:
        task.close()


def test_due_syncs_run_later_and_flush_does_the_rest(tmp_path):
    store = PieceStore(str(tmp_path))
    soon, late, gone = (_completed(store, n) for n in ("soon", "late", "gone"))

    async def main():
        with ThreadPoolExecutor(1) as disk:
            syncs = LazySyncs(store, disk, delay=0.05)
            syncs.later(soon)
            syncs.delay = 60.0
            syncs.later(late)
            syncs.later(gone)
            store.remove(gone)                    # garbage-collected before its sync
            assert not _synced(store, soon)
            for _ in range(200):
                if _synced(store, soon):
                    break
                await asyncio.sleep(0.01)
            seen = [_synced(store, soon), _synced(store, late), syncs.pending]
            await syncs.flush()                   # the owner closing
            return seen + [_synced(store, late), syncs.pending]

    assert run(main()) == [True, False, 2, True, 0]


def test_completing_again_restarts_the_wait(tmp_path):
    store = PieceStore(str(tmp_path))
    task_id = _completed(store, "again")

    async def main():
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(1) as disk:
            syncs = LazySyncs(store, disk, delay=0.2)
            syncs.later(task_id)
            first = syncs._due[task_id]
            await asyncio.sleep(0.05)
            syncs.later(task_id)                  # one timer, from now
            second = syncs._due[task_id]
            moved = second.when() - first.when()
            state = (first.cancelled(), syncs.pending)
            while not _synced(store, task_id) and loop.time() < second.when() + 5:
                await asyncio.sleep(0.01)
            return state, moved >= 0.04, _synced(store, task_id), syncs.pending

    assert run(main()) == ((True, 1), True, True, 0)

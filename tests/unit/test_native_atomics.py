"""SharedWords: 64-bit atomics on a MAP_SHARED mmap, extension and fallback.

The cross-process tests fork workers that map the same file and hammer the
same words after a common barrier; exact totals (and, for fetch_add, every
old value seen exactly once) only come out if each operation is atomic.
A control test runs the same harness with a naive load+store increment and
shows it loses updates, so the harness can tell atomic from not.
"""

from __future__ import annotations

import array
import mmap
import multiprocessing
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import native
from tests.helpers import skip_or_fail
from engine.errors import BadFileDescriptor, BadInput
from native._common import SharedWordsBase

MASK = 2**64 - 1
PROCS = 4
OPS = 20_000


@pytest.fixture
def shared_file(tmp_path: Path) -> Iterator[tuple[int, mmap.mmap]]:
    """An fd and a MAP_SHARED mmap of a zeroed 64 KiB file; both closed after."""
    fd = os.open(tmp_path / "words", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.ftruncate(fd, 65536)
        mm = mmap.mmap(fd, 65536)
        try:
            yield fd, mm
        finally:
            mm.close()
    finally:
        os.close(fd)


def _run_workers(target: Callable[..., None], *args: object) -> None:
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(PROCS)
    procs = [ctx.Process(target=target, args=(p, barrier, *args)) for p in range(PROCS)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
    codes = [proc.exitcode for proc in procs]
    for proc in procs:
        proc.close()
    assert codes == [0] * PROCS


def _open_words(impl: ModuleType, path: Path) -> tuple[int, mmap.mmap, SharedWordsBase]:
    # Each worker maps the file itself, as separate processes would.
    fd = os.open(path, os.O_RDWR)
    mm = mmap.mmap(fd, 0)
    return fd, mm, impl.SharedWords(mm, lock_fd=fd)


def _hammer(p: int, barrier: object, impl: ModuleType, path: Path, out: Path) -> None:
    fd, mm, words = _open_words(impl, path)
    olds = array.array("Q")
    bit = 1 << p
    barrier.wait()  # type: ignore[attr-defined]
    for k in range(OPS):
        olds.append(words.fetch_add(0, 1))
        words.fetch_add(1, -3)  # wraps below zero
        if words.fetch_or(2 + k % 4096, bit << (4 * (k // 4096))) & (bit << (4 * (k // 4096))):
            os._exit(3)  # our own bit was already set: an OR was lost or doubled
    words.close()
    mm.close()
    os.close(fd)
    (out / f"olds-{p}").write_bytes(olds.tobytes())


def test_cross_process_fetch_add_and_fetch_or_are_exact(impl: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "words"
    path.write_bytes(bytes(8 * (2 + 4096)))
    _run_workers(_hammer, impl, path, tmp_path)

    data = path.read_bytes()
    words = array.array("Q", data)
    assert words[0] == PROCS * OPS
    assert words[1] == (-3 * PROCS * OPS) & MASK
    # Word 2 + j got bit p << 4r for every round r with r*4096 + j < OPS.
    for j in range(4096):
        rounds = len(range(j, OPS, 4096))
        assert words[2 + j] == sum(0xF << (4 * r) for r in range(rounds)), j
    olds = array.array("Q")
    for p in range(PROCS):
        olds.frombytes((tmp_path / f"olds-{p}").read_bytes())
    # fetch_add handed out every old value exactly once.
    assert sorted(olds) == list(range(PROCS * OPS))


def _cas_increment(p: int, barrier: object, impl: ModuleType, path: Path) -> None:
    fd, mm, words = _open_words(impl, path)
    barrier.wait()  # type: ignore[attr-defined]
    failures = 0
    for _ in range(5000):
        seen = words.load(0)
        while True:
            ok, seen2 = words.compare_exchange(0, seen, seen + 1)
            if ok:
                break
            failures += 1
            seen = seen2
    words.fetch_add(1, failures)
    words.close()
    mm.close()
    os.close(fd)


def test_cross_process_compare_exchange_loop_is_exact(impl: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "words"
    path.write_bytes(bytes(16))
    _run_workers(_cas_increment, impl, path)
    total, _failures = array.array("Q", path.read_bytes())
    assert total == PROCS * 5000


def _naive_increment(p: int, barrier: object, path: Path) -> None:
    assert native.extension is not None
    fd, mm, words = _open_words(native.extension, path)
    barrier.wait()  # type: ignore[attr-defined]
    for _ in range(100_000):
        words.store(0, words.load(0) + 1)  # not atomic on purpose
    words.close()
    mm.close()
    os.close(fd)


def test_harness_detects_non_atomic_increments(tmp_path: Path) -> None:
    """Control: load+store from several processes loses updates here."""
    if native.extension is None:
        skip_or_fail(f"extension not loaded: {native.LOAD_ERROR}")
    path = tmp_path / "words"
    path.write_bytes(bytes(8))
    _run_workers(_naive_increment, path)
    (total,) = array.array("Q", path.read_bytes())
    assert total < PROCS * 100_000


def test_compare_exchange_semantics(impl: ModuleType, shared_file: tuple[int, mmap.mmap]) -> None:
    fd, mm = shared_file
    with impl.SharedWords(mm, lock_fd=fd) as words:
        words.store(3, 10)
        assert words.compare_exchange(3, 11, 99) == (False, 10)
        assert words.load(3) == 10
        assert words.compare_exchange(3, 10, 99) == (True, 10)
        assert words.load(3) == 99
        assert words.compare_exchange(3, 99, MASK) == (True, 99)
        assert words.compare_exchange(3, 0, 1) == (False, MASK)


def test_layout_is_little_endian_words_at_offset(
    impl: ModuleType, shared_file: tuple[int, mmap.mmap]
) -> None:
    fd, mm = shared_file
    with impl.SharedWords(mm, lock_fd=fd, offset=16, count=2) as words:
        assert len(words) == 2
        words.store(1, 0x0102030405060708)
        assert mm[24:32] == bytes([8, 7, 6, 5, 4, 3, 2, 1])
        assert mm[:24] == bytes(24)
        mm[16:24] = (2**64 - 2).to_bytes(8, "little")
        assert words.fetch_add(0, 5) == 2**64 - 2  # wraps to 3
        assert words.load(0) == 3
        assert words.fetch_add(0, -4) == 3
        assert words.load(0) == MASK
        assert words.fetch_or(1, 0xF0) == 0x0102030405060708
        assert words.load(1) == 0x01020304050607F8
    with impl.SharedWords(mm, lock_fd=fd, offset=8) as words:
        assert len(words) == (65536 - 8) // 8


OPS_STRATEGY = st.lists(
    st.tuples(
        st.sampled_from(["load", "store", "add", "or", "cas"]),
        st.integers(0, 3),
        st.integers(0, MASK),
        st.integers(-MASK, MASK),
    ),
    max_size=40,
)


@pytest.mark.parametrize("name", ["extension", "fallback"])
@settings(max_examples=60, deadline=None)
@given(ops=OPS_STRATEGY)
def test_matches_a_model(
    name: str, ops: list[tuple[str, int, int, int]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    impl = getattr(native, name)
    if impl is None:
        skip_or_fail(f"extension not loaded: {native.LOAD_ERROR}")
    model = [0, 0, 0, 0]
    fd = os.open(tmp_path_factory.getbasetemp() / f"model-{name}", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.ftruncate(fd, 32)
        with mmap.mmap(fd, 32) as mm:
            mm[:] = bytes(32)
            with impl.SharedWords(mm, lock_fd=fd) as words:
                for op, i, v, d in ops:
                    if op == "load":
                        assert words.load(i) == model[i]
                    elif op == "store":
                        words.store(i, v)
                        model[i] = v
                    elif op == "add":
                        assert words.fetch_add(i, d) == model[i]
                        model[i] = (model[i] + d) & MASK
                    elif op == "or":
                        assert words.fetch_or(i, v) == model[i]
                        model[i] |= v
                    else:
                        expected = model[i] if d % 2 else v
                        assert words.compare_exchange(i, expected, v) == (
                            expected == model[i],
                            model[i],
                        )
                        if expected == model[i]:
                            model[i] = v
                assert [words.load(i) for i in range(4)] == model
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    "call",
    [
        lambda w: w.load(4),
        lambda w: w.load(-1),
        lambda w: w.load("0"),
        lambda w: w.load(True),
        lambda w: w.store(0, 2**64),
        lambda w: w.store(0, -1),
        lambda w: w.store(0, 1.0),
        lambda w: w.fetch_add(0, 2**64),
        lambda w: w.fetch_add(0, -(2**64)),
        lambda w: w.fetch_or(0, -1),
        lambda w: w.compare_exchange(0, -1, 0),
        lambda w: w.compare_exchange(0, 0, 2**64),
    ],
)
def test_bad_index_or_value_is_bad_input(
    impl: ModuleType, shared_file: tuple[int, mmap.mmap], call: Callable[..., object]
) -> None:
    fd, mm = shared_file
    with impl.SharedWords(mm, lock_fd=fd, count=4) as words:
        with pytest.raises(BadInput):
            call(words)
        assert words.load(0) == 0  # nothing was written by the refused call


@pytest.mark.parametrize(
    "kwargs", [{"offset": 4}, {"offset": -8}, {"offset": 65536 - 8, "count": 2}, {"count": -1}]
)
def test_bad_geometry_is_bad_input(
    impl: ModuleType, shared_file: tuple[int, mmap.mmap], kwargs: dict[str, int]
) -> None:
    fd, mm = shared_file
    with pytest.raises(BadInput):
        impl.SharedWords(mm, lock_fd=fd, **kwargs)


def test_closed_or_read_only_mmap_is_bad_input(impl: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "words"
    path.write_bytes(bytes(64))
    with open(path, "r+b") as f:
        closed = mmap.mmap(f.fileno(), 0)
        closed.close()
        with pytest.raises(BadInput, match="closed"):
            impl.SharedWords(closed, lock_fd=f.fileno())
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as ro:
            with pytest.raises(BadInput, match="writable"):
                impl.SharedWords(ro, lock_fd=f.fileno())


def test_view_pins_the_mmap_until_closed(
    impl: ModuleType, shared_file: tuple[int, mmap.mmap]
) -> None:
    fd, mm = shared_file
    words = impl.SharedWords(mm, lock_fd=fd)
    with pytest.raises(BufferError):
        mm.close()  # would unmap memory the view points into
    words.store(0, 7)
    words.close()
    words.close()  # idempotent
    assert words.closed
    with pytest.raises(BadInput, match="closed"):
        words.load(0)
    assert mm[:8] == (7).to_bytes(8, "little")


def test_fallback_needs_the_backing_fd(shared_file: tuple[int, mmap.mmap], tmp_path: Path) -> None:
    fd, mm = shared_file
    with pytest.raises(BadInput, match="lock_fd"):
        native.fallback.SharedWords(mm)
    stale = os.open(tmp_path / "other", os.O_RDWR | os.O_CREAT, 0o600)
    os.close(stale)
    with native.fallback.SharedWords(mm, lock_fd=stale) as words:
        with pytest.raises(BadFileDescriptor):
            words.fetch_add(0, 1)
    assert mm[:8] == bytes(8)


def test_facade_picks_the_loaded_implementation() -> None:
    chosen = native.extension if native.NATIVE else native.fallback
    assert chosen is not None
    assert native.SharedWords is chosen.SharedWords

/*
 * damselfly native helpers, compiled by native/build.py (cffi, API mode).
 *
 * Contract with the Python side (native/extension.py):
 *   - every argument has already been validated in Python: fds are >= 0,
 *     offsets and lengths are >= 0 and offset + length fits in off_t, word
 *     indexes are inside the mapped buffer. C never re-validates and never
 *     raises; a failure comes back as -errno (or through *err for sendfile).
 *   - cffi releases the GIL around each of these calls, so the sendfile loop
 *     below runs without the GIL for the whole requested count.
 *   - the 64-bit words live in MAP_SHARED memory seen by several processes,
 *     so the atomics must be lock-free: a libatomic fallback would take a
 *     process-local lock and silently lose atomicity across processes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/sendfile.h>
#include <sys/types.h>
#include <unistd.h>

_Static_assert(sizeof(off_t) == 8, "off_t must be 64 bits (large file offsets)");
_Static_assert(__atomic_always_lock_free(sizeof(uint64_t), 0),
               "64-bit atomics must be lock-free to be atomic across processes");

/* Linux moves at most this many bytes per sendfile(2) call. */
#define DFN_MAX_CHUNK ((int64_t)0x7ffff000)

/*
 * Send up to count bytes of in_fd starting at offset, looping while whole
 * chunks go out (one call moves at most DFN_MAX_CHUNK). Returns the number
 * of bytes sent; *err is 0 or the errno that stopped the loop (EAGAIN on a
 * full non-blocking socket, EINTR, EPIPE, ...).
 *
 * A short chunk also ends the loop, with *err 0. On a blocking socket the
 * kernel only sends short when a signal arrived mid-call, a send timeout
 * expired or in_fd reached EOF; the Python caller tells these apart by
 * calling again (0 bytes and no error is EOF). Returning lets Python run
 * its signal handlers, so Ctrl-C can stop a send blocked on a slow peer.
 */
int64_t dfn_sendfile(int out_fd, int in_fd, int64_t offset, int64_t count, int *err)
{
    int64_t total = 0;
    off_t off = (off_t)offset;

    *err = 0;
    while (total < count) {
        int64_t left = count - total;
        size_t want = (size_t)(left < DFN_MAX_CHUNK ? left : DFN_MAX_CHUNK);
        ssize_t n = sendfile(out_fd, in_fd, &off, want);
        if (n < 0) {
            *err = errno;
            break;
        }
        total += n;
        if ((size_t)n < want)
            break; /* EOF, a signal, a timeout or a full non-blocking socket */
    }
    return total;
}

/* fallocate(2), optionally with FALLOC_FL_KEEP_SIZE. 0 or -errno. */
int dfn_fallocate(int fd, int keep_size, int64_t offset, int64_t length)
{
    int mode = keep_size ? FALLOC_FL_KEEP_SIZE : 0;
    while (fallocate(fd, mode, (off_t)offset, (off_t)length) != 0) {
        if (errno != EINTR)
            return -errno;
    }
    return 0;
}

/* Deallocate a range; the file size never changes. 0 or -errno. */
int dfn_punch_hole(int fd, int64_t offset, int64_t length)
{
    int mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
    while (fallocate(fd, mode, (off_t)offset, (off_t)length) != 0) {
        if (errno != EINTR)
            return -errno;
    }
    return 0;
}

/* Start writeback of dirty pages in the range; never waits. 0 or -errno. */
int dfn_sync_file_range(int fd, int64_t offset, int64_t length)
{
    while (sync_file_range(fd, (off_t)offset, (off_t)length, SYNC_FILE_RANGE_WRITE) != 0) {
        if (errno != EINTR)
            return -errno;
    }
    return 0;
}

/* posix_fadvise returns the error number instead of setting errno. */
int dfn_fadvise(int fd, int64_t offset, int64_t length, int advice)
{
    int rc;
    while ((rc = posix_fadvise(fd, (off_t)offset, (off_t)length, advice)) == EINTR)
        ;
    return -rc;
}

/* Sequentially consistent 64-bit atomics on base[i]. */
uint64_t dfn_load(uint64_t *base, size_t i)
{
    return __atomic_load_n(base + i, __ATOMIC_SEQ_CST);
}

void dfn_store(uint64_t *base, size_t i, uint64_t value)
{
    __atomic_store_n(base + i, value, __ATOMIC_SEQ_CST);
}

uint64_t dfn_fetch_add(uint64_t *base, size_t i, uint64_t delta)
{
    /* Unsigned arithmetic: wraps modulo 2**64, which is what callers rely on
       to subtract (they pass 2**64 - n). */
    return __atomic_fetch_add(base + i, delta, __ATOMIC_SEQ_CST);
}

uint64_t dfn_fetch_or(uint64_t *base, size_t i, uint64_t bits)
{
    return __atomic_fetch_or(base + i, bits, __ATOMIC_SEQ_CST);
}

/*
 * Returns the value seen. The exchange happened exactly when the value seen
 * equals expected, so one return value carries both results and no
 * out-parameter has to be shared between threads.
 */
uint64_t dfn_compare_exchange(uint64_t *base, size_t i, uint64_t expected, uint64_t desired)
{
    uint64_t seen = expected;
    __atomic_compare_exchange_n(base + i, &seen, desired, 0,
                                __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return seen;
}

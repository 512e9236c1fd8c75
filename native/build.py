"""cffi build script for ``native._native`` (out-of-line, API mode).

setup.py names this file in ``cffi_modules``, so ``pip install`` (also
``pip install -e .``) compiles the extension. It can also be run by hand:
``python native/build.py`` builds ``native/_native*.so`` in place.

The C source lives in ``native/src/damselfly_native.c`` and is found
relative to this file, never relative to the working directory, so the build
works from a fresh clone wherever pip runs it. The declarations below are
the whole ABI the Python side (native/extension.py) may use; keep them in
step with the C file.
"""

from __future__ import annotations

import os

import cffi

_HERE = os.path.dirname(os.path.abspath(__file__))
_SOURCE = os.path.join(_HERE, "src", "damselfly_native.c")

CDEF = """
int64_t dfn_sendfile(int out_fd, int in_fd, int64_t offset, int64_t count, int *err);
int dfn_fallocate(int fd, int keep_size, int64_t offset, int64_t length);
int dfn_punch_hole(int fd, int64_t offset, int64_t length);
int dfn_sync_file_range(int fd, int64_t offset, int64_t length);
int dfn_fadvise(int fd, int64_t offset, int64_t length, int advice);

uint64_t dfn_load(uint64_t *base, size_t i);
void dfn_store(uint64_t *base, size_t i, uint64_t value);
uint64_t dfn_fetch_add(uint64_t *base, size_t i, uint64_t delta);
uint64_t dfn_fetch_or(uint64_t *base, size_t i, uint64_t bits);
uint64_t dfn_compare_exchange(uint64_t *base, size_t i, uint64_t expected, uint64_t desired);
"""

if not os.path.exists(_SOURCE):
    # An sdist built without MANIFEST.in's "include native/src/*.c" lands here.
    raise FileNotFoundError(f"native extension source missing: {_SOURCE}")

ffibuilder = cffi.FFI()
ffibuilder.cdef(CDEF)
with open(_SOURCE, encoding="utf-8") as _f:
    ffibuilder.set_source(
        "native._native",
        _f.read(),
        extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
    )

if __name__ == "__main__":
    # Build next to the package, as an editable install would.
    ffibuilder.compile(tmpdir=os.path.dirname(_HERE), verbose=True)

"""Keep the pages of memory-mapped Arrow files out of the kernel's resident memory while stages run.

`datasets` keeps every table in an Arrow file that it maps into memory. Each
page a pass reads stays mapped into this process until the file is closed, so
a 1 GB file read by load, clean, tokenize and save counts several times in the
process's resident memory (RSS), although those pages are clean copies of
files on disk. Notebook hosts (Colab, JupyterHub, Binder) kill kernels by RSS.

While a stage runs, a background thread asks the kernel every `interval`
seconds to reclaim the pages this process has mapped from read-only `.arrow`
files (`madvise(MADV_PAGEOUT)`, Linux 5.4 and later). The data is untouched:
the next read of such a page reads it again. PAGEOUT never changes what
memory holds, whatever it is: the list of mappings is read from
/proc/self/maps a moment before the call, and a mapping closed and replaced
in between by memory the process wrote keeps its contents (which
`MADV_DONTNEED` would have zeroed). Elsewhere, or on older kernels, this does
nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
import threading
from collections.abc import Iterator

_SUFFIXES = (".arrow",)
_lock = threading.Lock()
_users = 0
_stop: threading.Event | None = None


MADV_PAGEOUT = 21  # linux/mman.h (5.4+); Python's mmap module may not name it


def _madvise() -> object | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        advise = libc.madvise
    except (OSError, AttributeError):
        return None
    advise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    advise.restype = ctypes.c_int
    return advise


_ADVISE = _madvise()


def _read_only_arrow_regions() -> list[tuple[int, int]]:
    """(start, length) of this process's read-only mappings of .arrow files, from /proc/self/maps."""
    regions = []
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                parts = line.split(maxsplit=5)
                if len(parts) < 6 or "w" in parts[1] or not parts[5].rstrip("\n").endswith(_SUFFIXES):
                    continue
                start, end = (int(x, 16) for x in parts[0].split("-"))
                regions.append((start, end - start))
    except OSError:
        return []
    return regions


def release_mapped_pages() -> int:
    """Reclaim this process's resident pages of read-only mapped Arrow files now; returns the bytes advised
    (0 where the kernel does not know MADV_PAGEOUT)."""
    if _ADVISE is None:
        return 0
    advised = 0
    for start, length in _read_only_arrow_regions():
        if _ADVISE(start, length, MADV_PAGEOUT) == 0:
            advised += length
    return advised


def _release_until(stop: threading.Event, interval: float) -> None:
    while not stop.wait(interval):
        release_mapped_pages()


@contextlib.contextmanager
def pages_released(interval: float = 0.25) -> Iterator[None]:
    """While the block runs (in any thread of this process), mapped Arrow pages are released every `interval`
    seconds, and once more when the last block ends. Nested and concurrent blocks share one background thread."""
    global _users, _stop
    if _ADVISE is None:
        yield
        return
    with _lock:
        _users += 1
        if _users == 1:
            _stop = threading.Event()
            threading.Thread(target=_release_until, args=(_stop, interval), name="nbtune-pages",
                             daemon=True).start()
    try:
        yield
    finally:
        with _lock:
            _users -= 1
            last = _users == 0
            if last and _stop is not None:
                _stop.set()
                _stop = None
        if last:
            release_mapped_pages()  # what the block read last, before the caller goes on

"""Mapped Arrow pages are released while stages run, and the data read afterwards is unchanged."""

from __future__ import annotations

import sys

import pytest

from nbtune.data.mapped import pages_released, release_mapped_pages

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise and /proc are Linux's")


def _resident_arrow_kib() -> int:
    """Resident KiB of this process's mappings of .arrow files (from /proc/self/smaps)."""
    total, in_arrow = 0, False
    with open("/proc/self/smaps", encoding="utf-8") as smaps:
        for line in smaps:
            first = line.split(maxsplit=1)[0]
            if "-" in first and not first.endswith(":"):
                in_arrow = line.rstrip().endswith(".arrow")
            elif in_arrow and first == "Rss:":
                total += int(line.split()[1])
    return total


@pytest.fixture
def mapped_rows(tmp_path):
    import datasets

    datasets.disable_progress_bars()
    rows = [f"{i:08d} " + "nbtune " * 300 for i in range(8000)]  # ~17 MB of text
    datasets.Dataset.from_dict({"text": rows}).save_to_disk(str(tmp_path / "rows"))
    return datasets.load_from_disk(str(tmp_path / "rows")), rows


def _read_all(dataset) -> list[str]:
    return [text for batch in dataset.iter(batch_size=500) for text in batch["text"]]


def test_reading_a_mapped_dataset_leaves_its_pages_resident_without_release(mapped_rows):
    dataset, rows = mapped_rows
    assert _read_all(dataset) == rows
    assert _resident_arrow_kib() > 10_000  # what the release is for: ~17 MB stay mapped


def test_released_pages_leave_rss_and_the_data_reads_back_the_same(mapped_rows):
    dataset, rows = mapped_rows
    with pages_released(interval=0.01):
        assert _read_all(dataset) == rows
    assert _resident_arrow_kib() < 1_000
    assert _read_all(dataset) == rows  # pages come back from the page cache, unchanged
    assert release_mapped_pages() > 10_000_000  # the mapping is still there, ~17 MB of it
    assert _resident_arrow_kib() < 1_000


def test_the_advice_never_changes_memory_the_process_wrote():
    """Between reading /proc/self/maps and the madvise call, an Arrow mapping may be closed and its addresses
    reused for memory the process writes; the advice must keep such memory's contents (MADV_DONTNEED would
    zero it and crash the kernel later)."""
    import ctypes
    import mmap

    from nbtune.data import mapped

    assert mapped._ADVISE is not None
    size = 4 << 20
    region = mmap.mmap(-1, size)  # anonymous, written: like a tensor or an arena of Python objects
    payload = bytes(range(256)) * (size // 256)
    region.write(payload)
    address = ctypes.addressof(ctypes.c_char.from_buffer(region))
    mapped._ADVISE(address, size, mapped.MADV_PAGEOUT)
    assert region[:] == payload

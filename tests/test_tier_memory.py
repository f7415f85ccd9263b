"""The local tier's memory: what opening and writing an entry leave in the reading threads."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from radiobject.read._tier_entries import LocalTier

blosc2 = pytest.importorskip("blosc2")


def test_opening_an_entry_checks_it_without_a_buffer_of_its_size(tmp_path: Path):
    # the check read the file in 4 MiB pieces: a 4 MiB bytes object in every thread that
    # opened an entry, which that thread's malloc arena kept once it was freed
    noise = np.random.default_rng(0).integers(0, 1 << 16, (96, 96, 64), dtype=np.uint16)
    writer = LocalTier(tmp_path, 1 << 30)
    assert writer.write("k", noise)
    size = writer.entry_bytes("k")
    assert size > 1 << 20  # noise does not compress: a file of ~1.2 MB
    reader = LocalTier(tmp_path, 1 << 30)  # nothing open yet: opening checks the CRC
    tracemalloc.start()
    try:
        assert reader.open("k") is not None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < size // 4, f"opening allocated {peak} bytes for a {size}-byte entry"
    np.testing.assert_array_equal(reader.read("k", ((0, 96), (0, 96), (0, 64))), noise)


def test_a_corrupt_entry_is_still_found_by_its_check(tmp_path: Path):
    tier = LocalTier(tmp_path, 1 << 30)
    assert tier.write("k", np.arange(32 * 32 * 32, dtype=np.uint16).reshape(32, 32, 32))
    path = tmp_path / "k.b2nd"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes
    path.write_bytes(bytes(data))
    assert LocalTier(tmp_path, 1 << 30).open("k") is None


def test_a_brats_size_entry_is_written_in_chunks_of_about_two_mib(tmp_path: Path):
    # blosc2 compresses a chunk from a buffer of its (block-padded) size into another as
    # large, in the writer thread, whose malloc arena keeps about that much: 5 MiB slabs
    # left ~7.5 MiB in each of the two writers
    volume = np.zeros((240, 240, 155), dtype=np.uint16)
    volume[::7] = 900
    tier = LocalTier(tmp_path, 1 << 30)
    assert tier.write("k", volume)
    array = blosc2.open(str(tmp_path / "k.b2nd"), mode="r")
    padded = [-(-c // b) * b for c, b in zip(array.chunks, array.blocks, strict=True)]
    assert int(np.prod(padded)) * volume.itemsize <= 2.75 * (1 << 20)
    assert array.chunks[1:] == volume.shape[1:]  # slabs along the first axis
    assert array.blocks == (32, 32, 32)
    np.testing.assert_array_equal(tier.read("k", ((20, 84), (3, 67), (90, 154))),
                                  volume[20:84, 3:67, 90:154])  # fmt: skip

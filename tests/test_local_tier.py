"""The local read tier: correct voxels, shared across processes, never stale, never fatal."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import tiledb

from radiobject import ReadConfig, TileConfig, TileDBStats, Volume, configure
from radiobject._errors import ConfigurationError
from radiobject.read._caches import clear_caches
from radiobject.read._local_tier import LocalTier, tier_state
from radiobject.read._region import fill_local_tier, forget_array
from tests.conftest import arange_volume

pytest.importorskip("blosc2")

SHAPE = (40, 36, 28)
TILE = TileConfig(extents=(16, 16, 16))
PATCH = np.s_[3:27, 5:30, 2:19]
ROOT = Path(__file__).resolve().parents[1]


def tier_config(folder: Path, mb: int = 64) -> ReadConfig:
    return ReadConfig(cache_mb=0, local_tier_mb=mb, local_tier_dir=str(folder))


def entries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.b2nd") if not p.name.startswith("."))


@pytest.fixture
def vol(tmp_path: Path) -> Volume:
    return Volume.from_numpy(tmp_path / "v", arange_volume(SHAPE), tile=TILE, integers=False)


def read(vol: Volume, index=PATCH):
    with TileDBStats(storage=False) as stats:
        out = vol[index]
    return stats.cache_stats(), out


def test_a_read_fills_the_tier_in_the_background_and_the_next_is_served_from_it(vol, tmp_path):
    expected = arange_volume(SHAPE)
    with configure(read=tier_config(tmp_path / "tier")):
        first, out = read(vol)
        np.testing.assert_array_equal(out, expected[PATCH])
        assert (first.tier_hits, first.tier_misses) == (0, 1)
        tier_state().flush()
        assert len(entries(tmp_path / "tier")) == 1
        for index in (PATCH, np.s_[0:40, 0:36, 0:28], np.s_[39:40, 0:1, 27:28]):
            stats, out = read(vol, index)
            np.testing.assert_array_equal(out, expected[index])
            assert (stats.tier_hits, stats.tier_misses, stats.storage_queries) == (1, 0, 0)
            assert stats.bytes_from_tier == out.nbytes


def test_the_tier_is_off_by_default(vol):
    stats, _ = read(vol)
    assert (stats.tier_hits, stats.tier_misses) == (0, 0)


def _child(vol: Volume, folder: Path) -> dict[str, int]:
    """Read PATCH in a fresh interpreter; its cache counters."""
    code = textwrap.dedent(
        f"""
        import json, numpy as np
        from radiobject import ReadConfig, TileDBStats, Volume, configure
        from radiobject.read._local_tier import tier_state
        cfg = ReadConfig(cache_mb=0, local_tier_mb=64, local_tier_dir={str(folder)!r})
        with configure(read=cfg):
            with TileDBStats(storage=False) as stats:
                out = Volume({vol.uri!r})[{PATCH!r}]
                tier_state().flush()  # the background fill, if any, counts in the block
        expected = np.arange({int(np.prod(SHAPE))}, dtype="float32").reshape({SHAPE!r})
        assert (out == expected[{PATCH!r}]).all()
        print(json.dumps(stats.cache_stats().__dict__))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    counters: dict[str, int] = json.loads(done.stdout.strip().splitlines()[-1])
    return counters


def test_another_process_and_a_later_run_read_what_one_process_filled(vol, tmp_path):
    folder = tmp_path / "tier"
    first = _child(vol, folder)
    assert (first["tier_hits"], first["tier_misses"], first["tier_fills"]) == (0, 1, 1)
    second = _child(vol, folder)
    assert (second["tier_hits"], second["tier_misses"], second["storage_queries"]) == (1, 0, 0)


def test_a_rewritten_array_is_never_served_stale(vol, tmp_path):
    with configure(read=tier_config(tmp_path / "tier")):
        read(vol)
        tier_state().flush()
        assert read(vol)[0].tier_hits == 1
        with tiledb.open(vol.uri, "w") as array:
            array[0:40, 0:36, 0:28] = -arange_volume(SHAPE)
        forget_array(vol.uri)  # what a new process (or a reopened handle) does
        stats, out = read(vol)
        np.testing.assert_array_equal(out, -arange_volume(SHAPE)[PATCH])
        assert (stats.tier_hits, stats.tier_misses) == (0, 1)
        tier_state().flush()
        stats, out = read(vol)
        np.testing.assert_array_equal(out, -arange_volume(SHAPE)[PATCH])
        assert stats.tier_hits == 1


def test_two_processes_filling_one_entry_leave_a_correct_entry(vol, tmp_path):
    folder = tmp_path / "tier"
    code = textwrap.dedent(
        f"""
        from radiobject import ReadConfig, Volume, configure
        from radiobject.read._region import fill_local_tier
        with configure(read=ReadConfig(local_tier_mb=64, local_tier_dir={str(folder)!r})):
            vol = Volume({vol.uri!r})
            for _ in range(5):  # fill, then refill over the other process's entry
                fill_local_tier(vol.uri, vol.ctx)
                for p in __import__("pathlib").Path({str(folder)!r}).glob("*.json"):
                    if not p.name.startswith("."):  # published sidecars, not the other's temp
                        p.unlink(missing_ok=True)
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT) for _ in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    with configure(read=tier_config(folder)):
        fill_local_tier(vol.uri, vol.ctx)  # the sidecars were removed: written once more
        stats, out = read(vol)
    np.testing.assert_array_equal(out, arange_volume(SHAPE)[PATCH])
    assert stats.tier_hits == 1
    assert len(entries(folder)) == 1
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary left


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_corrupt_entry_is_detected_and_filled_again(vol, tmp_path, damage):
    folder = tmp_path / "tier"
    with configure(read=tier_config(folder)):
        assert fill_local_tier(vol.uri, vol.ctx)
    (data,) = entries(folder)
    raw = bytearray(data.read_bytes())
    if damage == "truncate":
        data.write_bytes(bytes(raw[: len(raw) // 2]))
    else:
        raw[len(raw) // 2] ^= 0xFF
        data.write_bytes(bytes(raw))
    with configure(read=tier_config(folder)):  # a new LocalTier: nothing opened yet
        forget_array(vol.uri)
        stats, out = read(vol)
        np.testing.assert_array_equal(out, arange_volume(SHAPE)[PATCH])
        assert (stats.tier_hits, stats.tier_misses) == (0, 1)
        tier_state().flush()
    with configure(read=tier_config(folder, mb=65)):  # another LocalTier: reopens the entry
        stats, out = read(vol)
    np.testing.assert_array_equal(out, arange_volume(SHAPE)[PATCH])
    assert stats.tier_hits == 1


def test_a_tiny_budget_keeps_the_folder_bounded_least_recently_used_first(tmp_path):
    rng = np.random.default_rng(0)  # random voxels do not compress: ~0.4 MiB an entry
    vols = [
        Volume.from_numpy(tmp_path / f"v{i}", rng.random((48, 48, 24)), tile=TILE) for i in range(4)
    ]
    folder = tmp_path / "tier"
    with configure(read=tier_config(folder, mb=1)):
        for v in vols:
            assert fill_local_tier(v.uri, v.ctx)
            assert sum(p.stat().st_size for p in entries(folder)) <= 1024 * 1024
        for v in vols:
            np.testing.assert_array_equal(v[PATCH], v.to_numpy()[PATCH])
    assert 1 <= len(entries(folder)) < 4
    big = Volume.from_numpy(tmp_path / "big", rng.random((64, 64, 64)), tile=TILE)  # 2 MiB
    with configure(read=tier_config(tmp_path / "t2", mb=1)):
        assert not fill_local_tier(big.uri, big.ctx)  # larger than the budget: not written
        np.testing.assert_array_equal(big[PATCH], big.to_numpy()[PATCH])
    assert not entries(tmp_path / "t2")


def test_an_unwritable_folder_warns_once_and_reads_go_on_from_storage(vol, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    tier_state().warned = False
    with configure(read=tier_config(blocker / "tier")):
        _, out = read(vol)
        np.testing.assert_array_equal(out, arange_volume(SHAPE)[PATCH])
        tier_state().flush()  # the background fill failed: the next read warns
        with pytest.warns(RuntimeWarning, match="cannot be written"):
            _, out = read(vol)
        np.testing.assert_array_equal(out, arange_volume(SHAPE)[PATCH])
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            stats, out = read(vol)  # the tier is off in this process now: no second warning
        np.testing.assert_array_equal(out, arange_volume(SHAPE)[PATCH])
        assert (stats.tier_hits, stats.tier_misses) == (0, 0)
        with pytest.raises(ConfigurationError, match="broke in this process"):
            fill_local_tier(vol.uri, vol.ctx)


def test_an_intact_entry_that_fails_to_open_is_not_absent(vol, tmp_path, monkeypatch):
    """A blosc2 API change: counted, one warning, the tier off; no volume is written again."""
    import blosc2

    folder = tmp_path / "tier"
    with configure(read=tier_config(folder)):
        read(vol)
        tier_state().flush()
    (entry,) = entries(folder)
    written = entry.stat().st_mtime_ns

    def changed_api(*args, **kwargs):
        raise TypeError("open() got an unexpected keyword argument 'dparams'")

    monkeypatch.setattr(blosc2, "open", changed_api)
    tier_state().warned = False
    with configure(read=tier_config(folder, mb=65)):  # a new tier object: nothing open yet
        with pytest.warns(RuntimeWarning, match="cannot read its intact entries.*dparams"):
            stats, out = read(vol)
        np.testing.assert_array_equal(out, arange_volume(SHAPE)[PATCH])
        assert (stats.tier_errors, stats.tier_hits, stats.tier_fills) == (1, 0, 0)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            stats, out = read(vol)  # off in this process: from storage, no second warning
        tier_state().flush()
        np.testing.assert_array_equal(out, arange_volume(SHAPE)[PATCH])
        assert (stats.tier_errors, stats.tier_misses, stats.tier_fills) == (0, 0, 0)
    assert entries(folder) == [entry]
    assert entry.stat().st_mtime_ns == written  # not rewritten


def test_a_corrupt_entry_is_absent_and_filled_again(vol, tmp_path):
    folder = tmp_path / "tier"
    with configure(read=tier_config(folder)):
        read(vol)
        tier_state().flush()
    (entry,) = entries(folder)
    entry.write_bytes(entry.read_bytes()[:-7])  # truncated: its CRC no longer matches
    with configure(read=tier_config(folder, mb=65)):
        stats, out = read(vol)
        np.testing.assert_array_equal(out, arange_volume(SHAPE)[PATCH])
        assert (stats.tier_errors, stats.tier_misses) == (0, 1)


def test_warming_needs_the_tier_on(vol):
    with pytest.raises(ConfigurationError, match="local_tier_mb"):
        fill_local_tier(vol.uri, vol.ctx)


def test_the_warm_command_fills_the_tier(tmp_path):
    from radiobject import VolumeCollection

    coll = VolumeCollection.from_numpy(
        str(tmp_path / "CT"), [arange_volume((8, 8, 6)) + i for i in range(3)]
    )
    folder = tmp_path / "tier"
    done = subprocess.run(
        [sys.executable, "-m", "radiobject", "warm", coll.uri, "--dir", str(folder), "--mb", "8"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    assert "wrote 3 volumes" in done.stdout
    assert len(entries(folder)) == 3
    tier = LocalTier(folder, 8 << 20)
    assert all(tier.open(p.name[: -len(".b2nd")]) is not None for p in entries(folder))


def test_a_fill_while_reading_never_evicts_volumes_in_use(tmp_path):
    rng = np.random.default_rng(1)  # ~0.4 MiB an entry: a 1 MiB budget holds two
    vols = [
        Volume.from_numpy(tmp_path / f"v{i}", rng.random((48, 48, 24)), tile=TILE) for i in range(4)
    ]
    folder = tmp_path / "tier"
    with configure(read=tier_config(folder, mb=1)):
        for _epoch in range(2):
            for v in vols:
                np.testing.assert_array_equal(v[PATCH], v.to_numpy()[PATCH])
                tier_state().flush()
        kept = entries(folder)
        assert len(kept) == 2  # the first two; the others found no idle entry to replace
        with TileDBStats(storage=False) as stats:
            for v in vols:
                v[PATCH]
            tier_state().flush()
        c = stats.cache_stats()
        assert (c.tier_hits, c.tier_misses, c.tier_fills) == (2, 2, 0)
        assert c.storage_queries == 2  # the two regions; no fill tried again
    assert entries(folder) == kept


def test_large_and_small_regions_decode_the_same_voxels(vol, tmp_path, monkeypatch):
    """A region at least ``WIDE_BYTES`` decodes on blosc2's threads, a smaller one on one."""
    import radiobject.read._tier_entries as lt

    expected = arange_volume(SHAPE)
    with configure(read=tier_config(tmp_path / "tier")):
        fill_local_tier(vol.uri, vol.ctx)
        narrow = read(vol)[1]
        monkeypatch.setattr(lt, "WIDE_BYTES", 0)  # every region takes the threaded handle
        stats, wide = read(vol)
        assert (stats.tier_hits, stats.storage_queries) == (1, 0)
        whole = read(vol, np.s_[0:40, 0:36, 0:28])[1]
        monkeypatch.setattr(lt, "_EXT_NDARRAY", None)  # a blosc2 without the direct call
        indexed = read(vol)[1]
    np.testing.assert_array_equal(indexed, expected[PATCH])
    np.testing.assert_array_equal(narrow, expected[PATCH])
    np.testing.assert_array_equal(wide, expected[PATCH])
    np.testing.assert_array_equal(whole, expected)


def test_a_fill_is_the_read_that_serves_the_miss_one_storage_query(vol, tmp_path):
    """The miss reads the volume whole once: it serves the patch and is what the tier writes."""
    from radiobject.read import reader

    storage = reader().policy.storage.counters
    before = (storage.hits, storage.misses)
    with configure(read=tier_config(tmp_path / "tier")), TileDBStats(storage=False) as block:
        out = vol[PATCH]
        tier_state().flush()  # the write counts in the block
    stats = block.cache_stats()
    np.testing.assert_array_equal(out, arange_volume(SHAPE)[PATCH])
    volume_bytes = int(np.prod(SHAPE)) * 4
    assert (stats.tier_misses, stats.tier_fills, stats.storage_queries) == (1, 1, 1)
    assert stats.bytes_from_storage == volume_bytes  # the whole volume, nothing else
    assert (storage.hits, storage.misses) == before  # TileDB never served the patch itself
    fill = reader().policy.fill.counters
    assert fill.misses >= 1  # the tier fill served it, from the volume it read
    assert len(entries(tmp_path / "tier")) == 1


def test_busy_writers_read_just_the_region_and_a_later_miss_fills(vol, tmp_path, monkeypatch):
    state = tier_state()
    monkeypatch.setattr(state, "room", 0)  # every writer busy
    with configure(read=tier_config(tmp_path / "tier")):
        stats, out = read(vol)
        np.testing.assert_array_equal(out, arange_volume(SHAPE)[PATCH])
        assert (stats.tier_misses, stats.tier_fills, stats.storage_queries) == (1, 0, 1)
        assert stats.bytes_from_storage == out.nbytes  # the patch only: no whole read
        tier_state().flush()
        assert not entries(tmp_path / "tier")
        monkeypatch.setattr(state, "room", 2)
        with TileDBStats(storage=False) as block:
            vol[PATCH]
            tier_state().flush()
        assert (block.cache_stats().tier_misses, block.cache_stats().tier_fills) == (1, 1)
        assert read(vol)[0].tier_hits == 1
    assert not state.claimed
    assert not state.pending


def test_a_failed_whole_read_releases_its_claim(vol, tmp_path, monkeypatch):
    from radiobject._errors import StorageError
    from radiobject.read import reader

    storage = reader().policy.storage

    def broken(region):
        raise StorageError("simulated failure reading the whole volume")

    with configure(read=tier_config(tmp_path / "tier")):
        monkeypatch.setattr(storage, "read_whole", broken)
        with pytest.raises(StorageError, match="simulated"):
            vol[PATCH]
        assert not tier_state().claimed  # the policy released what it reserved
        monkeypatch.undo()
        with TileDBStats(storage=False) as block:
            out = vol[PATCH]
            tier_state().flush()
    np.testing.assert_array_equal(out, arange_volume(SHAPE)[PATCH])
    assert block.cache_stats().tier_fills == 1
    assert len(entries(tmp_path / "tier")) == 1


def test_entries_of_another_format_are_not_opened(vol, tmp_path, monkeypatch):
    import radiobject.read._tier_entries as lt

    folder = tmp_path / "tier"
    with configure(read=tier_config(folder)):
        assert fill_local_tier(vol.uri, vol.ctx)
    (old,) = entries(folder)
    monkeypatch.setattr(lt, "FORMAT", lt.FORMAT + 1)  # a later radiobject's layout
    forget_array(vol.uri)  # entry names are worked out again, with the new format
    tier = LocalTier(folder, 64 << 20)
    assert tier.open(old.name[: -len(".b2nd")]) is None  # its sidecar names the old format
    with configure(read=tier_config(folder, mb=65)), TileDBStats(storage=False) as block:
        out = vol[PATCH]
        tier_state().flush()
    np.testing.assert_array_equal(out, arange_volume(SHAPE)[PATCH])
    stats = block.cache_stats()
    assert (stats.tier_hits, stats.tier_misses, stats.tier_fills) == (0, 1, 1)
    assert len(entries(folder)) == 2  # a new name; the old entry ages out of the budget


def test_a_small_region_of_a_large_volume_is_read_alone_and_a_writer_fills(
    vol, tmp_path, monkeypatch
):
    """Below half of a large volume's tiles, the step reads its region; a writer the volume."""
    import radiobject.read._policy as policy_module
    from radiobject.read import reader

    monkeypatch.setattr(policy_module, "STEP_FILL_BYTES", 0)  # the volume counts as large
    policy = reader().policy
    storage, fill = policy.storage.counters, policy.fill.counters
    before = (storage.hits, fill.hits, fill.misses)
    with configure(read=tier_config(tmp_path / "tier")), TileDBStats(storage=False) as block:
        out = vol[PATCH]  # 8 of the volume's 18 tiles
        tier_state().flush()
    np.testing.assert_array_equal(out, arange_volume(SHAPE)[PATCH])
    stats = block.cache_stats()
    assert (stats.tier_misses, stats.tier_fills, stats.storage_queries) == (1, 1, 2)
    assert stats.bytes_from_storage == out.nbytes + int(np.prod(SHAPE)) * 4  # region, volume
    assert storage.hits == before[0] + 1  # TileDB served the region itself
    assert (fill.hits, fill.misses) == before[1:]  # the step read nothing whole
    assert not tier_state().claimed
    assert not tier_state().pending
    with configure(read=tier_config(tmp_path / "tier")):
        stats, out = read(vol)
    np.testing.assert_array_equal(out, arange_volume(SHAPE)[PATCH])
    assert (stats.tier_hits, stats.storage_queries) == (1, 0)


def test_a_failed_writer_read_is_logged_once_counted_and_not_tried_again(
    vol, tmp_path, monkeypatch, caplog
):
    import radiobject.read._policy as policy_module
    from radiobject._errors import StorageError
    from radiobject.read import reader

    monkeypatch.setattr(policy_module, "STEP_FILL_BYTES", 0)
    other = Volume.from_numpy(tmp_path / "w", arange_volume(SHAPE), tile=TILE, integers=False)
    policy = reader().policy

    def broken(region):
        raise StorageError("simulated failure reading the whole volume")

    monkeypatch.setattr(policy.storage, "read_whole", broken)  # the writer's read only
    errors = policy.tier.fill_errors
    with configure(read=tier_config(tmp_path / "tier")), caplog.at_level("WARNING"):
        for v in (vol, other):
            _, out = read(v)  # the step's own read of the region succeeds
            np.testing.assert_array_equal(out, arange_volume(SHAPE)[PATCH])
            tier_state().flush()
        assert policy.tier.fill_errors == errors + 2
        again, _ = read(vol)  # not tried again: one region read, no fill queued
        tier_state().flush()
    assert (again.tier_misses, again.storage_queries, again.tier_fills) == (1, 1, 0)
    assert policy.tier.fill_errors == errors + 2
    logged = [r for r in caplog.records if "could not read a volume to fill" in r.message]
    assert len(logged) == (1 if errors == 0 else 0)  # once per process
    assert not entries(tmp_path / "tier")
    assert not tier_state().claimed
    assert not tier_state().pending


def test_a_miss_whose_volume_was_written_meanwhile_claims_no_fill(vol, tmp_path):
    """A read that missed just before another thread published the entry reads no volume."""
    from radiobject.read import reader

    whole = tuple((0, n) for n in SHAPE)
    with configure(read=tier_config(tmp_path / "tier")):
        region = reader().region(vol.uri, vol.ctx, whole)
        assert fill_local_tier(vol.uri, vol.ctx)  # published after the (simulated) miss
        assert reader().policy.tier.claim(region) is False
    assert not tier_state().claimed


def _cached_uris() -> set[str]:
    from radiobject.read._cache import block_cache

    return {key[0].rstrip("/") for key in block_cache()._lru}


def auto_read(vol: Volume, index=PATCH):
    """Read ``index`` as a training loader with an automatic tier does (cohort > RAM cache)."""
    from radiobject.read import reader

    bounds = tuple((s.start or 0, s.stop) for s in index)
    with TileDBStats(storage=False) as stats:
        out = reader().read(vol.uri, vol.ctx, bounds, auto_tier_mb=64)
    return stats.cache_stats(), out


WHOLE = np.s_[0:40, 0:36, 0:28]


def test_a_volume_the_automatic_tier_serves_leaves_the_ram_cache(vol, tmp_path):
    # a whole read keeps the volume in the RAM cache and offers it to the tier; once the
    # entry is published the tier (tried first) serves it: the RAM copy is released
    expected = arange_volume(SHAPE)
    with configure(read=ReadConfig(cache_mb=64, local_tier_dir=str(tmp_path / "tier"))):
        _, out = auto_read(vol, WHOLE)
        np.testing.assert_array_equal(out, expected)
        tier_state().flush()
        assert len(entries(tmp_path / "tier")) == 1
        assert vol.uri.rstrip("/") not in _cached_uris()
        stats, out = auto_read(vol)
        np.testing.assert_array_equal(out, expected[PATCH])
        assert (stats.tier_hits, stats.hits, stats.storage_queries) == (1, 0, 0)


def test_the_users_tier_leaves_ram_copies_and_without_a_tier_they_stay(vol, tmp_path):
    # a tier the user set is filled for later runs and other processes; while the cohort
    # fits the RAM cache, the whole copy there is the faster one: kept
    for tier_mb in (64, 0):
        folder = tmp_path / f"tier{tier_mb}"
        cfg = ReadConfig(cache_mb=64, local_tier_mb=tier_mb, local_tier_dir=str(folder))
        with configure(read=cfg):
            clear_caches()
            read(vol, WHOLE)
            tier_state().flush()
            assert len(entries(folder)) == (1 if tier_mb else 0)
            assert vol.uri.rstrip("/") in _cached_uris()
            stats, out = read(vol, WHOLE)
            np.testing.assert_array_equal(out, arange_volume(SHAPE))
            assert (stats.hits > 0, stats.tier_hits, stats.storage_queries) == (True, 0, 0)


def _mapped(address: int) -> bool:
    with open("/proc/self/maps") as f:
        for line in f:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= address < hi:
                return True
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_a_whole_volume_dropped_from_the_ram_cache_returns_its_pages(tmp_path):
    # read whole from storage, its pages are its own: released, they leave the process
    # (from malloc, freed volumes stayed in the heap and the reading threads' arenas)
    from radiobject.read._cache import MAPPED_BYTES, block_cache

    shape = (128, 128, 96)  # 6 MiB of float32: over MAPPED_BYTES
    assert np.prod(shape) * 4 >= MAPPED_BYTES
    big = Volume.from_numpy(tmp_path / "big", arange_volume(shape), tile=TILE, integers=False)
    with configure(read=ReadConfig(cache_mb=64, local_tier_mb=0)):
        _, out = read(big, np.s_[:, :, :])
        np.testing.assert_array_equal(out, arange_volume(shape))
        (uri,) = [k[0] for k in block_cache()._lru if k[0].rstrip("/") == big.uri.rstrip("/")]
        (kept,) = [v for k, v in block_cache()._lru.items() if k[0] == uri]
        address = kept.__array_interface__["data"][0]
        assert _mapped(address)
        del kept
        assert block_cache().release(uri) == out.nbytes
        assert not _mapped(address)


def test_a_volume_the_busy_writers_could_not_take_is_not_kept_whole(vol, tmp_path, monkeypatch):
    # held whole in RAM, a volume is never asked of the tier: the writers having no room
    # when it was read whole must not keep it out of the tier for good
    state = tier_state()
    monkeypatch.setattr(state, "room", 0)  # every writer busy
    with configure(read=ReadConfig(cache_mb=64, local_tier_dir=str(tmp_path / "tier"))):
        _, out = auto_read(vol, WHOLE)
        np.testing.assert_array_equal(out, arange_volume(SHAPE))
        assert vol.uri.rstrip("/") not in _cached_uris()
        monkeypatch.setattr(state, "room", 2)
        with TileDBStats(storage=False) as block:
            auto_read(vol, WHOLE)
            tier_state().flush()
        assert (block.cache_stats().tier_misses, block.cache_stats().tier_fills) == (1, 1)
        assert auto_read(vol)[0].tier_hits == 1


def test_a_volume_the_tier_serves_leaves_the_loaders_shared_store(vol, tmp_path):
    # a loader's workers keep whole volumes in a shared store (/dev/shm); once the tier
    # (asked first) serves one, its stored copy goes
    from radiobject.read._shared_store import SharedStore, set_shared_store

    (tmp_path / "shm").mkdir()
    store = SharedStore(tmp_path / "shm", budget_bytes=1 << 24)
    cfg = ReadConfig(cache_mb=64, local_tier_dir=str(tmp_path / "tier"))
    set_shared_store(store)
    try:
        with configure(read=cfg):
            _, out = auto_read(vol, WHOLE)
            np.testing.assert_array_equal(out, arange_volume(SHAPE))
            tier_state().flush()
            assert len(entries(tmp_path / "tier")) == 1
            assert not list((tmp_path / "shm").glob("*.npy"))
            stats, out = auto_read(vol)
            np.testing.assert_array_equal(out, arange_volume(SHAPE)[PATCH])
            assert (stats.tier_hits, stats.storage_queries) == (1, 0)
    finally:
        set_shared_store(None)

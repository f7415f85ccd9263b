"""Settings (``radiobject.config``), TileDB contexts and ``radiobject.parallel``."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import pickle
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tiledb

import radiobject
from radiobject import (
    CompressionConfig,
    Compressor,
    ConfigurationError,
    RadiObjectConfig,
    ReadConfig,
    S3Config,
    SliceOrientation,
    TileConfig,
    Volume,
    WriteConfig,
    configure,
    get_config,
    get_tiledb_ctx,
    reset_config,
)
from radiobject._context import build_tiledb_config
from radiobject.parallel import ctx_for_process, ctx_for_threads, map_on_threads
from tests.conftest import arange_volume

# --- defaults and validation ------------------------------------------------------------------


def test_defaults():
    config = get_config()
    assert config == RadiObjectConfig()
    assert config.read == ReadConfig(max_workers=4, concurrency=2, memory_budget_mb=1024)
    assert config.read.cache_mb == 512
    assert config.write.tile.orientation is SliceOrientation.ISOTROPIC
    assert config.write.tile.isotropic_extent == 48
    assert config.write.compression == CompressionConfig(Compressor.ZSTD, 3)
    assert config.s3.region == "us-east-1"
    assert config.s3.aws_secret_access_key is None


@pytest.mark.parametrize(
    ("make", "field", "value"),
    [
        (lambda: ReadConfig(max_workers=0), "ReadConfig.max_workers", "0"),
        (lambda: ReadConfig(max_workers=257), "ReadConfig.max_workers", "257"),
        (lambda: ReadConfig(concurrency=-1), "ReadConfig.concurrency", "-1"),
        (lambda: ReadConfig(memory_budget_mb=8), "ReadConfig.memory_budget_mb", "8"),
        (lambda: ReadConfig(cache_mb=-5), "ReadConfig.cache_mb", "-5"),
        (lambda: ReadConfig(retain_freed_mb=-1), "ReadConfig.retain_freed_mb", "-1"),
        (lambda: ReadConfig(retain_freed_mb=4096), "ReadConfig.retain_freed_mb", "4096"),
        (lambda: ReadConfig(max_workers=2.5), "ReadConfig.max_workers", "2.5"),
        (lambda: ReadConfig(max_workers=True), "ReadConfig.max_workers", "True"),
        (lambda: ReadConfig(cache_mb="big"), "ReadConfig.cache_mb", "'big'"),
        (lambda: TileConfig(orientation="diagonal"), "TileConfig.orientation", "'diagonal'"),
        (lambda: TileConfig(isotropic_extent=0), "TileConfig.isotropic_extent", "0"),
        (lambda: TileConfig(extents=(16, 16)), "TileConfig.extents", "(16, 16)"),
        (lambda: TileConfig(extents=(16, 0, 16)), "TileConfig.extents[1]", "0"),
        (lambda: CompressionConfig(algorithm="brotli"), "CompressionConfig.algorithm", "brotli"),
        (lambda: CompressionConfig(level=23), "CompressionConfig.level", "23"),
        (lambda: CompressionConfig(Compressor.GZIP, level=0), "CompressionConfig.level", "0"),
        (lambda: WriteConfig(tile=(64, 64, 64)), "WriteConfig.tile", "(64, 64, 64)"),
        (lambda: WriteConfig(compression="zstd"), "WriteConfig.compression", "'zstd'"),
        (lambda: S3Config(scheme="ftp"), "S3Config.scheme", "'ftp'"),
        (lambda: S3Config(max_parallel_ops=0), "S3Config.max_parallel_ops", "0"),
        (lambda: S3Config(multipart_part_size_mb=1), "S3Config.multipart_part_size_mb", "1"),
    ],
)
def test_invalid_values_name_field_and_value(make, field, value):
    with pytest.raises(ConfigurationError, match=rf"(?s){re.escape(field)}.*{re.escape(value)}"):
        make()


def test_out_of_range_message_gives_the_allowed_range():
    with pytest.raises(ConfigurationError, match=r"between 1 and 256, got 0"):
        ReadConfig(max_workers=0)
    with pytest.raises(ConfigurationError, match=r">= 0, got -1"):
        ReadConfig(cache_mb=-1)
    with pytest.raises(ConfigurationError, match=r"one of 'axial', 'sagittal'"):
        TileConfig(orientation="oblique")


def test_configuration_error_is_a_value_error():
    with pytest.raises(ValueError, match="cache_mb"):
        ReadConfig(cache_mb=-1)


@pytest.mark.parametrize("kind", [ReadConfig, TileConfig, CompressionConfig, WriteConfig, S3Config])
def test_unknown_field_is_rejected(kind):
    with pytest.raises(ConfigurationError, match=rf"unknown {kind.__name__} field\(s\) \['foo'\]"):
        kind(foo=1)


def test_unknown_field_lists_known_fields():
    with pytest.raises(ConfigurationError, match=r"known fields: .*'cache_mb'.*'max_workers'"):
        ReadConfig(max_worker=3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"read": {"foo": 1}}, r"unknown ReadConfig field\(s\) \['foo'\]"),
        ({"write": {"tiles": TileConfig()}}, r"unknown WriteConfig field\(s\) \['tiles'\]"),
        ({"s3": {"regoin": "eu-west-1"}}, r"unknown S3Config field\(s\) \['regoin'\]"),
        ({"read": {"cache_mb": -1}}, r"ReadConfig.cache_mb must be >= 0, got -1"),
        ({"read": 5}, r"configure\(read=...\) takes a ReadConfig or a dict of its fields, got int"),
        ({"s3": ReadConfig()}, r"configure\(s3=...\) takes a S3Config"),
    ],
)
def test_configure_rejects_bad_settings_and_keeps_the_old_ones(kwargs, match):
    before = get_config()
    with pytest.raises(ConfigurationError, match=match):
        configure(**kwargs)
    assert get_config() is before


def test_configs_are_frozen_and_picklable():
    read = ReadConfig(max_workers=3, cache_mb=7)
    with pytest.raises(dataclasses.FrozenInstanceError):
        read.cache_mb = 1  # type: ignore[misc]
    config = RadiObjectConfig(read=read, s3=S3Config(aws_secret_access_key="k"))
    assert pickle.loads(pickle.dumps(config)) == config
    assert dataclasses.replace(read, cache_mb=9).cache_mb == 9


def test_string_enums_are_coerced():
    assert TileConfig(orientation="axial").orientation is SliceOrientation.AXIAL
    assert CompressionConfig(algorithm="lz4").algorithm is Compressor.LZ4


# --- configure, as a call and as a block ------------------------------------------------------


def test_configure_as_a_call_installs_settings():
    returned = configure(read=ReadConfig(max_workers=2, cache_mb=16))
    assert get_config().read == ReadConfig(max_workers=2, cache_mb=16)
    assert returned.config is get_config()


def test_configure_with_a_mapping_changes_only_those_fields():
    configure(read={"concurrency": 5})
    configure(read={"cache_mb": 3})
    read = get_config().read
    assert (read.concurrency, read.cache_mb, read.max_workers) == (5, 3, 4)


def test_configure_leaves_other_sections_alone():
    configure(s3={"region": "eu-west-1"})
    configure(read={"cache_mb": 1})
    assert get_config().s3.region == "eu-west-1"
    assert get_config().write == WriteConfig()


def test_configure_as_a_block_restores_on_exit():
    configure(read={"cache_mb": 10})
    outer = get_config()
    with configure(read={"cache_mb": 20}, write={"compression": CompressionConfig(level=9)}) as c:
        assert c is get_config()
        assert c.read.cache_mb == 20
        assert get_config().write.compression.level == 9
        with configure(read={"cache_mb": 30}):
            assert get_config().read.cache_mb == 30
        assert get_config().read.cache_mb == 20
    assert get_config() is outer


def test_configure_block_restores_after_an_exception():
    before = get_config()
    seen = []

    def body() -> None:
        with configure(read={"cache_mb": 1}):
            seen.append(get_config().read.cache_mb)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        body()
    assert seen == [1]
    assert get_config() is before


def test_reset_config():
    configure(read={"cache_mb": 1}, s3={"region": "eu-west-1"})
    reset_config()
    assert get_config() == RadiObjectConfig()


# --- TileConfig and CompressionConfig ---------------------------------------------------------


@pytest.mark.parametrize(
    ("tile", "shape", "expected"),
    [
        (TileConfig(orientation=SliceOrientation.AXIAL), (40, 30, 20), (40, 30, 1)),
        (TileConfig(orientation=SliceOrientation.SAGITTAL), (40, 30, 20), (1, 30, 20)),
        (TileConfig(orientation=SliceOrientation.CORONAL), (40, 30, 20), (40, 1, 20)),
        (TileConfig(orientation=SliceOrientation.ISOTROPIC), (240, 240, 155), (48, 48, 39)),
        (TileConfig(isotropic_extent=16), (40, 30, 20), (14, 15, 10)),  # 3 x 2 x 2 equal tiles
        (TileConfig(isotropic_extent=16), (48, 32, 16), (16, 16, 16)),
        (TileConfig(), (60, 30, 20), (30, 30, 20)),  # 2 tiles of 30, not 48 and a padded 12
        (TileConfig(), (48, 30, 20), (48, 30, 20)),  # one tile, the volume's size
        (TileConfig(extents=(8, 4, 2)), (40, 30, 20), (8, 4, 2)),
        (TileConfig(extents=(100, 4, 2)), (40, 30, 20), (40, 4, 2)),
        (TileConfig(orientation="axial"), (40, 30, 20, 5), (40, 30, 1, 1)),
        (TileConfig(extents=(8, 8, 8, 3)), (40, 30, 20, 5), (8, 8, 8, 3)),
        (TileConfig(extents=(8, 8, 8, 9)), (40, 30, 20, 5), (8, 8, 8, 5)),
    ],
)
def test_tile_extents_for_each_orientation(tile, shape, expected):
    assert tile.extents_for(shape) == expected


@pytest.mark.parametrize(
    ("algorithm", "level"),
    [
        (Compressor.ZSTD, -7),
        (Compressor.ZSTD, 22),
        (Compressor.GZIP, 1),
        (Compressor.GZIP, 9),
        (Compressor.LZ4, 1),
        (Compressor.NONE, 0),
    ],
)
def test_compression_levels_write_and_read_back(tmp_path, algorithm, level):
    compression = CompressionConfig(algorithm=algorithm, level=level)
    data = arange_volume((16, 16, 8), "int16")
    vol = Volume.from_numpy(tmp_path / "v", data, compression=compression)
    np.testing.assert_array_equal(vol.to_numpy(), data)
    filters = tiledb.ArraySchema.load(vol.uri).attr(0).filters
    names = [type(f).__name__ for f in filters]
    expected = {
        Compressor.ZSTD: ["ByteShuffleFilter", "ZstdFilter"],
        Compressor.GZIP: ["ByteShuffleFilter", "GzipFilter"],
        Compressor.LZ4: ["ByteShuffleFilter", "LZ4Filter"],
        Compressor.NONE: [],
    }[algorithm]
    assert names == expected
    if algorithm in (Compressor.ZSTD, Compressor.GZIP):
        assert filters[1].level == level


@pytest.mark.parametrize(
    ("algorithm", "bad"),
    [(Compressor.ZSTD, -8), (Compressor.ZSTD, 23), (Compressor.GZIP, 10), (Compressor.GZIP, 0)],
)
def test_compression_level_out_of_range(algorithm, bad):
    with pytest.raises(ConfigurationError, match=rf"CompressionConfig.level must be .*got {bad}"):
        CompressionConfig(algorithm=algorithm, level=bad)


def test_write_config_in_force_is_used(tmp_path):
    data = arange_volume((16, 16, 8), "uint8")
    with configure(write=WriteConfig(tile=TileConfig(orientation="coronal"))):
        vol = Volume.from_numpy(tmp_path / "v", data)
    assert vol.tile_shape == (16, 1, 8)


# --- S3 secrets --------------------------------------------------------------------------------


def test_s3_repr_masks_secrets():
    s3 = S3Config(
        aws_access_key_id="AKIAEXAMPLEKEY",
        aws_secret_access_key="hunter2-secret",
        aws_session_token="tok-123456",
        region="eu-west-1",
    )
    for text in (repr(s3), str(s3), repr(RadiObjectConfig(s3=s3))):
        assert "hunter2-secret" not in text
        assert "AKIAEXAMPLEKEY" not in text
        assert "tok-123456" not in text
        assert "aws_secret_access_key='***'" in text
        assert "region='eu-west-1'" in text
    assert "aws_secret_access_key=None" in repr(S3Config())


def test_s3_errors_do_not_show_secrets():
    with pytest.raises(ConfigurationError) as info:
        S3Config(aws_secret_access_key="hunter2-secret", max_parallel_ops=0)
    assert "hunter2-secret" not in str(info.value)
    assert "max_parallel_ops" in str(info.value)


def test_secrets_reach_tiledb_but_not_repr():
    with configure(s3=S3Config(aws_secret_access_key="hunter2-secret", endpoint="http://x:9")):
        ctx = get_tiledb_ctx()
        assert ctx.config()["vfs.s3.aws_secret_access_key"] == "hunter2-secret"
        assert ctx.config()["vfs.s3.endpoint_override"] == "http://x:9"
        assert "hunter2-secret" not in repr(get_config())


# --- the shared TileDB context -----------------------------------------------------------------


def test_ctx_is_cached_while_settings_stay():
    ctx = get_tiledb_ctx()
    assert get_tiledb_ctx() is ctx
    configure(write={"compression": CompressionConfig(level=5)})
    assert get_tiledb_ctx() is ctx  # write settings do not touch the context
    configure(read={"cache_mb": 1, "max_workers": 2})
    assert get_tiledb_ctx() is ctx  # nor do radiobject's own read settings


@pytest.mark.parametrize(
    ("change", "key", "value"),
    [
        ({"read": {"concurrency": 3}}, "sm.compute_concurrency_level", "3"),
        ({"read": {"concurrency": 3}}, "sm.io_concurrency_level", "3"),
        ({"read": {"memory_budget_mb": 64}}, "sm.memory_budget", str(64 * 1024 * 1024)),
        ({"s3": {"region": "eu-west-1"}}, "vfs.s3.region", "eu-west-1"),
        ({"s3": {"max_parallel_ops": 3}}, "vfs.s3.max_parallel_ops", "3"),
        ({"s3": {"scheme": "http"}}, "vfs.s3.scheme", "http"),
    ],
)
def test_ctx_is_rebuilt_when_read_or_s3_settings_change(change, key, value):
    before = get_tiledb_ctx()
    assert before.config()[key] != value
    with configure(**change):
        ctx = get_tiledb_ctx()
        assert ctx is not before
        assert ctx.config()[key] == value
        assert get_tiledb_ctx() is ctx
    assert get_tiledb_ctx() is before  # the previous settings get the previous context


@pytest.mark.parametrize("retain", [0, 64])
def test_tiledb_never_trims_the_heap_after_a_query(retain):
    # TileDB's own per-context setting, whatever radiobject does (or not) with the allocator
    with configure(read={"retain_freed_mb": retain}):
        assert build_tiledb_config()["sm.mem.malloc_trim"] == "false"


def test_tiledb_decodes_a_query_in_small_batches_of_tiles(tmp_path):
    # a whole volume's tiles decoded at once left their buffers in the reading threads'
    # heaps; a tile larger than the batch still reads (one tile at a time)
    from radiobject import TileConfig, Volume
    from radiobject._context import TILE_MEMORY_MB

    assert get_tiledb_ctx().config()["sm.mem.tile_upper_memory_limit"] == str(TILE_MEMORY_MB << 20)
    data = np.arange(140 * 136 * 130, dtype=np.float32).reshape(140, 136, 130)
    tile = TileConfig(extents=(136, 136, 130))  # 9.2 MB a tile: more than a batch
    assert TILE_MEMORY_MB << 20 < 136 * 136 * 130 * 4
    vol = Volume.from_numpy(tmp_path / "v", data, tile=tile, integers=False)
    np.testing.assert_array_equal(vol[:, :, :], data)
    np.testing.assert_array_equal(vol[3:139, 5:90, 2:50], data[3:139, 5:90, 2:50])


# --- radiobject.parallel -----------------------------------------------------------------------


def test_ctx_for_threads_shares_the_context():
    ctx = tiledb.Ctx()
    assert ctx_for_threads(ctx) is ctx
    assert ctx_for_threads() is get_tiledb_ctx()
    seen = map_on_threads(lambda _: ctx_for_threads(ctx), range(4), max_workers=4)
    assert all(c is ctx for c in seen)


def test_ctx_for_process_copies_the_base_settings():
    base = tiledb.Ctx(tiledb.Config({"sm.compute_concurrency_level": "3"}))
    ctx = ctx_for_process(base)
    assert ctx is not base
    assert ctx.config()["sm.compute_concurrency_level"] == "3"
    assert ctx_for_process(base) is ctx  # reused within the process
    assert ctx_for_process() is get_tiledb_ctx()


def _read_in_child(uri: str) -> tuple[int, bool, np.ndarray]:
    ctx = ctx_for_process()
    same = ctx is ctx_for_process()
    return os.getpid(), same, Volume(uri, ctx=ctx)[2:5, :, 3]


def test_ctx_for_process_in_a_spawned_child(tmp_path):
    data = arange_volume((16, 16, 8), "int16")
    vol = Volume.from_numpy(tmp_path / "v", data)
    vol.to_numpy()  # the parent has an open handle and context: the child must not need them
    root = str(Path(__file__).resolve().parents[1])
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(root)  # so the child can import this module
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            pid, same, plane = pool.apply(_read_in_child, (vol.uri,))
    assert pid != os.getpid()
    assert same
    np.testing.assert_array_equal(plane, data[2:5, :, 3])


def test_map_on_threads_keeps_order():
    def slow_square(x: int) -> int:
        time.sleep(0.002 * (10 - x))  # later items finish first
        return x * x

    assert map_on_threads(slow_square, range(10), max_workers=4) == [x * x for x in range(10)]
    assert map_on_threads(slow_square, [], max_workers=4) == []
    assert map_on_threads(slow_square, [3], max_workers=4) == [9]
    assert map_on_threads(slow_square, range(4), max_workers=1) == [0, 1, 4, 9]


def test_map_on_threads_uses_several_threads():
    names: set[str] = set()
    barrier = threading.Barrier(3, timeout=10)

    def work(_: int) -> None:
        names.add(threading.current_thread().name)
        barrier.wait()  # only passes when three run at once

    map_on_threads(work, range(3), max_workers=3)
    assert len(names) == 3


def test_map_on_threads_default_workers_come_from_read_config():
    seen: set[str] = set()

    def work(_: int) -> None:
        seen.add(threading.current_thread().name)
        time.sleep(0.01)

    with configure(read={"max_workers": 1}):
        map_on_threads(work, range(4))
    assert seen == {threading.current_thread().name}


def test_map_on_threads_progress_bar(capfd):
    assert map_on_threads(str, range(7), progress=True, desc="squares") == list("0123456")
    err = capfd.readouterr().err
    assert "squares" in err
    assert "7/7" in err


def test_map_on_threads_propagates_exceptions():
    def fail_on_three(x: int) -> int:
        if x == 3:
            raise KeyError(f"item {x}")
        return x

    with pytest.raises(KeyError, match="item 3"):
        map_on_threads(fail_on_three, range(6), max_workers=3)
    with pytest.raises(KeyError, match="item 3"):
        map_on_threads(fail_on_three, range(6), max_workers=1, progress=True)


def test_map_on_threads_stops_starting_work_after_a_failure():
    started: list[int] = []

    def work(x: int) -> int:
        started.append(x)
        if x == 0:
            raise ValueError("bad item 0")
        time.sleep(0.2)
        return x

    with pytest.raises(ValueError, match="bad item 0"):
        map_on_threads(work, range(20), max_workers=2)
    time.sleep(0.3)
    assert len(started) < 10  # the other 19 items were not all run


def test_public_module_paths():
    assert radiobject.parallel.ctx_for_process is ctx_for_process
    assert set(radiobject.parallel.__all__) == {
        "ctx_for_process",
        "ctx_for_threads",
        "map_on_threads",
    }


# --- S3 profiles: read from the AWS files, the environment left alone ----------------------------


def _aws_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    credentials, config = tmp_path / "credentials", tmp_path / "config"
    credentials.write_text(
        "[lab]\naws_access_key_id = AKIALAB\naws_secret_access_key = lab-secret\n"
        "[sso-only]\nregion = eu-west-1\n"
    )
    config.write_text(
        "[profile shared]\naws_access_key_id = AKIASHARED\naws_secret_access_key = s2\n"
        "aws_session_token = tok\n[profile sso-only]\nsso_start_url = https://example.invalid\n"
    )
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return credentials, config


def test_s3_profile_keys_come_from_the_aws_files_and_no_environment_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _aws_files(tmp_path, monkeypatch)
    before = dict(os.environ)
    tdb = build_tiledb_config(RadiObjectConfig(s3=S3Config(profile="lab")))
    assert tdb["vfs.s3.aws_access_key_id"] == "AKIALAB"
    assert tdb["vfs.s3.aws_secret_access_key"] == "lab-secret"
    shared = build_tiledb_config(RadiObjectConfig(s3=S3Config(profile="shared")))
    assert (shared["vfs.s3.aws_access_key_id"], shared["vfs.s3.aws_session_token"]) == (
        "AKIASHARED",
        "tok",
    )
    # keys given in S3Config win over the profile's
    mine = S3Config(profile="lab", aws_access_key_id="MINE", aws_secret_access_key="x")
    assert build_tiledb_config(RadiObjectConfig(s3=mine))["vfs.s3.aws_access_key_id"] == "MINE"
    assert dict(os.environ) == before
    # a library installs no signal handlers: Python already ignores SIGPIPE
    assert tdb["vfs.s3.install_sigpipe_handler"] == "false"


@pytest.mark.parametrize(
    ("profile", "message"),
    [("missing", "no such profile"), ("sso-only", "export AWS_PROFILE=sso-only")],
)
def test_s3_profile_without_static_keys_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, profile: str, message: str
) -> None:
    _aws_files(tmp_path, monkeypatch)
    with pytest.raises(ConfigurationError, match=message):
        build_tiledb_config(RadiObjectConfig(s3=S3Config(profile=profile)))
    assert "AWS_PROFILE" not in os.environ

"""Scoped settings: ``radiobject.settings`` blocks, loaders that keep them, a tuner that uses them.

No library call changes process-wide settings the user did not ask to change: a tuner run or
an auto-tune leaves every ``configure()`` value as it found it, and a ``configure()`` the user
makes while a run goes on is kept, while the run's loader reads with the run's settings in
every thread it reads from (the batch's reader threads and the read-ahead's).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

import radiobject
from radiobject import ConfigurationError, ReadConfig, configure, get_config, settings
from radiobject.ml import create_training_dataloader
from radiobject.read import Reader, Region
from radiobject.widgets import LoaderTuner


@pytest.fixture
def read_settings(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, int]]:
    """``(thread name, cache_mb, read_ahead)`` in force at every region read, in any thread."""
    real = Reader.get
    seen: list[tuple[str, int, int]] = []
    lock = threading.Lock()

    def spy(self: Reader, region: Region, out: Any = None) -> np.ndarray:
        read = get_config().read
        with lock:
            seen.append((threading.current_thread().name, read.cache_mb, read.read_ahead))
        return real(self, region, out)

    monkeypatch.setattr(Reader, "get", spy)
    return seen


def test_settings_apply_to_the_block_and_thread_only():
    before = get_config()
    other: list[int] = []
    with settings(read={"cache_mb": 7}) as scoped:
        assert get_config() is scoped
        assert get_config().read.cache_mb == 7
        thread = threading.Thread(target=lambda: other.append(get_config().read.cache_mb))
        thread.start()
        thread.join()
        configure(write={"integers": False})  # process-wide: kept after the block
        assert get_config().read.cache_mb == 7  # the block keeps its own
    assert other == [before.read.cache_mb]
    assert get_config().read == before.read
    assert get_config().write.integers is False


def test_settings_start_from_a_saved_config_and_check_their_input():
    saved = get_config()
    with configure(read={"cache_mb": 9}), settings(saved) as scoped:
        assert scoped.read.cache_mb == saved.read.cache_mb
    with pytest.raises(ConfigurationError, match="read_ahead"):
        settings(read={"read_ahead": -1}).__enter__()
    with pytest.raises(ConfigurationError, match="RadiObjectConfig"):
        settings({"read": {}}).__enter__()  # type: ignore[arg-type]
    assert get_config() == radiobject.RadiObjectConfig()


def test_a_loader_keeps_the_settings_it_was_built_in(sample_radi, read_settings):
    with settings(read=ReadConfig(cache_mb=5, read_ahead=4, max_workers=2)):
        loader = create_training_dataloader(
            sample_radi.T1w, batch_size=2, patch_size=(8, 8, 8), patches_per_volume=4
        )
    for _ in loader:  # iterated outside the block: the loader's settings still apply
        pass
    assert {(c, ra) for _, c, ra in read_settings} == {(5, 4)}
    threads = {name for name, _, _ in read_settings}
    assert any(name.startswith("radiobject-read-ahead") for name in threads)
    assert get_config() == radiobject.RadiObjectConfig()
    # an epoch run to its end keeps reading the next epoch's first batches (under the
    # loader's settings): end them here, or they land in the next test's spy
    loader.dataset.stop_read_ahead()


def test_a_tuner_run_changes_no_setting_and_keeps_a_users_configure(sample_radi, read_settings):
    configure(read={"cache_mb": 33, "max_workers": 3})
    before = get_config()
    built, configured = threading.Event(), threading.Event()

    def make_loader(**kwargs: Any) -> Any:
        loader = create_training_dataloader(sample_radi.T1w, **kwargs)
        built.set()
        assert configured.wait(30)  # the user's configure() lands while the run goes on
        return loader

    tuner = LoaderTuner(make_loader, patch_size=(8, 8, 8))
    tuner.live_box.value = False
    run = tuner.start(duration_s=0.3, num_workers=0, cache_mb=11, read_ahead=3)
    assert run is not None
    assert built.wait(30)
    assert get_config() == before  # the run's settings are not the process's
    configure(read={"cache_mb": 44})
    configured.set()
    tuner.wait()
    assert run.error == ""
    assert get_config().read == ReadConfig(**{**vars(before.read), "cache_mb": 44})
    assert read_settings
    assert {(c, ra) for _, c, ra in read_settings} == {(11, 3)}  # the run's, in every thread


def test_a_tuner_run_started_in_a_settings_block_keeps_its_settings(sample_radi):
    seen: list[bool] = []

    def make_loader(**kwargs: Any) -> Any:
        seen.append(get_config().write.integers)  # in the tuner's thread
        return create_training_dataloader(sample_radi.T1w, **kwargs)

    tuner = LoaderTuner(make_loader, patch_size=(8, 8, 8))
    tuner.live_box.value = False
    default = get_config().write.integers
    with settings(write={"integers": not default}):
        run = tuner.start(duration_s=0.2, num_workers=0)
    assert run is not None
    tuner.wait()
    assert run.error == ""
    assert seen == [not default]  # the block's, though the run went on in another thread


def test_an_autotune_changes_no_setting(sample_radi, read_settings):
    configure(read={"cache_mb": 21})
    before = get_config()
    tuner = LoaderTuner(sample_radi.T1w, patch_size=(8, 8, 8), batch_size=2)
    tuner.live_box.value = False
    tuner.set(cache_mb=16)  # the search starts here, not at the process's 21
    result = tuner.autotune(time_budget_s=4, trial_s=0.2, space={"cache_mb": (0, 16)})
    assert result is not None
    assert all(r.done and not r.error for r in tuner.runs)
    assert get_config() == before
    tried = {r.settings.cache_mb for r in tuner.runs}
    assert {c for _, c, _ in read_settings} <= tried
    assert before.read.cache_mb not in tried  # no read ran with the process's settings


@pytest.mark.timeout(120)
def test_workers_keep_the_settings_their_loader_was_built_in(sample_radi, monkeypatch):
    """A process configure() reaches a loader built outside any block, not one built in one."""
    import importlib
    from pathlib import Path

    from radiobject.ml import EpochSampler
    from radiobject.ml._loaders import build_loader

    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    helpers = importlib.import_module("_ml_helpers")

    def loader() -> Any:
        dataset = helpers.ConfigProbeDataset(sample_radi.T1w)
        sampler = EpochSampler(dataset, shuffle=False)
        return build_loader(dataset, batch_size=2, sampler=sampler, num_workers=2)

    with settings(read={"cache_mb": 16, "max_workers": 1}):
        scoped = loader()
    follows = loader()
    configure(read={"cache_mb": 48})  # the user's, after both were built
    seen_scoped = {
        (int(c), int(m))
        for b in scoped
        for c, m in zip(b["cache_mb"], b["max_workers"], strict=True)
    }
    seen_follows = {int(c) for b in follows for c in b["cache_mb"]}
    assert seen_scoped == {(16, 1)}
    assert seen_follows == {48}

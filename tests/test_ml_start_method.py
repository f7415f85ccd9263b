"""How loader workers start: plain scripts and notebooks work, fork is safe, bad cases are named.

Workers start with forkserver, or fork (Linux) where forkserver workers cannot start. The
tests run a newcomer's plain script (no ``if __name__ == "__main__":``) as ``python
script.py``, check that a start method that cannot work is refused before any worker starts,
and fork 200 times while every thread radiobject runs in the parent is busy
(``tests/_fork_stress.py``).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading
import types
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import radiobject
from radiobject import ConfigurationError, ReadConfig, configure, get_config
from radiobject._process import ProcessState
from radiobject.ml import EpochSampler, create_training_dataloader, default_start_method
from radiobject.ml._loaders import build_loader
from radiobject.ml._start_method import (
    _guarded,
    check_workers_can_start,
    choose_start_method,
    mp_context,
)
from radiobject.ml._workers import worker_init

HERE = Path(__file__).parent
LOADER = "batch_size=3, patch_size=(8, 8, 8), patches_per_volume=2, seed=4"

# A newcomer's first script: a transform of its own, two workers, no __main__ guard.
BODY = f"""
import hashlib, json, multiprocessing, sys
from radiobject import ConfigurationError, RadiObject
from radiobject.ml import create_training_dataloader

def brighter(sample):
    sample["image"] = sample["image"] * 2 + 1
    return sample

def epochs_hash(**kwargs):
    loader = create_training_dataloader(
        RadiObject(sys.argv[1]).T1w, labels="diagnosis", transform=brighter, num_workers=2,
        {LOADER}, **kwargs
    )
    h = hashlib.sha256()
    for epoch in range(2):
        for batch in loader:
            h.update(batch["image"].numpy().tobytes() + batch["label"].numpy().tobytes())
    return loader.multiprocessing_context.get_start_method(), h.hexdigest()

out = {{"default": epochs_hash()}}
for method in sys.argv[2:]:
    try:
        out[method] = epochs_hash(multiprocessing_context=method)
    except ConfigurationError as e:
        out[method] = ["refused", str(e), len(multiprocessing.active_children())]
print(json.dumps(out))
"""
GUARD = 'if __name__ == "__main__":'


def run_script(path: Path, *args: str) -> dict[str, list[str]]:
    env = dict(os.environ)
    # the worktree's radiobject and the test helpers, as the test process imports them
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, str(path), *args],
        capture_output=True,
        text=True,
        timeout=150,
        env=env,
        cwd=path.parent,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out: dict[str, list[str]] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


def in_process_hash(radi: radiobject.RadiObject) -> str:
    def brighter(sample):
        sample["image"] = sample["image"] * 2 + 1
        return sample

    loader = create_training_dataloader(
        radi.T1w,
        labels="diagnosis",
        transform=brighter,
        batch_size=3,
        patch_size=(8, 8, 8),
        patches_per_volume=2,
        seed=4,
    )
    h = hashlib.sha256()
    for _ in range(2):
        for batch in loader:
            h.update(batch["image"].numpy().tobytes() + batch["label"].numpy().tobytes())
    return h.hexdigest()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_plain_script_with_workers_gives_the_guarded_scripts_batches(sample_radi, tmp_path):
    plain = tmp_path / "plain.py"
    plain.write_text(BODY)
    guarded = tmp_path / "guarded.py"
    guarded.write_text(f"{GUARD}\n{textwrap.indent(BODY, '    ')}")

    unguarded_run = run_script(plain, sample_radi.uri, "forkserver")
    guarded_run = run_script(guarded, sample_radi.uri, "fork")

    expected = in_process_hash(sample_radi)  # num_workers=0: the batches of today
    assert unguarded_run["default"] == ["fork", expected]  # forkserver cannot start here
    assert guarded_run["default"] == ["forkserver", expected]
    assert guarded_run["fork"] == ["fork", expected]  # asked for: works as well
    # the unguarded script with forkserver: refused before a worker started, with the fix
    refused, message, children = unguarded_run["forkserver"]
    assert refused == "refused"
    assert children == 0
    assert "plain.py" in message
    assert f"`{GUARD}`" in message
    assert "leave multiprocessing_context unset (fork on Linux)" in message


def test_functions_of_a_notebook_are_named_before_spawn_workers_start(sample_radi, monkeypatch):
    """A notebook's ``__main__`` has no file: spawn workers cannot import what it defines."""
    notebook = types.ModuleType("__main__")  # as in Jupyter: no __file__
    exec(
        "def seed_workers(worker_id):\n    pass\n"
        "def keep_three(samples):\n    return samples[:3]\n",
        notebook.__dict__,
    )
    monkeypatch.setitem(sys.modules, "__main__", notebook)
    loader = create_training_dataloader(
        sample_radi.T1w,
        batch_size=2,
        num_workers=2,
        multiprocessing_context="spawn",
        worker_init_fn=notebook.seed_workers,
        collate_fn=notebook.keep_three,
    )
    named = "seed_workers, keep_three defined in the notebook"
    with pytest.raises(ConfigurationError, match=named):
        iter(loader)
    assert multiprocessing.active_children() == []
    # left to radiobject: fork, the one way such workers start
    chosen = create_training_dataloader(
        sample_radi.T1w, batch_size=2, num_workers=2, worker_init_fn=notebook.seed_workers
    )
    assert chosen.multiprocessing_context.get_start_method() == "fork"
    # a transform defined there travels by value (cloudpickle): forkserver can load it
    exec("def brighter(sample):\n    return sample\n", notebook.__dict__)
    fine = create_training_dataloader(sample_radi.T1w, transform=notebook.brighter, num_workers=2)
    assert fine.multiprocessing_context.get_start_method() == "forkserver"


def test_a_main_script_that_is_no_file_is_named_or_forked(monkeypatch):
    """``python - < script.py``: spawn and forkserver workers would look for a file "<stdin>"."""
    piped = types.ModuleType("__main__")
    piped.__file__ = "<stdin>"
    monkeypatch.setitem(sys.modules, "__main__", piped)
    with pytest.raises(ConfigurationError, match="'<stdin>' is not a file"):
        check_workers_can_start("forkserver", lambda: [])
    assert choose_start_method(lambda: []) == "fork"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_settings_changed_after_the_loader_was_made_reach_fork_workers(sample_radi, monkeypatch):
    """A fork worker inherits its parent's settings listeners: it must not call them."""
    monkeypatch.syspath_prepend(str(HERE))
    helpers = importlib.import_module("_ml_helpers")
    configure(read=ReadConfig(max_workers=3))
    dataset = helpers.ConfigProbeDataset(sample_radi.T1w)
    loader = build_loader(
        dataset,
        batch_size=2,
        sampler=EpochSampler(dataset, shuffle=False),
        num_workers=2,
        multiprocessing_context="fork",
    )
    configure(read=ReadConfig(max_workers=5))  # after the loader was made, before its workers
    seen = {n for batch in loader for n in batch["max_workers"].tolist()}
    assert seen == {5}
    assert loader.worker_init_fn.shared.read_config().max_workers == 5


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_fork_workers_leave_warnings_and_os_fork_as_they_were(sample_radi):
    """TileDB-Py's fork warning is left out of radiobject's own worker starts only."""
    sample_radi.T1w.iloc[0].to_numpy()  # a TileDB context exists: TileDB-Py wrapped os.fork
    fork = os.fork
    loader = create_training_dataloader(
        sample_radi.T1w,
        batch_size=2,
        num_workers=2,
        persistent_workers=False,
        multiprocessing_context="fork",
    )
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        inside = list(warnings.filters)
        for _ in range(2):  # two epochs: four worker starts
            for _ in loader:
                pass
        assert warnings.filters == inside  # the worker starts put back what they changed
    assert [str(w.message) for w in seen] == []
    assert os.fork is fork  # not replaced: a fork of the user's still warns


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_forking_200_times_while_every_radiobject_thread_is_busy(sample_radi, tmp_path):
    result = subprocess.run(
        [sys.executable, str(HERE / "_fork_stress.py"), sample_radi.uri, "200", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=220,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)])},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["forks"] == 200
    assert seen["children"] + 2 * seen["loader_epochs"] == 200
    assert seen["loader_epochs"] >= 10
    assert seen["hung"] == 0
    assert seen["wrong"] == 0
    assert seen["thread_errors"] == []
    assert seen["tiledb_queries"] > 200  # the parent's reader threads queried TileDB throughout
    busy = seen["thread_rounds"]  # rounds each parent thread made while the parent forked
    assert set(busy) == {"patch reads", "tiledb queries", "tier writes", "read-ahead"}
    assert all(n > 0 for n in busy.values()), busy


def _held_outside_process_state(obj: object, depth: int = 2) -> bool:
    kinds = (
        type(threading.Lock()),
        type(threading.RLock()),
        threading.Condition,
        threading.Event,
        ThreadPoolExecutor,
    )
    if isinstance(obj, kinds):
        return True
    if depth == 0 or isinstance(obj, (type, types.ModuleType, types.FunctionType)):
        return False
    if isinstance(obj, ProcessState):
        return False
    values = list(obj.values()) if isinstance(obj, dict) else []
    values += list(getattr(obj, "__dict__", {}).values())
    return any(_held_outside_process_state(v, depth - 1) for v in values)


def test_no_module_keeps_a_lock_or_thread_pool_outside_the_process_state():
    """A lock a parent's thread held at the fork stays held in the child for ever."""
    import pkgutil

    # widgets run in the notebook's process, never in a loader worker: a widget's lock or
    # thread pool held at a fork is never waited on in the child
    found = []
    for info in pkgutil.walk_packages(radiobject.__path__, "radiobject."):
        if info.name.endswith("__main__") or info.name.startswith("radiobject.widgets"):
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if _held_outside_process_state(value):
                found.append(f"{info.name}.{name}")
    assert found == []


def test_start_methods_by_name_or_context_and_a_misspelt_one(sample_radi):
    assert mp_context(None).get_start_method() == default_start_method() == "forkserver"
    spawn = multiprocessing.get_context("spawn")
    assert mp_context(spawn) is spawn
    forked = mp_context(multiprocessing.get_context("fork"))
    assert forked.get_start_method() == "fork"
    assert forked.Process is mp_context("fork").Process  # radiobject's fork
    with pytest.raises(ConfigurationError, match="'forks' is not a start method"):
        create_training_dataloader(sample_radi.T1w, num_workers=2, multiprocessing_context="forks")


@pytest.mark.parametrize(
    ("source", "guarded_lines", "open_lines"),
    [
        ('x = 1\nif __name__ == "__main__":\n    y = 2\n    z = 3\n', [3, 4], [1]),
        ("if '__main__' == __name__:\n    y = 2\nz = 3\n", [2], [3]),
        ('try:\n    if __name__ == "__main__":\n        y = 1\nfinally:\n    z = 2\n', [3], [5]),
        ('if __name__ != "__main__":\n    y = 1\n', [], [2]),
        ('if name == "__main__":\n    y = 1\n', [], [2]),
    ],
)
def test_the_guard_is_found_in_its_usual_spellings(tmp_path, source, guarded_lines, open_lines):
    script = tmp_path / "script.py"
    script.write_text(source)
    assert all(_guarded(str(script), line) for line in guarded_lines)
    assert not any(_guarded(str(script), line) for line in open_lines)
    assert _guarded(str(tmp_path / "missing.py"), 1)  # cannot tell: not refused


def test_the_aws_environment_is_written_in_a_worker_only_where_it_differs(monkeypatch):
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    init = worker_init(get_config(), num_workers=1)
    writes = []

    class Environ(dict):
        def update(self, other):
            writes.append(dict(other))
            super().update(other)

    monkeypatch.setattr(os, "environ", Environ(os.environ))
    init(0)  # a fork or spawn worker: the parent's environment already
    assert writes == []
    os.environ.pop("AWS_REGION")  # a fork server started before the variable was set
    init(0)
    assert writes == [{"AWS_REGION": "eu-west-1"}]
    assert os.environ["AWS_REGION"] == "eu-west-1"


def test_the_fork_servers_preload_keeps_the_users_modules(monkeypatch):
    """radiobject adds its modules to the fork server's list, before it starts only."""
    from multiprocessing import forkserver

    from radiobject.ml._start_method import mp_context

    server = forkserver.ForkServer()  # this process's, as if nothing had started it yet
    monkeypatch.setattr(forkserver, "_forkserver", server)
    server.set_forkserver_preload(["__main__", "json"])  # the user's
    mp_context("forkserver", ("json", "numpy", "radiobject.ml"))
    assert server._preload_modules == ["__main__", "json", "numpy", "radiobject.ml"]

    spawn = mp_context("spawn")
    assert mp_context(spawn, ("torch",)) is spawn  # a context given is used as it is
    server.set_forkserver_preload(["json"])
    monkeypatch.setattr(server, "_forkserver_pid", 12345)  # it runs: its imports are done
    mp_context("forkserver", ("numpy",))
    assert server._preload_modules == ["json"]

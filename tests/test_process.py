"""One state per process: a forked child builds every resource anew, once, and keeps its
parent's alive without freeing or using them; spawned children start clean.

The fork happens in a fresh interpreter started for the test, never in the test process.
"""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tiledb

from radiobject import configure
from radiobject._process import ProcessState, Resource, state
from radiobject.config import add_listener, reset_config

# Uses every per-process resource from several threads, forks, does it again in the child
# and prints what both processes saw.
FORK = r"""
import json, os, select, sys, tempfile, warnings
warnings.simplefilter("ignore")
import numpy as np
import tiledb
from radiobject import RadiObject, configure
from radiobject._context import get_tiledb_ctx, local_ctx
from radiobject._process import inherited, state
from radiobject.ml._shared import current_state, install_worker, read_pool
from radiobject.parallel import ctx_for_process, map_on_threads
from radiobject.read._region import block_cache
from radiobject.read._shared_store import SharedStore, get_shared_store, set_shared_store

custom = tiledb.Ctx({"sm.compute_concurrency_level": "3"})
vol = RadiObject(sys.argv[1], ctx=custom).T1w.iloc[0]
expected = vol.to_numpy()

def use_everything():
    def one(i):
        get_tiledb_ctx(), ctx_for_process(custom), local_ctx(custom)
        vol.to_numpy()  # handles, block cache, fetch locks (a whole volume)
        vol[i : i + 4, 0:4, 0:4]
        read_pool(), get_shared_store(), current_state(), block_cache()
        configure(read={"max_workers": 3})  # the settings lock
        return vol.ctx
    return map_on_threads(one, range(8), max_workers=4)

def ids(st):
    return {r.name: id(v) for r, v in st.values.items()}

install_worker(None, 0)
use_everything()
set_shared_store(SharedStore(tempfile.mkdtemp(), 1 << 20))
parent = ids(state())
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    try:
        fresh = state().forked and not state().values and not inherited()[-1].forked
        ctxs = use_everything()
        out = {
            "fresh_at_start": fresh,
            "ids": ids(state()),
            "built": dict(state().built),
            "kept": ids(inherited()[-1]),
            "ctx_is_parents": any(c is custom for c in ctxs),
            "same_ctx_everywhere": all(c is ctxs[0] for c in ctxs),
            "concurrency": ctxs[0].config()["sm.compute_concurrency_level"],
            "store": get_shared_store() is None,
            "data": bool(np.array_equal(vol.to_numpy(), expected)),
        }
        os.write(w, json.dumps(out).encode())
    finally:
        os._exit(0)
os.close(w)
ready, _, _ = select.select([r], [], [], 60)
if not ready:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    sys.exit("the forked child hung")
chunks = []
while chunk := os.read(r, 1 << 16):
    chunks.append(chunk)
_, status = os.waitpid(pid, 0)
print(json.dumps({
    "parent": parent,
    "parent_after": ids(state()),
    "parent_forked": state().forked,
    "child": json.loads(b"".join(chunks)),
    "child_exit": os.waitstatus_to_exitcode(status),
}))
"""

RESOURCES = {
    "TileDB contexts",
    "array handles",
    "block cache",
    "fetch locks",
    "reader threads",
    "shared store",
    "loader worker",
    "settings lock",
}


@pytest.mark.timeout(120)
def test_a_forked_child_builds_each_resource_once_and_keeps_its_parents(sample_radi):
    result = subprocess.run(
        [sys.executable, "-c", FORK, sample_radi.uri],
        capture_output=True,
        text=True,
        timeout=100,
        check=True,
    )
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    parent, child = seen["parent"], seen["child"]
    assert seen["child_exit"] == 0
    assert set(parent) >= RESOURCES
    assert child["fresh_at_start"]  # nothing of the parent's in the child's state
    assert set(child["ids"]) == set(parent)  # the child built every one again...
    assert all(child["ids"][k] != parent[k] for k in parent)  # ...as new objects
    assert child["built"] == dict.fromkeys(parent, 1)  # each once, from 4 threads at once
    assert child["kept"] == parent  # the parent's are still there, alive, not freed
    assert not child["ctx_is_parents"]  # the user's context is the parent's: a twin reads
    assert child["same_ctx_everywhere"]
    assert child["concurrency"] == "3"  # with the user's settings
    assert child["store"]  # a forked child is not its parent's loader worker
    assert child["data"]
    assert seen["parent_after"] == parent  # the parent is untouched
    assert not seen["parent_forked"]


def _clean_start() -> tuple[bool, dict[str, int]]:
    from radiobject._context import get_tiledb_ctx
    from radiobject.read._region import block_cache

    before = dict(state().built)
    get_tiledb_ctx(), block_cache()
    return state().forked, before


def test_a_spawned_child_starts_clean(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        forked, built_at_start = pool.apply(_clean_start)
    assert not forked
    assert "TileDB contexts" not in built_at_start
    assert "block cache" not in built_at_start


def test_resources_are_built_on_first_use_under_a_lock():
    made: list[object] = []
    numbers = Resource("test numbers", lambda: made.append(1) or np.arange(3))
    assert numbers.peek() is None  # nothing built in this process yet
    fresh = ProcessState()
    first = fresh.get(numbers)
    assert fresh.get(numbers) is first
    assert fresh.built["test numbers"] == 1
    assert numbers.peek() is None  # that state is not this process's
    other = ProcessState().get(numbers)
    assert other is not first
    assert made == [1, 1]


def test_settings_listeners_are_weak_and_removable():
    calls: list[str] = []

    class Listener:
        def __init__(self, name: str) -> None:
            self.name = name

        def heard(self) -> None:
            calls.append(self.name)

    from radiobject import config

    reset_config()  # prunes listeners that died before this test
    before = len(config._listeners.get())
    kept, dropped, removed = Listener("kept"), Listener("dropped"), Listener("removed")
    add_listener(kept.heard)
    add_listener(dropped.heard)
    remove = add_listener(removed.heard)
    configure(read={"max_workers": 2})
    assert sorted(calls) == ["dropped", "kept", "removed"]
    calls.clear()
    remove()
    del dropped  # a listener does not keep its object alive
    reset_config()
    assert calls == ["kept"]
    assert len(config._listeners.get()) <= before + 1  # the removed and the dead one are gone


def test_a_user_context_is_used_as_is_outside_a_forked_child():
    from radiobject._context import ContextRef, local_ctx

    ctx = tiledb.Ctx({"sm.compute_concurrency_level": "3"})
    assert local_ctx(ctx) is ctx
    assert ContextRef(ctx).get() is ctx


def test_ingest_task_contexts_belong_to_the_process_state(monkeypatch):
    """A process pool's tasks build one context per settings, kept in the process state."""
    from radiobject import _process
    from radiobject.ingest._remote import ctx_from_settings

    settings = {"sm.io_concurrency_level": "3"}
    parent = ctx_from_settings(settings)
    assert ctx_from_settings(dict(settings)) is parent
    monkeypatch.setattr(_process, "_current", ProcessState(forked=True))  # a forked child's
    child = ctx_from_settings(settings)
    assert child is not parent  # never the parent's
    assert state().built["remote contexts"] == 1
    monkeypatch.undo()
    assert ctx_from_settings(settings) is parent

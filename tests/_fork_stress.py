"""Fork many times while every radiobject thread of the parent is busy; run as a script.

``python tests/_fork_stress.py URI FORKS TIER_DIR`` opens the cohort at URI and starts, in the
parent, threads that never pause:

* radiobject's TileDB reader threads: 4 threads querying patches of every volume through
  radiobject's read code (handles opened once per process, the block cache bypassed);
* radiobject's read path on 4 threads (patches from the local tier: blosc2 decodes);
* the local tier's background writer (blosc2 compression, a new entry each time);
* a training loader's read-ahead threads (an in-process loader iterated epoch after epoch).

While they run, the parent forks FORKS children in total:

* ``fork`` children of ``multiprocessing`` that read every sample of an epoch through the
  parent's dataset from the local tier and again from TileDB (tier and cache off: their own
  context, handles and queries), and every volume whole through the parent's ``Volume``
  objects, and send back hashes;
* the workers of a training loader with ``num_workers=2`` and ``multiprocessing_context=
  "fork"`` (not persistent: two new forks per epoch), whose batches are hashed per epoch.

Every child's hashes must equal those the parent computed before any thread started. A
child that does not answer within ``CHILD_S`` is killed and counted as hung (a lock or a
TileDB mutex inherited in the held state); a loader worker that hangs stops the script at
the ``faulthandler`` deadline, with every thread's stack. The script prints one JSON line:
the counts, the rounds each parent thread made while the parent forked, and the TileDB
queries radiobject's threads made meanwhile.

Not exercised, because it hangs: threads of the parent that open and close TileDB arrays
(TileDB-Py's ``tiledb.open`` / ``array[...]`` / ``close`` in a loop) or build TileDB
contexts. A fork in the middle of an open leaves TileDB's process-wide array registry locked
in the child, whose first array open then waits for ever (one hang in about 1,000 forks in
an earlier version of this script); and TileDB-Py's ``array[...]`` imports the absent
``pyarrow`` on every call, under Python's import lock for that name, which a fork can leave
held as well. radiobject cannot reset TileDB's state: that is why its loaders use
``forkserver`` wherever a forkserver worker can start.
"""

from __future__ import annotations

import faulthandler
import hashlib
import json
import multiprocessing
import sys
import threading
import time
import warnings
from typing import Any

import numpy as np

from radiobject import RadiObject, ReadConfig, configure, get_tiledb_ctx
from radiobject._process import state
from radiobject.ml import create_training_dataloader
from radiobject.parallel import map_on_threads
from radiobject.read._local_tier import local_tier, tier_state
from radiobject.read._storage import _query, open_array, read_overlap

CHILD_S = 60.0  # a child that takes longer than this hung
AT_ONCE = 4  # multiprocessing children alive at the same time
LOADER = {"batch_size": 3, "patch_size": (8, 8, 8), "patches_per_volume": 3, "seed": 5}


def digest(arrays: Any) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def epoch_hash(loader: Any) -> str:
    loader.set_epoch(0)  # the same epoch every time: the same batches
    return digest(b["image"].numpy() for b in loader)


def samples_hash(dataset: Any) -> str:
    return digest(dataset[(0, i)]["image"].numpy() for i in range(len(dataset)))


def child_read(conn: Any, volumes: list[Any], dataset: Any) -> None:
    """In a forked child: read with the parent's objects, send the hashes back."""
    from_tier = samples_hash(dataset)  # the parent's dataset, through the local tier
    configure(read=ReadConfig(cache_mb=0, local_tier_mb=0))
    from_tiledb = samples_hash(dataset)  # the same samples, from TileDB now
    whole = digest(v.to_numpy() for v in volumes)  # the parent's Volume objects, from TileDB
    conn.send(
        {
            "tier": from_tier,
            "tiledb": from_tiledb,
            "whole": whole,
            "forked": state().forked,
        }
    )
    conn.close()


class Busy:
    """The parent's threads, each looping until :meth:`stop`; counts their rounds."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.rounds: dict[str, int] = {}
        self.errors: list[str] = []
        self.threads: list[threading.Thread] = []

    def start(self, name: str, step: Any) -> None:
        def loop() -> None:
            try:
                while not self.done.is_set():
                    step()
                    self.rounds[name] = self.rounds.get(name, 0) + 1
            except BaseException as exc:
                self.errors.append(f"{name}: {exc!r}")

        thread = threading.Thread(target=loop, name=f"stress-{name}", daemon=True)
        self.threads.append(thread)
        thread.start()

    def stop(self) -> None:
        self.done.set()
        for thread in self.threads:
            thread.join(timeout=CHILD_S)


def main(uri: str, forks: int, tier_dir: str) -> dict[str, Any]:
    faulthandler.dump_traceback_later(240, exit=True)  # a hang in the parent: show where
    # the bare multiprocessing forks below: TileDB-Py warns that they may deadlock
    warnings.filterwarnings("ignore", "TileDB is a multithreading library", UserWarning)
    # every read a TileDB query (no block cache), the tier on, read-ahead on
    configure(
        read=ReadConfig(
            cache_mb=0, local_tier_mb=64, local_tier_dir=tier_dir, read_ahead=4, max_workers=4
        )
    )
    radi = RadiObject(uri)
    volumes = [radi.T1w.iloc[i] for i in range(len(radi.T1w))]
    in_process = create_training_dataloader(radi.T1w, **LOADER)
    dataset = in_process.dataset
    samples = samples_hash(dataset)
    expected = {
        "tier": samples,
        "tiledb": samples,
        "whole": digest(v.to_numpy() for v in volumes),
        "forked": True,
    }
    epoch = epoch_hash(in_process)
    tier_state().flush()  # the tier holds the cohort: children read it there too

    busy = Busy()
    rng = np.random.default_rng(0)

    def corner(v: Any) -> tuple[slice, ...]:
        x, y, z = (int(rng.integers(0, s - 8)) for s in v.shape[:3])
        return (slice(x, x + 8), slice(y, y + 8), slice(z, z + 8))

    def patch_reads() -> None:  # radiobject's read path (the local tier: blosc2 decodes)
        map_on_threads(lambda v: v[corner(v)], volumes, max_workers=4)

    ctx = get_tiledb_ctx()

    def query(v: Any) -> np.ndarray:
        handle, info = open_array(v.uri, ctx)
        box = corner(v)
        return _query(handle, info, tuple((b.start, b.stop) for b in box))

    def tiledb_queries() -> None:  # radiobject's TileDB queries (its reader threads' code)
        map_on_threads(query, volumes, max_workers=4)

    written = iter(range(1 << 30))
    tier = local_tier()
    assert tier is not None
    noise = rng.integers(0, 1000, size=volumes[0].shape).astype(np.float32)

    def tier_writes() -> None:  # a new entry each time: the writer compresses without pause
        key = f"stress{next(written):08d}"
        job = tier_state().submit(key, lambda: tier.write(key, noise))
        if job is not None:
            job.result()

    reader = create_training_dataloader(radi.T1w, **LOADER)

    def read_ahead_epochs() -> None:
        for _ in reader:
            pass

    busy.start("patch reads", patch_reads)
    busy.start("tiledb queries", tiledb_queries)
    busy.start("tier writes", tier_writes)
    busy.start("read-ahead", read_ahead_epochs)
    while len(busy.rounds) < 4 and not busy.errors:  # every thread is under way
        time.sleep(0.01)

    mp = multiprocessing.get_context("fork")
    loader = create_training_dataloader(
        radi.T1w, num_workers=2, persistent_workers=False, multiprocessing_context="fork", **LOADER
    )
    results: dict[str, Any] = {"hung": 0, "wrong": 0, "children": 0, "loader_epochs": 0}
    rounds_before = dict(busy.rounds)
    queries_before = read_overlap().snapshot()[0]
    started = time.perf_counter()
    forked = 0
    while forked < forks and not busy.errors:
        if forked % 10 == 0 and forks - forked >= 2:  # a loader epoch: two forked workers
            if epoch_hash(loader) != epoch:
                results["wrong"] += 1
            results["loader_epochs"] += 1
            forked += 2
            continue
        batch = []
        for _ in range(min(AT_ONCE, forks - forked)):
            here, there = mp.Pipe(duplex=False)
            child = mp.Process(target=child_read, args=(there, volumes, dataset))
            child.start()
            there.close()
            batch.append((child, here))
            forked += 1
        for child, conn in batch:
            if conn.poll(CHILD_S):
                results["wrong"] += conn.recv() != expected
            else:
                results["hung"] += 1
                child.kill()
            child.join(CHILD_S)
            results["children"] += 1
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["forks"] = forked
    # rounds each thread completed while the parent forked (every one kept going)
    results["thread_rounds"] = {k: v - rounds_before[k] for k, v in busy.rounds.items()}
    results["tiledb_queries"] = read_overlap().snapshot()[0] - queries_before  # radiobject's
    busy.stop()
    results["thread_errors"] = busy.errors
    faulthandler.cancel_dump_traceback_later()
    return results


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]), sys.argv[3])))

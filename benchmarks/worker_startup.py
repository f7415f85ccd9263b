"""Worker start-up: from creating a loader to its first batch, with 2 workers, per start method.

Not part of the test suite. Each measurement is a new Python process (run in turn for
``fork``, ``forkserver`` and ``spawn``, so drift on a shared machine hits each alike), as a
user's training script is: it imports radiobject and torch, opens the cohort and reads one
volume (a TileDB context and its threads exist, as in any real script), then times

* ``first``: ``create_training_dataloader(..., num_workers=2, multiprocessing_context=m)``
  until its first batch: what the first epoch of a run waits for (for ``forkserver`` this
  includes starting the fork server and its imports);
* ``again``: a second new loader in the same process until its first batch (the fork server
  is up by then): what each later loader or non-persistent epoch pays.

Prints min / median / max seconds per method over ``--processes`` processes (at least 3),
then the same ratios to ``fork``.

    python benchmarks/worker_startup.py                  # 5 processes per method
    python benchmarks/worker_startup.py --processes 3    # smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import machine

METHODS = ("fork", "forkserver", "spawn")


def first_batch_s(uri: str, method: str) -> float:
    """Seconds from creating a 2-worker loader to its first batch."""
    from radiobject import RadiObject
    from radiobject.ml import create_training_dataloader

    start = time.perf_counter()
    loader = create_training_dataloader(
        RadiObject(uri).T1w,
        batch_size=2,
        patch_size=(16, 16, 16),
        num_workers=2,
        multiprocessing_context=method,
    )
    it = iter(loader)
    next(it)
    took = time.perf_counter() - start
    del it, loader  # the workers end before the next loader's
    return took


def one_process(uri: str, method: str) -> None:
    """In a process of its own: a script's set-up, then the two timings as JSON."""
    from radiobject import RadiObject

    RadiObject(uri).T1w.iloc[0].to_numpy()  # as a script would before training
    first = first_batch_s(uri, method)
    again = first_batch_s(uri, method)
    print(json.dumps({"first": first, "again": again}))


def stats(values: list[float]) -> str:
    return f"{min(values):6.2f} {statistics.median(values):6.2f} {max(values):6.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=5, help="processes per method (>= 3)")
    parser.add_argument("--subjects", type=int, default=4)
    parser.add_argument("--one", nargs=2, metavar=("URI", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one_process(*args.one)
        return
    if args.processes < 3:
        parser.error("--processes must be at least 3 (min / median / max)")

    from radiobject.data import make_sample_radiobject

    workdir = tempfile.mkdtemp(prefix="worker-startup-")
    uri = str(Path(workdir) / "cohort")
    make_sample_radiobject(uri, n_subjects=args.subjects, modalities=("T1w",), progress=False)

    runs: dict[str, dict[str, list[float]]] = {m: {"first": [], "again": []} for m in METHODS}
    for _ in range(args.processes):
        for method in METHODS:  # in turn: drift hits every method alike
            out = subprocess.run(
                [sys.executable, __file__, "--one", uri, method],
                capture_output=True,
                text=True,
                check=True,
            )
            seen = json.loads(out.stdout.strip().splitlines()[-1])
            for key in ("first", "again"):
                runs[method][key].append(seen[key])

    print(f"machine {machine.describe()}")
    print(
        f"loader creation to first batch, 2 workers, {args.processes} processes per method "
        "(seconds: min median max; a shared machine is noisy, compare within this run)"
    )
    print(f"{'method':<11} {'first loader':>20}   {'another loader':>20}   median vs fork")
    fork_first = statistics.median(runs["fork"]["first"])
    fork_again = statistics.median(runs["fork"]["again"])
    for method in METHODS:
        first, again = runs[method]["first"], runs[method]["again"]
        ratio = (
            f"{statistics.median(first) / fork_first:5.1f}x / "
            f"{statistics.median(again) / fork_again:5.1f}x"
        )
        print(f"{method:<11} {stats(first):>20}   {stats(again):>20}   {ratio}")


if __name__ == "__main__":
    main()

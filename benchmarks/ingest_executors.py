"""Ingest throughput (volumes/s) on threads, a process pool and a local Dask cluster.

The same NIfTI files (the sample phantom, gzip-compressed, ``--shape``) are ingested with
``RadiObject.from_images`` into a new local folder by each executor in turn, for
``--repeats`` rounds (the executors interleaved, so drift on a shared machine hits each
alike); the table shows the median volumes/s and the spread. Starting the pool or the
cluster is timed apart: it is paid once per session, not per ingest.

    python benchmarks/ingest_executors.py --volumes 16 --shape 128 128 96 --repeats 3
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import statistics
import tempfile
import time
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import machine

from radiobject import RadiObject
from radiobject.data import write_sample_niftis


def ingest(images: dict[str, str], target: Path, executor: Executor | None) -> float:
    if target.exists():
        shutil.rmtree(target)
    start = time.perf_counter()
    RadiObject.from_images(target, images, progress=False, executor=executor)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=16)
    parser.add_argument("--shape", type=int, nargs=3, default=(128, 128, 96))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    import distributed

    work = Path(tempfile.mkdtemp(prefix="ingest-bench-"))
    try:
        made = write_sample_niftis(
            work / "nifti", n_subjects=args.volumes, shape=args.shape, modalities=("T1w",)
        )
        images = {"T1w": made[0]["T1w"]}  # the intensity volumes only: --volumes of them
        size = sum(p.stat().st_size for p in (work / "nifti" / "T1w").iterdir()) / 2**20

        n = args.workers
        started = {}
        t = time.perf_counter()
        threads = ThreadPoolExecutor(n)
        started[f"threads ({n})"] = (threads, time.perf_counter() - t)
        t = time.perf_counter()
        pool = ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("forkserver"))
        list(pool.map(abs, range(n)))  # start the workers
        started[f"process pool ({n}, forkserver)"] = (pool, time.perf_counter() - t)
        t = time.perf_counter()
        cluster = distributed.LocalCluster(
            n_workers=n,
            processes=True,
            threads_per_worker=1,
            dashboard_address=None,
            host="127.0.0.1",
        )
        client = distributed.Client(cluster)
        started[f"Dask LocalCluster ({n} x 1 thread)"] = (
            client.get_executor(),
            time.perf_counter() - t,
        )
        try:
            modes = {"threads (default, ReadConfig.max_workers=4)": (None, 0.0), **started}
            for executor, _ in modes.values():  # warm-up: imports in every worker
                ingest(images, work / "warm", executor)
            times: dict[str, list[float]] = {m: [] for m in modes}
            for _ in range(args.repeats):
                for mode, (executor, _) in modes.items():
                    times[mode].append(ingest(images, work / "radi", executor))
        finally:
            client.close()
            cluster.close()
            pool.shutdown()
            threads.shutdown()

        shape = "x".join(str(s) for s in args.shape)
        print(f"machine: {machine.describe()}")
        print(
            f"{args.volumes} NIfTI volumes of {shape} (float32 phantom, {size:.1f} MiB .nii.gz), "
            f"local disk, median of {args.repeats} (min-max)"
        )
        print(f"{'executor':<46} {'start (s)':>9} {'volumes/s':>10} {'range':>13}")
        for mode, (_, start) in modes.items():
            rates = [args.volumes / s for s in times[mode]]
            print(
                f"{mode:<46} {start:>9.2f} {statistics.median(rates):>10.1f} "
                f"{min(rates):>6.1f}-{max(rates):<6.1f}"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""What radiobject's telemetry costs the loader it measures, and whether that cost stays flat.

Part 1 runs the same loader (sample cohort, 32^3 patches, batch 4, cache off, num_workers=0)
in five ways, in rounds whose order rotates so that drift on a shared machine hits each alike:

* ``plain``: iterate the loader, count samples;
* ``TileDBStats``: the same loop inside ``with TileDBStats():`` (the block's edges included);
* ``TileDBStats(storage=False)``: the same, without TileDB's counters (cache counters only);
* ``LoaderProbe``: ``LoaderProbe(loader).run(duration_s=...)``;
* ``LoaderTuner``: ``LoaderTuner(...).run_sync(duration_s=..., cache_mb=0)``, live plots on.

Throughput is samples over wall time. The table shows medians over rounds and the median of
the ratios to ``plain`` within each round (target: >= 0.95), and for the tuner also the
samples/s it *reports* against the plain loop measured beside it (target: within 10%). On a
busy machine wall time swings from round to round; the process's CPU time per sample (all
its threads) is steadier, and its ratio to ``plain`` is printed too.

Part 1 also prints where the time went in the probe's runs (ms per sample by stage, and the
read amplification), and the cost of the always-on stage counters: the calls they add to each
sample (two clock reads, two counter updates under a lock, summing the sample's bytes, and a
clock read and locked update per storage query) timed on their own, against the time per
sample of the plain loop (target: <= 5%).

Part 2 reads one voxel 100,000 times (each a storage query, cache off) inside a single
``TileDBStats`` block and prints the cost per query for each 10,000, from the first to the last
(the goal: flat), the cost of the block's edges, and plain reads outside any block beside it.

    python benchmarks/telemetry_overhead.py            # about 5 minutes on 2 cores
    python benchmarks/telemetry_overhead.py --quick    # about 1 minute
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import machine
import numpy as np

from radiobject import ReadConfig, TileDBStats, Volume, configure
from radiobject.data import make_sample_radiobject
from radiobject.ml import (
    LoaderProbe,
    ProbeResult,
    create_training_dataloader,
    loader_cache_counters,
)
from radiobject.ml._stages import sample_nbytes, stage_counters
from radiobject.read._region import read_overlap
from radiobject.widgets import LoaderTuner


def rss_mb() -> float:
    try:
        return (
            int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGESIZE") / 2**20
        )
    except (OSError, ValueError):
        return float("nan")


# -- part 1: the loader five ways ------------------------------------------------------------


def loop(loader, seconds: float) -> int:
    """Samples pulled from ``loader`` (cycling epochs) until ``seconds`` have passed."""
    samples, end = 0, time.perf_counter() + seconds
    while True:
        for batch in loader:
            samples += int(batch["image"].shape[0])
            if time.perf_counter() >= end:
                return samples


def plain(loader, seconds: float) -> tuple[int, float]:
    start = time.perf_counter()
    samples = loop(loader, seconds)
    return samples, time.perf_counter() - start


EDGES: list[tuple[float, float]] = []  # seconds entering and leaving each TileDBStats block


def with_stats(loader, seconds: float) -> tuple[int, float]:
    start = time.perf_counter()
    with TileDBStats():
        inside = time.perf_counter()
        samples = loop(loader, seconds)
        leaving = time.perf_counter()
    end = time.perf_counter()
    EDGES.append((inside - start, end - leaving))
    return samples, end - start


def with_cache_stats(loader, seconds: float) -> tuple[int, float]:
    start = time.perf_counter()
    with TileDBStats(storage=False):
        samples = loop(loader, seconds)
    return samples, time.perf_counter() - start


PROBED: list = []  # the probe's results, for the stage breakdown


def with_probe(loader, seconds: float) -> tuple[int, float]:
    start = time.perf_counter()
    before = loader_cache_counters(loader).storage_queries
    result = LoaderProbe(loader, interval_s=0.25).run(duration_s=seconds)
    PROBED.append((result, loader_cache_counters(loader).storage_queries - before))
    return result.samples, time.perf_counter() - start


def counter_cost_us(sample: dict, queries_per_sample: float, n: int = 50_000) -> float:
    """Microseconds per sample spent in the stage counters' calls (what the dataset adds)."""
    counters = stage_counters()
    start = time.perf_counter()
    for _ in range(n):
        t0 = time.perf_counter_ns()
        counters.add_read(time.perf_counter_ns() - t0, sample_nbytes(sample))
        t1 = time.perf_counter_ns()
        counters.add_transform(time.perf_counter_ns() - t1)
    per_sample = (time.perf_counter() - start) / n
    start = time.perf_counter()
    for _ in range(n):  # a storage query enters and leaves the meter (timed since this change)
        with read_overlap:
            pass
    per_query = (time.perf_counter() - start) / n
    return 1e6 * (per_sample + queries_per_sample * per_query)


def part1(args: argparse.Namespace, root: Path) -> None:
    shape = tuple(args.shape)
    radi = make_sample_radiobject(
        str(root / "radi"), n_subjects=args.subjects, shape=shape, progress=False
    )
    configure(read=ReadConfig(cache_mb=0))
    kwargs = {"batch_size": 4, "patch_size": (32, 32, 32), "patches_per_volume": 4}
    loader = create_training_dataloader(radi.T1w, num_workers=0, **kwargs)
    tuner = LoaderTuner(radi.T1w, num_workers=0, **kwargs)
    tuner.live_box.value = not args.no_live
    reported: list[float] = []
    setup: list[float] = []  # tuner run time outside its probe: loader, first and last draw

    def with_tuner(_loader, seconds: float) -> tuple[int, float]:
        start = time.perf_counter()
        run = tuner.run_sync(duration_s=seconds, cache_mb=0, num_workers=0)
        wall = time.perf_counter() - start
        assert run is not None
        if run.error:
            raise RuntimeError(run.error)
        reported.append(run.samples_per_s)
        setup.append(wall - run.result.seconds)
        return run.result.samples, wall

    modes: dict[str, Callable[..., tuple[int, float]]] = {
        "plain loop": plain,
        "inside TileDBStats": with_stats,
        "inside TileDBStats(storage=False)": with_cache_stats,
        "LoaderProbe.run": with_probe,
        "LoaderTuner.run_sync": with_tuner,
    }
    plain(loader, 1.0)  # warm-up: handles open, pages cached
    rates: dict[str, list[float]] = {name: [] for name in modes}
    cpu: dict[str, list[float]] = {name: [] for name in modes}  # process CPU s per sample
    names = list(modes)
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            used = time.process_time()
            samples, wall = modes[name](loader, args.seconds)
            cpu[name].append((time.process_time() - used) / samples)
            rates[name].append(samples / wall)
        print(f"  round {r + 1}: " + ", ".join(f"{n} {rates[n][-1]:,.1f}" for n in names))
    base = rates["plain loop"]
    print(
        f"\nloader: {args.subjects} subjects {shape}, patch 32^3, batch 4, cache off, "
        f"num_workers=0; {args.rounds} rounds of {args.seconds:g} s per mode"
    )
    print(
        f"{'mode':34s} {'samples/s (median)':>19s} {'ratio to plain':>15s} "
        f"{'CPU ms/sample':>14s} {'CPU ratio':>10s}"
    )
    for name in names:
        ratio = statistics.median(v / b for v, b in zip(rates[name], base, strict=True))
        used = statistics.median(cpu[name])
        cpu_ratio = statistics.median(
            v / b for v, b in zip(cpu[name], cpu["plain loop"], strict=True)
        )
        print(
            f"{name:34s} {statistics.median(rates[name]):19,.1f} {ratio:15.3f} "
            f"{1e3 * used:14.3f} {cpu_ratio:10.3f}"
        )
    ratio = statistics.median(v / b for v, b in zip(reported, base, strict=True))
    label = "LoaderTuner, samples/s it reports"
    print(f"{label:34s} {statistics.median(reported):19,.1f} {ratio:15.3f}")
    enter = statistics.median(e for e, _ in EDGES)
    leave = statistics.median(x for _, x in EDGES)
    share = statistics.median((e + x) / (args.seconds + e + x) for e, x in EDGES)
    print(
        f"TileDBStats edges: median enter {1e3 * enter:.0f} ms (resets TileDB's record of the "
        f"queries since the last block, here the other modes'), exit {1e3 * leave:.0f} ms "
        f"(its own queries); {100 * share:.1f}% of its round"
    )
    print(
        f"LoaderTuner outside its measurement (building the loader, first and last draw): "
        f"median {statistics.median(setup):.2f} s a run"
    )
    last, queries = PROBED[-1]
    ms = last.stage_ms()
    print(
        "where the time goes (LoaderProbe, last round), ms per sample: "
        + ", ".join(f"{label} {ms[name]:.3f}" for name, label in ProbeResult.STAGES)
        + f"; read amplification {last.read_amplification:.2f}"
    )
    batch = next(iter(loader))
    sample = {k: v[0] if hasattr(v, "shape") else v for k, v in batch.items()}
    per = queries / max(1, last.stages.samples)
    cost = counter_cost_us(sample, per)
    per_sample_us = 1e6 / statistics.median(base)
    print(
        f"stage counters: {cost:.2f} us per sample ({per:.2f} storage queries each) against "
        f"{per_sample_us:,.0f} us per sample of the plain loop: {100 * cost / per_sample_us:.2f}%"
    )


# -- part 2: many tiny queries in one block ---------------------------------------------------


def part2(args: argparse.Namespace, root: Path) -> None:
    data = np.arange(32**3, dtype=np.float32).reshape(32, 32, 32)
    vol = Volume.from_numpy(str(root / "tiny"), data)
    configure(read=ReadConfig(cache_mb=0))  # every read is a storage query
    n, chunk = args.queries, args.queries // 10
    index = [(i % 32, (i // 32) % 32, (i // 1024) % 32) for i in range(n)]

    def reads(lo: int, hi: int) -> float:
        start = time.perf_counter()
        for i in range(lo, hi):
            x, y, z = index[i]
            vol[x, y, z]
        return (time.perf_counter() - start) / (hi - lo) * 1e6

    reads(0, 1000)  # warm-up
    outside_before = reads(0, chunk)
    rss0 = rss_mb()
    per_chunk: list[float] = []
    t = time.perf_counter()
    stats = TileDBStats()
    stats.__enter__()
    enter_s = time.perf_counter() - t
    for c in range(10):
        per_chunk.append(reads(c * chunk, (c + 1) * chunk))
    rss1 = rss_mb()
    t = time.perf_counter()
    stats.__exit__(None, None, None)
    exit_s = time.perf_counter() - t
    outside_after = reads(0, chunk)
    io = stats.s3_stats()
    print(f"\n{n:,} one-voxel reads (cache off) in one TileDBStats block, us per read:")
    print(
        "  "
        + "  ".join(
            f"{c * chunk // 1000}k-{(c + 1) * chunk // 1000}k: {v:.0f}"
            for c, v in enumerate(per_chunk)
        )
    )
    print(
        f"  first {chunk:,}: {per_chunk[0]:.0f} us, last {chunk:,}: {per_chunk[-1]:.0f} us "
        f"(last / first {per_chunk[-1] / per_chunk[0]:.2f})"
    )
    outside = statistics.mean([outside_before, outside_after])
    print(
        f"  outside any block, before: {outside_before:.0f} us, after: {outside_after:.0f} us; "
        f"inside / outside (means) {statistics.mean(per_chunk) / outside:.2f}"
    )
    print(
        f"  block edges: enter {1e3 * enter_s:.1f} ms, exit {1e3 * exit_s:.0f} ms "
        f"({1e6 * exit_s / n:.1f} us per query of the block)"
    )
    print(
        f"  counted: {io.queries:,} queries, {io.read_ops:,} TileDB reads; "
        f"TileDB's own per-query record grew RSS by {rss1 - rss0:,.0f} MB in the block"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subjects", type=int, default=6)
    parser.add_argument("--shape", type=int, nargs=3, default=(128, 128, 96))
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per mode and round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--queries", type=int, default=100_000, help="reads in part 2")
    parser.add_argument("--no-live", action="store_true", help="tuner without live plots")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 2 s, 20,000 reads")
    parser.add_argument("--part", type=int, choices=(1, 2), help="run one part only")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds, args.queries = 2, 2.0, 20_000
    print(f"machine: {machine.describe()}; Python {platform.python_version()}")
    root = Path(tempfile.mkdtemp(prefix="radiobject-telemetry-"))
    if args.part in (None, 1):
        part1(args, root)
    if args.part in (None, 2):
        part2(args, root)


if __name__ == "__main__":
    main()

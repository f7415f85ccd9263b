"""What watching a loader in ``LoaderTuner`` costs it: samples/s with and without live plots.

Three ways to run the same loader for the same time, interleaved so that drift (other work on
the machine, a warming cache) hits each alike:

* ``bare``: ``LoaderProbe.run`` alone (what a script would do);
* ``tuner``: ``LoaderTuner`` with live plots off (probe, stats, summary);
* ``watched``: ``LoaderTuner`` with live plots on (the redraws a user sees).

The ratio ``watched / bare`` (median over rounds, each round running the three modes back to
back) is the cost of watching; the goal is >= 0.95. The share of the run spent redrawing is
printed too: unlike throughput, it does not depend on what else the machine is doing.

    python benchmarks/widget_overhead.py --duration 5 --repeats 3 --num-workers 0 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from radiobject import configure
from radiobject.data import make_sample_radiobject
from radiobject.ml import LoaderProbe, create_segmentation_dataloader
from radiobject.widgets import LoaderTuner
from radiobject.widgets._runs import TunerSettings


def bare(radi, settings: TunerSettings) -> float:
    """The probe alone, timed exactly as the tuner times a run (after the first batch)."""
    with configure(read=settings.read_config()):
        loader = create_segmentation_dataloader(
            radi.T1w,
            radi.seg,
            persistent_workers=settings.num_workers > 0,
            **settings.loader_kwargs(),
        )
        probe = LoaderProbe(loader, interval_s=0.25)
        first: list[float] = []

        def check(_batch) -> None:
            now = time.perf_counter()
            if not first:
                first.append(now)
            if now - first[0] >= settings.duration_s:
                probe.stop()

        result = probe.run(on_batch=check)  # an error is raised, not captured
    return result.samples_per_s


def tuned(tuner: LoaderTuner, settings: TunerSettings, live: bool) -> tuple[float, int, float]:
    tuner.live_box.value = live
    redraws = tuner.live_redraws
    run = tuner.run_sync(
        num_workers=settings.num_workers,
        batch_size=settings.batch_size,
        patch_size=settings.patch_size,
        patches_per_volume=settings.patches_per_volume,
        duration_s=settings.duration_s,
    )
    assert run is not None
    if run.error:
        raise RuntimeError(run.error)
    seconds = run.result.seconds if run.result is not None else settings.duration_s
    return run.samples_per_s, tuner.live_redraws - redraws, run.draw_seconds / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each mode")
    parser.add_argument("--num-workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--subjects", type=int, default=8)
    parser.add_argument("--shape", type=int, nargs=3, default=(64, 64, 48))
    parser.add_argument("--patch", type=int, default=32)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp())
    radi = make_sample_radiobject(
        str(root / "radi"), n_subjects=args.subjects, shape=tuple(args.shape), progress=False
    )
    print(f"sample cohort: {args.subjects} subjects of {tuple(args.shape)}, patch {args.patch}")
    print(
        "mode      workers  samples/s: median (each run)   redraws/run  median paired ratio to bare"
    )
    for workers in args.num_workers:
        settings = TunerSettings(
            num_workers=workers,
            batch_size=4,
            patch_size=(args.patch,) * 3,
            patches_per_volume=4,
            duration_s=args.duration,
        )
        tuner = LoaderTuner(radi.T1w, radi.seg)
        bare(radi, settings.replace(duration_s=1.0))  # warm-up: caches, imports
        results: dict[str, list[float]] = {"bare": [], "tuner": [], "watched": []}
        redraws: list[int] = []
        drawing: list[float] = []
        modes = ["bare", "tuner", "watched"]
        for r in range(args.repeats):
            for mode in modes[r % 3 :] + modes[: r % 3]:  # rotate the order each round
                if mode == "bare":
                    results[mode].append(bare(radi, settings))
                else:
                    rate, n, share = tuned(tuner, settings, live=mode == "watched")
                    results[mode].append(rate)
                    if mode == "watched":
                        redraws.append(n)
                        drawing.append(share)
        for mode, rates in results.items():
            # each round ran the three modes back to back: compare within rounds (paired),
            # which cancels most of the drift of a shared machine
            ratios = [v / b for v, b in zip(rates, results["bare"], strict=True)]
            runs = ", ".join(f"{v:.0f}" for v in rates)
            extra = f"{statistics.mean(redraws):11.1f}" if mode == "watched" else " " * 11
            print(
                f"{mode:9s} {workers:7d}  {statistics.median(rates):9.1f} ({runs}){extra}  "
                f"{statistics.median(ratios):6.3f}"
            )
        print(
            f"watched   {workers:7d}  time spent redrawing: {100 * statistics.mean(drawing):.2f}% "
            f"of the run (max {100 * max(drawing):.2f}%)"
        )


if __name__ == "__main__":
    main()

"""radiobject against raw .npy memory maps, zarr, nibabel, TorchIO and MONAI, in one run.

    python benchmarks/run.py [--subjects 12] [--shape 240x240x155] [--quick] [--out DIR]

Writes the cohort once under --workdir (reused by later runs), prints a table of absolute
numbers and ratios (radiobject / peer) with the targets of issue 5, and writes
``results.json`` and ``benchmarks.png`` into --out. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
import warnings
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

import report
import suites
from cohort import parse_shape, prepare
from peers import original_radiobject_note

SUITES = ("reads", "loaders", "segmentation", "storage", "ingest")
HERE = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--subjects", type=int, default=None, help="subjects (12; 4 with --quick)")
    p.add_argument("--shape", default="240x240x155", help="volume grid, e.g. 240x240x155")
    p.add_argument("--quick", action="store_true", help="4 subjects, fewer batches and reads")
    p.add_argument("--out", default=str(HERE / "results"), help="where results go")
    p.add_argument(
        "--workdir",
        default=os.path.join(tempfile.gettempdir(), "radiobject-bench"),
        help="where the cohort is written (reused when present)",
    )
    p.add_argument("--repeats", type=int, default=5, help="repeats per measurement (median)")
    p.add_argument("--batches", type=int, default=None, help="timed batches per loader run")
    p.add_argument("--max-seconds", type=float, default=None, help="time cap per loader run")
    p.add_argument("--cold-mb", type=int, default=None, help="cache of the cold rows (MB)")
    p.add_argument("--zarr-codec", choices=("zstd", "blosc"), default="zstd")
    p.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch intra-op threads in this process (1, as in DataLoader workers; 0: torch's "
        "default). Collating with 2 OpenMP threads on a busy 2-core machine costs tens of ms.",
    )
    p.add_argument("--suites", default=",".join(SUITES), help=f"subset of {','.join(SUITES)}")
    return p.parse_args(argv)


def settings_for(args: argparse.Namespace, cohort_mb: float) -> suites.Settings:
    from radiobject import get_config

    quick = args.quick
    default_mb = get_config().read.cache_mb
    cold = args.cold_mb or max(16, min(default_mb // 2, int(cohort_mb // 4)))
    return suites.Settings(
        repeats=args.repeats,
        n_batches=args.batches or (12 if quick else 50),
        max_seconds=args.max_seconds or (8.0 if quick else 20.0),
        n_full=3 if quick else 6,
        n_small=20 if quick else 50,
        cold_mb=cold,
    )


def _versions() -> dict[str, str]:
    names = ("radiobject", "tiledb", "numpy", "torch", "monai", "torchio", "zarr", "nibabel")
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def meta_info(args: argparse.Namespace, cohort, s: suites.Settings, note: str | None) -> dict:
    from radiobject import get_config

    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "versions": _versions(),
        "cohort": {
            "root": str(cohort.root),
            "subjects": cohort.n_subjects,
            "shape": cohort.shape,
            "dtype": "float32",
            "cohort_mb": round(cohort.cohort_mb, 1),
            "zarr_codec": cohort.zarr_codec,
        },
        "settings": asdict(s),
        "read_config": asdict(get_config().read),
        "torch_threads": _torch_threads(),
        "quick": args.quick,
        "original_radiobject": note or "measured",
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.subjects is None:
        args.subjects = 4 if args.quick else 12
    chosen = [x.strip() for x in args.suites.split(",") if x.strip()]
    unknown = sorted(set(chosen) - set(SUITES))
    if unknown:
        raise SystemExit(f"unknown suites {unknown}; choose from {list(SUITES)}")
    if args.torch_threads > 0:
        import torch

        torch.set_num_threads(args.torch_threads)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"monai\..*")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cohort = prepare(args.workdir, args.subjects, parse_shape(args.shape), args.zarr_codec)
    s = settings_for(args, cohort.cohort_mb)
    note = original_radiobject_note()
    print(f"settings: {s}", flush=True)
    if note:
        print(f"original RadiObject: {note}", flush=True)

    results: suites.Results = {}
    started = time.perf_counter()
    steps = {
        "reads": lambda: suites.run_reads(cohort, s),
        "loaders": lambda: suites.run_loaders(cohort, s, note),
        "segmentation": lambda: suites.run_segmentation(cohort, s),
        "storage": lambda: suites.run_storage(cohort),
        "ingest": lambda: suites.run_ingest(cohort, s),
    }
    for name in SUITES:
        if name in chosen:
            print(f"== {name}", flush=True)
            results.update(steps[name]())

    targets = report.evaluate(results)
    report.print_report(results, targets)
    meta = meta_info(args, cohort, s, note)
    meta["seconds"] = round(time.perf_counter() - started, 1)
    report.write_json(out / "results.json", results, targets, meta)
    report.plot(out / "benchmarks.png", results)
    print(f"\nwrote {out / 'results.json'} and {out / 'benchmarks.png'} ({meta['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Every benchmark number of the README, from one command; each row in its own process.

    python benchmarks/run.py                     # all suites, 3 processes per row
    python benchmarks/run.py --suites ltr        # a subset: fits, ltr, reads
    python benchmarks/run.py --quick             # a smoke run: tiny cohort, 1 process per row
    python benchmarks/run.py --estimate          # the schedule and its estimated time only
    python benchmarks/run.py --report benchmarks/results/<run>   # the tables of a run again

Suites (see benchmarks/README.md): ``fits`` (the cohort fits the RAM budget; each loader at
0 and 2 workers at 4 patches per volume, then at its best count at 20), ``ltr`` (larger than
RAM, cold page cache, each loader at its best worker count from ``fits``), ``reads``.
Rows run interleaved (A B C A B C ...) so drift on the machine hits each alike. Results go to
``--results/<date-time>/results.jsonl`` (one JSON line per row process; the folder is
git-ignored) and the tables to ``report.md`` beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import report  # noqa: E402
from rows import Row  # noqa: E402

SUITES = ("fits", "ltr", "reads")
ENGINE_NAMES = ("radiobject", "radiobject-loop", "npy", "nnunet", "b2-lz4hc", "tensorstore", "zarr",
                "monai-persistent", "monai-cache", "torchio", "nnunet-f32")  # fmt: skip
# rough samples/s on 2 cores (warm, 64³ patches of 240x240x155 volumes; from a smoke run on a
# loaded machine, scaled), for the time estimate only
NOMINAL_RATE = {
    "radiobject": 2000,
    "radiobject-loop": 2500,
    "npy": 2500,
    "nnunet": 600,
    "b2-lz4hc": 2500,
    "tensorstore": 2500,
    "zarr": 250,
    "monai-persistent": 1500,
    "monai-cache": 1500,
    "torchio": 1000,
    "nnunet-f32": 550,
}  # fmt: skip  (MONAI, TorchIO: + volume loads)
IN_PROCESS = ("radiobject-loop",)  # loops without workers: one row at 0 workers
STARTUP_S = 3.0  # a fresh interpreter importing torch and radiobject (~2-3 s measured)
MIN_EPOCH = 96  # samples per epoch of an ltr row at least: 1 per volume runs on 96 volumes
# the engines of ltr rows that need a larger cohort (1 per volume: 96 volumes): radiobject and
# the formats it is compared with (its own tier's layout, tensorstore's first epoch, raw)
FEW_ENGINES = ("radiobject", "b2-lz4hc", "tensorstore", "npy")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--suites", default=",".join(SUITES), help=f"subset of {','.join(SUITES)}")
    p.add_argument("--engines", default=",".join(ENGINE_NAMES), help="subset of the loaders")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: tiny cohort, 2 epochs, 4 patches per volume, 0 workers, 1 process per row",
    )
    p.add_argument("--subjects", type=int, default=None, help="volumes (24; 4 with --quick)")
    p.add_argument("--shape", default=None, help="volume grid (240x240x155; 72x72x68 quick)")
    p.add_argument("--patch", type=int, default=None, help="patch edge (64; 32 with --quick)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per loader row (10; 2)")
    p.add_argument("--repeats", type=int, default=None, help="processes per row (3; 1 quick)")
    p.add_argument("--per", default="4,20", help="patches per volume of the fits rows")
    p.add_argument(
        "--ltr-per",
        default="1,4,20",
        help="patches per volume of the ltr rows; an epoch is at least 96 samples: 1 per "
        f"volume runs on 96 volumes (only {', '.join(FEW_ENGINES)}), written once",
    )
    p.add_argument("--workers", default="0,2", help="worker counts tried in the fits suite")
    p.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch intra-op threads in "
        "each row's process (1, as in DataLoader workers; 0: torch's default)",
    )
    p.add_argument("--order", choices=("forward", "reverse", "shuffle"), default="forward")
    p.add_argument("--workdir", default=str(Path(os.environ.get("TMPDIR", "/tmp")) /
                                            "radiobject-bench"))  # fmt: skip
    p.add_argument("--results", default=str(HERE / "results"), help="where run folders go")
    p.add_argument("--estimate", action="store_true", help="print the schedule and stop")
    p.add_argument("--row", help=argparse.SUPPRESS)  # one row, in this process (internal)
    p.add_argument("--report", metavar="DIR", help="print the tables of a results folder")
    args = p.parse_args(argv)
    q = args.quick
    args.subjects = args.subjects or (4 if q else 24)
    args.shape = tuple(int(s) for s in (args.shape or ("72x72x68" if q else "240x240x155"))
                       .lower().split("x"))  # fmt: skip
    args.patch = args.patch or (32 if q else 64)
    args.epochs = args.epochs or (2 if q else 10)
    args.repeats = args.repeats or (1 if q else 3)
    args.min_epoch = 0 if q else MIN_EPOCH
    if q:  # one loader row per engine and suite: the smoke run checks every path, not speed
        args.per = args.per if args.per != "4,20" else "4"
        args.ltr_per = args.ltr_per if args.ltr_per != "1,4,20" else "4"
        args.workers = args.workers if args.workers != "0,2" else "0"
    return args


def _split(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def schedule(args: argparse.Namespace, suite: str, best: dict[str, int]) -> list[Row]:
    """The rows of one suite (one process each per repeat)."""
    base = Row(suite=suite, kind="loader", engine="", workdir=args.workdir, n=args.subjects,
               shape=args.shape, patch=args.patch, epochs=args.epochs,
               torch_threads=args.torch_threads)  # fmt: skip
    engines = _split(args.engines)
    pers = [int(p) for p in _split(args.per)]
    rows: list[Row] = []
    if suite == "fits":
        for w in (int(x) for x in _split(args.workers)):
            rows += [replace(base, engine=e, per=pers[0], workers=w) for e in engines
                     if w == 0 or e not in IN_PROCESS]  # fmt: skip
    elif suite == "fits-rest":
        for per in pers[1:]:
            rows += [replace(base, suite="fits", engine=e, per=per, workers=best.get(e, 0))
                     for e in engines]  # fmt: skip
    elif suite == "ltr":
        for per in [int(p) for p in _split(args.ltr_per)]:
            n = max(args.subjects, -(-args.min_epoch // per))  # epochs of min_epoch samples
            names = engines if n == args.subjects else [e for e in engines if e in FEW_ENGINES]
            rows += [replace(base, engine=e, per=per, n=n, workers=best.get(e, 0),
                             budget="quarter", page_cache="cold") for e in names]  # fmt: skip
    elif suite == "reads":
        import reads

        rows += [replace(base, kind="reads", engine=e) for e in reads.available()]
    return rows


def _cohorts(args: argparse.Namespace, planned: list[Row]) -> dict[int, list[str] | None]:
    """The cohorts the rows read, by size: every copy of the main one, the rows' of others."""
    from engines import ENGINES

    out: dict[int, list[str] | None] = {args.subjects: None}
    for r in planned:
        if r.n != args.subjects:
            names = out.setdefault(r.n, [])
            assert names is not None
            copy = "zarr3" if ENGINES[r.engine].copy == "zarr3" else ENGINES[r.engine].copy
            if copy not in names:
                names.append(copy)
    return out


def _volume_loads_s(r: Row) -> float:
    """Seconds MONAI and TorchIO spend loading whole volumes in a row (measured: a 240x240x155
    int16 ``.nii`` loads in ~30 ms with MONAI, ~20 ms with TorchIO; a ``.pt`` in ~6 ms)."""
    size = r.shape[0] * r.shape[1] * r.shape[2] / (240 * 240 * 155)
    draws = r.n * max(1, r.per // min(r.per, 4))  # volume draws per epoch (4 patches each)
    if r.engine == "monai-cache":
        cached = 1.0 if r.budget == "default" else 0.25
        return size * 0.035 * (r.n * cached + r.epochs * draws * (1 - cached))
    if r.engine == "monai-persistent":
        return size * (0.1 * r.n + r.epochs * draws * 0.007)
    if r.engine == "torchio":
        return size * 0.025 * r.n * r.epochs / max(1, r.workers)
    return 0.0


def estimate_s(rows: list[Row], repeats: int) -> float:
    total = 0.0
    for r in rows:
        if r.kind == "reads":
            total += STARTUP_S + 2.0
            continue
        samples = r.epochs * r.n * r.per * (r.patch / 64) ** 3
        slow = 1.3 if r.page_cache == "cold" else 1.0
        extra = 3.0 if r.engine.startswith(("monai", "torchio")) else 0.0
        work = slow * samples / NOMINAL_RATE.get(r.engine, 500) + _volume_loads_s(r)
        total += STARTUP_S + extra + work
    return total * repeats


def _missing_engines(engines: list[str]) -> dict[str, str]:
    """Engines whose library is not importable here, with the missing module."""
    import importlib.util

    from engines import ENGINES

    out = {}
    for e in engines:
        need = [m.split(".")[0] for m in ENGINES[e].modules]
        if ENGINES[e].copy == "zarr3":
            need.append("zarr")  # zarr-python writes the copy tensorstore reads too
        gone = [m for m in need if importlib.util.find_spec(m) is None]
        if gone:
            out[e] = gone[0]
    return out


def run_one(row: Row) -> dict:
    """Run ``row`` in a fresh interpreter; its record (or the error) as a dict."""
    cmd = [sys.executable, str(HERE / "run.py"), "--row", row.to_json()]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"key": row.key, "row": json.loads(row.to_json()),
                "error": (proc.stderr or proc.stdout)[-3000:]}  # fmt: skip
    rec = json.loads(lines[-1])
    rec["process_s"] = time.perf_counter() - t
    return rec


def _ordered(rows: list[Row], order: str, seed: int) -> list[Row]:
    if order == "reverse":
        return rows[::-1]
    if order == "shuffle":
        rows = list(rows)
        random.Random(seed).shuffle(rows)
    return rows


def run_rows(rows: list[Row], args: argparse.Namespace, out: Path) -> list[dict]:
    records = []
    for rep in range(args.repeats):
        for row in _ordered(rows, args.order, rep):
            rec = run_one(replace(row, repeat=rep))
            records.append(rec)
            with (out / "results.jsonl").open("a") as f:
                f.write(json.dumps(rec) + "\n")
            status = "FAILED" if "error" in rec else f"{rec.get('process_s', 0):.1f} s"
            print(f"  [{rep + 1}/{args.repeats}] {row.key:48s} {status}", flush=True)
            if "error" in rec:
                print(rec["error"][-800:], file=sys.stderr, flush=True)
    return records


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.row:
        import rows as rows_mod

        rec = rows_mod.run_row(Row.from_json(args.row))
        print(json.dumps(rec.__dict__, default=float))
        return 0
    if args.report:
        print(report.render(report.load(args.report)), end="")
        return 0
    suites = _split(args.suites)
    unknown = sorted(set(suites) - set(SUITES)) + sorted(set(_split(args.engines)) -
                                                         set(ENGINE_NAMES))  # fmt: skip
    if unknown:
        raise SystemExit(f"unknown suites or engines {unknown}; suites {SUITES}, "
                         f"engines {ENGINE_NAMES}")  # fmt: skip
    import machine

    missing = _missing_engines(_split(args.engines))
    if missing:
        print("skipped (not installed; pip install -e '.[bench]' -c benchmarks/constraints.txt): "
              + ", ".join(f"{e} ({m})" for e, m in missing.items()), flush=True)  # fmt: skip
        args.engines = ",".join(e for e in _split(args.engines) if e not in missing)
    if "ltr" in suites and "fits" not in suites:
        print("ltr without fits: every loader at 0 workers (--suites fits,ltr picks each "
              "loader's best count first)", flush=True)  # fmt: skip
    planned = [r for s in suites for r in schedule(args, s, {})]
    if "fits" in suites:
        planned += schedule(args, "fits-rest", {})
    est = estimate_s(planned, args.repeats)
    cohorts = _cohorts(args, planned)
    grid = "x".join(map(str, args.shape))
    work = Path(args.workdir)
    missing = [n for n in cohorts if not any(work.glob(f"cohort*-{n}x{grid}-p*/manifest.json"))]
    write_s = sum(9.0 * n * (args.shape[0] * args.shape[1] * args.shape[2] / 8.9e6)
                  for n in missing)  # fmt: skip
    print(f"machine: {machine.describe()}", flush=True)
    print(f"{len(planned)} rows x {args.repeats} processes; estimated {est / 60:.0f} min"
          + (f" + about {write_s / 60:.0f} min to write the cohort" if missing else "")
          + " (2 quiet cores)", flush=True)  # fmt: skip
    if args.estimate:
        for r in planned:
            print(f"  {r.key}" + (f" ({r.n} volumes)" if r.n != args.subjects else ""))
        return 0
    import copies

    for n, folders in cohorts.items():
        copies.prepare(args.workdir, n, args.shape, args.patch, folders=folders)
    out = Path(args.results) / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    (out / "command.json").write_text(json.dumps({"argv": sys.argv[1:], **{
        k: v for k, v in vars(args).items() if k not in ("row", "report")}}))  # fmt: skip
    started = time.perf_counter()
    records: list[dict] = []
    best: dict[str, int] = {}
    for suite in suites:
        print(f"== {suite}", flush=True)
        records += run_rows(schedule(args, suite, best), args, out)
        if suite == "fits":
            best = report.best_workers(records, "fits", int(_split(args.per)[0]))
            print(f"  best worker counts: {best}", flush=True)
            records += run_rows(schedule(args, "fits-rest", best), args, out)
    text = report.render(report.load(out))
    (out / "report.md").write_text(text)
    print("\n" + text)
    print(f"{time.perf_counter() - started:.0f} s; results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

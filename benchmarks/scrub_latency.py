"""Scrub latency of ``CollectionBrowser``: its first image, ms and PNG bytes per update.

An update is what a slider move does: ``browser.set_position(x, y, z)`` then
``browser.render()``, timed together (wall clock, the reads of new planes included).
Bytes are the PNGs that changed, i.e. what ipywidgets sends to the page (an image whose
value did not change is not sent); where the browser keeps its own count
(``browser.viewer.latency``) the two are checked to agree.

Every repeat runs in a fresh process (spawned), so the first image includes opening the
volume and its first reads, as for a user running the cell. Each row is one volume size with
the coarse level on or off (``CollectionBrowser(..., coarse=False)``):

* ``first image``: ``CollectionBrowser(radi, collection=...)`` until it returns with the three
  planes drawn (thumbnails included): the coarse level when on (read in one query; the
  cohort's levels are written at ingest), the full-resolution planes when off;
* ``full res``: until the full-resolution planes are shown (``wait_refined``: the background
  read when on; the same as the first image when off);
* ``z scrub`` / ``x scrub``: ``--steps`` moves of one voxel along z (axial planes change) or x
  (sagittal planes change), from the centre, as a slider drag does (after ``full res``);
* ``random jumps``: ``--steps`` moves to seeded random voxels (three new planes each time).

The table gives, per row, the first image and full-res times (min / median / max over the
processes) and each scenario's p50 and p95 (median over the processes, with the min..max of
the p95 in brackets), and the mean kB sent per update. Nothing is asserted: the numbers are
printed.

    python benchmarks/scrub_latency.py          # CT 512x512x400 and 1024x1024x400, on and off
    python benchmarks/scrub_latency.py --shapes 128x128x100 --steps 20 --repeats 1   # smoke
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import machine
import numpy as np

SCENARIOS = ("z scrub", "x scrub", "random jumps")


def cohort(workdir: Path, shape: tuple[int, int, int], modality: str) -> Path:
    """The sample cohort with one subject at ``shape`` (written once, then reused)."""
    from radiobject.data import make_sample_radiobject

    path = workdir / f"{modality}_{'x'.join(map(str, shape))}"
    done = path.with_suffix(".complete")
    if not done.exists():
        if path.exists():
            import shutil

            shutil.rmtree(path)
        make_sample_radiobject(
            str(path), n_subjects=1, shape=shape, modalities=(modality,), progress=False
        )
        done.write_text("ok")
    return path


def _moves(scenario: str, shape: tuple[int, ...], start: tuple[int, ...], steps: int) -> list:
    if scenario == "random jumps":
        rng = np.random.default_rng(0)
        return [tuple(int(rng.integers(0, n)) for n in shape) for _ in range(steps)]
    axis = {"z scrub": 2, "x scrub": 0}[scenario]
    pos, out = list(start), []
    for _ in range(steps):
        pos[axis] = (pos[axis] + 1) % shape[axis]
        out.append(tuple(pos))
    return out


def run_once(path: str, modality: str, steps: int, coarse: bool) -> dict[str, Any]:
    """One fresh-process run: the first image, the refine, then every scenario."""
    from radiobject import RadiObject
    from radiobject.widgets import CollectionBrowser

    radi = RadiObject(path)
    start = time.perf_counter()
    browser = CollectionBrowser(radi, collection=modality, coarse=coarse)
    first_ms = (time.perf_counter() - start) * 1000
    level = browser.viewer.shown_level
    if not browser.wait_refined(600):
        raise RuntimeError(f"the full-resolution planes were not shown: {browser.error}")
    full_ms = (time.perf_counter() - start) * 1000
    if browser.error:
        raise RuntimeError(browser.error)
    shape = browser.viewer.image.shape
    centre = browser.position
    stats = getattr(browser.viewer, "latency", None)
    out: dict[str, Any] = {
        "first_ms": first_ms,
        "full_ms": full_ms,
        "first_level": level,
        "shape": shape,
        "module": _where(),
    }
    for scenario in SCENARIOS:
        browser.set_position(*centre)
        browser.render()
        ms, sent = [], []
        for pos in _moves(scenario, shape, centre, steps):
            before = browser.images
            counted = stats.bytes_total if stats is not None else None
            t = time.perf_counter()
            browser.set_position(*pos)
            after = browser.render()
            ms.append((time.perf_counter() - t) * 1000)
            nbytes = sum(len(png) for p, png in after.items() if png != before[p])
            if counted is not None and stats.bytes_total - counted != nbytes:
                raise RuntimeError(
                    f"the browser counted {stats.bytes_total - counted} bytes sent, "
                    f"the changed PNGs hold {nbytes}"
                )
            sent.append(nbytes)
        out[scenario] = {"ms": ms, "bytes": sent}
    return out


def _where() -> str:
    import radiobject

    return str(Path(radiobject.__file__).parent)


def _child(args: tuple[str, str, int, bool], queue: Any) -> None:
    try:
        queue.put(run_once(*args))
    except BaseException as e:  # reported by the parent
        queue.put({"error": f"{type(e).__name__}: {e}"})


def fresh_process_run(path: str, modality: str, steps: int, coarse: bool) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=((path, modality, steps, coarse), queue))
    proc.start()
    result = queue.get()
    proc.join()
    if "error" in result:
        raise RuntimeError(result["error"])
    return result


def _spread(values: list[float], scale: float = 1.0, fmt: str = ".2f") -> str:
    """``min / median / max`` of ``values`` (divided by ``scale``)."""
    v = [x / scale for x in values]
    return f"{min(v):{fmt}} / {statistics.median(v):{fmt}} / {max(v):{fmt}}"


def table(rows: list[tuple[str, bool, list[dict[str, Any]]]], title: str) -> str:
    """One row per (size, coarse on/off); each cell over that row's fresh processes."""
    head = ["size", "coarse", "runs", "first image s", "shown first", "full res s"]
    for scenario in SCENARIOS:
        head += [f"{scenario} p50 ms", f"{scenario} p95 ms"]
    head.append("kB/update")
    lines = [title, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for size, coarse, runs in rows:
        cells = [
            size,
            "on" if coarse else "off",
            str(len(runs)),
            _spread([r["first_ms"] for r in runs], 1000),
            ", ".join(sorted({r["first_level"] for r in runs})),
            _spread([r["full_ms"] for r in runs], 1000),
        ]
        kb = []
        for scenario in SCENARIOS:
            p50 = [float(np.percentile(r[scenario]["ms"], 50)) for r in runs]
            p95 = [float(np.percentile(r[scenario]["ms"], 95)) for r in runs]
            cells.append(f"{statistics.median(p50):.1f}")
            cells.append(f"{statistics.median(p95):.1f} [{min(p95):.1f}..{max(p95):.1f}]")
            kb += [b / 1000 for r in runs for b in r[scenario]["bytes"]]
        cells.append(f"{np.mean(kb):.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "first image / full res: min / median / max over the fresh processes; p50: median "
        "of the per-process p50; p95: median [min..max] of the per-process p95.",
    ]
    return "\n".join(lines)


def prepare(path: Path, modality: str) -> str:
    """Make sure the cohort's coarse levels are stored (as ingest writes them) before timing.

    A cohort written before radiobject wrote levels gets them now, untimed.
    """
    from radiobject import RadiObject

    coll = RadiObject(str(path)).collection(modality)
    built = [i for i in coll.obs_ids if coll.coarse_volume(i) is None]
    for obs_id in built:
        coll.coarse_level(obs_id)
    return f"coarse levels built now for {built}" if built else "coarse levels from ingest"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--shapes",
        default="512x512x400,1024x1024x400",
        help="volume grids, comma-separated, e.g. 512x512x400,1024x1024x400",
    )
    parser.add_argument("--coarse", default="on,off", help="on, off or on,off")
    parser.add_argument("--modality", default="CT")
    parser.add_argument("--steps", type=int, default=100, help="updates per scenario and run")
    parser.add_argument("--repeats", type=int, default=3, help="fresh-process runs per row")
    parser.add_argument(
        "--workdir", default=os.path.join(tempfile.gettempdir(), "radiobject-bench")
    )
    parser.add_argument("--json", help="also write every run's numbers here")
    args = parser.parse_args()
    modes = [{"on": True, "off": False}[m.strip()] for m in args.coarse.split(",")]
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    before = machine.describe()
    rows, notes = [], []
    for text in args.shapes.split(","):
        shape = tuple(int(s) for s in text.strip().lower().split("x"))
        path = cohort(workdir, shape, args.modality)  # type: ignore[arg-type]
        notes.append(f"{text.strip()}: {prepare(path, args.modality)}")
        for coarse in modes:
            runs = [
                fresh_process_run(str(path), args.modality, args.steps, coarse)
                for _ in range(args.repeats)
            ]
            rows.append((text.strip(), coarse, runs))
    title = (
        f"CollectionBrowser first image and scrub latency: {args.modality}, "
        f"{args.repeats} fresh-process runs a row x {args.steps} updates per scenario\n"
        f"machine: {before}\n"
        f"after:   {machine.describe()}\n"
        f"radiobject from {rows[0][2][0]['module']}; " + "; ".join(notes)
    )
    print(table(rows, title))
    if args.json:
        dump = [{"size": s, "coarse": c, "runs": r} for s, c, r in rows]
        Path(args.json).write_text(json.dumps({"title": title, "rows": dump}, default=list))


if __name__ == "__main__":
    main()

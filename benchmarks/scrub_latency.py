"""Scrub latency of ``CollectionBrowser``: ms and PNG bytes per update, and the first image.

An update is what a slider move does: ``browser.set_position(x, y, z)`` then
``browser.render()``, timed together (wall clock, the reads of new planes included).
Bytes are the PNGs that changed, i.e. what ipywidgets sends to the page (an image whose
value did not change is not sent); where the browser keeps its own count
(``browser.viewer.latency``) the two are checked to agree.

Every repeat runs in a fresh process (spawned), so the first image includes opening the
volume and its first reads, as for a user running the cell:

* ``first image``: ``CollectionBrowser(radi, collection=...)`` until it returns with the three
  planes drawn (thumbnails included);
* ``z scrub`` / ``x scrub``: ``--steps`` moves of one voxel along z (axial planes change) or x
  (sagittal planes change), from the centre, as a slider drag does;
* ``random jumps``: ``--steps`` moves to seeded random voxels (three new planes each time).

The table gives p50/p95 over all updates of all repeats, the mean and largest kB sent per
update, and the median first-image time. Nothing is asserted: the numbers are printed.

    python benchmarks/scrub_latency.py                         # CT, 512x512x400, 3 repeats
    python benchmarks/scrub_latency.py --shape 256x256x200 --steps 40 --repeats 1
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


def run_once(path: str, modality: str, steps: int) -> dict[str, Any]:
    """One fresh-process run: the first image, then every scenario on the same browser."""
    from radiobject import RadiObject
    from radiobject.widgets import CollectionBrowser

    radi = RadiObject(path)
    start = time.perf_counter()
    browser = CollectionBrowser(radi, collection=modality)
    first_ms = (time.perf_counter() - start) * 1000
    if browser.error:
        raise RuntimeError(browser.error)
    shape = browser.viewer.image.shape
    centre = browser.position
    stats = getattr(browser.viewer, "latency", None)
    out: dict[str, Any] = {"first_ms": first_ms, "shape": shape, "module": _where()}
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


def _child(args: tuple[str, str, int], queue: Any) -> None:
    try:
        queue.put(run_once(*args))
    except BaseException as e:  # reported by the parent
        queue.put({"error": f"{type(e).__name__}: {e}"})


def fresh_process_run(path: str, modality: str, steps: int) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=((path, modality, steps), queue))
    proc.start()
    result = queue.get()
    proc.join()
    if "error" in result:
        raise RuntimeError(result["error"])
    return result


def table(runs: list[dict[str, Any]], title: str) -> str:
    lines = [
        title,
        "",
        "| scenario | updates | p50 ms | p95 ms | max ms | kB/update (mean) | kB/update (max) |",
        "|---|---|---|---|---|---|---|",
    ]
    for scenario in SCENARIOS:
        ms = np.concatenate([r[scenario]["ms"] for r in runs])
        kb = np.concatenate([r[scenario]["bytes"] for r in runs]) / 1000
        lines.append(
            f"| {scenario} | {len(ms)} | {np.percentile(ms, 50):.1f} | "
            f"{np.percentile(ms, 95):.1f} | {ms.max():.1f} | {kb.mean():.1f} | {kb.max():.1f} |"
        )
    firsts = [r["first_ms"] for r in runs]
    lines.append("")
    lines.append(
        f"first image: median {statistics.median(firsts) / 1000:.2f} s "
        f"(runs: {', '.join(f'{f / 1000:.2f}' for f in firsts)} s)"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="512x512x400", help="volume grid, e.g. 512x512x400")
    parser.add_argument("--modality", default="CT")
    parser.add_argument("--steps", type=int, default=100, help="updates per scenario and run")
    parser.add_argument("--repeats", type=int, default=3, help="fresh-process runs")
    parser.add_argument(
        "--workdir", default=os.path.join(tempfile.gettempdir(), "radiobject-bench")
    )
    parser.add_argument("--json", help="also write every run's numbers here")
    args = parser.parse_args()
    shape = tuple(int(s) for s in args.shape.lower().split("x"))
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = cohort(workdir, shape, args.modality)  # type: ignore[arg-type]
    before = machine.describe()
    runs = [fresh_process_run(str(path), args.modality, args.steps) for _ in range(args.repeats)]
    title = (
        f"CollectionBrowser scrub latency: {args.modality} {args.shape}, "
        f"{args.repeats} fresh-process runs x {args.steps} updates per scenario\n"
        f"machine: {before}\n"
        f"after:   {machine.describe()}\n"
        f"radiobject from {runs[0]['module']}"
    )
    print(table(runs, title))
    if args.json:
        Path(args.json).write_text(json.dumps({"title": title, "runs": runs}, default=list))


if __name__ == "__main__":
    main()

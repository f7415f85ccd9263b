"""The README's tables from a run's JSON lines: medians with min and max over processes.

``python benchmarks/run.py --report benchmarks/results/<run>`` prints them (markdown). A cell
reads ``median (min to max)``; bold marks a radiobject cell only where radiobject's median is the
best of its column in that run.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

Records = list[dict[str, Any]]


def load(folder: str | Path) -> Records:
    """Every record of every ``*.jsonl`` file in ``folder`` (or of the file itself)."""
    p = Path(folder)
    files = [p] if p.is_file() else sorted(p.glob("*.jsonl"))
    out: Records = []
    for f in files:
        for line in f.read_text().splitlines():
            if line.strip():
                out.append(json.loads(line))
    return out


def spread(values: Iterable[float]) -> tuple[float, float, float]:
    """(min, median, max)."""
    v = sorted(values)
    return v[0], statistics.median(v), v[-1]


def fmt(x: float) -> str:
    if x != x:  # nan
        return "—"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def cell(values: list[float]) -> str:
    if not values:
        return "—"
    lo, mid, hi = spread(values)
    same = fmt(lo) == fmt(hi)
    return fmt(mid) if len(values) == 1 or same else f"{fmt(mid)} ({fmt(lo)}\u2013{fmt(hi)})"


def by_key(records: Records) -> dict[str, Records]:
    out: dict[str, Records] = defaultdict(list)
    for r in records:
        if "error" not in r:
            out[r["key"]].append(r)
    return out


Getter = Callable[[dict[str, Any]], float]
METRIC: dict[str, Getter] = {
    "train_s": lambda r: r["metrics"]["train_s"],
    "first_rate": lambda r: r["metrics"]["first_rate"],
    "steady_rate": lambda r: r["metrics"]["steady_rate"],
    "pss": lambda r: r["metrics"]["pss_mb"].get("pss", float("nan")),
    "anon": lambda r: r["metrics"]["pss_mb"].get("anon", float("nan")),
    "file": lambda r: r["metrics"]["pss_mb"].get("file", float("nan")),
    "disk": lambda r: r["metrics"]["copy_mb"] + r["metrics"]["built_mb"],
}
LOWER_IS_BETTER = {"train_s", "pss", "anon", "file", "disk", "roi_ms", "volume_ms", "axial_ms",
                   "seg_setup_ms"}  # fmt: skip


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _bold_winners(rows: list[tuple[str, dict[str, list[float]]]], cols: list[str]) -> set:
    """(engine, column) cells where radiobject's median is strictly the best of the column."""
    wins = set()
    for col in cols:
        meds = {e: statistics.median(v[col]) for e, v in rows if v.get(col)}
        if "radiobject" not in meds or len(meds) < 2:
            continue
        ours = meds.pop("radiobject")
        others = list(meds.values())
        best = min(others) if col in LOWER_IS_BETTER else max(others)
        if (ours < best) if col in LOWER_IS_BETTER else (ours > best):
            wins.add(("radiobject", col))
    return wins


def best_workers(records: Records, suite: str, per: int) -> dict[str, int]:
    """Per engine, the worker count with the shortest median time to train in ``suite``."""
    groups = by_key([r for r in records if r["row"]["suite"] == suite and
                     r["row"]["kind"] == "loader" and r["row"]["per"] == per])  # fmt: skip
    best: dict[str, tuple[float, int]] = {}
    for rs in groups.values():
        e, w = rs[0]["row"]["engine"], rs[0]["row"]["workers"]
        t = statistics.median(METRIC["train_s"](r) for r in rs)
        if e not in best or t < best[e][0]:
            best[e] = (t, w)
    return {e: w for e, (_, w) in best.items()}


def loader_table(records: Records, suite: str, per: int, labels: dict[str, str]) -> list[str]:
    """One loader table: each engine at its best worker count."""
    chosen = best_workers(records, suite, per)
    groups = by_key(records)
    cols = ["train_s", "first_rate", "steady_rate", "pss", "anon", "file", "disk"]
    rows: list[tuple[str, dict[str, list[float]]]] = []
    meta: dict[str, tuple[int, int, int]] = {}
    for engine, w in chosen.items():
        rs = next(v for v in groups.values() if v[0]["row"]["suite"] == suite and
                  v[0]["row"]["engine"] == engine and v[0]["row"]["per"] == per and
                  v[0]["row"]["workers"] == w and v[0]["row"]["kind"] == "loader")  # fmt: skip
        rows.append((engine, {c: [METRIC[c](r) for r in rs] for c in cols}))
        meta[engine] = (w, len(rs), rs[0]["metrics"]["samples_per_epoch"])
    wins = _bold_winners(rows, cols)
    out = []
    for engine, vals in rows:
        cells = []
        for c in cols:
            text = cell(vals[c])
            cells.append(f"**{text}**" if (engine, c) in wins else text)
        w, n, _ = meta[engine]
        out.append([labels.get(engine, engine), str(w), str(n), *cells])
    header = ["loader", "workers", "runs", "time to train (s)", "first epoch (samples/s)",
              "steady (samples/s)", "PSS (MiB)", "anon", "file", "disk (MB)"]  # fmt: skip
    return _table(header, out)


def workers_table(records: Records, suite: str, per: int, labels: dict[str, str]) -> list[str]:
    groups = by_key([r for r in records if r["row"]["suite"] == suite and
                     r["row"]["kind"] == "loader" and r["row"]["per"] == per])  # fmt: skip
    counts = sorted({rs[0]["row"]["workers"] for rs in groups.values()})
    tried: dict[str, set[int]] = defaultdict(set)
    for rs in groups.values():
        tried[rs[0]["row"]["engine"]].add(rs[0]["row"]["workers"])
    if max((len(t) for t in tried.values()), default=0) < 2:
        return []  # each loader ran at one count (chosen in another suite)
    engines = list(dict.fromkeys(rs[0]["row"]["engine"] for rs in groups.values()))
    chosen = best_workers(records, suite, per)
    out = []
    for e in engines:
        cells = []
        for w in counts:
            rs = [r for v in groups.values() for r in v if v[0]["row"]["engine"] == e and
                  v[0]["row"]["workers"] == w]  # fmt: skip
            cells.append(cell([METRIC["train_s"](r) for r in rs]))
        out.append([labels.get(e, e), *cells, str(chosen.get(e, "—"))])
    return _table(["loader", *[f"{w} workers: time to train (s)" for w in counts], "chosen"], out)


LOOP = "radiobject-loop"


def loop_ratio_table(records: Records, suite: str, per: int) -> list[str]:
    """radiobject's loader against its own patch loop (the issue's target: >= 0.9x).

    One line per worker count of the loader: steady samples/s of both, and their ratio
    (the medians'; in brackets the lowest and highest of the repeats paired in order).
    """

    def steady(engine: str, workers: int) -> list[float]:
        rs = [r for r in records if "error" not in r and r["row"]["suite"] == suite and
              r["row"]["kind"] == "loader" and r["row"]["per"] == per and
              r["row"]["engine"] == engine and r["row"]["workers"] == workers]  # fmt: skip
        return [
            METRIC["steady_rate"](r) for r in sorted(rs, key=lambda r: r["row"].get("repeat", 0))
        ]

    loop = steady(LOOP, 0)
    if not loop:
        return []
    counts = sorted({r["row"]["workers"] for r in records if r["row"]["engine"] == "radiobject"
                     and r["row"]["suite"] == suite and r["row"]["per"] == per})  # fmt: skip
    out = []
    for w in counts:
        ours = steady("radiobject", w)
        if not ours:
            continue
        ratio = statistics.median(ours) / statistics.median(loop)
        pairs = [a / b for a, b in zip(ours, loop, strict=False)]
        span = f" ({fmt(min(pairs))}\u2013{fmt(max(pairs))})" if len(pairs) > 1 else ""
        out.append([str(w), cell(ours), cell(loop), f"{ratio:.2f}x{span}"])
    header = ["loader workers", "loader steady (samples/s)", "patch loop steady (samples/s)",
              "loader / patch loop"]  # fmt: skip
    return _table(header, out) if out else []


def seg_table(records: Records, labels: dict[str, str]) -> list[str]:
    groups = by_key([r for r in records if "seg_setup_ms" in r.get("metrics", {})])
    # "radiobject" marks our row for _bold_winners
    rows = [("radiobject" if rs[0]["row"]["engine"] == "seg-radiobject" else rs[0]["row"]["engine"],
             {"seg_setup_ms": [r["metrics"]["seg_setup_ms"] for r in rs]})
            for rs in groups.values()]  # fmt: skip
    wins = _bold_winners(rows, ["seg_setup_ms"])
    out = []
    for e, vals in rows:
        text = cell(vals["seg_setup_ms"])
        label = labels.get("seg-radiobject" if e == "radiobject" else e, e)
        bold = (e, "seg_setup_ms") in wins
        out.append([label, str(len(vals["seg_setup_ms"])), f"**{text}**" if bold else text])
    return _table(["segmentation loader set-up", "runs", "ms"], out) if out else []


def disk_table(records: Records) -> list[str]:
    """Bytes of each copy of the T1w volumes, and against the ``.nii.gz`` of the same dtype."""
    from reads import DISK_COPIES

    sizes = [r["metrics"]["disk_mb"] for r in records if "disk_mb" in r.get("metrics", {})]
    if not sizes:
        return []
    gz = sizes[0]["nii-gz"]
    out = []
    for key, label in DISK_COPIES.items():
        mb = sizes[0][key]
        ratio = f"{mb / gz:.2f}x" if gz else "—"
        best = key == "radiobject" and mb < min(v for k, v in sizes[0].items() if k != key)
        text = f"**{fmt(mb)}**" if best else fmt(mb)
        out.append([label, text, ratio])
    return _table(["copy of the T1w volumes", "MB", "/ `.nii.gz`"], out)


def reads_table(records: Records, labels: dict[str, str]) -> list[str]:
    groups = by_key([r for r in records if r["row"]["kind"] == "reads"
                     and not {"seg_setup_ms", "disk_mb"} & set(r.get("metrics", {}))])  # fmt: skip
    cols = ["roi_ms", "volume_ms", "axial_ms"]
    rows = []
    for rs in groups.values():
        vals = {c: [r["metrics"][c] for r in rs if c in r["metrics"]] for c in cols}
        rows.append((rs[0]["row"]["engine"], vals))
    wins = _bold_winners(rows, cols)
    out = []
    for e, vals in rows:
        cells = [f"**{cell(vals[c])}**" if (e, c) in wins else cell(vals[c]) for c in cols]
        out.append([labels.get(e, e), str(len(groups[f"reads/{e}"])), *cells])
    return _table(
        ["engine", "runs", "64³ patch (ms)", "whole volume (ms)", "axial plane (ms)"], out
    )


def header(records: Records) -> list[str]:
    ok = [r for r in records if "error" not in r]
    if not ok:
        return ["no records"]
    loads = [r["machine"]["loadavg_1m"] for r in ok]
    row = ok[0]["row"]
    errors = [r for r in records if "error" in r]
    lines = [
        f"machine: {ok[0]['machine']['describe'].split(', load avg')[0]}",
        f"load average (1 min) at the start of each row: {fmt(min(loads))}\u2013{fmt(max(loads))}",
        f"cohort: {row['n']} volumes of {'x'.join(map(str, row['shape']))}, patches of "
        f"{row['patch']}³, batches of 4; {len(ok)} row processes",
    ]
    versions = ok[0]["machine"].get("versions", {})
    if versions:
        lines.append("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    if errors:
        lines.append(f"FAILED rows: {', '.join(sorted({r['key'] for r in errors}))}")
    return lines


def render(records: Records) -> str:
    """Every table the README shows, as markdown."""
    from engines import ENGINES
    from reads import LABELS as READ_LABELS

    labels = {name: e.label for name, e in ENGINES.items()}
    out = header(records)
    suites = {
        "fits": "cohort fits the RAM budget (radiobject's default 512 MB cache; tensorstore's "
        "pool and MONAI's CacheDataset get the same); files in the page cache",
        "ltr": "cohort larger than RAM: radiobject's cache, tensorstore's pool and MONAI's "
        "CacheDataset hold a quarter of it; every engine's files evicted from the page cache "
        "before the row (cold start)",
    }
    for suite, text in suites.items():
        pers = sorted({r["row"]["per"] for r in records if r["row"]["suite"] == suite and
                       r["row"]["kind"] == "loader" and "error" not in r})  # fmt: skip
        for per in pers:
            n = next(r["metrics"]["samples_per_epoch"] for r in records if "error" not in r
                     and r["row"]["suite"] == suite and r["row"]["per"] == per)  # fmt: skip
            epochs = next(r["row"]["epochs"] for r in records if r["row"]["suite"] == suite)
            vols = next(r["row"]["n"] for r in records if "error" not in r
                        and r["row"]["suite"] == suite and r["row"]["per"] == per)  # fmt: skip
            out += ["", f"### {suite}: {per} patches per volume ({n} samples per epoch of "
                    f"{vols} volumes, {epochs} epochs) — {text}", ""]  # fmt: skip
            out += loader_table(records, suite, per, labels)
            wt = workers_table(records, suite, per, labels)
            if wt:
                out += ["", f"worker counts tried ({suite}, {per} per volume):", "", *wt]
            lt = loop_ratio_table(records, suite, per)
            if lt:
                out += ["", f"radiobject's loader against its own patch loop ({suite}, {per} "
                        "per volume; target >= 0.9x):", "", *lt]  # fmt: skip
    if any(r["row"]["kind"] == "reads" for r in records):
        title = ("### reads (median ms per read; files in the page cache; radiobject's RAM "
                 "cache emptied before each read)")  # fmt: skip
        out += ["", title, "", *reads_table(records, READ_LABELS)]
        disk = disk_table(records)
        if disk:
            out += ["", "### disk (bytes of each copy; the same voxels)", "", *disk]
        seg = seg_table(records, READ_LABELS)
        if seg:
            out += ["", "### segmentation loader set-up (one per process, nothing opened before)",
                    "", *seg]  # fmt: skip
    return "\n".join(out) + "\n"

"""One row of the benchmark, run in its own process from its arguments alone.

A row never reads settings a previous row left behind: ``run.py`` starts a fresh interpreter
per row (``python benchmarks/run.py --row '<json>'``), the row's settings are built from its
JSON and the libraries' defaults, and what it builds (radiobject's tier, MONAI's cache) goes
to a fresh scratch folder that is removed afterwards. Each row records the settings it ran
with, so two orders of the same rows can be compared (``tests/test_bench_harness.py``).

Loader rows time training as a user lives it: the wall time from building the loader to the
end of the last epoch, every cache build, conversion and background fill included (radiobject's
tier fills run during the epochs and any still queued at the end are waited for, timed), with
each epoch's rate, the PSS of the process and its workers in the middle of the last epoch, and
the bytes on disk of the copy plus whatever the loader built.
"""

from __future__ import annotations

import importlib
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PAGE_CACHE_MODES = ("warm", "cold")


@dataclass(frozen=True)
class Row:
    """Everything one row needs; its JSON is the row's whole input."""

    suite: str
    kind: str  # "loader" or "reads"
    engine: str
    workdir: str
    n: int
    shape: tuple[int, int, int]
    patch: int = 64
    per: int = 4
    workers: int = 0
    epochs: int = 10
    budget: str = "default"  # radiobject's RAM cache: "default" or "quarter" (of the cohort)
    page_cache: str = "warm"  # "warm": the row's files read first; "cold": every copy evicted
    reads: int = 40  # reads suite: reads per kind
    seed: int = 0
    repeat: int = 0
    # torch's intra-op threads in the row's process (0: torch's default). 1, as in DataLoader
    # workers: on a loaded 2-core machine, collating with 2 OpenMP threads took 3-12 ms a
    # batch instead of 0.4 and capped the peers' loaders (default_collate) near 100 samples/s
    torch_threads: int = 1

    @property
    def key(self) -> str:
        """The row's identity (the same for every repeat)."""
        if self.kind == "reads":
            return f"{self.suite}/{self.engine}"
        return f"{self.suite}/{self.engine}/p{self.per}/w{self.workers}/{self.page_cache}"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Row:
        d = json.loads(text)
        d["shape"] = tuple(d["shape"])
        return cls(**d)


@dataclass
class Record:
    """What a row measured; one JSON line of the results file."""

    row: dict[str, Any]
    key: str
    metrics: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)


VERSIONED = ("radiobject", "tiledb", "torch", "numpy", "blosc2", "zarr", "tensorstore", "monai",
             "torchio", "nibabel")  # fmt: skip


def _machine() -> dict[str, Any]:
    from importlib import metadata

    import machine

    versions = {}
    for name in VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "-"
    return {"describe": machine.describe(), "loadavg_1m": os.getloadavg()[0],
            "versions": versions}  # fmt: skip


def _budget_mb(row: Row, stored_mb: float) -> int:
    if row.budget == "quarter":
        return max(1, int(stored_mb // 4))
    from radiobject import get_config

    return int(get_config().read.cache_mb)


def _settings(row: Row, budget_mb: int, loader: Any = None) -> dict[str, Any]:
    """The settings in force in this process: what a test compares between two orders."""
    import torch

    from radiobject import get_config

    read = _fields(get_config().read)
    out: dict[str, Any] = {
        "read_config": json.loads(json.dumps(read, default=str)),
        "budget_mb": budget_mb,
        "torch_threads": torch.get_num_threads(),
        "tier_dir_env": os.environ.get("RADIOBJECT_TIER_DIR", ""),
        "blosc2_nthreads": _blosc2_threads(),
    }
    out["tier_auto_on"] = _tier_auto_mb(loader) > 0  # its size (a share of free disk): a metric
    return out


def _tier_auto_mb(loader: Any) -> int:
    """The automatic tier's budget of radiobject's loader (0: off; -1: not radiobject's)."""
    dataset = getattr(getattr(loader, "loader", None), "dataset", None)
    return int(getattr(dataset, "auto_tier_mb", -1))


def _fields(config: Any) -> dict[str, Any]:
    """A settings object's fields (dataclass, pydantic model or plain object)."""
    import dataclasses

    if dataclasses.is_dataclass(config):
        return dataclasses.asdict(config)  # type: ignore[arg-type]
    if hasattr(config, "model_dump"):
        return dict(config.model_dump())
    return {k: v for k, v in vars(config).items() if not k.startswith("_")}


def _blosc2_threads() -> int:
    import blosc2

    return int(blosc2.nthreads)


def _prepare_page_cache(row: Row, copies: Any, engine_copy: str) -> dict[str, float]:
    import osprobe

    t = time.perf_counter()
    if row.page_cache == "cold":
        n = osprobe.evict([copies.root])  # every engine's copy, not only this row's
    else:
        n = osprobe.warm([copies.folder(engine_copy)])
    return {"page_cache_bytes": float(n), "page_cache_s": time.perf_counter() - t}


def run_loader_row(row: Row, copies: Any, scratch: Path) -> Record:
    import engines
    import osprobe
    import torch

    from radiobject import ReadConfig, configure

    budget = _budget_mb(row, copies.stored_mb)
    if row.budget == "quarter":
        configure(read=ReadConfig(cache_mb=budget))  # the one setting changed: RAM cache
        from radiobject import get_config

        if get_config().read.cache_mb != budget:  # configure() no longer sets the default?
            raise RuntimeError(f"configure(read=...) did not set cache_mb={budget} here")
    engine = engines.ENGINES[row.engine]
    spec = engines.Spec(row.per, row.workers, budget, row.seed, row.patch, 4, str(scratch))
    rec = Record(asdict(row), row.key, machine=_machine())
    rec.metrics.update(_prepare_page_cache(row, copies, engine.copy))
    t_import = time.perf_counter()
    for module in engine.modules:
        importlib.import_module(module)
    rec.metrics["import_s"] = time.perf_counter() - t_import
    per_epoch = copies.n * row.per
    epochs: list[float] = []
    memory: dict[str, float] = {}
    t0 = time.perf_counter()
    loader = engine.build(copies, spec)
    build_s = time.perf_counter() - t0
    for e in range(row.epochs):
        start, n = time.perf_counter(), 0
        for batch in loader:
            image = batch["image"]
            if image.dtype != torch.float32 or tuple(image.shape[1:]) != (1,) + (row.patch,) * 3:
                raise RuntimeError(f"{row.engine}: batch {image.dtype} {tuple(image.shape)}")
            n += int(image.shape[0])
            if e == row.epochs - 1 and not memory and n >= per_epoch // 2:
                memory = osprobe.pss_tree()
        epochs.append(time.perf_counter() - start)
        if n != per_epoch:
            raise RuntimeError(f"{row.engine}: epoch {e + 1} gave {n} samples, not {per_epoch}")
    t_fill = time.perf_counter()
    if row.engine.startswith("radiobject"):
        engines.radiobject_finish()
    fills_s = time.perf_counter() - t_fill
    total = time.perf_counter() - t0
    rates = [per_epoch / s for s in epochs]
    rec.metrics.update(
        samples_per_epoch=per_epoch,
        build_s=build_s,
        epoch_s=epochs,
        train_s=total,
        pending_fills_s=fills_s,
        first_rate=rates[0],
        steady_rate=statistics.median(rates[2:] if len(rates) > 2 else rates[-1:]),
        pss_mb=memory,
        copy_mb=_mb(copies.folder(engine.copy)),
        built_mb=_mb(scratch),
    )
    rec.settings = _settings(row, budget, loader)
    rec.metrics["tier_auto_mb"] = _tier_auto_mb(loader)
    engines.release(loader)
    return rec


def _mb(path: Path) -> float:
    from copies import dir_bytes

    return dir_bytes(path) / 2**20


def run_row(row: Row) -> Record:
    """Run ``row`` in this (fresh) process and return its record."""
    import shutil

    here = Path(__file__).resolve().parent
    if str(here) not in sys.path:
        sys.path.insert(0, str(here))
    import copies as copies_mod

    if row.torch_threads > 0:
        import torch

        torch.set_num_threads(row.torch_threads)
    scratch = Path(row.workdir) / "scratch" / f"{row.key.replace('/', '_')}-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    # radiobject's automatic tier goes to this row's empty folder, never ~/.cache
    os.environ["RADIOBJECT_TIER_DIR"] = str(scratch / "tier")
    try:
        folders = None  # the reads suite reads every copy
        if row.kind == "loader":
            import engines

            folders = [engines.ENGINES[row.engine].copy]
        c = copies_mod.prepare(row.workdir, row.n, row.shape, row.patch, log=False,
                               folders=folders)  # fmt: skip
        if row.kind == "reads":
            import reads

            rec = reads.run_reads_row(row, c)
        else:
            rec = run_loader_row(row, c, scratch)
        rec.settings["tier_dir_env"] = "<row scratch>/tier"  # the path differs per process
        return rec
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

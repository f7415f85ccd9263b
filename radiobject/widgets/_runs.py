"""Tuner settings and runs: what was tried, what it measured. No widgets, no threads."""

from __future__ import annotations

import dataclasses
import html
import math
import os
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch.utils.data import DataLoader

from radiobject import ReadConfig, VolumeCollection
from radiobject.ml import (
    ProbeRecord,
    ProbeResult,
    create_segmentation_dataloader,
    create_training_dataloader,
)

from ._plots import format_number

__all__ = [
    "INT_CONTROLS",
    "MakeLoader",
    "TunerRun",
    "TunerSettings",
    "describe_error",
    "factory",
    "factory_call",
    "on_s3",
    "parse_patch_size",
    "sources_html",
    "stages_html",
]

MakeLoader = Callable[..., DataLoader[Any]]


INT_CONTROLS = {  # name: (description, min, max)
    "max_workers": ("threads", 1, 256),
    "concurrency": ("concurrency", 1, 256),
    "memory_budget_mb": ("memory MB", 16, 1 << 20),
    "cache_mb": ("cache MB", 0, 1 << 20),
    "read_ahead": ("read-ahead", 0, 65536),
    "max_parallel_ops": ("S3 ops", 1, 1024),
    "num_workers": ("workers", 0, 4 * (os.cpu_count() or 1)),
    "batch_size": ("batch_size", 1, 4096),
    "patches_per_volume": ("per volume", 1, 4096),
}


def factory(
    collections: VolumeCollection | Sequence[VolumeCollection],
    mask: VolumeCollection | None,
    loader_kwargs: dict[str, Any],
) -> MakeLoader:
    """``make_loader(**settings)`` over radiobject's segmentation or training factory."""

    def make(**settings: Any) -> DataLoader[Any]:
        if mask is not None:
            return create_segmentation_dataloader(collections, mask, **settings, **loader_kwargs)
        return create_training_dataloader(collections, **settings, **loader_kwargs)

    return make


def on_s3(collections: Any) -> bool:
    """True when any of ``collections`` is stored on ``s3://``."""
    items = [collections] if isinstance(collections, VolumeCollection) else list(collections)
    return any(str(getattr(c, "uri", "")).startswith("s3://") for c in items)


def describe_error(error: BaseException, where: str = "") -> str:
    """``"Type: message (where, at file.py:line in function)"``: an error and where it arose.

    >>> try:
    ...     {}["volume"]
    ... except KeyError as e:
    ...     describe_error(e, "in the loader").split(" (")[0]
    "KeyError: 'volume'"
    """
    place = [where] if where else []
    frames = traceback.extract_tb(error.__traceback__)
    if frames:
        last = frames[-1]
        place.append(f"at {os.path.basename(last.filename)}:{last.lineno} in {last.name}")
    suffix = f" ({', '.join(place)})" if place else ""
    return f"{type(error).__name__}: {error}{suffix}"


def parse_patch_size(text: str) -> tuple[int, int, int] | None:
    """``"32"`` -> a cube, ``"64,64,32"`` -> that box, ``""`` or ``"full"`` -> whole volumes.

    >>> parse_patch_size("32"), parse_patch_size("64, 64, 32"), parse_patch_size("full")
    ((32, 32, 32), (64, 64, 32), None)
    """
    text = str(text).strip().lower()
    if text in ("", "full", "none"):
        return None
    try:
        sizes = [int(p) for p in text.replace("x", ",").split(",") if p.strip()]
    except ValueError:
        raise ValueError(
            f"patch size must be one or three integers such as '32' or '64,64,32', got {text!r}"
        ) from None
    if len(sizes) == 1:
        sizes *= 3
    if len(sizes) != 3 or min(sizes) < 1:
        raise ValueError(f"patch size must be one or three positive integers, got {text!r}")
    return (sizes[0], sizes[1], sizes[2])


@dataclass(frozen=True)
class TunerSettings:
    """Everything one tuning run sets: read settings and loader settings.

    >>> TunerSettings(patch_size=(32, 32, 32)).label()
    'w0 b4 p32 x4 cache512 t4'
    """

    max_workers: int = 4
    concurrency: int = 2
    memory_budget_mb: int = 1024
    cache_mb: int = 512
    read_ahead: int = 0
    max_parallel_ops: int | None = None  # S3 only
    num_workers: int = 0
    batch_size: int = 4
    patch_size: tuple[int, int, int] | None = None
    patches_per_volume: int = 4
    persistent_workers: bool = True
    duration_s: float = 10.0

    def read_config(self) -> ReadConfig:
        """The :class:`~radiobject.ReadConfig` of these settings."""
        return ReadConfig(
            max_workers=self.max_workers,
            concurrency=self.concurrency,
            memory_budget_mb=self.memory_budget_mb,
            cache_mb=self.cache_mb,
            read_ahead=self.read_ahead,
        )

    def loader_kwargs(self) -> dict[str, Any]:
        """The arguments a loader factory takes."""
        return {
            "batch_size": self.batch_size,
            "num_workers": self.num_workers,
            "patch_size": self.patch_size,
            "patches_per_volume": self.patches_per_volume,
        }

    def label(self) -> str:
        """A short label: workers, batch, patch, per volume, cache MB, threads, read-ahead."""
        if self.patch_size is None:
            patch = "full"
        elif len(set(self.patch_size)) == 1:
            patch = f"p{self.patch_size[0]}"
        else:
            patch = "p" + "x".join(map(str, self.patch_size))
        ops = f" ops{self.max_parallel_ops}" if self.max_parallel_ops else ""
        ahead = f" ra{self.read_ahead}" if self.read_ahead else ""
        return (
            f"w{self.num_workers} b{self.batch_size} {patch} x{self.patches_per_volume} "
            f"cache{self.cache_mb} t{self.max_workers}{ahead}{ops}"
        )

    def replace(self, **changes: Any) -> TunerSettings:
        """A copy with ``changes``."""
        return dataclasses.replace(self, **changes)


@dataclass
class TunerRun:
    """One run: its settings, the records seen so far, the final result or error."""

    number: int
    settings: TunerSettings
    records: list[ProbeRecord] = field(default_factory=list)
    result: ProbeResult | None = None
    error: str = ""
    done: bool = False
    storage_reads: int | None = None  # TileDB read ops in this process (num_workers=0 only)
    draw_seconds: float = 0.0  # time spent redrawing live plots while the loader ran
    main_pss_mb: float = float("nan")  # peak resident memory (PSS) of the main process
    worker_pss_mb: list[float] = field(default_factory=list)  # peak PSS of each worker

    @property
    def pss_mb(self) -> float:
        """Peak PSS of the loader's processes together (main + workers), MB."""
        return self.main_pss_mb + sum(self.worker_pss_mb)

    @property
    def label(self) -> str:
        """``"run N: <settings>"``."""
        return f"run {self.number}: {self.settings.label()}"

    @property
    def samples_per_s(self) -> float:
        """Steady throughput (after the first batch) of the finished run, else of the records."""
        if self.result is not None:
            return self.result.samples_per_s
        recent = [r.samples_per_s for r in self.records[1:]] or [
            r.samples_per_s for r in self.records
        ]
        return float(np.mean(recent)) if recent else 0.0

    def _mean(self, name: str) -> float:
        values = [getattr(r, name) for r in self.records]
        return float(np.mean(values)) if values else float("nan")

    def stage_row(self) -> dict[str, float]:
        """Where the time went, ms per sample by stage (columns of the summary table)."""
        if self.result is not None:
            ms = self.result.stage_ms()
            return {f"{label} ms": ms[name] for name, label in ProbeResult.STAGES}
        return {f"{label} ms": self._mean(name) for name, label in ProbeResult.STAGES}

    def sources(self) -> dict[str, float]:
        """Shares (%) of the bytes read from RAM, the local tier and storage, so far.

        >>> TunerRun(1, TunerSettings()).sources()
        {'RAM': 0.0, 'local tier': 0.0, 'storage': 0.0}
        """
        if self.result is not None:
            return self.result.sources()
        keys = ("bytes_from_cache", "bytes_from_tier", "bytes_from_storage")
        totals = {k: sum(getattr(r, k) for r in self.records) for k in keys}
        return ProbeResult(**totals).sources()

    def row(self) -> dict[str, Any]:
        """This run as a row of the summary table."""
        s = self.settings
        res = self.result
        return {
            "run": self.number,
            "workers": s.num_workers,
            "batch": s.batch_size,
            "patch": "full" if s.patch_size is None else "x".join(map(str, s.patch_size)),
            "per vol": s.patches_per_volume,
            "cache MB": s.cache_mb,
            "threads": s.max_workers,
            "concurrency": s.concurrency,
            "samples/s": self.samples_per_s,
            "latency ms": self._mean("batch_latency_ms"),
            "starved %": res.starved_pct if res is not None else self._mean("starved_pct"),
            "hit rate": res.hit_rate if res is not None else self._mean("hit_rate"),
            "MB/s": self._mean("storage_mb_per_s"),
            **{f"{name} %": pct for name, pct in self.sources().items()},
            "first batch s": res.first_batch_s if res is not None else float("nan"),
            **self.stage_row(),
            "read amp": res.read_amplification if res is not None else float("nan"),
            "PSS MB": self.pss_mb,
            "batches": res.batches if res is not None else sum(r.batches for r in self.records),
            "error": self.error,
        }


def factory_call(
    source: VolumeCollection | Sequence[VolumeCollection],
    mask: VolumeCollection | None,
    loader_kwargs: Mapping[str, Any],
) -> str:
    """The loader factory call the tuner's runs make, as code (collections as ``radi.<name>``)."""

    def name(c: VolumeCollection) -> str:
        return f"radi.{c.name}" if str(c.name).isidentifier() else f"radi[{c.name!r}]"

    items = [source] if isinstance(source, VolumeCollection) else list(source)
    image = name(items[0]) if len(items) == 1 else "[" + ", ".join(map(name, items)) + "]"
    extra = "".join(f", {k}={v!r}" for k, v in loader_kwargs.items())
    if mask is not None:
        return f"create_segmentation_dataloader({image}, {name(mask)}{extra}"
    return f"create_training_dataloader({image}{extra}"


def stages_html(run: TunerRun) -> str:
    """Where the time went in ``run``: ms per sample by stage, with shares, as a bar.

    >>> stages_html(TunerRun(1, TunerSettings()))
    ''
    """
    if run.result is None or not run.result.samples:
        return ""
    ms = run.result.stage_ms()
    total = sum(ms.values()) or 1.0
    colours = ("#2563eb", "#60a5fa", "#f59e0b", "#10b981", "#9ca3af")
    bar = "".join(
        f"<div title='{label}' style='width:{100 * ms[name] / total:.1f}%;background:{c}'></div>"
        for (name, label), c in zip(ProbeResult.STAGES, colours, strict=True)
    )
    legend = " · ".join(
        f"<span style='color:{c}'>■</span> {label} {format_number(ms[name])} ms "
        f"({100 * ms[name] / total:.0f}%)"
        for (name, label), c in zip(ProbeResult.STAGES, colours, strict=True)
    )
    amp = run.result.read_amplification
    memory = "" if math.isnan(run.pss_mb) else f"; memory (PSS) {format_number(run.pss_mb)} MB"
    return (
        f"<div class='radiobject-stages'><b>where the time goes</b> ({html.escape(run.label)}, "
        f"ms per sample; read amplification {format_number(amp)}{memory})"
        f"<div style='display:flex;height:10px;width:100%;max-width:600px'>{bar}</div>"
        f"<small>{legend}</small></div>"
    )


def sources_html(run: TunerRun) -> str:
    """Where ``run``'s bytes came from: RAM block cache, local read tier, storage, as a bar.

    >>> sources_html(TunerRun(1, TunerSettings()))
    ''
    """
    if run.result is None:
        return ""
    shares = run.sources()
    if not any(shares.values()):
        return ""
    colours = ("#10b981", "#8b5cf6", "#ef4444")
    bar = "".join(
        f"<div title='{name}' style='width:{pct:.1f}%;background:{c}'></div>"
        for (name, pct), c in zip(shares.items(), colours, strict=True)
    )
    res = run.result
    legend = " · ".join(
        f"<span style='color:{c}'>■</span> {name} {pct:.0f}%"
        for (name, pct), c in zip(shares.items(), colours, strict=True)
    )
    mb = {
        "RAM": res.bytes_from_cache / 1e6,
        "local tier": res.bytes_from_tier / 1e6,
        "storage": res.bytes_from_storage / 1e6,
    }
    detail = ", ".join(f"{name} {format_number(v)} MB" for name, v in mb.items())
    tier = f"; local tier {res.tier_hits} hits, {res.tier_misses} misses"
    return (
        f"<div class='radiobject-sources'><b>where the bytes came from</b> "
        f"({html.escape(run.label)}: {detail}{tier})"
        f"<div style='display:flex;height:10px;width:100%;max-width:600px'>{bar}</div>"
        f"<small>{legend}</small></div>"
    )

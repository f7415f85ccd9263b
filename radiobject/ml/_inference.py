"""Sliding-window inference written by region: grid patches in, blended slabs out.

MONAI's ``sliding_window_inference``, TorchIO's ``GridAggregator`` and nnU-Net hold the
whole input and the whole output (volume x classes) in memory. Here each grid patch reads
only its own box (:class:`radiobject.ml.GridPatchDataset`, planned in
:mod:`radiobject.ml._grid`), and :class:`PredictionWriter` blends the overlapping outputs in
a buffer one patch deep along z: patches come in z-major grid order, so once every patch
starting at one z position has arrived, the slab before the next z position is final; it is
normalised and written to TileDB as one region write, and its buffer space is reused. Peak
memory is about ``patch_z x X x Y x classes`` float32 plus the patches in flight, whatever
the depth of the volume.

A new collection is visible only once complete: its group is marked complete (the marker
ingest writes last too; opening it before raises :class:`radiobject.IncompleteError`) after
its volumes and tables are written, and a collection of a RadiObject is registered in the
RadiObject's ``collections`` group only after that. A
failure (or an interrupt) removes what was written.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tiledb
import torch

from radiobject._context import get_tiledb_ctx
from radiobject._errors import (
    AlreadyExistsError,
    ConfigurationError,
    IngestError,
    RadiObjectError,
    ShapeError,
    VersionError,
)
from radiobject._tiledb_errors import tiledb_errors
from radiobject.config import TileConfig, get_config
from radiobject.ml._grid import GridPatchDataset, GridPlan, importance_map
from radiobject.read import forget_array
from radiobject.storage import (
    COLLECTION_KIND,
    COLLECTIONS,
    FG_INDEX,
    MAX_POINTS,
    OBS,
    VOLUMES,
    VOLUMES_KIND,
    Dataframe,
    ForegroundIndex,
    RadiObject,
    Volume,
    VolumeCollection,
    add_members,
    affine_orientation,
    compute_foreground,
    create_group,
    exists,
    join,
    mark_complete,
    obs_id,
    remove,
    spacing_from_affine,
    volume_member,
    write_foreground,
)

__all__ = ["PredictionWriter"]

_log = logging.getLogger(__name__)

# the kind of a collection group while it is being written: no reader takes it for a collection
_OUTPUTS = ("labels", "probabilities")
WRITE_PLANES = 16  # z planes normalised at a time; the z tiles of probability volumes


# -- blending and writing ----------------------------------------------------------------------
def _ring(lo: int, hi: int, depth: int) -> list[tuple[int, int, int]]:
    """Pieces ``(start, stop, offset)`` of the ring buffer holding z range ``[lo, hi)``."""
    out, z = [], lo
    while z < hi:
        p = z % depth
        n = min(hi - z, depth - p)
        out.append((p, p + n, z - lo))
        z += n
    return out


class _SlabBlender:
    """Weighted sums of one volume's patches in a ring buffer one patch deep along z.

    Final planes are normalised straight into a tile-deep output buffer (:class:`_TileBuffer`)
    that is written whenever it holds whole tiles along z.
    """

    def __init__(
        self,
        plan: GridPlan,
        weights: np.ndarray,
        channels: int,
        volume: Volume,
        labels: bool,
        tile_z: int,
    ) -> None:
        self.plan, self.weights, self.volume, self.labels = plan, weights, volume, labels
        px, py, _ = plan.padded
        nx, ny, nz = plan.shape
        tail = () if labels else (channels,)
        dtype = _label_dtype(channels) if labels else np.dtype(np.float32)
        self.sink = _TileBuffer(volume, (nx, ny, nz), tile_z, tail, dtype)
        self.depth = plan.patch[2]
        self.sums = np.zeros((channels, px, py, self.depth), dtype=np.float32)
        self.wsum = np.zeros((px, py, self.depth), dtype=np.float32)
        self.done_to = 0  # padded z below which everything is written
        self.fg_points: dict[int, list[np.ndarray]] = {}  # label -> sampled coords per write
        self.fg_counts: dict[int, int] = {}

    def add(self, k: int, pred: np.ndarray) -> None:
        x, y, z = self.plan.position(k)
        px, py, pz = self.plan.patch
        xs, ys = slice(x, x + px), slice(y, y + py)
        weighted = pred * self.weights
        for a, b, off in _ring(z, z + pz, self.depth):
            self.sums[:, xs, ys, a:b] += weighted[..., off : off + b - a]
            self.wsum[xs, ys, a:b] += self.weights[..., off : off + b - a]
        if (k + 1) % self.plan.per_z == 0:  # every patch at this z start is in
            zi = k // self.plan.per_z
            zs = self.plan.starts[2]
            self.flush(zs[zi + 1] if zi + 1 < len(zs) else self.plan.padded[2])

    def flush(self, upto: int) -> None:
        """Normalise the final slab ``[done_to, upto)``, hand it to the writer, free its space."""
        oz, nz = self.plan.pad[2], self.plan.shape[2]
        lo, hi = max(self.done_to, oz), min(upto, oz + nz)  # the part inside the volume
        start = lo
        while start < hi:  # chunks that fit the output buffer and at most WRITE_PLANES deep
            stop = min(hi, start + self.sink.room, start + WRITE_PLANES)
            self._normalise(start, stop)
            start = stop
        for a, b, _ in _ring(self.done_to, upto, self.depth):
            self.sums[..., a:b] = 0
            self.wsum[..., a:b] = 0
        self.done_to = upto

    def _normalise(self, lo: int, hi: int) -> None:
        """Divide the sums of padded z range ``[lo, hi)`` by their weights into the output."""
        (ox, oy, oz), (nx, ny, _) = self.plan.pad, self.plan.shape
        c = self.sums.shape[0]
        xs, ys = slice(ox, ox + nx), slice(oy, oy + ny)
        view = self.sink.view(hi - lo)
        out = np.empty((c, nx, ny, hi - lo), dtype=np.float32) if self.labels else view
        for a, b, off in _ring(lo, hi, self.depth):
            w = self.wsum[xs, ys, a:b]
            if self.labels:
                np.divide(self.sums[:, xs, ys, a:b], w, out=out[..., off : off + b - a])
            else:
                for ch in range(c):
                    np.divide(self.sums[ch, xs, ys, a:b], w, out=out[:, :, off : off + b - a, ch])
        if self.labels:
            view[...] = out.argmax(axis=0)
            self._index(view, lo - oz)
        self.sink.advance(hi - lo)

    def _index(self, label: np.ndarray, z0: int) -> None:
        """Count and sample the non-zero voxels of a written slab (for the foreground index)."""
        part = compute_foreground(label)
        for k, pts in part.points.items():
            self.fg_points.setdefault(k, []).append(pts + np.array([0, 0, z0], dtype=np.int32))
            self.fg_counts[k] = self.fg_counts.get(k, 0) + part.counts[k]

    def foreground(self) -> ForegroundIndex:
        """The foreground index of the written mask: exact counts, an evenly spread sample."""
        points = {}
        for k, parts in self.fg_points.items():
            pts = np.concatenate(parts)
            if len(pts) > MAX_POINTS:
                pts = pts[np.linspace(0, len(pts) - 1, MAX_POINTS).astype(np.int64)]
            points[k] = pts
        return ForegroundIndex(points=points, counts=dict(self.fg_counts))


class _TileBuffer:
    """One tile's depth of output planes, written to the volume whenever it is full.

    Every tile is written once, by one write: no tile is split over fragments, so reads
    stay fast without consolidation.
    """

    def __init__(
        self,
        volume: Volume,
        shape: tuple[int, int, int],
        tile_z: int,
        tail: tuple[int, ...],
        dtype: np.dtype,
    ) -> None:
        self.volume, self.nz = volume, shape[2]
        self.buf = np.empty((shape[0], shape[1], min(tile_z, shape[2]), *tail), dtype=dtype)
        self.start = 0  # volume z of the buffer's first plane
        self.n = 0  # planes filled

    @property
    def room(self) -> int:
        """Planes that still fit before the buffer must be written."""
        return int(self.buf.shape[2]) - self.n

    def view(self, planes: int) -> np.ndarray:
        """The next ``planes`` of the buffer, to be filled."""
        return self.buf[:, :, self.n : self.n + planes]

    def advance(self, planes: int) -> None:
        """Mark ``planes`` more as filled; write the buffer when full or at the volume's end."""
        self.n += planes
        if self.n == self.buf.shape[2] or self.start + self.n == self.nz:
            box = [
                (0, self.buf.shape[0]),
                (0, self.buf.shape[1]),
                (self.start, self.start + self.n),
            ]
            box += [(0, n) for n in self.buf.shape[3:]]
            self.volume.write_region(box, self.buf[:, :, : self.n])
            self.start, self.n = self.start + self.n, 0
            if self.start == self.nz:  # a handle opened before the writes would not see them
                forget_array(self.volume.uri)


def _label_dtype(channels: int) -> np.dtype:
    return np.dtype(np.uint8 if channels <= 256 else np.uint16 if channels <= 65536 else np.int32)


def _ints(value: Any) -> list[int]:
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.reshape(-1).tolist()]
    return [int(v) for v in np.asarray(value).reshape(-1)]


class PredictionWriter:
    """Blend sliding-window outputs and write them as a new collection, slab by slab.

    Give it the grid loader (``create_inference_dataloader(..., patch_size=...)``) and hand
    it each batch with the model's output ``(B, C, *patch)``; or let :meth:`run` do the
    loop. The new collection has the input's grid, affines and subjects (``obs_subject_id``,
    ``obs_id = <subject>_<name>``): ``output="labels"`` writes the argmax over channels as
    a mask collection (uint8), ``output="probabilities"`` the blended outputs as float32
    ``(x, y, z, c)`` volumes (apply softmax in the model for probabilities). Overlaps are
    blended with constant or Gaussian weights, as MONAI's ``sliding_window_inference``.

    Memory: a buffer of ``patch_z x X x Y x C`` float32 sums plus ``patch_z x X x Y``
    weights for the volume being written, and one output slab at a time.

    The collection appears only when complete (:meth:`commit`, or leaving a ``with`` block
    without an exception); an exception removes what was written (:meth:`abort`). Under
    DDP (a loader made with ``distributed=True``) every rank writes the volumes of its
    shard, and rank 0 writes the tables once all ranks are done; every rank calls
    :meth:`commit`.

    Args:
        source: the grid loader, or its :class:`GridPatchDataset`.
        target: a RadiObject (the collection is added to it) or a URI for a standalone
            collection (which must not exist).
        name: the collection's name (default for a URI target: its last part).
        output: ``"labels"`` or ``"probabilities"``.
        mode: ``"constant"`` or ``"gaussian"`` blending weights.
        sigma_scale: Gaussian sigma as a share of the patch size.

    >>> import torch, tempfile, os
    >>> from radiobject.data import make_sample_radiobject
    >>> from radiobject.ml import PredictionWriter, create_inference_dataloader
    >>> radi = make_sample_radiobject(os.path.join(tempfile.mkdtemp(), "r"), n_subjects=2,
    ...                               shape=(16, 16, 12), progress=False)
    >>> loader = create_inference_dataloader(radi.T1w, patch_size=8, overlap=0.5, batch_size=4)
    >>> model = lambda x: torch.cat([x, 100 - x], dim=1)  # two "classes"
    >>> pred = PredictionWriter(loader, radi, "pred").run(model)
    >>> pred.is_mask, pred.obs_ids, "pred" in radi
    (True, ['sub-000_pred', 'sub-001_pred'], True)
    """

    def __init__(
        self,
        source: Any,
        target: RadiObject | str | Path,
        name: str | None = None,
        *,
        output: str = "labels",
        mode: str = "constant",
        sigma_scale: float | Sequence[float] = 0.125,
    ) -> None:
        dataset = getattr(source, "dataset", source)
        if not isinstance(dataset, GridPatchDataset):
            raise ConfigurationError(
                "PredictionWriter needs a grid loader: create_inference_dataloader(..., "
                f"patch_size=...) or a GridPatchDataset; got {type(source).__name__}"
            )
        if output not in _OUTPUTS:
            raise ConfigurationError(f"output must be one of {_OUTPUTS}, got {output!r}")
        self.loader = source if source is not dataset else None
        self.dataset = dataset
        self.output = output
        assert dataset.config.patch_size is not None
        self.weights = importance_map(dataset.config.patch_size, mode, sigma_scale)
        self.ctx = get_tiledb_ctx()
        self.radi = target if isinstance(target, RadiObject) else None
        if self.radi is not None:
            if self.radi.at is not None:
                raise VersionError(
                    f"cannot write predictions into {self.radi.uri!r} opened at version "
                    f"{self.radi.at}: it is read-only; pass RadiObject(uri) (the newest)"
                )
            if not name:
                raise ConfigurationError(
                    "name the new collection: PredictionWriter(loader, radi, 'pred')"
                )
            self.uri = join(self.radi.uri, COLLECTIONS, name)
        else:
            self.uri = str(target).rstrip("/")
            name = name or self.uri.rsplit("/", 1)[-1]
        self.name: str = name
        self.rank, self.world_size = dataset.rank, dataset.world_size
        self._rows: list[dict[str, Any]] = []
        self._fg: dict[str, ForegroundIndex] = {}
        self._current: _SlabBlender | None = None
        self._next = (0, 0)  # (volume, patch) expected next
        self._channels: int | None = None
        self._state = "open"
        self.collection: VolumeCollection | None = None
        self._check_dist()
        self._agree(self._prepare if self.rank == 0 else None)

    # -- set-up and collective steps ------------------------------------------------------------
    def _agree(self, step: Callable[[], None] | None) -> None:
        """Run ``step`` on rank 0; every rank raises if it failed there."""
        error: Exception | None = None
        if step is not None:
            try:
                step()
            except Exception as e:  # every rank must hear of it, or the others wait for ever
                error = e
        if self.world_size > 1:
            box = [None if error is None else (type(error).__name__, str(error))]
            torch.distributed.broadcast_object_list(box, src=0)
            if box[0] is not None and error is None:
                raise IngestError(f"rank 0 failed: {box[0][0]}: {box[0][1]}")
        if error is not None:
            raise error

    def _prepare(self) -> None:
        if self.radi is not None:
            if self.name in self.radi.collection_names:
                raise AlreadyExistsError(
                    f"{self.radi.uri!r} already has a collection {self.name!r}; choose another name"
                )
            ids = set(self.radi.obs_meta_table.ids())
            unknown = sorted({r.obs_subject_id for r in self.dataset.refs} - ids)
            if unknown:
                raise IngestError(
                    f"subjects {unknown[:5]} of the input are not in obs_meta of "
                    f"{self.radi.uri!r}; predict into a RadiObject holding the input"
                )
        if exists(self.uri, self.ctx):
            raise AlreadyExistsError(
                f"{self.uri!r} already exists (perhaps left by an interrupted write); "
                "remove it or choose another name"
            )
        create_group(self.uri, COLLECTION_KIND, self.ctx, {"name": self.name})
        create_group(join(self.uri, VOLUMES), VOLUMES_KIND, self.ctx)

    def _check_dist(self) -> None:
        if self.world_size > 1 and not (
            torch.distributed.is_available() and torch.distributed.is_initialized()
        ):
            raise ConfigurationError(
                f"a loader sharded over {self.world_size} ranks needs torch.distributed "
                "initialised (init_process_group) before PredictionWriter"
            )

    # -- taking outputs ---------------------------------------------------------------------
    def add(self, batch: Mapping[str, Any], prediction: torch.Tensor | np.ndarray) -> None:
        """Blend the model's ``prediction`` ``(B, C, *patch)`` for the patches of ``batch``.

        Batches must come in loader order (a DataLoader keeps it, with workers too).
        """
        if self._state != "open":
            raise ConfigurationError(f"this PredictionWriter is {self._state}; make a new one")
        if isinstance(prediction, torch.Tensor):
            pred = prediction.detach().to("cpu", torch.float32).numpy()
        else:
            pred = np.asarray(prediction, dtype=np.float32)
        vols, ks = _ints(batch["volume_index"]), _ints(batch["patch_index"])
        patch = self.weights.shape
        if pred.ndim != 5 or pred.shape[0] != len(vols) or pred.shape[2:] != patch:
            raise ShapeError(
                f"prediction must be (batch={len(vols)}, channels, *{patch}) to match the "
                f"patches; got {tuple(pred.shape)}"
            )
        if self._channels is None:
            self._channels = pred.shape[1]
            if self.output == "labels" and self._channels < 2:
                raise ConfigurationError(
                    "output='labels' takes the argmax over channels and needs >= 2 channels; "
                    "use output='probabilities' for a one-channel output"
                )
        if pred.shape[1] != self._channels:
            raise ShapeError(
                f"prediction has {pred.shape[1]} channels, earlier ones had {self._channels}"
            )
        for i, (v, k) in enumerate(zip(vols, ks, strict=True)):
            self._add_one(v, k, pred[i])

    def _add_one(self, v: int, k: int, pred: np.ndarray) -> None:
        if (v, k) != self._next:
            raise ConfigurationError(
                f"patches must arrive in grid order: expected volume {self._next[0]} patch "
                f"{self._next[1]}, got volume {v} patch {k}; use the loader unshuffled, "
                "with all its batches"
            )
        if self._current is None:
            self._current = self._open_volume(v)
        self._current.add(k, pred)
        if k + 1 == self.dataset.plans[v].n_patches:
            self._close_volume(v)
            self._next = (v + 1, 0)
        else:
            self._next = (v, k + 1)

    def _open_volume(self, v: int) -> _SlabBlender:
        ref, plan = self.dataset.refs[v], self.dataset.plans[v]
        assert self._channels is not None
        labels = self.output == "labels"
        shape = plan.shape if labels else (*plan.shape, self._channels)
        dtype = _label_dtype(self._channels) if labels else np.dtype(np.float32)
        extents = list(get_config().write.tile.extents_for(shape))
        if not labels:  # thin tiles along z: at most WRITE_PLANES float planes wait for a write
            extents[2] = min(extents[2], WRITE_PLANES)
        affine, grid = Volume(ref.uris[0]).affine, ref.grid(0)
        if grid is not None:  # the input is on another grid than the one predicted in
            affine = grid.reference_affine(affine)
        volume = Volume.create(
            join(self.uri, volume_member(self.dataset.positions[v])),
            shape,
            dtype,
            affine=affine,
            metadata={
                "obs_id": obs_id(ref.obs_subject_id, self.name),
                "obs_subject_id": ref.obs_subject_id,
            },
            tile=TileConfig(extents=tuple(extents)),
            ctx=self.ctx,
        )
        return _SlabBlender(plan, self.weights, self._channels, volume, labels, extents[2])

    def _close_volume(self, v: int) -> None:
        assert self._current is not None
        blender, self._current = self._current, None
        ref, vol = self.dataset.refs[v], blender.volume
        oid = obs_id(ref.obs_subject_id, self.name)
        affine = vol.affine
        self._rows.append(
            {
                "obs_id": oid,
                "obs_subject_id": ref.obs_subject_id,
                "volume": volume_member(self.dataset.positions[v]),
                "shape": ",".join(str(n) for n in vol.shape),
                "spacing": ",".join(f"{s:g}" for s in spacing_from_affine(affine)),
                "orientation": affine_orientation(affine),
                "dtype": str(vol.dtype),
                "affine": json.dumps(affine.tolist()),
                "source": ref.uris[0],
            }
        )
        if self.output == "labels":
            self._fg[oid] = blender.foreground()

    # -- finishing ----------------------------------------------------------------------------
    def commit(self) -> VolumeCollection:
        """Write the tables and make the collection visible (every rank calls this)."""
        if self._state == "committed":
            assert self.collection is not None
            return self.collection
        if self._state != "open":
            raise ConfigurationError(f"this PredictionWriter is {self._state}")
        try:
            self._check_dist()
            done = self._next == (len(self.dataset.refs), 0) or not self.dataset.refs
            if not done:
                v, k = self._next
                raise IngestError(
                    f"cannot commit {self.name!r}: volume {self.dataset.refs[v].obs_id!r} has "
                    f"{k} of {self.dataset.plans[v].n_patches} patches; feed every batch of "
                    "the loader first"
                )
            rows, fg = self._rows, self._fg
            if self.world_size > 1:
                gathered: list[Any] = [None] * self.world_size
                torch.distributed.all_gather_object(gathered, (rows, fg))
                rows = [r for part, _ in gathered for r in part]
                fg = {k: f for _, part in gathered for k, f in part.items()}
            self._agree((lambda: self._finish(rows, fg)) if self.rank == 0 else None)
        except BaseException:
            self.abort()
            raise
        self._state = "committed"
        if self.radi is not None:
            self.radi._all_names = None  # the new collection shows at once
            self.collection = self.radi.collection(self.name)
        else:
            self.collection = VolumeCollection(self.uri)
        return self.collection

    def _finish(self, rows: list[dict[str, Any]], fg: dict[str, ForegroundIndex]) -> None:
        if not rows:
            raise IngestError(f"collection {self.name!r} would have no volumes")
        rows = sorted(rows, key=lambda r: r["volume"])
        labels = self.output == "labels"
        members = [OBS, VOLUMES]
        if labels:  # before obs: at every version that lists the volumes, they are indexed
            write_foreground(join(self.uri, FG_INDEX), fg, self.ctx)
            members.append(FG_INDEX)
        Dataframe.from_pandas(join(self.uri, OBS), pd.DataFrame(rows), index="obs_id", ctx=self.ctx)
        add_members(join(self.uri, VOLUMES), [r["volume"].split("/")[1] for r in rows], self.ctx)
        add_members(self.uri, members, self.ctx)
        with (
            tiledb_errors(self.uri, "write predictions"),
            tiledb.Group(self.uri, mode="w", ctx=self.ctx) as g,
        ):
            g.meta["is_mask"] = int(labels)
        mark_complete(self.uri, self.ctx)  # readers take it from here
        if self.radi is not None:  # the last step: the RadiObject lists it from here
            add_members(join(self.radi.uri, COLLECTIONS), [self.name], self.ctx)

    def abort(self) -> None:
        """Remove everything written so far (called on any failure; safe to call twice)."""
        if self._state in ("committed", "aborted"):
            return
        self._state = "aborted"
        self._current = None
        try:
            remove(self.uri, self.ctx)
        except RadiObjectError as e:  # keep the first error
            _log.warning("could not remove the partial collection at %r: %s", self.uri, e)

    def __enter__(self) -> PredictionWriter:
        return self

    def __exit__(self, kind: Any, error: Any, tb: Any) -> None:
        if kind is None:
            self.commit()
        else:
            self.abort()

    def run(
        self,
        predictor: Callable[[torch.Tensor], torch.Tensor],
        loader: Any = None,
        *,
        device: torch.device | str | None = None,
    ) -> VolumeCollection:
        """Predict every batch of ``loader`` (default: the one given) and commit.

        ``predictor`` maps ``batch["image"]`` to ``(B, C, *patch)``; it runs under
        ``torch.no_grad()``, on ``device`` when given.
        """
        loader = loader if loader is not None else self.loader
        if loader is None:
            raise ConfigurationError("give run() the loader (the writer was made from a dataset)")
        try:
            with torch.no_grad():
                for batch in loader:
                    image = batch["image"] if device is None else batch["image"].to(device)
                    self.add(batch, predictor(image))
        except BaseException:
            self.abort()
            raise
        return self.commit()

"""What a collection keeps beside its volumes, derived from them, and reads instead of them.

:class:`CollectionDerivedData` is a base of
:class:`~radiobject.storage._collection.VolumeCollection` (as
:class:`~radiobject.storage._collection_ingest.CollectionConstructors` is): a mask's
foreground index (what a segmentation loader's set-up reads, never the masks), each
volume's coarse level (what the viewer shows first) and the copy of each volume in the
local read tier (what training reads). Each is made from the voxels once (at ingest, at a
write, or on first use), stored, and read from then on. The formats are
:mod:`radiobject.storage._foreground` and :mod:`radiobject.storage._coarse`.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import tiledb

from radiobject._errors import RadiObjectError
from radiobject.config import get_config
from radiobject.storage._coarse import (
    DEFAULT_FACTOR,
    CoarseLevel,
    build_coarse,
    coarse_method,
    read_coarse,
    stored_coarse,
    write_coarse,
)
from radiobject.storage._foreground import (
    ForegroundIndex,
    compute_foreground,
    read_foreground,
    stored_ids,
    write_foreground,
)
from radiobject.storage._group import add_members, create_group, exists, join
from radiobject.storage._layout import COARSE, COARSE_KIND, FG_INDEX, coarse_member
from radiobject.storage._volume import Volume

__all__ = ["CollectionDerivedData"]


class CollectionDerivedData:
    """A collection's foreground index, coarse levels and local-tier copies (bases it).

    >>> import numpy as np, tempfile, os
    >>> from radiobject import VolumeCollection
    >>> seg = VolumeCollection.from_numpy(os.path.join(tempfile.mkdtemp(), "seg"),
    ...                                   [np.ones((8, 8, 4), np.uint8)], is_mask=True)
    >>> oid = seg.obs_ids[0]  # both stored at ingest, read here
    >>> seg.foreground()[oid].counts, seg.coarse_level(oid).voxels.shape
    ({1: 256}, (2, 2, 1))
    """

    if TYPE_CHECKING:  # what VolumeCollection provides
        uri: str
        _ctx: tiledb.Ctx | None
        _at: int | None
        _fg: dict[str, ForegroundIndex] | None  # the index read at a version, kept
        _coarse_unsaved: bool  # a level could not be stored: keep them in memory

        @property
        def ctx(self) -> tiledb.Ctx: ...

        @property
        def name(self) -> str: ...

        @property
        def is_mask(self) -> bool: ...

        @property
        def obs_ids(self) -> list[str]: ...

        def row(self, obs_id: str) -> pd.Series: ...

        def volume_uri(self, obs_id: str) -> str: ...

        def volume(self, obs_id: str) -> Volume: ...

    # -- the foreground index of a mask collection -------------------------------------------
    def foreground(self) -> dict[str, ForegroundIndex]:
        """Foreground index of every volume of this mask collection (one read of the index).

        The index as of this collection's version: each volume's entry written with its
        mask's voxels (at ingest, ``add_subject``, ``Volume.write_region``). Volumes without
        a stored entry are computed now (reading their masks once) and, at the newest
        version, stored, so the next call reads only the index. At a past version the result
        is kept by this object; at the newest each call reads the index again (a mask edited
        since shows).

        >>> import numpy as np, tempfile, os
        >>> from radiobject import VolumeCollection
        >>> seg = VolumeCollection.from_numpy(os.path.join(tempfile.mkdtemp(), "seg"),
        ...                                   [np.zeros((8, 8, 4), np.uint8)], is_mask=True)
        >>> oid = seg.obs_ids[0]
        >>> seg.foreground()[oid].labels
        []
        >>> seg.volume(oid).write_region(((2, 3), (2, 3), (1, 2)), np.full((1, 1, 1), 2))
        >>> seg.foreground()[oid].labels, seg.foreground()[oid].points[2].tolist()
        ([2], [[2, 2, 1]])
        """
        if self._fg is not None:
            return self._fg
        uri = join(self.uri, FG_INDEX)
        stored = read_foreground(uri, self.ctx, at=self._at)
        missing = [i for i in self.obs_ids if i not in stored]
        if missing:
            new = {i: compute_foreground(self.volume(i).to_numpy()) for i in missing}
            if self._at is None:  # a past version is read-only: keep it in memory
                with contextlib.suppress(RadiObjectError):  # read-only: keep it in memory
                    write_foreground(uri, new, self.ctx)
            stored.update(new)
        found = {i: stored[i] for i in self.obs_ids}
        if self._at is not None:  # a version never changes
            self._fg = found
        return found

    def foreground_stored(self) -> bool:
        """True when the stored foreground index has an entry for every volume, at this version.

        Reads the index's metadata (which names the volumes it holds), never its entries: the
        cheap check before :meth:`foreground`, whose entries a loader reads at its own
        version. False when an entry is missing (the volume was written before radiobject
        indexed masks, or the collection was not ingested as masks): :meth:`foreground` then
        computes and stores them.

        >>> import numpy as np, tempfile, os
        >>> from radiobject import VolumeCollection
        >>> d = tempfile.mkdtemp()
        >>> seg = VolumeCollection.from_numpy(os.path.join(d, "seg"),
        ...                                   [np.ones((4, 4, 2), np.uint8)], is_mask=True)
        >>> lbl = VolumeCollection.from_numpy(os.path.join(d, "lbl"),
        ...                                   [np.ones((4, 4, 2), np.uint8)], is_mask=False)
        >>> seg.foreground_stored(), lbl.foreground_stored()  # indexed at ingest, or not
        (True, False)
        >>> _ = lbl.foreground()  # computed now, and stored
        >>> lbl.foreground_stored()
        True
        """
        stored = stored_ids(join(self.uri, FG_INDEX), self.ctx, at=self._at)
        return stored.issuperset(self.obs_ids)

    # -- the viewer's coarse level -----------------------------------------------------------
    def _coarse_uri(self, obs_id: str) -> str:
        return join(self.uri, coarse_member(str(self.row(obs_id)["volume"])))

    def coarse_volume(self, obs_id: str) -> Volume | None:
        """The stored coarse level of ``obs_id``, a small :class:`Volume`, or ``None``.

        ``None`` when none is stored, or the stored one was cut short or predates the last
        write of the volume. Its affine maps its voxels to the same world as the volume's.

        >>> import numpy as np, tempfile, os
        >>> from radiobject import VolumeCollection
        >>> ct = VolumeCollection.from_numpy(os.path.join(tempfile.mkdtemp(), "CT"),
        ...                                  [np.zeros((16, 16, 8))])
        >>> ct.coarse_volume(ct.obs_ids[0]).shape  # written at ingest, 4x smaller
        (4, 4, 2)
        """
        volume = self.volume(obs_id)
        return stored_coarse(
            self._coarse_uri(obs_id), volume, coarse_method(self.is_mask), self.ctx
        )

    def coarse_level(self, obs_id: str) -> CoarseLevel:
        """The coarse level of ``obs_id`` in memory: read in one query, or built now.

        A volume without a current stored level (written with ``WriteConfig(coarse=0)``, or
        before radiobject wrote levels) has one built from its voxels (one whole-volume read,
        at ``WriteConfig.coarse``, else 4) and stored for the next time. When it cannot be
        stored (a read-only store, S3 refusing the write) it is returned unsaved
        (``saved=False``) with a warning, and this collection object stops trying.

        >>> import numpy as np, tempfile, os
        >>> from radiobject import VolumeCollection
        >>> from radiobject import WriteConfig, configure
        >>> with configure(write=WriteConfig(coarse=0)):
        ...     ct = VolumeCollection.from_numpy(os.path.join(tempfile.mkdtemp(), "CT"),
        ...                                      [np.ones((16, 16, 8))])
        >>> level = ct.coarse_level(ct.obs_ids[0])  # built on first use, then stored
        >>> level.voxels.shape, level.name, level.saved, ct.coarse_volume(ct.obs_ids[0]) is None
        ((4, 4, 2), 'level 1 (4x)', True, False)
        """
        found = self.coarse_volume(obs_id)
        if found is not None:
            return read_coarse(found)
        volume, method = self.volume(obs_id), coarse_method(self.is_mask)
        factor = get_config().write.coarse or DEFAULT_FACTOR
        stored = build_coarse(volume, factor, method)
        saved = False
        if not self._coarse_unsaved and self._at is None:  # a past version is read-only
            try:
                self._save_coarse(self._coarse_uri(obs_id), volume, stored, factor, method)
                saved = True
            except RadiObjectError as e:
                self._coarse_unsaved = True
                warnings.warn(
                    f"cannot store the coarse level of {obs_id!r} in {self.uri!r} ({e}); "
                    "the coarse levels of this collection are built at each view and kept in "
                    "memory. Open it from a writable store to keep them.",
                    stacklevel=2,
                )
        return CoarseLevel.decode(stored, volume.scaling, factor, method, saved)

    def _save_coarse(
        self, uri: str, volume: Volume, stored: np.ndarray, factor: int, method: str
    ) -> None:
        group = join(self.uri, COARSE)
        if not exists(group, self.ctx):
            create_group(group, COARSE_KIND, self.ctx)
            add_members(self.uri, [COARSE], self.ctx)
        write_coarse(uri, volume, stored, factor, method, self.ctx)
        add_members(group, [uri.rsplit("/", 1)[-1]], self.ctx)

    def warm_local_tier(self, *, progress: bool = False) -> int:
        """Put every volume of this collection in the local read tier now.

        Returns how many were written (those already there, unchanged, are skipped).

        The tier (``ReadConfig.local_tier_mb``) keeps whole volumes on local disk for fast
        random patch reads by every process on the machine; training fills it as it reads,
        this fills it ahead of time. Also
        ``python -m radiobject warm URI``.

        Raises:
            ConfigurationError: the tier is off (``local_tier_mb=0``, or ``None``: the
                automatic tier is a training loader's own, for its reads only).

        >>> import numpy as np, tempfile, os
        >>> from radiobject import VolumeCollection
        >>> from radiobject import ReadConfig, configure
        >>> d = tempfile.mkdtemp()
        >>> ct = VolumeCollection.from_numpy(os.path.join(d, "CT"), [np.zeros((4, 4, 3))] * 2)
        >>> with configure(read=ReadConfig(local_tier_mb=16, local_tier_dir=os.path.join(d, "t"))):
        ...     ct.warm_local_tier(), ct.warm_local_tier()
        (2, 0)
        """
        from tqdm.auto import tqdm

        from radiobject.read._region import fill_local_tier

        uris = [self.volume_uri(i) for i in self.obs_ids]
        written = 0
        for uri in tqdm(uris, desc=f"warm {self.name}", unit="vol", disable=not progress):
            written += fill_local_tier(uri, self.ctx)
        return written

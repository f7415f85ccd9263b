"""The local read tier's automatic default: on for training loaders over cohorts larger than RAM.

``ReadConfig.local_tier_mb=None`` (the default) leaves the decision to the training loader
factories: they call :func:`auto_local_tier` with their collections. When the cohort's
decompressed bytes exceed the RAM block cache (``ReadConfig.cache_mb``) and blosc2 imports,
the tier turns on in this process (``_TierState.set_auto``) with a share of the folder's
free disk (:func:`radiobject.read._local_tier.auto_budget_mb`); the loader's workers get the
same budget through their ``worker_init``. ``local_tier_mb=0`` turns it off, ``n > 0``
chooses the budget: neither is touched here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from radiobject.config import get_config
from radiobject.read import auto_budget_mb, default_tier_dir, open_array, tier_state
from radiobject.storage import VolumeCollection

__all__ = ["auto_local_tier", "cohort_bytes"]


def cohort_bytes(collections: VolumeCollection | Sequence[VolumeCollection]) -> int:
    """Decompressed bytes, as stored, of every volume of ``collections`` (each one's first dtype).

    >>> import os, tempfile
    >>> from radiobject.data import make_sample_radiobject
    >>> radi = make_sample_radiobject(os.path.join(tempfile.mkdtemp(), "r"), n_subjects=2,
    ...                               shape=(16, 16, 12), modalities=("T1w",), progress=False)
    >>> cohort_bytes(radi.T1w)  # 2 volumes of 16x16x12, whole numbers stored as uint16
    12288
    """
    items = [collections] if isinstance(collections, VolumeCollection) else list(collections)
    total = 0
    for coll in items:
        ids = coll.obs_ids
        if not ids:
            continue
        _, info = open_array(coll.volume_uri(ids[0]), coll.ctx)
        voxels = sum(int(np.prod(shape)) for shape in coll.shapes)
        total += voxels * info.dtype.itemsize
    return total


def auto_local_tier(collections: VolumeCollection | Sequence[VolumeCollection]) -> int:
    """Decide the automatic tier for a training loader over ``collections``; its MiB (0: off).

    Only with ``ReadConfig.local_tier_mb=None``: then a cohort larger than the RAM cache
    turns the tier on in this process (for the rest of it; a later smaller cohort does
    not turn it off) and returns the budget; otherwise nothing changes and this returns 0.

    >>> import os, tempfile
    >>> from radiobject.data import make_sample_radiobject
    >>> radi = make_sample_radiobject(os.path.join(tempfile.mkdtemp(), "r"), n_subjects=2,
    ...                               shape=(16, 16, 12), modalities=("T1w",), progress=False)
    >>> auto_local_tier(radi.T1w)  # 24 kB fit the RAM cache: the tier stays as it was
    0
    """
    read = get_config().read
    if read.local_tier_mb is not None:
        return 0
    folder = Path(read.local_tier_dir or default_tier_dir())
    mb = auto_budget_mb(cohort_bytes(collections), read.cache_mb * (1 << 20), folder)
    if mb > 0:
        tier_state().set_auto(mb)
    return mb

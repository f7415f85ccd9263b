"""The local read tier's automatic default: on for training loaders over cohorts larger than RAM.

``ReadConfig.local_tier_mb=None`` (the default) leaves the decision to the training loader
factories: they call :func:`auto_local_tier` with their collections, which measures the
cohort and asks the read policy (:meth:`radiobject.read._policy.ReadPolicy.auto_tier_mb`,
where every decision about where bytes come from is made). When the cohort's
decompressed bytes exceed the RAM block cache (``ReadConfig.cache_mb``) and blosc2 imports,
the loader's dataset gets a budget (``VolumeCollectionDataset.auto_tier_mb``, a share of the
folder's free disk: :func:`radiobject.read._local_tier.auto_budget_mb`) that its reads carry
(``RegionRead.auto_tier_mb``), in this process and in the loader's workers (the dataset is
pickled with it). Nothing changes for the rest of the process: other datasets, volumes read
directly, and later loaders decide for themselves. ``local_tier_mb=0`` turns the tier off
for every read, ``n > 0`` turns it on for every read with that budget.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from radiobject.read import open_array, reader
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
    """The automatic tier budget (MiB) for a training loader over ``collections``; 0: none.

    Only with ``ReadConfig.local_tier_mb=None``: a cohort larger than the RAM cache gets a
    budget, which the loader's dataset keeps for its own reads. Nothing process-wide changes.
    The read policy decides (:meth:`~radiobject.read._policy.ReadPolicy.auto_tier_mb`);
    this measures the cohort for it.

    >>> import os, tempfile
    >>> from radiobject.data import make_sample_radiobject
    >>> radi = make_sample_radiobject(os.path.join(tempfile.mkdtemp(), "r"), n_subjects=2,
    ...                               shape=(16, 16, 12), modalities=("T1w",), progress=False)
    >>> auto_local_tier(radi.T1w)  # 12 kB (uint16) fit the RAM cache: no tier
    0
    """
    return reader().policy.auto_tier_mb(cohort_bytes(collections))

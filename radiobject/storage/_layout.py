"""How radiobject lays out its TileDB groups: kinds, member names and the ``obs`` core columns.

A RadiObject at ``uri`` holds::

    uri/                     group, radiobject_type = "RadiObject"
      obs_meta               table, one row per subject (index obs_subject_id)
      collections/           group, radiobject_type = "collections"
        <name>/              group, radiobject_type = "VolumeCollection", meta name, is_mask
          obs                table, one row per volume (index obs_id; CORE_COLUMNS + user's)
          fg_index           (masks only) foreground index per volume
          coarse/            group, radiobject_type = "coarse"
            00000, 00001 ... the viewer's coarse level of each volume (same name), see
                             :mod:`radiobject.storage._coarse`; never listed as a volume
          volumes/           group, radiobject_type = "volumes"
            00000, 00001 ... one dense array per volume (metadata obs_id, written after
                             the voxels: an array without it was cut short)

The RadiObject group and each collection group carry ``complete = 1`` once written whole
(set last, see :mod:`radiobject.storage._group`).

This module imports nothing from radiobject: the classes that read a layout
(:mod:`radiobject.storage._collection`, :mod:`radiobject.storage._radiobject`) and the
writers that build one (:mod:`radiobject.ingest`) share it.

>>> volume_member(3), coarse_member("volumes/00003"), obs_id("sub-01", "T1w")
('volumes/00003', 'coarse/00003', 'sub-01_T1w')
"""

from __future__ import annotations

__all__ = [
    "COARSE",
    "COARSE_KIND",
    "COLLECTIONS",
    "COLLECTIONS_KIND",
    "COLLECTION_KIND",
    "CORE_COLUMNS",
    "FG_INDEX",
    "OBS",
    "OBS_META",
    "RADIOBJECT_KIND",
    "REFERENCE",
    "VERSIONS_FROM",
    "VOLUMES",
    "VOLUMES_KIND",
    "coarse_member",
    "obs_id",
    "volume_member",
]

# group kinds (the ``radiobject_type`` metadata of each group)
RADIOBJECT_KIND = "RadiObject"
COLLECTIONS_KIND = "collections"
COLLECTION_KIND = "VolumeCollection"
VOLUMES_KIND = "volumes"
COARSE_KIND = "coarse"

# member names
OBS_META = "obs_meta"  # RadiObject: subject table
COLLECTIONS = "collections"  # RadiObject: group of collections
OBS = "obs"  # collection: volume table
VOLUMES = "volumes"  # collection: group of volume arrays
FG_INDEX = "fg_index"  # mask collection: foreground index
COARSE = "coarse"  # collection: group of the volumes' coarse levels

# RadiObject metadata: the collection whose grid samples are planned in (absent: one grid)
REFERENCE = "reference"
# RadiObject group metadata: versions before this TileDB timestamp (ms) were dropped
VERSIONS_FROM = "versions_from"

# columns radiobject fills in for every volume; the rest of obs is the user's
CORE_COLUMNS = (
    "obs_subject_id",
    "volume",
    "shape",
    "spacing",
    "orientation",
    "dtype",
    "affine",
    "source",
)


def volume_member(position: int) -> str:
    """The member path (relative to the collection) of the ``position``-th volume."""
    return f"{VOLUMES}/{position:05d}"


def coarse_member(volume: str) -> str:
    """The member path of the coarse level of the volume at member path ``volume``."""
    return f"{COARSE}/{volume.rsplit('/', 1)[-1]}"


def obs_id(obs_subject_id: str, collection: str) -> str:
    """The ``obs_id`` of a subject's volume in ``collection``."""
    return f"{obs_subject_id}_{collection}"

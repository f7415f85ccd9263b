"""Storage: volumes, tables, collections and RadiObjects as TileDB arrays and groups.

The public classes are exported from :mod:`radiobject`; the modules here are private. The
names below are what the layers above (:mod:`radiobject.ml`) use: they import them from
here, never from a private module.
"""

from radiobject.storage._collection import VolumeCollection
from radiobject.storage._dataframe import Dataframe
from radiobject.storage._foreground import (
    MAX_POINTS,
    ForegroundIndex,
    compute_foreground,
    foreground_digest,
    write_foreground,
)
from radiobject.storage._group import (
    add_members,
    create_group,
    exists,
    join,
    mark_complete,
    remove,
)
from radiobject.storage._history import (
    Version,
    VersionDiff,
    as_timestamp,
    now_ms,
    written_between,
)
from radiobject.storage._layout import (
    COLLECTION_KIND,
    COLLECTIONS,
    FG_INDEX,
    OBS,
    VOLUMES,
    VOLUMES_KIND,
    obs_id,
    volume_member,
)
from radiobject.storage._radiobject import RadiObject
from radiobject.storage._volume import Volume, affine_orientation, spacing_from_affine

__all__ = [
    "COLLECTIONS",
    "COLLECTION_KIND",
    "FG_INDEX",
    "MAX_POINTS",
    "OBS",
    "VOLUMES",
    "VOLUMES_KIND",
    "Dataframe",
    "ForegroundIndex",
    "RadiObject",
    "Version",
    "VersionDiff",
    "Volume",
    "VolumeCollection",
    "add_members",
    "affine_orientation",
    "as_timestamp",
    "compute_foreground",
    "create_group",
    "exists",
    "foreground_digest",
    "join",
    "mark_complete",
    "now_ms",
    "obs_id",
    "remove",
    "spacing_from_affine",
    "volume_member",
    "write_foreground",
    "written_between",
]

"""radiobject: radiology volumes in TileDB, fed to PyTorch by reading only what each sample needs.

>>> import radiobject
>>> sorted(radiobject.__all__)[:3]
['AlignmentError', 'AlreadyExistsError', 'CacheStats']
"""

from radiobject._context import get_tiledb_ctx
from radiobject._errors import (
    AlignmentError,
    AlreadyExistsError,
    ConfigurationError,
    DtypeError,
    FilterError,
    IncompleteError,
    IngestError,
    LabelError,
    NotFoundError,
    OptionalDependencyError,
    OutOfBoundsError,
    RadiObjectError,
    S3Error,
    ShapeError,
    StorageError,
    VersionError,
)
from radiobject._versions import show_versions
from radiobject.config import (
    CompressionConfig,
    Compressor,
    RadiObjectConfig,
    ReadConfig,
    S3Config,
    SliceOrientation,
    TileConfig,
    WriteConfig,
    configure,
    get_config,
    reset_config,
    settings,
)
from radiobject.ingest._sources import subject_id_from_path
from radiobject.read._caches import clear_caches
from radiobject.read._grids import GridMap, grid_map
from radiobject.read._stats import CacheStats, S3Stats, TileDBStats
from radiobject.storage._coarse import CoarseLevel
from radiobject.storage._collection import VolumeCollection
from radiobject.storage._dataframe import Dataframe
from radiobject.storage._history import Version, VersionDiff
from radiobject.storage._radiobject import RadiObject
from radiobject.storage._volume import Volume

__version__ = "0.1.0"

__all__ = [
    "AlignmentError",
    "AlreadyExistsError",
    "CacheStats",
    "CoarseLevel",
    "CompressionConfig",
    "Compressor",
    "ConfigurationError",
    "Dataframe",
    "DtypeError",
    "FilterError",
    "GridMap",
    "IncompleteError",
    "IngestError",
    "LabelError",
    "NotFoundError",
    "OptionalDependencyError",
    "OutOfBoundsError",
    "RadiObject",
    "RadiObjectConfig",
    "RadiObjectError",
    "ReadConfig",
    "S3Config",
    "S3Error",
    "S3Stats",
    "ShapeError",
    "SliceOrientation",
    "StorageError",
    "TileConfig",
    "TileDBStats",
    "Version",
    "VersionDiff",
    "VersionError",
    "Volume",
    "VolumeCollection",
    "WriteConfig",
    "clear_caches",
    "configure",
    "get_config",
    "get_tiledb_ctx",
    "grid_map",
    "reset_config",
    "settings",
    "show_versions",
    "subject_id_from_path",
]

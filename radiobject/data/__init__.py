"""Synthetic sample data: a seeded brain-MR cohort with tumour masks, in seconds.

>>> from radiobject.data import MODALITIES
>>> "T1w" in MODALITIES
True
"""

from radiobject.data._cohort import (
    BRATS_SHAPE,
    SCALES,
    load_sample_radiobject,
    make_sample_radiobject,
    sample_obs_meta,
    write_sample_niftis,
)
from radiobject.data._phantom import MODALITIES, SubjectPhantom, make_subject

__all__ = [
    "BRATS_SHAPE",
    "MODALITIES",
    "SCALES",
    "SubjectPhantom",
    "load_sample_radiobject",
    "make_sample_radiobject",
    "make_subject",
    "sample_obs_meta",
    "write_sample_niftis",
]

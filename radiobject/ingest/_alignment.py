"""Whether a subject's volumes may be written together: one grid, or a named reference.

Without a reference, every subject's volumes must share shape and affine (checked from the
file headers before any voxel is written). With ``reference="T1w"`` they may lie on their
own grids (samples are then planned in the reference's; see :mod:`radiobject.read._grids`),
and every subject needs a reference volume.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from radiobject._errors import AlignmentError, IngestError
from radiobject.ingest._sources import Geometry, Item

__all__ = ["check_alignment", "check_reference"]


def check_alignment(geometries: Sequence[tuple[str, str, Geometry]]) -> None:
    """Each subject's volumes share shape and affine; ``(collection, subject, geometry)``.

    >>> import numpy as np
    >>> g = Geometry((4, 4, 2), np.eye(4))
    >>> check_alignment([("T1w", "s1", g), ("CT", "s1", Geometry((4, 4, 3), np.eye(4)))])
    Traceback (most recent call last):
    ...
    radiobject._errors.AlignmentError: subject 's1': 'CT' and 'T1w' are not on the same grid \
(shape (4, 4, 3) vs (4, 4, 2)); resample them first, pass validate_alignment=False, or name \
the collection whose grid samples are planned in with reference=<collection>
    """
    seen: dict[str, tuple[str, tuple[int, ...], np.ndarray]] = {}
    for name, sid, geom in geometries:
        shape = tuple(geom.shape[:3])
        if sid not in seen:
            seen[sid] = (name, shape, geom.affine)
            continue
        first, ref_shape, ref_affine = seen[sid]
        if shape != ref_shape or not np.allclose(geom.affine, ref_affine, atol=1e-3):
            what = f"shape {shape} vs {ref_shape}" if shape != ref_shape else "affine"
            raise AlignmentError(
                f"subject {sid!r}: {name!r} and {first!r} are not on the same grid ({what}); "
                "resample them first, pass validate_alignment=False, or name the collection "
                "whose grid samples are planned in with reference=<collection>"
            )


def check_reference(reference: str | None, sources: Mapping[str, Sequence[Item]]) -> None:
    """``reference`` names one of ``sources``, and every subject has a volume in it.

    >>> from radiobject.ingest._sources import numpy_items
    >>> import numpy as np
    >>> check_reference("T1w", {"CT": numpy_items([np.ones((2, 2, 2))])})
    Traceback (most recent call last):
    ...
    radiobject._errors.IngestError: reference 'T1w' is not one of the collections ['CT']; \
pass reference=<one of them> (the grid samples are planned in)
    """
    if reference is None:
        return
    if not isinstance(reference, str) or reference not in sources:
        raise IngestError(
            f"reference {reference!r} is not one of the collections {sorted(sources)}; pass "
            "reference=<one of them> (the grid samples are planned in)"
        )
    have = {it.obs_subject_id for it in sources[reference]}
    for name, items in sources.items():
        lacking = sorted({it.obs_subject_id for it in items} - have)
        if lacking:
            raise AlignmentError(
                f"subjects {lacking[:5]} have a {name!r} volume but none in the reference "
                f"collection {reference!r}; every subject needs a reference volume (its grid)"
            )

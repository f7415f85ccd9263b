"""Helpers of the ingest tests: comparing two RadiObjects, listing what a target holds."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import tiledb

from radiobject import RadiObject


def same_radiobject(a: RadiObject, b: RadiObject) -> None:
    """Every table, voxel, affine and foreground index of ``a`` equals ``b``'s."""
    assert a.collection_names == b.collection_names
    pd.testing.assert_frame_equal(a.obs_meta, b.obs_meta)
    for name in a.collection_names:
        ca, cb = a[name], b[name]
        pd.testing.assert_frame_equal(ca.obs, cb.obs)
        assert ca.is_mask == cb.is_mask
        for obs_id in ca.obs_ids:
            va, vb = ca.volume(obs_id), cb.volume(obs_id)
            np.testing.assert_array_equal(va.to_numpy(), vb.to_numpy())
            np.testing.assert_array_equal(va.affine, vb.affine)
            assert va.dtype == vb.dtype
            assert va.tile_shape == vb.tile_shape
        if ca.is_mask:
            fa, fb = ca.foreground(), cb.foreground()
            assert fa.keys() == fb.keys()
            for k in fa:
                assert fa[k].counts == fb[k].counts
                np.testing.assert_array_equal(fa[k].all_points(), fb[k].all_points())


def arrays_under(uri: str | Path) -> list[str]:
    """Every TileDB array stored under ``uri`` (none when nothing is there)."""
    if not os.path.exists(uri):
        return []
    found = []
    tiledb.walk(str(uri), lambda path, kind: found.append(path) if kind == "array" else None)
    return found

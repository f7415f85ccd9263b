"""The allocator is the user's: radiobject tunes it only when asked, and then it shows.

The measurements run in a fresh interpreter: allocator settings last for the life of a
process, and the test process itself must stay untouched.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from radiobject import ConfigurationError, Volume
from radiobject._allocator import _mallopt, allocator_settings

GLIBC = _mallopt() is not None

_CHILD = """
import json, resource, sys
from radiobject import Volume, configure
from radiobject._allocator import applied

uri, steps = sys.argv[1], json.loads(sys.argv[2])
vol = Volume(uri)
seen = []
for retain in steps:
    configure(read={"cache_mb": 0, "retain_freed_mb": retain})  # every read goes to TileDB
    vol.to_numpy()
    vol.to_numpy()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(8):
        vol.to_numpy()
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 8
    seen.append({"applied": applied(), "faults": faults})
print(json.dumps(seen))
"""


def _run(uri: str, *steps: int) -> list[dict[str, float | None]]:
    """Read the volume in a fresh process under each ``retain_freed_mb`` in turn."""
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, uri, json.dumps(list(steps))],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def vol_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    # 1 MiB of float32 in 48³ tiles: glibc's default thresholds return these pages after
    # every read (sizes matter: glibc adapts its thresholds to the blocks it sees)
    data = np.random.default_rng(0).random((64, 64, 64), dtype=np.float32)
    return Volume.from_numpy(tmp_path_factory.mktemp("alloc") / "v", data).uri


@pytest.mark.skipif(not GLIBC, reason="the allocator settings need glibc")
def test_untouched_by_default_kept_when_asked_and_zero_does_not_undo_it(vol_uri):
    untouched, kept, changed, back = _run(vol_uri, 0, 256, 64, 0)
    assert untouched["applied"] is None  # never applied unless asked
    assert untouched["faults"] > 100  # glibc hands the pages back: each read faults them in
    assert kept["applied"] == 256
    assert kept["faults"] < untouched["faults"] / 4  # kept for reuse: hardly any faults
    assert changed["applied"] == 64  # asking again with another size applies it
    assert back["applied"] == 64  # 0 only means "don't touch": the settings stay
    assert back["faults"] < untouched["faults"] / 4


def test_settings_and_bad_values():
    assert allocator_settings(8) == {
        "M_TRIM_THRESHOLD": 8 << 20,
        "M_TOP_PAD": 8 << 20,
        "M_MMAP_THRESHOLD": 32 << 20,
    }
    for bad in (0, -1, 2048, True, "64"):
        with pytest.raises(ConfigurationError, match="between 1 and 2047"):
            allocator_settings(bad)  # type: ignore[arg-type]


_WHOLE_CHILD = """
import json, mmap, sys
import numpy as np
from radiobject import Volume, configure
from radiobject.read._cache import block_cache

uri, retain = sys.argv[1], int(sys.argv[2])
configure(read={"cache_mb": 64, "retain_freed_mb": retain, "local_tier_mb": 0})
Volume(uri)[:, :, :]  # kept whole in the RAM cache
(kept,) = block_cache()._lru.values()
print(json.dumps(isinstance(kept.base, mmap.mmap)))
"""


@pytest.mark.skipif(not GLIBC, reason="the allocator settings need glibc")
def test_whole_volumes_get_pages_of_their_own_unless_freed_memory_is_kept(tmp_path):
    from radiobject.read._cache import MAPPED_BYTES

    data = np.zeros((128, 128, 80), dtype=np.float32)  # 5 MiB: a mapped array's size
    assert data.nbytes >= MAPPED_BYTES
    uri = Volume.from_numpy(tmp_path / "v", data, integers=False).uri  # float32 as stored
    mapped = []
    for retain in (0, 64):
        out = subprocess.run(
            [sys.executable, "-c", _WHOLE_CHILD, uri, str(retain)],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        mapped.append(json.loads(out.stdout.strip().splitlines()[-1]))
    assert mapped == [True, False]  # kept for reuse as asked: from malloc

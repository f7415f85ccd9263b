"""Does TileDB keep a record per query when its statistics were never turned on?

Fresh interpreter, a small volume, N one-voxel reads through radiobject with the block cache
off (one TileDB query each), RSS after a warm-up and after the reads; then the same after
``tiledb.stats_reset()``. Usage: python benchmarks/tiledb_stats_growth.py [N]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import numpy as np


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    import tiledb

    from radiobject import ReadConfig, Volume, configure

    vol = Volume.from_numpy(os.path.join(tempfile.mkdtemp(), "v"), np.ones((64, 64, 48), "float32"))
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 48, size=(n, 3))
    with configure(read=ReadConfig(cache_mb=0)):
        for x, y, z in idx[:1000]:  # warm-up: handles, allocator
            vol[x : x + 1, y : y + 1, z : z + 1]
        base = rss_mb()
        start = time.perf_counter()
        for x, y, z in idx:
            vol[x : x + 1, y : y + 1, z : z + 1]
        took = time.perf_counter() - start
        after = rss_mb()
        print(
            f"stats never enabled: {n} one-voxel reads in {took:.1f} s, RSS {base:.0f} -> "
            f"{after:.0f} MB ({(after - base) * 1024 * 1024 / n:.0f} B/query)"
        )
        tiledb.stats_reset()
        tiledb.stats_disable()
        reset = rss_mb()
        print(f"after tiledb.stats_reset(): RSS {reset:.0f} MB")
        for x, y, z in idx:
            vol[x : x + 1, y : y + 1, z : z + 1]
        again = rss_mb()
        print(
            f"another {n} reads: RSS {reset:.0f} -> {again:.0f} MB "
            f"({(again - reset) * 1024 * 1024 / n:.0f} B/query)"
        )


if __name__ == "__main__":
    main()

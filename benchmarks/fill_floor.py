"""What filling the local tier costs in CPU, and the floor it sets under a loader's time to train.

The automatic tier (issue 23) holds whole volumes: a volume enters it by one whole TileDB
read and one entry write (blosc2, the tier's codec and layout). Measured here on the ltr
cohort that ``run.py`` writes (BraTS-size volumes, uint16), in ``--processes`` fresh
processes (default 3), CPU time of the process (TileDB's and blosc2's threads included),
files in the page cache (each read once first):

- ``tiledb read``: one whole volume through radiobject (``Volume.to_numpy``, RAM cache off);
- ``tier write L``: one entry written with the tier's layout at LZ4HC level ``L`` (the
  tier's own level is :data:`radiobject.read._tier_entries.CLEVEL`);
- ``tier patch L``: one random 64³ patch decoded from that entry (one thread, as the tier
  reads); ``b2-lz4hc patch``: the same from the blosc2 LZ4HC copy the loaders are compared
  with (64³ chunks, 32³ blocks, level 8).

Then the floor: filling ``n`` volumes takes ``n * (read + write)`` of CPU, which 2 cores
run in at least half that time, and the other 19 epochs decode at least their patches from
the tier (one thread: blosc2 holds the GIL). Against 1.5x the LZ4HC loader's 20-epoch time
(give it with ``--lz4hc-s per=seconds``, from a run's report), this says whether a
whole-volume tier can meet "20 epochs in <= 1.5x the LZ4HC loader's time" on this machine at
all, and what a higher level would buy in patch time for what it costs in fill time.

    python benchmarks/fill_floor.py --lz4hc-s 1=0.90,4=0.75,20=3.35
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
LEVELS = (1, 2, 5, 8)
PATCH = 64
PATCHES = 200  # per volume and measure


def _cpu_ms(fn: Callable[[], object]) -> float:
    start = time.process_time()
    fn()
    return (time.process_time() - start) * 1000


def _patch_ms(array: object, corners: list[tuple[int, ...]], out: np.ndarray) -> float:
    """CPU ms per patch: ``corners`` decoded from ``array`` into ``out`` as the tier reads."""
    from radiobject.read._tier_entries import _decode_into

    start = time.process_time()
    for corner in corners:
        _decode_into(array, tuple((a, a + PATCH) for a in corner), out)
    return (time.process_time() - start) * 1000 / len(corners)


def _one_volume(
    data: np.ndarray, lz4hc: object, tmp: str, rng: np.random.Generator
) -> dict[str, float]:
    """The tier's write and patch costs at each level for one volume, and the LZ4HC file's."""
    import blosc2

    from radiobject.read._tier_entries import _layout

    corners = [tuple(int(rng.integers(0, s - PATCH + 1)) for s in data.shape)
               for _ in range(PATCHES)]  # fmt: skip
    out = np.empty((PATCH,) * 3, data.dtype)
    chunks, blocks = _layout(data.shape, data.dtype.itemsize)
    found = {"b2-lz4hc patch": _patch_ms(lz4hc, corners, out)}
    for level in LEVELS:
        path = f"{tmp}/{level}.b2nd"
        cparams = blosc2.CParams(codec=blosc2.Codec.LZ4HC, clevel=level,
                                 filters=[blosc2.Filter.SHUFFLE], nthreads=1)  # fmt: skip
        kwargs = {"urlpath": path, "mode": "w", "chunks": chunks, "blocks": blocks,
                  "cparams": cparams}  # fmt: skip
        found[f"tier write {level}"] = _cpu_ms(lambda kw=kwargs: blosc2.asarray(data, **kw))
        entry = blosc2.open(path, mode="r", mmap_mode="r", dparams={"nthreads": 1})
        found[f"tier patch {level}"] = _patch_ms(entry, corners, out)
        found[f"tier MB {level}"] = Path(path).stat().st_size / 1e6
    return found


def measure(workdir: str, n: int, volumes: int) -> dict[str, float]:
    """Per-volume CPU milliseconds of each step, averaged over ``volumes`` volumes."""
    sys.path.insert(0, str(HERE))
    import blosc2
    import copies

    from radiobject import RadiObject, ReadConfig, Volume, configure

    c = copies.prepare(workdir, n, (240, 240, 155), PATCH, log=False,
                       folders=["radiobject", "b2-lz4hc"])  # fmt: skip
    coll = RadiObject(c.radi_uri).collection("T1w")
    rng = np.random.default_rng(0)
    sums: dict[str, float] = {}
    off = ReadConfig(cache_mb=0, local_tier_mb=0)
    with configure(read=off), tempfile.TemporaryDirectory() as tmp:
        for i, obs in enumerate(list(coll.obs_ids)[:volumes]):
            vol = Volume(coll.volume_uri(obs))
            data = vol.to_numpy(dtype=vol.stored_dtype)  # warms the page cache
            found = {"tiledb read": _cpu_ms(lambda v=vol: v.to_numpy(dtype=v.stored_dtype))}
            lz4hc = blosc2.open(str(c.path("b2-lz4hc", i)), mode="r", mmap_mode="r",
                                dparams={"nthreads": 1})  # fmt: skip
            found.update(_one_volume(data, lz4hc, tmp, rng))
            for name, value in found.items():
                sums[name] = sums.get(name, 0.0) + value / volumes
    return sums


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--processes", type=int, default=3)
    p.add_argument("--volumes", type=int, default=6, help="volumes measured per process")
    p.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "radiobject-bench"))
    p.add_argument("--lz4hc-s", default="", help="per=seconds,...: the LZ4HC loader's 20 epochs")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a measuring process
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.workdir, 24, args.volumes)))
        return
    runs = []
    for _ in range(args.processes):
        cmd = [sys.executable, __file__, "--one", "--volumes", str(args.volumes),
               "--workdir", args.workdir]  # fmt: skip
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        runs.append(json.loads(done.stdout))
    from radiobject.read._tier_entries import CLEVEL

    print(f"per volume, CPU ms (MB for sizes); {args.processes} processes x {args.volumes} "
          f"volumes, min / median / max; files in the page cache; the tier's level: "
          f"{CLEVEL}\n")  # fmt: skip
    print("| measure | min | median | max |\n|---|---|---|---|")
    med = {}
    for name in runs[0]:
        vals = sorted(r[name] for r in runs)
        med[name] = statistics.median(vals)
        print(f"| {name} | {vals[0]:.3f} | {med[name]:.3f} | {vals[-1]:.3f} |")
    if not args.lz4hc_s:
        return
    fill_ms = med["tiledb read"] + med[f"tier write {CLEVEL}"]
    print("\n| ltr row | volumes | fill CPU (s) | fills on 2 cores (s) | + 19 epochs' decodes (s) "
          "| floor (s) | 1.5x LZ4HC 20 epochs (s) |\n|---|---|---|---|---|---|---|")  # fmt: skip
    for item in args.lz4hc_s.split(","):
        per, seconds = item.split("=")
        n = 96 if int(per) == 1 else 24
        cpu = n * fill_ms / 1000
        rest = 19 * max(96, n * int(per)) * med[f"tier patch {CLEVEL}"] / 1000
        print(
            f"| {per}/vol | {n} | {cpu:.2f} | {cpu / 2:.2f} | {rest:.2f} | {cpu / 2 + rest:.2f} "
            f"| {1.5 * float(seconds):.2f} |"
        )


if __name__ == "__main__":
    main()

"""Command line: ``python -m radiobject demo`` makes the sample cohort and shows what it holds."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    from radiobject import RadiObject, TileDBStats
    from radiobject.data import make_sample_radiobject

    target = Path(args.uri) if args.uri else Path(tempfile.mkdtemp(prefix="radiobject-")) / "sample"
    shape = tuple(int(s) for s in args.shape.split("x"))
    start = time.perf_counter()
    radi = make_sample_radiobject(
        str(target), n_subjects=args.subjects, shape=shape, seed=args.seed, progress=True
    )
    took = time.perf_counter() - start
    print(f"\nWrote a sample RadiObject of {len(radi)} subjects to {target} in {took:.1f} s\n")
    print(radi)
    print("\nCollections:")
    print(radi.describe().to_string())
    print("\nSubjects (obs_meta):")
    print(radi.obs_meta.to_string(index=False))
    radi = RadiObject(str(target))
    vol = radi.T1w.iloc[0]
    z = vol.shape[2] // 2
    with TileDBStats() as stats:
        plane = vol.axial(z)
        patch = vol[: shape[0] // 2, : shape[1] // 2, : shape[2] // 2]
        again = vol[: shape[0] // 2, : shape[1] // 2, : shape[2] // 2]
    cache = stats.cache_stats()
    print(f"\n{vol!r}: shape {vol.shape}, spacing {vol.spacing}, orientation {vol.orientation}")
    print(f"axial slice z={z}: shape {plane.shape}, mean {plane.mean():.1f}")
    print(
        f"partial read {patch.shape}: mean {patch.mean():.1f} (read twice, equal: "
        f"{bool((patch == again).all())})"
    )
    print(f"tile cache: {cache.hits} hits, {cache.misses} misses, hit rate {cache.hit_rate:.0%}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m radiobject``."""
    parser = argparse.ArgumentParser(prog="radiobject", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="write the synthetic sample cohort and summarise it")
    demo.add_argument("--uri", help="where to write (default: a new temporary folder)")
    demo.add_argument("--subjects", type=int, default=8, help="number of subjects (8)")
    demo.add_argument("--shape", default="64x64x48", help="volume shape, e.g. 240x240x155")
    demo.add_argument("--seed", type=int, default=0, help="random seed (0)")
    sub.add_parser("versions", help="print the versions of radiobject and its dependencies")
    args = parser.parse_args(argv)
    if args.command == "versions":
        from radiobject import show_versions

        show_versions()
        return 0
    return _demo(args)


if __name__ == "__main__":
    sys.exit(main())

"""Command line of radiobject.

``python -m radiobject tutorials`` makes the sample data and opens JupyterLab on the
tutorials; ``python -m radiobject demo`` makes a sample cohort and prints what it holds;
``python -m radiobject warm URI`` fills the local read tier with a RadiObject or collection.
"""

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
    n = radi.n_subjects
    print(f"\nWrote a sample RadiObject of {n} subjects to {target} in {took:.1f} s\n")
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


def _warm(args: argparse.Namespace) -> int:
    from radiobject import RadiObject, ReadConfig, VolumeCollection, configure, get_config
    from radiobject._errors import NotFoundError
    from radiobject.read._local_tier import default_tier_dir

    read = get_config().read
    mb = args.mb if args.mb is not None else (read.local_tier_mb or 64 * 1024)
    folder = args.dir or read.local_tier_dir or str(default_tier_dir())
    fields = {**read.__dict__, "local_tier_mb": mb, "local_tier_dir": folder}
    with configure(read=ReadConfig(**fields)):
        start = time.perf_counter()
        try:
            target: RadiObject | VolumeCollection = RadiObject(args.uri)
        except NotFoundError:  # not a RadiObject: a collection (or a clear error about it)
            target = VolumeCollection(args.uri)
        written = target.warm_local_tier(progress=True)
    took = time.perf_counter() - start
    print(f"wrote {written} volumes to the local read tier in {folder} in {took:.1f} s")
    return 0


def _tutorials(args: argparse.Namespace) -> int:
    import os
    import shutil

    from radiobject.data import load_sample_radiobject

    radi = load_sample_radiobject(args.scale, progress=True)
    print(f"Sample data ready: {radi}")
    folder = Path(args.notebooks)
    if not folder.is_dir():
        print(
            f"no tutorials folder at {folder}; run this from a radiobject checkout", file=sys.stderr
        )
        return 2
    command = ["jupyter", "lab", f"--notebook-dir={folder}", "--ip=127.0.0.1", *args.jupyter_args]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # containers and Binder-like machines
        command.append("--allow-root")
    if args.dry_run:
        print("would run:", " ".join(command))
        return 0
    if shutil.which("jupyter") is None:
        print("JupyterLab is not installed: pip install 'radiobject[tutorials]'", file=sys.stderr)
        return 2
    os.environ.setdefault("RADIOBJECT_SCALE", args.scale or "small")
    os.execvp(command[0], command)
    return 0  # pragma: no cover - execvp does not return


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m radiobject``."""
    parser = argparse.ArgumentParser(prog="radiobject", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="write the synthetic sample cohort and summarise it")
    demo.add_argument("--uri", help="where to write (default: a new temporary folder)")
    demo.add_argument("--subjects", type=int, default=8, help="number of subjects (8)")
    demo.add_argument("--shape", default="64x64x48", help="volume shape, e.g. 240x240x155")
    demo.add_argument("--seed", type=int, default=0, help="random seed (0)")
    tut = sub.add_parser(
        "tutorials", help="make the tutorials' sample data, then open JupyterLab on notebooks/"
    )
    tut.add_argument(
        "--scale",
        choices=["small", "medium", "full"],
        default=None,
        help="sample size (default: $RADIOBJECT_SCALE or small)",
    )
    tut.add_argument("--notebooks", default="notebooks", help="tutorials folder (notebooks)")
    tut.add_argument("--dry-run", action="store_true", help="prepare data, print the command")
    tut.epilog = "Any other option goes to jupyter lab, e.g. --no-browser --port 8899."
    sub.add_parser("versions", help="print the versions of radiobject and its dependencies")
    warm = sub.add_parser(
        "warm", help="fill the local read tier with every volume of a RadiObject or collection"
    )
    warm.add_argument("uri", help="the RadiObject or VolumeCollection")
    warm.add_argument("--mb", type=int, default=None, help="tier budget in MiB (default: 64 GiB)")
    warm.add_argument("--dir", default=None, help="tier folder (default: the user cache dir)")
    args, unknown = parser.parse_known_args(argv)
    if args.command != "tutorials" and unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    # jupyter lab's own options pass through in the order given ("--" is optional)
    args.jupyter_args = [a for a in unknown if a != "--"]
    if args.command == "tutorials":
        return _tutorials(args)
    if args.command == "warm":
        return _warm(args)
    if args.command == "versions":
        from radiobject import show_versions

        show_versions()
        return 0
    return _demo(args)


if __name__ == "__main__":
    sys.exit(main())

"""S3 scenario: radiobject against zarr v3 over s3fs, on a local S3 server (moto on 127.0.0.1).

Not part of the test suite. One run starts moto in a subprocess on 127.0.0.1, writes a
BraTS-like cohort (``make_sample_radiobject(shape=BRATS_SHAPE, n_subjects=4)``) to S3, copies
its T1w volumes to zarr v3 arrays on the same server (64^3 chunks, ``ZstdCodec(level=3)``,
through s3fs), then measures

* 64^3 patches per second at 1 and at 20 patches per volume: radiobject ``Volume`` reads
  (its block cache emptied before each volume, so 1 patch per volume is always cold, and 20
  patches share what the first ones fetched), radiobject's training DataLoader, and zarr
  slices of the same positions;
* full-volume reads with ``S3Config(max_parallel_ops=1, 8, 32)``, cold, with TileDB's read
  counts: of the T1w volumes, and of one 21 MiB single-tile volume. TileDB 2.30 splits one
  read over ``max_parallel_ops`` connections only when it holds at least twice
  ``vfs.min_parallel_size`` (10 MiB): a compressed 64^3 tile never does.

Every loop is bounded, and the server is stopped at the end, also on error. moto is a
single Python process on this machine: absolute numbers say nothing about AWS, and
ratios measure per-request overhead more than bandwidth.

    . /work/venv/bin/activate
    python benchmarks/s3_bench.py               # 4 subjects of 240x240x155
    python benchmarks/s3_bench.py --quick       # 2 subjects of 128x128x96: a smoke run
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np

BUCKET = "radiobject-bench"
PATCH = 64
KEY, SECRET = "bench-key", "bench-secret"


# -- the server ----------------------------------------------------------------------------


def start_server(log: Path) -> tuple[subprocess.Popen, str]:
    """moto on a free port of 127.0.0.1, with one bucket; returns the process and endpoint."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    endpoint = f"http://127.0.0.1:{port}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    for _ in range(150):
        if proc.poll() is not None:
            raise RuntimeError(f"moto exited with code {proc.returncode}; see {log}")
        try:
            opener.open(f"{endpoint}/moto-api/data.json", timeout=2).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        stop_server(proc)
        raise RuntimeError("moto did not start within 15 s")
    import boto3

    boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=KEY,
        aws_secret_access_key=SECRET,
    ).create_bucket(Bucket=BUCKET)
    return proc, endpoint


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


# -- the stores ----------------------------------------------------------------------------


def zarr_store(endpoint: str, path: str):
    from zarr.storage import FsspecStore

    return FsspecStore.from_url(
        f"s3://{BUCKET}/{path}",
        storage_options={
            "key": KEY,
            "secret": SECRET,
            "endpoint_url": endpoint,
            "client_kwargs": {"region_name": "us-east-1"},
            "asynchronous": True,
        },
    )


def write_zarr(endpoint: str, path: str, array: np.ndarray) -> None:
    import zarr
    import zarr.codecs

    arr = zarr.create_array(
        store=zarr_store(endpoint, path),
        shape=array.shape,
        chunks=(PATCH, PATCH, PATCH),
        dtype=array.dtype,
        compressors=zarr.codecs.ZstdCodec(level=3),
    )
    arr[...] = array


def open_zarr(endpoint: str, path: str):
    import zarr

    return zarr.open_array(store=zarr_store(endpoint, path), mode="r")


# -- measurements --------------------------------------------------------------------------


def positions(shape: tuple[int, ...], n: int, seed: int) -> list[tuple[int, int, int]]:
    rng = np.random.default_rng(seed)
    return [tuple(int(rng.integers(0, s - PATCH + 1)) for s in shape[:3]) for _ in range(n)]


def patches_per_second(
    volumes: list,
    read: Callable[[object, tuple[int, int, int]], np.ndarray],
    k: int,
    rounds: int,
    before_volume: Callable[[], None] = lambda: None,
) -> float:
    """Read ``k`` patches from each volume, ``rounds`` times; patches per second."""
    n = 0
    start = time.perf_counter()
    for r in range(rounds):
        for v, vol in enumerate(volumes):
            before_volume()
            for x, y, z in positions(vol.shape, k, seed=1000 * r + v):
                patch = read(vol, (x, y, z))
                assert patch.shape == (PATCH, PATCH, PATCH)
                n += 1
    return n / (time.perf_counter() - start)


def loader_per_second(collection, k: int, rounds: int, before_round: Callable[[], None]) -> float:
    """radiobject's training DataLoader (one process), ``rounds`` epochs; samples per second."""
    from radiobject.ml import create_training_dataloader

    loader = create_training_dataloader(
        collection,
        batch_size=4,
        patch_size=(PATCH, PATCH, PATCH),
        patches_per_volume=k,
        num_workers=0,
        drop_last=False,
    )
    n = 0
    start = time.perf_counter()
    for _ in range(rounds):
        before_round()  # an epoch visits each volume once: 1 patch per volume reads cold
        for batch in loader:
            n += batch["image"].shape[0]
    return n / (time.perf_counter() - start)


def full_reads(label: str, volumes: Callable[[], list], repeats: int) -> None:
    """Cold full-volume reads with max_parallel_ops = 1, 8, 32: time and TileDB's counts."""
    from radiobject import ReadConfig, TileDBStats, configure

    print(f"\nFull-volume reads from S3, cold, median of {repeats}: {label}")
    print(
        f"  {'max_parallel_ops':>16} {'s/volume':>9} {'MB/s':>7} {'stored MB':>10} "
        f"{'read ops':>9} {'requests':>9}"
    )
    for ops in (1, 8, 32):
        configure(s3={"max_parallel_ops": ops}, read=ReadConfig(cache_mb=0))
        times, io, n, mbytes = [], None, 0, 0.0
        for r in range(repeats):
            fresh = volumes()  # a new context opens every array again
            n = len(fresh)
            with TileDBStats() as stats:
                start = time.perf_counter()
                mbytes = sum(vol.to_numpy().nbytes for vol in fresh) / 1e6
                times.append(time.perf_counter() - start)
            io = stats.s3_stats()
            # the next repeat gets a new context (empty read-ahead cache), same max_parallel_ops
            configure(s3={"connect_timeout_ms": 3000 + r + 1})
        mid = statistics.median(times)
        assert io is not None
        print(
            f"  {ops:>16} {mid / n:>9.3f} {mbytes / mid:>7.0f} {io.bytes_read / 1e6 / n:>10.1f} "
            f"{io.read_ops / n:>9.0f} {io.requests / n:>9.0f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="2 subjects of 128x128x96")
    parser.add_argument("--repeats", type=int, default=3, help="full-volume reads per setting")
    args = parser.parse_args()

    os.environ.setdefault("AWS_ACCESS_KEY_ID", KEY)
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", SECRET)
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

    from radiobject import CompressionConfig, S3Config, TileConfig, Volume, clear_caches, configure
    from radiobject.data import BRATS_SHAPE, make_sample_radiobject

    shape = (128, 128, 96) if args.quick else BRATS_SHAPE
    n_subjects = 2 if args.quick else args.subjects
    work = Path(tempfile.mkdtemp(prefix="radiobject-s3-bench-"))
    proc, endpoint = start_server(work / "moto.log")
    try:
        configure(
            s3=S3Config(
                endpoint=endpoint,
                scheme="http",
                use_virtual_addressing=False,
                aws_access_key_id=KEY,
                aws_secret_access_key=SECRET,
            )
        )
        print(f"moto at {endpoint}; cohort: {n_subjects} subjects of {shape}")
        t0 = time.perf_counter()
        radi = make_sample_radiobject(
            f"s3://{BUCKET}/radi", n_subjects=n_subjects, shape=shape, progress=False
        )
        t1w = radi.T1w
        volumes = list(t1w)
        print(f"  radiobject written to S3 in {time.perf_counter() - t0:.1f} s")

        zarr_ok = True
        try:
            import s3fs  # noqa: F401
            import zarr  # noqa: F401
        except ImportError as e:
            zarr_ok = False
            print(f"  zarr over S3 skipped: {e}")
        if zarr_ok:
            t0 = time.perf_counter()
            for vol in volumes:
                write_zarr(endpoint, f"zarr/{vol.uri.rsplit('/', 1)[-1]}.zarr", vol.to_numpy())
            zarrs = [open_zarr(endpoint, f"zarr/{v.uri.rsplit('/', 1)[-1]}.zarr") for v in volumes]
            for vol, z in zip(volumes, zarrs, strict=True):  # same voxels, same positions
                x, y, w = positions(vol.shape, 1, seed=7)[0]
                box = np.s_[x : x + PATCH, y : y + PATCH, w : w + PATCH]
                np.testing.assert_array_equal(vol[box], z[box])
            print(
                f"  zarr v3 (64^3 chunks, zstd) written over s3fs in "
                f"{time.perf_counter() - t0:.1f} s"
            )

        def radi_read(vol, p):
            x, y, z = p
            return vol[x : x + PATCH, y : y + PATCH, z : z + PATCH]

        def zarr_read(arr, p):
            x, y, z = p
            return arr[x : x + PATCH, y : y + PATCH, z : z + PATCH]

        rows = []
        for k, rounds in ((1, 5), (20, 1)):
            rows.append(
                (
                    f"radiobject Volume, {k} patch/vol",
                    patches_per_second(volumes, radi_read, k, rounds, clear_caches),
                )
            )
            loader_rate = loader_per_second(t1w, k, rounds, clear_caches)
            rows.append((f"radiobject DataLoader, {k} patch/vol", loader_rate))
            if zarr_ok:
                rows.append(
                    (
                        f"zarr v3 + s3fs, {k} patch/vol",
                        patches_per_second(zarrs, zarr_read, k, rounds),
                    )
                )

        print("\n64^3 patches from S3 (samples/s, one process):")
        print(f"  {'reader':<36} {'samples/s':>10}")
        for name, rate in rows:
            print(f"  {name:<36} {rate:>10.1f}")
        if zarr_ok:
            for k in (1, 20):
                ours = next(r for n, r in rows if n.startswith(f"radiobject Volume, {k} "))
                theirs = next(r for n, r in rows if n.startswith(f"zarr v3 + s3fs, {k} "))
                print(f"  radiobject / zarr at {k} patch/vol: {ours / theirs:.2f}x")

        full_reads(
            f"{len(volumes)} T1w volumes of the cohort (64^3 tiles, zstd)",
            lambda: list(radi.T1w),
            args.repeats,
        )
        big = np.random.default_rng(0).random((256, 256, 84), dtype=np.float32)  # 21 MiB
        Volume.from_numpy(
            f"s3://{BUCKET}/large",
            big,
            tile=TileConfig(extents=big.shape),
            compression=CompressionConfig("none"),
        )
        full_reads(
            "1 volume of 21 MiB in one uncompressed tile (noise)",
            lambda: [Volume(f"s3://{BUCKET}/large")],
            args.repeats,
        )
        print("\n(moto on 127.0.0.1 in one Python process: compare ratios, not absolute values)")
    finally:
        stop_server(proc)


if __name__ == "__main__":
    main()

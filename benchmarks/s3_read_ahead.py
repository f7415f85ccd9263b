"""First epoch from S3 with real latency: the loader's read-ahead off and on.

Not part of the test suite. Starts moto on 127.0.0.1 (as ``s3_bench.py`` does), puts a small
TCP proxy in front of it that holds back the first bytes of every request for ``--delay-ms``
(20 ms: a request to a nearby S3 region), writes a cohort to the bucket directly and reads it
through the proxy: the first epoch of a training loader (64^3 patches, 1 per volume, caches
emptied before each run), with ``ReadConfig.read_ahead`` off and at several depths, in the
main process and with worker processes. Prints a table naming the machine.

    python benchmarks/s3_read_ahead.py                  # 32 subjects of 128x128x96, 20 ms
    python benchmarks/s3_read_ahead.py --quick          # 8 subjects: a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import machine

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from s3_bench import BUCKET, KEY, SECRET, start_server, stop_server

PATCH = 64


class DelayProxy:
    """A TCP proxy on 127.0.0.1 that delays the first bytes of each request by ``delay`` s.

    A request starts when the client sends after the server answered (HTTP/1.1 requests
    on one connection come one after another), so every request waits ``delay`` once. It
    runs in a process of its own: TileDB holds the GIL in some calls (opening a group), so
    a proxy thread in the reading process would stall with it.
    """

    def __init__(self, upstream_port: int, delay: float) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self._count = ctx.Value("q", 0)
        self._delay = ctx.Value("d", delay)
        receive, send = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(
            target=_serve, args=(upstream_port, self._delay, self._count, send), daemon=True
        )
        self._proc.start()
        self.port = int(receive.recv())

    def set_delay(self, delay: float) -> None:
        """Delay requests from now on by ``delay`` seconds."""
        self._delay.value = delay

    @property
    def requests(self) -> int:
        """Requests forwarded so far."""
        return int(self._count.value)

    def close(self) -> None:
        self._proc.terminate()
        self._proc.join(timeout=10)


def _serve(upstream_port: int, delay, count, send) -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    send.send(sock.getsockname()[1])
    lock = threading.Lock()

    def up(src: socket.socket, dst: socket.socket, fresh: list[bool]) -> None:
        try:
            while data := src.recv(1 << 16):
                if fresh[0]:
                    fresh[0] = False
                    with lock:
                        count.value += 1
                    time.sleep(delay.value)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def down(src: socket.socket, dst: socket.socket, fresh: list[bool]) -> None:
        try:
            while data := src.recv(1 << 16):
                fresh[0] = True
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.close()

    while True:
        client, _ = sock.accept()
        upstream = socket.create_connection(("127.0.0.1", upstream_port))
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        fresh = [True]
        threading.Thread(target=up, args=(client, upstream, fresh), daemon=True).start()
        threading.Thread(target=down, args=(upstream, client, fresh), daemon=True).start()


def first_epoch(
    uri: str, read_ahead: int, workers: int, threads: int, proxy: DelayProxy | None
) -> tuple[float, float, int]:
    """Samples per second of one cold first epoch; seconds; requests through the proxy."""
    from radiobject import RadiObject, ReadConfig, clear_caches, configure, get_config
    from radiobject.ml import create_training_dataloader

    read = get_config().read
    # read_ahead 0 here means off: remote volumes would otherwise get remote_read_ahead
    settings = {
        **read.__dict__,
        "read_ahead": read_ahead,
        "remote_read_ahead": read_ahead,
        "remote_threads": threads,
    }
    configure(read=ReadConfig(**settings))
    # a new TileDB context (nothing it cached survives) and empty radiobject caches
    configure(s3={"connect_timeout_ms": get_config().s3.connect_timeout_ms + 1})
    clear_caches()
    radi = RadiObject(uri)
    loader = create_training_dataloader(
        radi.T1w,
        batch_size=4,
        patch_size=(PATCH, PATCH, PATCH),
        patches_per_volume=1,
        num_workers=workers,
        drop_last=False,
        seed=1,
    )
    before = proxy.requests if proxy else 0
    n = 0
    start = time.perf_counter()
    for batch in loader:
        n += batch["image"].shape[0]
    seconds = time.perf_counter() - start
    del loader
    return n / seconds, seconds, (proxy.requests - before) if proxy else 0


def local(args: argparse.Namespace) -> None:
    """The same first epoch from a local folder (no S3, no proxy)."""
    from radiobject.data import make_sample_radiobject

    uri = str(Path(tempfile.mkdtemp(prefix="radiobject-local-ahead-")) / "radi")
    make_sample_radiobject(
        uri,
        n_subjects=args.subjects,
        shape=tuple(args.shape),
        modalities=("T1w",),
        progress=False,
    )
    print(
        f"machine {machine.describe()}; local TileDB, "
        f"{args.subjects} subjects of {tuple(args.shape)} float32; first epoch, 1 patch/volume"
    )
    print(f"  {'workers':>7} {'read_ahead':>10} {'samples/s':>10} {'epoch s':>8} {'vs off':>7}")
    for workers in [int(w) for w in args.workers.split(",")]:
        if workers:
            first_epoch(uri, 0, workers, 4, None)
        base = None
        for depth in [int(d) for d in args.depths.split(",")]:
            rate, seconds, _ = first_epoch(uri, depth, workers, 4, None)
            base = rate if depth == 0 else base
            gain = f"{rate / base:.2f}x" if base else "-"
            print(f"  {workers:>7} {depth:>10} {rate:>10.1f} {seconds:>8.2f} {gain:>7}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=32)
    parser.add_argument("--shape", type=int, nargs=3, default=(128, 128, 96))
    parser.add_argument("--delay-ms", type=float, default=20.0)
    parser.add_argument("--depths", default="0,16,32,64")
    parser.add_argument("--threads", default="16,32", help="ReadConfig.remote_threads")
    parser.add_argument("--workers", default="0,2")
    parser.add_argument("--concurrency", type=int, default=None, help="ReadConfig.concurrency")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--local", action="store_true", help="a local folder, no S3")
    args = parser.parse_args()
    if args.quick:
        args.subjects = 8
    if args.local:
        local(args)
        return

    os.environ.setdefault("AWS_ACCESS_KEY_ID", KEY)
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", SECRET)
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    from radiobject import S3Config, configure, get_config
    from radiobject.data import make_sample_radiobject

    work = Path(tempfile.mkdtemp(prefix="radiobject-s3-ahead-"))
    proc, endpoint = start_server(work / "moto.log")
    proxy = DelayProxy(int(endpoint.rsplit(":", 1)[1]), args.delay_ms / 1000)

    def s3(at: str) -> S3Config:
        return S3Config(
            endpoint=at,
            scheme="http",
            use_virtual_addressing=False,
            aws_access_key_id=KEY,
            aws_secret_access_key=SECRET,
        )

    try:
        configure(s3=s3(endpoint))
        uri = f"s3://{BUCKET}/radi"
        make_sample_radiobject(
            uri,
            n_subjects=args.subjects,
            shape=tuple(args.shape),
            modalities=("T1w",),
            progress=False,
        )
        configure(s3=s3(f"http://127.0.0.1:{proxy.port}"))
        if args.concurrency:
            configure(read={"concurrency": args.concurrency})
        described = f"machine {machine.describe()}"
        described += f"; ReadConfig.concurrency={get_config().read.concurrency}"
        print(
            f"{described}\nmoto behind a proxy adding 0 or {args.delay_ms:.0f} ms per request "
            "(0: what moto and this machine allow at most); "
            f"{args.subjects} subjects of {tuple(args.shape)} float32, 64^3 tiles; "
            "first epoch of create_training_dataloader (batch 4, one 64^3 patch per volume), "
            "caches emptied"
        )
        print(
            f"  {'delay':>5} {'workers':>7} {'threads':>7} {'read_ahead':>10} {'samples/s':>10} "
            f"{'epoch s':>8} {'requests':>9} {'vs off':>7}"
        )
        rates: dict[tuple[float, int, int, int], float] = {}
        for workers in [int(w) for w in args.workers.split(",")]:
            if workers:  # warm up the workers' imports: not part of an epoch
                first_epoch(uri, 0, workers, 4, proxy)
            for threads in [int(t) for t in args.threads.split(",")]:
                for delay in (0.0, args.delay_ms):
                    proxy.set_delay(delay / 1000)
                    base = None
                    for depth in [int(d) for d in args.depths.split(",")]:
                        rate, seconds, requests = first_epoch(uri, depth, workers, threads, proxy)
                        rates[(delay, workers, threads, depth)] = rate
                        base = rate if depth == 0 else base
                        gain = f"{rate / base:.2f}x" if base else "-"
                        print(
                            f"  {delay:>5.0f} {workers:>7} {threads:>7} {depth:>10} "
                            f"{rate:>10.1f} {seconds:>8.2f} {requests:>9} {gain:>7}",
                            flush=True,
                        )
        summarize(rates, args.delay_ms)
    finally:
        proxy.close()
        stop_server(proc)


def summarize(rates: dict[tuple[float, int, int, int], float], delay_ms: float) -> None:
    """The issue's target, and how much of the machine's no-latency ceiling was reached."""
    slow = {k: v for k, v in rates.items() if k[0] == delay_ms}
    off = max(v for k, v in slow.items() if k[3] == 0)  # the best configuration without it
    best_key = max((k for k in slow if k[3] > 0), key=lambda k: slow[k])
    ceiling = max(v for k, v in rates.items() if k[0] == 0)
    gain = slow[best_key] / off
    _, workers, threads, depth = best_key
    print(
        f"target: S3 with {delay_ms:.0f} ms per request, first epoch, read-ahead >= 5x without "
        f"it (best of each; workers {workers}, threads {threads}, depth {depth}): {gain:.2f}x "
        f"-> {'met' if gain >= 5 else 'missed'}\n"
        f"  the best at {delay_ms:.0f} ms is {slow[best_key] / ceiling:.0%} of the best with no "
        f"latency ({ceiling:.1f} samples/s: what moto, the proxy and the reader allow on this "
        "machine's cores)"
    )


if __name__ == "__main__":
    main()

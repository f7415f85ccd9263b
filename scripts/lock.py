"""Resolve radiobject's environments against the newest releases; report, or write the locks.

The development, tutorial and Binder environments install from ``constraints.txt``; the
benchmarks from ``benchmarks/constraints.txt``. Both are ``pip freeze`` output of a fresh venv
that resolved the project's ranges against the newest releases *and then passed the whole
test suite*, so a newcomer on any later day gets the set that CI tested.

    python scripts/lock.py check     # fresh venvs, unpinned: report what resolves and what broke
    python scripts/lock.py refresh   # the same, then rewrite both lock files (commit the diff)

It needs the package registry and takes 10-20 minutes (the suite runs once); it is not part
of CI. ``check`` also installs ``.[ml]`` alone, unpinned, as a user would.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCH = "torch==2.13.0"  # the CPU build; a plain "torch" pulls a multi-GB CUDA build
LOCKS = {"dev": ROOT / "constraints.txt", "bench": ROOT / "benchmarks" / "constraints.txt"}


@dataclass
class Step:
    """One environment: its extra, whether it installed and passed, and what pip said."""

    extra: str
    ok: bool = False
    seconds: float = 0.0
    detail: str = ""
    freeze: str = ""


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    # the venv's own commands (jupyter, lint-imports, ...) first on PATH, as if activated
    bindir = str(Path(cmd[0]).parent)
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", "")}
    return subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=cwd, env=env)


def _venv(work: Path, name: str) -> Path:
    env = work / name
    _run([sys.executable, "-m", "venv", str(env)])
    py = env / "bin" / "python"
    _run([str(py), "-m", "pip", "install", "-q", "--upgrade", "pip"])
    return py


def _tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def resolve(work: Path, extra: str, *, run_tests: bool) -> Step:
    """Install ``.[extra]`` unpinned into a fresh venv; optionally run the suite in it."""
    step = Step(extra)
    start = time.perf_counter()
    py = _venv(work, f"venv-{extra}")
    for cmd in ([TORCH], ["-e", f".[{extra}]"]):
        r = _run([str(py), "-m", "pip", "install", "-q", *cmd], cwd=ROOT)
        if r.returncode != 0:
            step.detail = f"pip install {' '.join(cmd)} failed:\n{_tail(r.stderr or r.stdout)}"
            step.seconds = time.perf_counter() - start
            return step
    if run_tests:
        r = _run([str(py), "-m", "pytest", "-q", "-x", "-p", "no:randomly"], cwd=ROOT)
        if r.returncode != 0:
            step.detail = f"the test suite failed:\n{_tail(r.stdout, 30)}"
            step.seconds = time.perf_counter() - start
            return step
        step.detail = _tail(r.stdout, 1)
    freeze = _run([str(py), "-m", "pip", "freeze", "--exclude-editable"])
    # "torch==2.13.0+cpu" -> "torch==2.13.0": a pin without the local label matches every build
    step.freeze = "".join(
        line.split("+", 1)[0] + "\n"
        for line in freeze.stdout.splitlines()
        if "==" in line and not line.startswith("-e ")
    )
    step.ok = True
    step.seconds = time.perf_counter() - start
    return step


def _header(extra: str) -> str:
    today = datetime.date.today().isoformat()
    return (
        f"# Lock of radiobject's [{extra}] environment, written by `python scripts/lock.py "
        "refresh`\n"
        f"# on {today} (Python {platform.python_version()}, {platform.machine()}): the newest "
        "releases that\n"
        "# the project's ranges allow, after the whole test suite passed with them. Use it as "
        "a pip\n"
        f'# constraints file: pip install -e ".[{extra}]" -c <this file>\n'
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``check`` or ``refresh``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["check", "refresh"])
    parser.add_argument("--keep", action="store_true", help="keep the venvs (for debugging)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="radiobject-lock-"))
    try:
        steps = [
            resolve(work, "dev", run_tests=True),
            resolve(work, "bench", run_tests=False),
            resolve(work, "ml", run_tests=False),  # what a user installs into their own env
        ]
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{'extra':<8} {'result':<8} {'time':>7}")
    for s in steps:
        print(f"{s.extra:<8} {'ok' if s.ok else 'BROKEN':<8} {s.seconds:>6.0f}s")
    for s in steps:
        if s.detail:
            print(f"\n[{s.extra}] {s.detail}")
    if not all(s.ok for s in steps):
        print("\nnothing written: fix the ranges in pyproject.toml (or the code), then retry")
        return 1
    if args.command == "refresh":
        for s in steps:
            if s.extra in LOCKS:
                LOCKS[s.extra].write_text(_header(s.extra) + s.freeze)
                print(
                    f"wrote {LOCKS[s.extra].relative_to(ROOT)} ({len(s.freeze.splitlines())} pins)"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())

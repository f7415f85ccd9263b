"""How a loader's worker processes start: ``forkserver`` where it can, ``fork`` where only it can.

A ``forkserver`` worker comes from a server process that never opened TileDB and runs no
thread of the parent's: nothing the parent is doing at that moment can leave a lock held in
the worker. It imports the main script again and unpickles the dataset, so it cannot start
from a plain script whose top-level code (outside ``if __name__ == "__main__":``) makes and
iterates the loader (every worker would run it again), nor load a class or function defined
in a notebook and sent to it by reference (a ``worker_init_fn``, a ``collate_fn``, a dataset
class; transforms travel by value). Loaders given no ``multiprocessing_context`` use ``fork``
there on Linux, as any PyTorch ``DataLoader`` does: :func:`choose_start_method`.

``fork`` copies the parent. Everything radiobject keeps per process (TileDB contexts, open
arrays, caches, thread pools, locks, the local tier's writer, read-ahead) lives in one
:class:`~radiobject._process.ProcessState` that a forked child replaces with an empty one,
so a worker never uses nor frees its parent's (``tests/_fork_stress.py`` forks 200 times
while radiobject's reader threads, the tier writer and read-ahead are busy). What radiobject
cannot reset is TileDB's own process-wide state: a fork while another thread of the parent
is opening or closing an array leaves TileDB's array-registry mutex locked in the child,
which hangs at its first array open (seen once in about 1,000 forks with TileDB-Py reads
opening and closing arrays in a loop in parent threads; radiobject's threads keep their
arrays open). Hence ``forkserver`` wherever it can work.

TileDB-Py wraps ``os.fork`` to warn that deadlocks are likely after a context was made, and
Python 3.12+ warns when a multi-threaded process forks. radiobject's fork context leaves both
out of its own worker starts (a ``warnings.catch_warnings`` block around that one ``fork``;
any other fork still warns): the worker starts because nothing else can.

Where a start method cannot work (asked for explicitly, or off Linux),
:func:`check_workers_can_start` says so with a :class:`~radiobject.ConfigurationError` before
any worker starts, instead of a worker that dies with Python's "bootstrapping phase" error or
"Can't get attribute ... on __main__".
"""

from __future__ import annotations

import ast
import contextlib
import functools
import io
import multiprocessing
import os
import pickle
import sys
import threading
import types
import warnings
from collections.abc import Callable, Sequence
from multiprocessing.context import BaseContext
from typing import Any

from radiobject._errors import ConfigurationError
from radiobject.ml._queues import direct_queue, with_direct

__all__ = [
    "add_forkserver_preload",
    "check_workers_can_start",
    "choose_start_method",
    "default_start_method",
    "mp_context",
]

PRELOAD = ("torch", "numpy", "radiobject.ml")

# what a fork of radiobject's workers would warn about (matched from the message's start)
_TILEDB_FORK_WARNING = r"TileDB is a multithreading library and deadlocks are likely"
_THREADED_FORK_WARNING = r"This process \(pid=\d+\) is multi-threaded, use of fork\(\)"
_GUARD = 'if __name__ == "__main__":'


def default_start_method() -> str:
    """``forkserver`` where the platform has it, else ``spawn``.

    Loaders given no ``multiprocessing_context`` use it wherever its workers can start
    (:func:`choose_start_method`):

    >>> import os, tempfile
    >>> from radiobject.data import make_sample_radiobject
    >>> radi = make_sample_radiobject(os.path.join(tempfile.mkdtemp(), "r"), n_subjects=2,
    ...                               shape=(16, 16, 12), modalities=("T1w",), progress=False)
    >>> from radiobject.ml import create_training_dataloader, default_start_method
    >>> default_start_method()  # on Linux and macOS
    'forkserver'
    >>> loader = create_training_dataloader(radi.T1w, batch_size=2, num_workers=2)
    >>> loader.multiprocessing_context.get_start_method()
    'forkserver'
    >>> forked = create_training_dataloader(radi.T1w, num_workers=2, multiprocessing_context="fork")
    >>> forked.multiprocessing_context.get_start_method()
    'fork'
    """
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def choose_start_method(sent: Callable[[], Sequence[Any]]) -> str:
    """:func:`default_start_method`, or ``fork`` on Linux where its workers cannot start.

    ``sent()`` is what the workers are sent (see :func:`check_workers_can_start`). Called
    from a guarded script, a test or a notebook whose functions travel by value, it is the
    default:

    >>> choose_start_method(lambda: [len])
    'forkserver'
    """
    method = default_start_method()
    try:
        check_workers_can_start(method, sent)
    except ConfigurationError:
        if sys.platform.startswith("linux"):
            return "fork"  # the only way these workers start; elsewhere the error comes later
    return method


class _ForkProcess(multiprocessing.context.ForkProcess):
    """A forked worker whose start leaves out the warnings about state radiobject rebuilds."""

    @staticmethod
    def _Popen(process_obj: Any) -> Any:  # multiprocessing's name
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", _TILEDB_FORK_WARNING, UserWarning)
            warnings.filterwarnings("ignore", _THREADED_FORK_WARNING, DeprecationWarning)
            return multiprocessing.context.ForkProcess._Popen(process_obj)


class _ForkContext(multiprocessing.context.ForkContext):
    Process = _ForkProcess
    Queue = direct_queue


def mp_context(method: str | BaseContext | None, preload: Sequence[str] = PRELOAD) -> BaseContext:
    """The multiprocessing context of ``method`` (None: :func:`default_start_method`).

    ``fork`` is radiobject's fork context; a fork server imports ``preload`` once, so its
    workers start warm (see :func:`add_forkserver_preload`). radiobject's contexts make the
    loader's queues :class:`~radiobject.ml._queues.DirectQueue` (no feeder thread per queue
    for small messages). A context given is used as it is (a ``fork`` one becomes
    radiobject's fork context).

    >>> mp_context("fork").get_start_method(), mp_context("spawn").get_start_method()
    ('fork', 'spawn')
    >>> mp_context("forks")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    radiobject._errors.ConfigurationError: multiprocessing_context 'forks' is not a start ...
    """
    if isinstance(method, BaseContext):
        name = method.get_start_method()
        return _ForkContext() if name == "fork" else method
    name = method or default_start_method()
    available = multiprocessing.get_all_start_methods()
    if name not in available:
        raise ConfigurationError(
            f"multiprocessing_context {method!r} is not a start method of this platform; use "
            f"one of {available}, a multiprocessing context, or None for radiobject's choice"
        )
    if name == "fork":
        return _ForkContext()
    if name == "forkserver":
        add_forkserver_preload(preload)
    return with_direct(multiprocessing.get_context(name))


def add_forkserver_preload(modules: Sequence[str]) -> None:
    """Add ``modules`` to what the process's fork server imports when it starts.

    Python has one fork server per process, and its preload list is process-wide: a loader's
    ``forkserver`` workers come from it, so their start is warm only if the server imported
    torch and radiobject once. radiobject *adds* its modules to the list (the user's own
    ``set_forkserver_preload`` entries stay, in their order) and only before the server has
    started (after, the list is read by nobody: nothing is changed). To keep the fork
    server's list as it is, pass a context of your own (``multiprocessing_context=
    multiprocessing.get_context("forkserver")``): radiobject uses a context it is given as
    it is.
    """
    server = _forkserver()
    if server is None or getattr(server, "_forkserver_pid", None) is not None:
        return  # no fork server here, or it runs: its imports are done
    current = _forkserver_preload()
    merged = with_modules(current, modules)
    if merged != current:  # what multiprocessing's set_forkserver_preload calls
        server.set_forkserver_preload(merged)


def with_modules(current: Sequence[str], modules: Sequence[str]) -> list[str]:
    """``current`` then the ``modules`` not in it: a preload list that drops nothing.

    >>> with_modules(["__main__", "json"], ["json", "numpy"])
    ['__main__', 'json', 'numpy']
    """
    return [*current, *(m for m in modules if m not in current)]


def _forkserver() -> Any:
    """The process's fork server (``multiprocessing.forkserver``'s), None where there is none."""
    try:
        from multiprocessing import forkserver
    except ImportError:  # Windows
        return None
    return getattr(forkserver, "_forkserver", None)


def _forkserver_preload() -> list[str]:
    """The modules the process's fork server will import (Python keeps no public getter)."""
    return list(getattr(_forkserver(), "_preload_modules", None) or ["__main__"])


def check_workers_can_start(method: str, sent: Callable[[], Sequence[Any]]) -> None:
    """Raise :class:`~radiobject.ConfigurationError` if ``method`` workers cannot start here.

    ``fork`` always can. A ``spawn`` or ``forkserver`` worker imports the main script again:
    top-level code outside ``if __name__ == "__main__":`` runs again in every worker (which
    starts workers of its own, and Python stops it). Without a script (a notebook, ``-c``)
    the worker has no ``__main__`` to import, so a class or function defined there (in
    ``sent()``: what the workers are sent) cannot be found in the worker. Both errors name
    the fix.

    >>> check_workers_can_start("fork", lambda: [])  # fork copies the parent: nothing to check
    >>> check_workers_can_start("spawn", lambda: [len])  # run from a guarded script (pytest)
    """
    if method == "fork":
        return
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is not None and path:
        if not os.path.isfile(path):  # e.g. a script piped in: "<stdin>"
            raise ConfigurationError(
                f"{method!r} workers import the main script again, and {path!r} is not a file "
                f"they can read; run the script from a file, or leave multiprocessing_context "
                f"unset (fork on Linux) or set it to 'fork'"
            )
        line = _main_thread_line(main)
        if line is not None and not _guarded(os.path.abspath(path), line):
            raise ConfigurationError(
                f"{method!r} workers import the main script {path} again, and its line {line} "
                f"(outside `{_GUARD}`) would start workers again in each of them; put the "
                f"script's top-level code under `{_GUARD}`, or leave multiprocessing_context "
                f"unset (fork on Linux) or set it to 'fork'"
            )
        return
    found = main_references(sent())
    if found:
        raise ConfigurationError(
            f"{', '.join(found)} defined in the notebook or interactive session (__main__) "
            f"cannot be loaded by {method!r} workers, which have no __main__ to import them "
            f"from; define {'them' if len(found) > 1 else 'it'} in a module (a .py file next "
            f"to the notebook) and import {'them' if len(found) > 1 else 'it'}, or leave "
            f"multiprocessing_context unset (fork on Linux) or set it to 'fork'"
        )


def _main_thread_line(main: types.ModuleType) -> int | None:
    """The line of ``main``'s top-level code the main thread is running, if it is there."""
    main_thread = threading.main_thread().ident
    frame = sys._current_frames().get(main_thread) if main_thread is not None else None
    while frame is not None:
        if frame.f_code.co_name == "<module>" and frame.f_globals is vars(main):
            return frame.f_lineno
        frame = frame.f_back
    return None


def _guarded(path: str, line: int) -> bool:
    r"""Whether ``line`` of the script at ``path`` is inside ``if __name__ == "__main__":``.

    A script that cannot be read or parsed counts as guarded (nothing to tell).

    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
    ...     _ = f.write('x = 1\nif "__main__" == __name__:\n    y = 2\n')
    >>> _guarded(f.name, 1), _guarded(f.name, 3)
    (False, True)
    """
    try:
        mtime = os.stat(path).st_mtime_ns
    except OSError:
        return True
    spans = _guard_spans(path, mtime)
    return spans is None or any(start <= line <= end for start, end in spans)


@functools.lru_cache(maxsize=8)
def _guard_spans(path: str, mtime: int) -> list[tuple[int, int]] | None:
    """Lines of every ``if __name__ == "__main__":`` block of the script (None: unreadable)."""
    try:
        with open(path, "rb") as f:
            tree = ast.parse(f.read(), filename=path)
    except (OSError, SyntaxError, ValueError):
        return None
    spans = []
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_main_test(node.test):
            spans.append((node.lineno, node.end_lineno or node.lineno))
    return spans


def _is_main_test(test: ast.expr) -> bool:
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1):
        return False
    if not isinstance(test.ops[0], ast.Eq):
        return False
    sides = [test.left, test.comparators[0]]
    names = [s.id for s in sides if isinstance(s, ast.Name)]
    values = [s.value for s in sides if isinstance(s, ast.Constant)]
    return names == ["__name__"] and values == ["__main__"]


class _MainFinder(pickle.Pickler):
    """Pickles to nowhere, noting every class and function that lives in ``__main__``."""

    def __init__(self) -> None:
        super().__init__(io.BytesIO(), protocol=pickle.HIGHEST_PROTOCOL)
        self.found: list[str] = []

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, (type, types.FunctionType)) and obj.__module__ == "__main__":
            name = obj.__qualname__
            if name not in self.found:
                self.found.append(name)
        return NotImplemented  # pickled as usual


def main_references(objects: Sequence[Any]) -> list[str]:
    """Names of the classes and functions of ``__main__`` that pickling ``objects`` refers to.

    What cannot be pickled at all is left for the worker start to report.

    >>> main_references([len, {"key": [1, 2]}])
    []
    """
    finder = _MainFinder()
    for obj in objects:
        with contextlib.suppress(Exception):  # reported by the worker start as it is
            finder.dump(obj)
    return finder.found

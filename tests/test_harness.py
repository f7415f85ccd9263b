"""The package's shape: public API, docstrings, import layers, errors, the demo command."""

from __future__ import annotations

import inspect
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import radiobject
import radiobject.parallel
from radiobject import _errors, _tiledb_errors

ROOT = Path(__file__).resolve().parents[1]

PUBLIC_API = [
    "AlignmentError",
    "AlreadyExistsError",
    "CacheStats",
    "CoarseLevel",
    "CompressionConfig",
    "Compressor",
    "ConfigurationError",
    "Dataframe",
    "DtypeError",
    "FilterError",
    "GridMap",
    "IncompleteError",
    "IngestError",
    "LabelError",
    "NotFoundError",
    "OptionalDependencyError",
    "OutOfBoundsError",
    "RadiObject",
    "RadiObjectConfig",
    "RadiObjectError",
    "ReadConfig",
    "S3Config",
    "S3Error",
    "S3Stats",
    "ShapeError",
    "SliceOrientation",
    "StorageError",
    "TileConfig",
    "TileDBStats",
    "Version",
    "VersionDiff",
    "VersionError",
    "Volume",
    "VolumeCollection",
    "WriteConfig",
    "clear_caches",
    "configure",
    "get_config",
    "get_tiledb_ctx",
    "grid_map",
    "reset_config",
    "settings",
    "show_versions",
    "subject_id_from_path",
]


def run(args: list[str], cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, **env},
        check=False,
    )


# --- public API ---------------------------------------------------------------------------------


def test_public_api_is_pinned():
    assert radiobject.__all__ == PUBLIC_API
    assert sorted(radiobject.__all__) == radiobject.__all__
    for name in PUBLIC_API:
        assert getattr(radiobject, name) is not None
    assert radiobject.parallel.__all__ == ["ctx_for_process", "ctx_for_threads", "map_on_threads"]


def test_no_private_names_leak():
    public = {n for n in vars(radiobject) if not n.startswith("_")}
    modules = {n for n in public if inspect.ismodule(getattr(radiobject, n))}
    assert public - modules == set(PUBLIC_API)


@pytest.mark.parametrize(
    "module", [radiobject, radiobject.parallel, radiobject.config], ids=lambda m: m.__name__
)
def test_every_exported_name_has_a_docstring(module):
    missing = []
    for name in module.__all__:
        obj = getattr(module, name)
        if not (obj.__doc__ or "").strip():
            missing.append(name)
        if inspect.isclass(obj) and not issubclass(obj, BaseException):
            for attr, value in vars(obj).items():
                if attr.startswith("_") or not (
                    inspect.isfunction(value) or isinstance(value, (property, classmethod))
                ):
                    continue
                doc = value.__func__.__doc__ if isinstance(value, classmethod) else value.__doc__
                if not (doc or "").strip():
                    missing.append(f"{name}.{attr}")
    assert missing == []
    assert (module.__doc__ or "").strip()


def test_error_hierarchy():
    for name in _errors.__all__:
        error = getattr(radiobject, name)
        assert issubclass(error, radiobject.RadiObjectError)
    assert issubclass(radiobject.NotFoundError, FileNotFoundError)
    assert issubclass(radiobject.AlreadyExistsError, FileExistsError)
    assert issubclass(radiobject.OutOfBoundsError, IndexError)
    assert issubclass(radiobject.OutOfBoundsError, radiobject.ShapeError)
    assert issubclass(radiobject.ShapeError, ValueError)
    assert issubclass(radiobject.ConfigurationError, ValueError)
    assert issubclass(radiobject.FilterError, ValueError)
    assert issubclass(radiobject.LabelError, KeyError)
    assert issubclass(radiobject.OptionalDependencyError, ImportError)
    assert str(radiobject.LabelError("no column 'x'")) == "no column 'x'"  # not repr'd


@pytest.mark.parametrize(
    ("message", "secret"),
    [
        ("vfs.s3.aws_secret_access_key=abc123 failed", "abc123"),
        ("{'vfs.s3.aws_access_key_id': 'AKIA42', 'x': 1}", "AKIA42"),
        ("aws_session_token: tok-987 expired", "tok-987"),
        ("password=hunter2", "hunter2"),
    ],
)
def test_tiledb_errors_never_show_credentials(message, secret):
    err = _tiledb_errors.translate_tiledb_error(Exception(message), "s3://bucket/x", "open")
    assert secret not in str(err)
    assert "***" in str(err)
    assert "s3://bucket/x" in str(err)


def test_tiledb_errors_are_translated(tmp_path):
    translate = _tiledb_errors.translate_tiledb_error
    err = translate(Exception("Array does not exist"), "/x/y", "open volume")
    assert isinstance(err, radiobject.NotFoundError)
    assert "'/x/y'" in str(err)
    err = translate(Exception("disk full"), "/x/y", "write volume")
    assert type(err) is radiobject.StorageError
    err = translate(Exception("curl error 7"), "s3://b/k", "read")
    assert isinstance(err, radiobject.S3Error)
    assert "S3Config(endpoint=" in str(err)


def test_show_versions(capsys):
    found = radiobject.show_versions()
    out = capsys.readouterr().out
    assert found["radiobject"] == radiobject.__version__
    assert "tiledb" in found
    assert "libtiledb" in out


# --- import layers --------------------------------------------------------------------------------


def test_import_leaves_ml_and_ui_libraries_out():
    code = (
        "import sys, radiobject, radiobject.parallel, radiobject.data, radiobject.ingest\n"
        "heavy = ('torch', 'ipywidgets', 'matplotlib', 'monai', 'torchio', 'radiobject.ml',"
        " 'radiobject.widgets')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m in heavy))\n"
    )
    result = run([sys.executable, "-c", code])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "args", [["check", "."], ["format", "--check", "."]], ids=["lint", "format"]
)
def test_ruff(args):
    exe = shutil.which("ruff") or pytest.skip("ruff is not installed")
    result = run([exe, *args])
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy():
    """The type checker (strict, configured in pyproject.toml) finds nothing in radiobject/."""
    exe = shutil.which("mypy") or pytest.skip("mypy is not installed")
    result = run([exe])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found" in result.stdout


def test_import_linter_contracts():
    exe = shutil.which("lint-imports") or pytest.skip("import-linter is not installed")
    result = run([exe, "--no-cache"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" in result.stdout
    assert "0 broken" in result.stdout


def _import_graph() -> dict[str, set[str]]:
    """radiobject's modules and the radiobject modules each imports (TYPE_CHECKING too)."""
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("radiobject", cache_dir=None)
    return {
        m: {n for n in graph.find_modules_directly_imported_by(m) if n.startswith("radiobject")}
        for m in graph.modules
    }


def test_no_import_cycles_even_inside_packages():
    graph = _import_graph()
    # Tarjan's strongly connected components: any with two modules or more is a cycle
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                cycles.append(sorted(part))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    assert cycles == []


def test_ml_imports_other_packages_through_their_init():
    """``radiobject.read`` and ``radiobject.storage`` export what ``radiobject.ml`` uses."""
    private = {
        (m, n)
        for m, imported in _import_graph().items()
        if m.startswith("radiobject.ml")
        for n in imported
        if n.count(".") >= 2 and n.split(".")[2].startswith("_") and n.split(".")[1] != "ml"
    }
    assert private == set()


def test_widgets_use_only_public_api():
    """widgets -> ml -> core: widgets import public names only (the layers contract checks
    the direction; this checks that no private module is used)."""
    import ast

    root = Path(__file__).resolve().parents[1] / "radiobject" / "widgets"
    paths = list(root.glob("*.py"))
    assert len(paths) >= 10
    for path in paths:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                mod = node.module
                if mod.startswith("radiobject"):
                    assert mod in (
                        "radiobject",
                        "radiobject.ml",
                        "radiobject.data",
                        "radiobject.parallel",
                    ) or mod.startswith("radiobject.widgets"), (
                        f"{path.name} imports private module {mod}"
                    )
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert not alias.name.startswith("radiobject._"), (path.name, alias.name)


# --- the main command ---------------------------------------------------------------------------


def test_demo_command(tmp_path):
    result = run(
        [sys.executable, "-m", "radiobject", "demo", "--subjects", "2", "--shape", "16x16x12"],
        cwd=tmp_path,
        TMPDIR=str(tmp_path),  # the default target is a temporary folder: keep it in tmp_path
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Wrote a sample RadiObject of 2 subjects" in out
    assert "<RadiObject (3 collections: FLAIR, T1w, seg; 2 subjects)" in out
    for word in ("FLAIR", "T1w", "seg", "diagnosis", "sub-000", "sub-001", "(16, 16, 12)"):
        assert word in out
    assert "equal: True" in out
    assert "tile cache:" in out
    written = list(tmp_path.glob("radiobject-*/sample"))
    assert len(written) == 1
    assert radiobject.RadiObject(written[0]).collection_names == ["FLAIR", "T1w", "seg"]


def test_demo_bad_arguments():
    result = run([sys.executable, "-m", "radiobject", "frobnicate"])
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


def test_tutorials_command_passes_unknown_options_to_jupyterlab_in_order(
    tmp_path, capsys, monkeypatch
):
    from radiobject.__main__ import main

    monkeypatch.setenv("RADIOBJECT_SAMPLE_DIR", str(tmp_path))
    argv = ["tutorials", "--no-browser", "--port", "8899", "--dry-run"]
    argv += ["--notebooks", str(ROOT / "notebooks"), "--", "--ServerApp.x=1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "--ip=127.0.0.1 --no-browser --port 8899 --ServerApp.x=1" in out


def test_other_commands_reject_unknown_options():
    result = run([sys.executable, "-m", "radiobject", "versions", "--port", "1"])
    assert result.returncode == 2
    assert "unrecognized arguments: --port 1" in result.stderr


def test_tutorials_command_opens_jupyterlab_on_the_notebooks(tmp_path):
    """The README's main command: sample data made, then JupyterLab serves the tutorials."""
    import socket
    import time
    import urllib.request

    if shutil.which("jupyter") is None:
        pytest.skip("JupyterLab is not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "RADIOBJECT_SAMPLE_DIR": str(tmp_path / "data"), "HOME": str(tmp_path)}
    log_path = tmp_path / "jupyter.log"
    # jupyter lab's options as a user types them, without "--"
    command = [sys.executable, "-m", "radiobject", "tutorials", "--no-browser", "--port", str(port)]
    command += ["--ServerApp.token=", "--ServerApp.password="]
    with log_path.open("w") as log:
        proc = subprocess.Popen(command, cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 90
            body = ""
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    url = f"http://127.0.0.1:{port}/api/contents"
                    with urllib.request.urlopen(url, timeout=2) as r:
                        body = r.read().decode()
                    break
                except OSError:
                    time.sleep(0.5)
            assert "01_quick_start.ipynb" in body, log_path.read_text()[-2000:]
            assert (tmp_path / "data" / "sample-small").is_dir()
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

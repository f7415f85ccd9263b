"""The lock files: every dependency the project names is pinned, once, to one version."""

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _pins(path: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            key = _name(name)
            assert key not in pins, f"{path.name} pins {key} twice"
            assert re.fullmatch(r"[0-9][0-9A-Za-z.]*", version), f"{line!r} is not an exact pin"
            pins[key] = version
    return pins


def _extra(extra: str) -> set[str]:
    """Names of the distributions an extra asks for, its own extras expanded."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names: set[str] = set()
    for req in extras["optional-dependencies"][extra]:
        inner = re.fullmatch(r"radiobject\[(.+)\]", req)
        if inner:
            for sub in inner.group(1).split(","):
                names |= _extra(sub.strip())
        else:
            names.add(_name(req))
    return names


def _core() -> set[str]:
    return {
        _name(r)
        for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    }


@pytest.mark.parametrize(
    ("lock", "extra"), [("constraints.txt", "dev"), ("benchmarks/constraints.txt", "bench")]
)
def test_lock_pins_every_dependency_of_its_extra(lock, extra):
    pins = _pins(ROOT / lock)
    missing = sorted((_extra(extra) | _core()) - set(pins))
    assert not missing, f"{lock} does not pin {missing}: run python scripts/lock.py refresh"
    assert pins["torch"].startswith("2."), "torch is pinned without a local build label"


def test_the_commands_of_readme_ci_and_binder_use_the_lock():
    readme = (ROOT / "README.md").read_text()
    test_command = 'pip install torch==2.13.0 && pip install -e ".[dev]" -c constraints.txt'
    test_command += " && python -m pytest"
    assert test_command in readme
    assert test_command in (ROOT / ".ci" / "run").read_text()
    assert (
        'pip install -e ".[tutorials]" -c constraints.txt && python -m radiobject tutorials'
        in readme
    )
    assert "-c ../constraints.txt" in (ROOT / "binder" / "requirements.txt").read_text()

"""Every public name has a ``>>>`` example in its own docstring, run by --doctest-modules.

A name added to ``__all__`` of ``radiobject``, ``radiobject.ml`` or ``radiobject.widgets``
without an example fails here, by name.
"""

from __future__ import annotations

import doctest
import importlib
import inspect

import pytest

MODULES = ("radiobject", "radiobject.ml", "radiobject.widgets")


def public_names() -> list[tuple[str, str]]:
    return [(m, name) for m in MODULES for name in importlib.import_module(m).__all__]


def own_doctest(obj: object, name: str) -> doctest.DocTest | None:
    """The doctest of ``obj``'s own docstring, as pytest's doctest collection finds it."""
    module = inspect.getmodule(obj)
    tests = doctest.DocTestFinder(recurse=False).find(obj, name, module=module)
    return next((t for t in tests if t.examples), None)


def test_the_three_public_modules_export_names():
    counts = {m: len(importlib.import_module(m).__all__) for m in MODULES}
    assert all(n > 0 for n in counts.values()), counts
    assert len(public_names()) == sum(counts.values())


@pytest.mark.parametrize(("module", "name"), public_names(), ids=lambda v: v)
def test_public_name_has_an_example(module, name):
    obj = getattr(importlib.import_module(module), name)
    doc = obj.__doc__ or ""
    assert ">>>" in doc, f"{module}.{name} has no >>> example in its docstring"
    test = own_doctest(obj, name)
    assert test is not None, f"{module}.{name}: doctest finds no example in its docstring"
    # the example is collected from the module that defines the object, which must be a file
    # under radiobject/ (testpaths), so --doctest-modules runs it
    source = inspect.getsourcefile(obj)
    assert source is not None
    assert "/radiobject/" in source.replace("\\", "/")
    # an example shows a result to check, not only statements
    assert any(ex.want.strip() or ex.exc_msg for ex in test.examples), (
        f"{module}.{name}: the example prints nothing to check"
    )


def test_a_name_without_an_example_is_caught():
    """The check above fails for an object whose docstring has no example."""

    def no_example() -> None:
        """Docstring without an example."""

    def with_example() -> None:
        """Docstring with an example.

        >>> 1 + 1
        2
        """

    assert own_doctest(no_example, "no_example") is None
    assert own_doctest(with_example, "with_example") is not None

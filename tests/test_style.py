"""Lint (ruff) and the runnable examples in docstrings."""

import doctest
import importlib
import pkgutil
import shutil
import subprocess

import pytest

import mamlx

from conftest import REPO


def test_ruff_lint_and_format_clean():
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.fail("ruff is part of the test extra: pip install -e '.[test]'")
    for args in (["check"], ["format", "--check"]):
        proc = subprocess.run([ruff, *args, str(REPO)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr


MODULES = sorted(m.name for m in pkgutil.walk_packages(mamlx.__path__, "mamlx."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


def test_no_submodule_is_hidden_by_a_top_level_name():
    """``import mamlx.x as m`` must give the module ``mamlx/x.py``, not a function exported
    as ``mamlx.x`` (the evaluation module was once shadowed by ``mamlx.evaluate``)."""
    modules = {m.name for m in pkgutil.iter_modules(mamlx.__path__)}
    for name in modules:
        importlib.import_module(f"mamlx.{name}")
        attr = getattr(mamlx, name)
        assert attr is importlib.import_module(f"mamlx.{name}"), (
            f"mamlx.{name} is {attr!r}, not the submodule mamlx/{name}"
        )
    assert callable(mamlx.evaluate) and not isinstance(mamlx.evaluate, type(mamlx))

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


def imported_as(name: str):
    """What ``import a.b.c as m`` binds to ``m``: attribute lookups from the top package."""
    obj = importlib.import_module(name.split(".")[0])
    for part in name.split(".")[1:]:
        obj = getattr(obj, part)
    return obj


@pytest.mark.parametrize("name", MODULES)
def test_no_submodule_is_hidden_by_a_name_of_its_package(name):
    """``importlib.import_module(name)`` and ``import name as m`` both give the module
    ``name``, for every submodule at every depth (``mamlx.evaluation`` was once shadowed
    by ``mamlx.evaluate``, ``mamlx.algorithms.maml`` by the function ``maml``)."""
    module = importlib.import_module(name)
    assert module.__name__ == name
    attr = imported_as(name)
    assert attr is module, f"{name} is {attr!r}, not the submodule {name}"


def test_learner_factories_stay_public_at_the_top_level():
    import mamlx.algorithms.maml as maml_module

    assert mamlx.maml is maml_module.maml and callable(mamlx.maml)
    assert callable(mamlx.evaluate) and not isinstance(mamlx.evaluate, type(mamlx))

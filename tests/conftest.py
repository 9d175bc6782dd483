"""Shared test configuration.

Real data is found through one helper, :func:`data_dir`: ``$MAMLX_DATA_DIR`` if
set, else ``../shared/data`` beside the repository when it exists. On a user's
machine without the data, tests that need it skip with a reason; under CI
(``CI=true``) a missing data folder is a failure, never a silent skip.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def data_dir(sub: str = "") -> Path:
    """Return the real-data folder (or a sub-folder), or skip / fail as described above."""
    env = os.environ.get("MAMLX_DATA_DIR")
    root = Path(env) if env else REPO.parent / "shared" / "data"
    path = root / sub if sub else root
    if not path.is_dir():
        msg = (
            f"real data folder {path} not found; set MAMLX_DATA_DIR to the folder "
            "holding omniglot/ and miniimagenet/"
        )
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg + " (CI=true: missing data is a failure)")
        pytest.skip(msg)
    return path


@pytest.fixture
def omniglot_dir() -> Path:
    return data_dir("omniglot")


@pytest.fixture
def miniimagenet_dir() -> Path:
    return data_dir("miniimagenet")


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Keep the tests' preprocessed-data and compilation caches out of the user's home."""
    if "MAMLX_CACHE" in os.environ:
        yield
        return
    os.environ["MAMLX_CACHE"] = str(tmp_path_factory.mktemp("mamlx_cache"))
    yield
    del os.environ["MAMLX_CACHE"]

"""The on-disk cache of processed data sets, shared by the Omniglot and mini-ImageNet loaders.

* :func:`cache_dir` is where downloads and processed arrays live: the ``root``
  passed in, else :data:`DEFAULT_CACHE_ROOT` (``~/.cache/mamlx``). The library reads
  no environment variable; the ``mamlx`` command passes ``$MAMLX_CACHE`` as ``root``.
* :func:`save_npz` / :func:`load_npz` write and read one cache file through a
  temporary file and ``os.replace`` (:func:`~mamlx._io.atomic_write`): an interrupted
  run leaves no file a later run would trust, and a file that fails to load, or is
  tagged with another key, is treated as missing.
* :func:`cached_arrays` is the one cache path of the loaders: look a key up, build
  on a miss, write the result atomically.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from mamlx._io import atomic_write

__all__ = [
    "DEFAULT_CACHE_ROOT",
    "atomic_write",
    "cache_dir",
    "cache_file",
    "cached_arrays",
    "load_npz",
    "save_npz",
]

#: Cache root used when a function is given no ``cache_dir`` / ``root``.
DEFAULT_CACHE_ROOT = Path("~/.cache/mamlx")


def cache_dir(sub: str = "", root: str | os.PathLike | None = None) -> Path:
    """The mamlx cache folder (created if needed).

    Args:
      sub: optional sub-folder, e.g. ``"omniglot"``.
      root: cache root; ``None`` (or ``""``) means :data:`DEFAULT_CACHE_ROOT`,
        ``~/.cache/mamlx``. A leading ``~`` is expanded.

    Returns:
      The folder path; it exists on return.

    Example:
      >>> cache_dir("omniglot")  # doctest: +SKIP
      PosixPath('/home/me/.cache/mamlx/omniglot')
    """
    if root is None or root == "":
        root = DEFAULT_CACHE_ROOT
    path = Path(root).expanduser()
    if sub:
        path = path / sub
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_file(sub: str, prefix: str, key: str, root: str | os.PathLike | None = None) -> Path:
    """Path of the cache file for ``key``: ``<root>/<sub>/<prefix>-<digest>.npz``.

    Args:
      sub: the data set's sub-folder (``"omniglot"``).
      prefix: file name prefix (``"processed"``, a split name).
      key: what the arrays are built from (source checksums, size, version); its
        SHA-256 (first 20 hex digits) names the file, so another size or source is
        another file.
      root: cache root (see :func:`cache_dir`).

    Returns:
      The file path (its folder exists; the file may not).
    """
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    return cache_dir(sub, root=root) / f"{prefix}-{digest}.npz"


def save_npz(path: str | os.PathLike, key: str, **arrays: np.ndarray) -> Path:
    """Atomically write an uncompressed ``.npz`` cache file tagged with ``key``.

    Args:
      path: cache file path.
      key: a string naming what the arrays were built from (source, size,
        version); :func:`load_npz` trusts the file only for the same key.
      **arrays: the arrays to store.

    Returns:
      ``path`` as a ``Path``.
    """
    with atomic_write(path) as f:
        np.savez(f, __cache_key__=np.array(key), **arrays)
    return Path(path)


def load_npz(path: str | os.PathLike, key: str) -> dict[str, np.ndarray] | None:
    """Load a cache file written by :func:`save_npz`, or ``None`` if missing or untrusted.

    A file that is truncated, corrupt or tagged with a different ``key`` is not
    trusted: the function returns ``None`` and the caller rebuilds it.

    Args:
      path: cache file path.
      key: the key the file must be tagged with.

    Returns:
      The stored arrays by name, or ``None``.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["__cache_key__"]) != key:
                return None
            return {k: z[k] for k in z.files if k != "__cache_key__"}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def cached_arrays(
    sub: str,
    prefix: str,
    key: str,
    build: Callable[[], dict[str, np.ndarray]],
    *,
    fields: Sequence[str],
    cache: bool = True,
    root: str | os.PathLike | None = None,
    valid: Callable[[dict[str, np.ndarray]], bool] | None = None,
) -> dict[str, np.ndarray]:
    """Arrays for ``key`` from the cache, or built by ``build()`` and cached.

    The file is :func:`cache_file` ``(sub, prefix, key, root)``. A file that is
    missing, truncated or corrupt, tagged with another key, lacks one of ``fields``
    or fails ``valid`` is not trusted: the arrays are built again and the file is
    replaced atomically (a killed run leaves the old file or the new one, never a
    half-written one).

    Args:
      sub: the data set's cache sub-folder (``"omniglot"``, ``"miniimagenet"``).
      prefix: file name prefix.
      key: everything the arrays depend on (source checksums, size, filter, version).
      build: ``build() -> {name: array}``, called on a miss; it must return ``fields``.
      fields: the array names a trusted file holds.
      cache: ``False`` builds without reading or writing the cache.
      root: cache root (see :func:`cache_dir`).
      valid: optional extra check of a loaded file (e.g. source files unchanged since).

    Returns:
      The arrays by name.

    Example:
      >>> import tempfile
      >>> root = tempfile.mkdtemp()
      >>> build = lambda: {"x": np.arange(3)}
      >>> cached_arrays("demo", "x", "v1", build, fields=["x"], root=root)["x"]
      array([0, 1, 2])
      >>> cached_arrays("demo", "x", "v1", None, fields=["x"], root=root)["x"]  # a hit
      array([0, 1, 2])
    """
    path = cache_file(sub, prefix, key, root) if cache else None
    if path is not None:
        hit = load_npz(path, key)
        if hit is not None and all(f in hit for f in fields) and (valid is None or valid(hit)):
            return hit
    arrays = build()
    missing = [f for f in fields if f not in arrays]
    if missing:
        raise ValueError(f"cache build for {sub}/{prefix} returned no arrays named {missing}")
    if path is not None:
        save_npz(path, key, **arrays)
    return arrays

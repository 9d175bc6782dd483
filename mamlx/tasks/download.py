"""Downloads and checksums: the only network code in mamlx.

* :func:`download_url` fetches a URL (``https://``, ``http://`` or ``file://``) into a
  ``.part`` file, resumes an interrupted ``.part`` where it can, checks size and
  SHA-256, and only then renames it into place, so a path that exists is always a
  complete, verified file.
* :func:`sha256_file` is the checksum of published tables and of the cache keys.

The cache location and the processed-array cache files are in :mod:`mamlx.tasks.cache`
(:func:`cache_dir`, :func:`save_npz`, :func:`load_npz` are re-exported here).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from mamlx.tasks.cache import atomic_write as atomic_write
from mamlx.tasks.cache import cache_dir as cache_dir
from mamlx.tasks.cache import load_npz as load_npz
from mamlx.tasks.cache import save_npz as save_npz

__all__ = ["atomic_write", "cache_dir", "download_url", "load_npz", "save_npz", "sha256_file"]

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 digest of a file, read in chunks.

    Args:
      path: the file.

    Returns:
      The lowercase hex digest, as in published checksum tables.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _open_url(url: str, offset: int, timeout: float):
    """Open ``url`` at byte ``offset``; return (stream, resumed, total_size or None)."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        path = Path(urllib.request.url2pathname(parsed.path))
        if not path.is_file():
            raise FileNotFoundError(f"download source {url} does not exist")
        f = open(path, "rb")
        total = path.stat().st_size
        if 0 < offset <= total:
            f.seek(offset)
            return f, True, total
        return f, False, total
    if parsed.scheme not in ("http", "https"):
        raise ValueError(f"unsupported URL scheme in {url!r}; use https://, http:// or file://")
    req = urllib.request.Request(url, headers={"User-Agent": "mamlx"})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    resp = urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 (scheme checked above)
    resumed = offset > 0 and resp.status == 206
    length = resp.headers.get("Content-Length")
    total = int(length) + (offset if resumed else 0) if length is not None else None
    return resp, resumed, total


def _open_resumable(url: str, offset: int, size: int | None, timeout: float, checked: bool):
    """Like :func:`_open_url`, but a ``.part`` that already holds the whole file is not requested.

    Returns ``(None, True, None)`` when the ``.part`` (``offset`` bytes) is at
    least ``size`` long, or the server answers HTTP 416 (range not satisfiable)
    to the resume: a run killed between the copy and the rename, or a corrupt or
    over-long ``.part``. The caller then checks the ``.part`` as it is and, if it
    fails, downloads once more from byte 0. Without a size or checksum to check it
    against (``checked=False``) such a ``.part`` is not trusted: it starts over.
    """
    if offset and size is not None and offset >= size:
        return None, True, None
    try:
        return _open_url(url, offset, timeout)
    except urllib.error.HTTPError as e:
        if offset and e.code == 416:
            return (None, True, None) if checked else _open_url(url, 0, timeout)
        raise


def download_url(
    url: str,
    dest: str | os.PathLike,
    *,
    sha256: str | None = None,
    size: int | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``dest`` atomically, resuming and verifying.

    If ``dest`` already exists and matches ``sha256`` it is returned untouched.
    Otherwise bytes go to ``dest + ".part"``; an existing ``.part`` (from an
    interrupted run) is resumed with an HTTP ``Range`` request (or a seek, for
    ``file://``); a ``.part`` that is already full length (the server answers
    HTTP 416, or it is at least ``size`` bytes) is checked as it is. The finished
    file is checked against ``size`` and ``sha256`` and only then renamed to
    ``dest``. A resumed file that fails the check is downloaded once more from
    scratch before giving up.

    Args:
      url: ``https://``, ``http://`` or ``file://`` URL.
      dest: final path of the file.
      sha256: expected hex SHA-256 digest (strongly recommended).
      size: expected size in bytes, if known; a shorter file is reported as truncated.
      timeout: socket timeout in seconds.

    Returns:
      ``dest`` as a ``Path``.

    Raises:
      ValueError: checksum mismatch or truncated download (the partial file is deleted).
      FileNotFoundError: a ``file://`` source that does not exist.
      OSError: network errors (the ``.part`` file is kept so a later call resumes).

    Example:
      >>> url = "https://example.org/data.zip"
      >>> download_url(url, "/tmp/data.zip", sha256="ab12...")  # doctest: +SKIP
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file():
        if sha256 is None or sha256_file(dest) == sha256.lower():
            return dest
        dest.unlink()  # stale or corrupt: fetch again
    part = dest.with_name(dest.name + ".part")
    for attempt in range(2):
        offset = part.stat().st_size if part.is_file() else 0
        checked = size is not None or sha256 is not None
        stream, resumed, total = _open_resumable(url, offset, size, timeout, checked)
        if stream is not None:
            with stream, open(part, "ab" if resumed else "wb") as out:
                shutil.copyfileobj(stream, out, _CHUNK)
        got = part.stat().st_size
        problem = None
        if size is not None and got != size:
            kind = "truncated" if got < size else "too long"
            problem = f"download of {url} is {kind}: {got} bytes, expected {size}"
        elif total is not None and got != total:
            problem = f"download of {url} is truncated: {got} bytes, server announced {total}"
        elif sha256 is not None:
            digest = sha256_file(part)
            if digest != sha256.lower():
                problem = f"checksum mismatch for {url}: sha256 {digest}, expected {sha256.lower()}"
        if problem is None:
            os.replace(part, dest)
            return dest
        part.unlink()
        if not (resumed and attempt == 0):
            raise ValueError(problem + "; the partial file was deleted, try again")
    raise AssertionError("unreachable")

"""Tests for mamlx.tasks.download: cache dir, atomic/resumable download, npz cache."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import os
import re
import threading

import numpy as np
import pytest

import mamlx.tasks.download as dl
from mamlx import checkpoint
from mamlx.tasks import cache


def _src(tmp_path, n=300_000, seed=0):
    data = np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()
    path = tmp_path / "src.bin"
    path.write_bytes(data)
    return path, data, hashlib.sha256(data).hexdigest()


def test_cache_dir_root_and_default(tmp_path, monkeypatch):
    assert dl.cache_dir("omniglot", root=tmp_path / "root") == tmp_path / "root" / "omniglot"
    assert (tmp_path / "root" / "omniglot").is_dir()
    assert dl.cache_dir(root=tmp_path / "explicit") == tmp_path / "explicit"
    # The library reads no environment variable: the default is ~/.cache/mamlx whatever
    # $MAMLX_CACHE says (the CLI passes it as root).
    monkeypatch.setattr(cache, "DEFAULT_CACHE_ROOT", cache.Path("~/.cache/mamlx"))
    monkeypatch.setenv("MAMLX_CACHE", str(tmp_path / "env"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert dl.cache_dir() == tmp_path / "home" / ".cache" / "mamlx"
    assert dl.cache_dir(root="") == tmp_path / "home" / ".cache" / "mamlx"
    assert not (tmp_path / "env").exists()


def test_cached_arrays_builds_once_and_rebuilds_untrusted_files(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return {"x": np.arange(4.0), "y": np.ones(2)}

    def get(key="k", **kw):
        return cache.cached_arrays("set", "p", key, build, fields=("x", "y"), root=tmp_path, **kw)

    np.testing.assert_array_equal(get()["x"], np.arange(4.0))
    (path,) = (tmp_path / "set").glob("p-*.npz")
    assert path == cache.cache_file("set", "p", "k", tmp_path) and len(calls) == 1
    np.testing.assert_array_equal(get()["y"], np.ones(2))
    assert len(calls) == 1  # a hit
    get("other")  # another key is another file
    assert len(calls) == 2 and len(list((tmp_path / "set").glob("p-*.npz"))) == 2
    path.write_bytes(path.read_bytes()[:200])  # truncated: rebuilt and replaced
    get()
    assert len(calls) == 3 and cache.load_npz(path, "k") is not None
    get(valid=lambda hit: False)  # a failed extra check: rebuilt
    assert len(calls) == 4
    cache.save_npz(path, "k", x=np.arange(4.0))  # a field missing: rebuilt
    get()
    assert len(calls) == 5 and set(cache.load_npz(path, "k")) == {"x", "y"}
    before = {f: f.stat().st_mtime_ns for f in (tmp_path / "set").iterdir()}
    get(cache=False)  # no cache: built, nothing read or written
    assert len(calls) == 6
    assert {f: f.stat().st_mtime_ns for f in (tmp_path / "set").iterdir()} == before
    with pytest.raises(ValueError, match=r"returned no arrays named \['z'\]"):
        cache.cached_arrays("set", "p", "k2", build, fields=("z",), root=tmp_path)
    assert not list((tmp_path / "set").glob(".*tmp"))


def test_download_file_url_good_checksum(tmp_path):
    src, data, sha = _src(tmp_path)
    dest = tmp_path / "out" / "file.bin"
    got = dl.download_url(src.as_uri(), dest, sha256=sha, size=len(data))
    assert got == dest and dest.read_bytes() == data
    assert not list(dest.parent.glob("*.part"))
    # An existing verified file is reused without touching the source.
    src.unlink()
    assert dl.download_url(src.as_uri(), dest, sha256=sha) == dest


def test_download_bad_checksum_leaves_nothing(tmp_path):
    src, _, _ = _src(tmp_path)
    dest = tmp_path / "file.bin"
    with pytest.raises(ValueError, match="checksum mismatch"):
        dl.download_url(src.as_uri(), dest, sha256="0" * 64)
    assert not dest.exists() and not dest.with_name("file.bin.part").exists()


def test_download_truncated_file(tmp_path):
    src, data, sha = _src(tmp_path)
    short = tmp_path / "short.bin"
    short.write_bytes(data[: len(data) // 2])
    dest = tmp_path / "file.bin"
    with pytest.raises(ValueError, match="truncated"):
        dl.download_url(short.as_uri(), dest, sha256=sha, size=len(data))
    assert not dest.exists() and not dest.with_name("file.bin.part").exists()
    # Without a known size, the checksum still catches it.
    with pytest.raises(ValueError, match="checksum mismatch"):
        dl.download_url(short.as_uri(), dest, sha256=sha)


def test_download_resumes_partial_file(tmp_path, monkeypatch):
    src, data, sha = _src(tmp_path)
    dest = tmp_path / "file.bin"
    part = tmp_path / "file.bin.part"
    part.write_bytes(data[:100_000])  # an interrupted earlier run
    opened = []
    real_open = dl._open_url
    monkeypatch.setattr(dl, "_open_url", lambda *a: opened.append(a[1]) or real_open(*a))
    dl.download_url(src.as_uri(), dest, sha256=sha, size=len(data))
    assert dest.read_bytes() == data and not part.exists()
    assert opened == [100_000]  # resumed at the offset, one request


def test_download_bad_partial_restarts_from_scratch(tmp_path):
    src, data, sha = _src(tmp_path)
    dest = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(b"garbage" * 100)
    dl.download_url(src.as_uri(), dest, sha256=sha)
    assert dest.read_bytes() == data


@contextlib.contextmanager
def _http_server(data: bytes, ranges: bool = True):
    """A local HTTP server for ``data`` that honours ``Range`` (RFC 7233) if ``ranges``.

    Yields ``(url, requests)``; ``requests`` collects each request's ``Range`` header.
    """
    requests = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            rng = self.headers.get("Range")
            requests.append(rng)
            start = int(re.match(r"bytes=(\d+)-", rng).group(1)) if rng and ranges else 0
            if start >= len(data) and rng and ranges:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            self.wfile.write(data[start:])

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/f.bin", requests
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("ranges", [True, False], ids=["server-resumes", "server-ignores-range"])
def test_download_http_resumes_with_range(tmp_path, ranges):
    _, data, sha = _src(tmp_path)
    dest, part = tmp_path / "f.bin", tmp_path / "f.bin.part"
    part.write_bytes(data[:100_000])
    with _http_server(data, ranges) as (url, requests):
        dl.download_url(url, dest, sha256=sha, size=len(data))
    assert dest.read_bytes() == data and not part.exists()
    assert requests == ["bytes=100000-"]  # one request; a 200 answer overwrites the .part


@pytest.mark.parametrize(
    "part_bytes",
    ["complete", "corrupt-full-length", "too-long"],
)
def test_download_http_full_length_part_does_not_get_stuck(tmp_path, part_bytes):
    # A run killed after the copy but before the rename leaves a complete .part; resuming it
    # asks for bytes past the end (HTTP 416). It must be checked as it is, or fetched afresh.
    _, data, sha = _src(tmp_path)
    dest, part = tmp_path / "f.bin", tmp_path / "f.bin.part"
    part.write_bytes(
        {"complete": data, "corrupt-full-length": b"x" * len(data), "too-long": data + b"xx"}[
            part_bytes
        ]
    )
    for size in (len(data), None):  # known size: no request; unknown: the server answers 416
        dest.unlink(missing_ok=True)
        if not part.exists():
            part.write_bytes(b"x" * len(data))
        with _http_server(data) as (url, requests):
            dl.download_url(url, dest, sha256=sha, size=size)
        assert dest.read_bytes() == data and not part.exists()
        assert all(r is None for r in requests[1:])  # any retry starts from byte 0


def test_download_replaces_stale_destination(tmp_path):
    src, data, sha = _src(tmp_path)
    dest = tmp_path / "file.bin"
    dest.write_bytes(b"stale")
    dl.download_url(src.as_uri(), dest, sha256=sha)
    assert dest.read_bytes() == data


def test_download_bad_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        dl.download_url((tmp_path / "nope.zip").as_uri(), tmp_path / "x")
    with pytest.raises(ValueError, match="unsupported URL scheme"):
        dl.download_url("ftp://example.org/x.zip", tmp_path / "x")


def test_atomic_write_failure_leaves_no_file(tmp_path):
    target = tmp_path / "a.bin"
    with pytest.raises(RuntimeError):
        with dl.atomic_write(target) as f:
            f.write(b"half")
            raise RuntimeError("interrupted")
    assert os.listdir(tmp_path) == []
    with dl.atomic_write(target) as f:
        f.write(b"whole")
    assert target.read_bytes() == b"whole" and os.listdir(tmp_path) == ["a.bin"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_atomic_write_gives_the_mode_open_would(tmp_path):
    # A cache shared between users must stay readable: not mkstemp's private 0600.
    old = os.umask(0o027)
    try:
        with dl.atomic_write(tmp_path / "shared.npz") as f:
            f.write(b"x")
        checkpoint.atomic_write_text(tmp_path / "run.json", "{}")  # runs and checkpoints too
        checkpoint.save(tmp_path / "step.npz", {"w": np.ones(2)})
        with open(tmp_path / "plain", "wb") as f:
            f.write(b"x")
    finally:
        os.umask(old)
    for name in ("shared.npz", "run.json", "step.npz", "plain"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o640, name


def test_npz_cache_roundtrip_and_untrusted_files(tmp_path, monkeypatch):
    path = tmp_path / "c.npz"
    x = np.arange(12.0, dtype=np.float32).reshape(3, 4)
    dl.save_npz(path, "key-1", x=x)
    got = dl.load_npz(path, "key-1")
    np.testing.assert_array_equal(got["x"], x)
    assert dl.load_npz(path, "key-2") is None  # other source / size / version
    assert dl.load_npz(tmp_path / "missing.npz", "key-1") is None
    path.write_bytes(path.read_bytes()[:100])  # truncated
    assert dl.load_npz(path, "key-1") is None

    # An interrupted save leaves neither a cache file nor a temporary file.
    def boom(f, **arrays):
        f.write(b"PK partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", boom)
    other = tmp_path / "sub" / "d.npz"
    with pytest.raises(KeyboardInterrupt):
        dl.save_npz(other, "k", x=x)
    assert os.listdir(tmp_path / "sub") == []


def test_download_http_unverifiable_full_part_starts_over(tmp_path):
    # Without a size or checksum a .part the server calls complete (HTTP 416) cannot be
    # checked, so it is not trusted: the file is fetched again from byte 0.
    _, data, _ = _src(tmp_path)
    dest, part = tmp_path / "f.bin", tmp_path / "f.bin.part"
    part.write_bytes(b"x" * len(data))
    with _http_server(data) as (url, requests):
        dl.download_url(url, dest)
    assert dest.read_bytes() == data and not part.exists()
    assert requests == [f"bytes={len(data)}-", None]

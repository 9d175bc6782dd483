"""Atomic checkpoints in a small documented format.

A checkpoint is one ``.npz`` file: every leaf of the saved pytree is stored under
its ``jax.tree_util.keystr`` path (e.g. ``"leaf:.params['layers'][0]['kernel']"``)
and ``"__meta__"`` holds a JSON string (format version, step, user metadata).
Loading needs a *template* pytree of the same structure (build the learner and
optimizer state as for training); every leaf is checked for presence, shape and
dtype, so a checkpoint from another configuration is refused with a clear error.

Files are written to a temporary file in the same folder, flushed, fsynced and
then moved into place with ``os.replace``: a killed run leaves either the old
checkpoint or the new one, never a half-written file under the final name.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

from mamlx._io import atomic_write

FORMAT = "mamlx-checkpoint-v1"
_STEP_FILE = re.compile(r"^step_(\d{9})\.npz$")


def atomic_write_bytes(path: str | os.PathLike, write) -> None:
    """Write a file atomically: ``write(fileobj)`` into a temp file, fsync, ``os.replace``."""
    with atomic_write(path) as f:
        write(f)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write a UTF-8 text file."""
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def _host_copy(v: Any) -> np.ndarray:
    """A numpy copy of a leaf; a replicated array of several hosts is read from this host."""
    if isinstance(v, jax.Array) and not v.is_fully_addressable:
        if not v.sharding.is_fully_replicated:
            raise ValueError("checkpoints hold replicated arrays; got one sharded across hosts")
        return np.asarray(v.addressable_data(0))
    return np.asarray(v)


def save(path: str | os.PathLike, tree: Any, metadata: dict | None = None) -> Path:
    """Save a pytree of arrays atomically to ``path`` (an ``.npz`` file).

    Args:
      path: destination file.
      tree: pytree of arrays (params, optimizer state, PRNG keys as uint32 arrays).
      metadata: JSON-serialisable dict stored beside the arrays.

    Returns:
      The path written.
    """
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    arrays = {f"leaf:{jax.tree_util.keystr(p)}": _host_copy(v) for p, v in leaves}
    meta = {"format": FORMAT, **(metadata or {})}
    arrays["__meta__"] = np.array(json.dumps(meta))
    atomic_write_bytes(path, lambda f: np.savez(f, **arrays))
    return Path(path)


class CorruptCheckpointError(ValueError):
    """A checkpoint file that cannot be read back (cut short, overwritten, not ours)."""


def load(path: str | os.PathLike, template: Any) -> tuple[Any, dict]:
    """Load a checkpoint into the structure of ``template``.

    Args:
      path: an ``.npz`` file written by :func:`save`.
      template: a pytree with the expected structure, shapes and dtypes.

    Returns:
      ``(tree, metadata)``.

    Raises:
      FileNotFoundError: if ``path`` does not exist.
      CorruptCheckpointError: if the file cannot be read (a ``ValueError``).
      ValueError: if the file is of another format or does not match the template
        (names the first mismatching leaf).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            stored = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise CorruptCheckpointError(f"checkpoint {path} is corrupt or truncated: {e}") from e
    if "__meta__" not in stored:
        raise CorruptCheckpointError(f"{path} is not a mamlx checkpoint (no __meta__ entry)")
    meta = json.loads(str(stored.pop("__meta__")))
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} has format {meta.get('format')!r}, expected {FORMAT!r}")
    paths, treedef = jax.tree_util.tree_flatten_with_path(template)
    out = []
    for p, ref in paths:
        key = f"leaf:{jax.tree_util.keystr(p)}"
        if key not in stored:
            raise ValueError(
                f"checkpoint {path} does not match this configuration: missing {key[5:]}"
            )
        arr = stored.pop(key)
        ref_shape, ref_dtype = np.shape(ref), np.asarray(ref).dtype
        if arr.shape != ref_shape or arr.dtype != ref_dtype:
            raise ValueError(
                f"checkpoint {path} does not match this configuration: {key[5:]} is "
                f"{arr.dtype}{list(arr.shape)}, expected {ref_dtype}{list(ref_shape)}"
            )
        out.append(arr)
    if stored:
        extra = sorted(k[5:] for k in stored)[:3]
        raise ValueError(f"checkpoint {path} does not match this configuration: unexpected {extra}")
    return jax.tree_util.tree_unflatten(treedef, [jax.numpy.asarray(a) for a in out]), meta


def step_path(run_dir: str | os.PathLike, step: int) -> Path:
    """Path of the checkpoint of ``step`` inside a run directory."""
    return Path(run_dir) / "checkpoints" / f"step_{step:09d}.npz"


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, path)`` of every complete checkpoint of a run, oldest first."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_FILE.match(p.name))]
    return sorted(found)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint of a run, or ``None``."""
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def save_step(run_dir: str | os.PathLike, step: int, tree: Any, keep: int = 3, **meta) -> Path:
    """Save the checkpoint of ``step`` and prune all but the newest ``keep``.

    Stale temporary files left by a killed run are removed too.
    """
    path = save(step_path(run_dir, step), tree, {"step": int(step), **meta})
    folder = path.parent
    for _, old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    for tmp in folder.glob(".step_*.tmp"):
        tmp.unlink(missing_ok=True)
    return path

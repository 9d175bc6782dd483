"""Omniglot preprocessing: raw 105x105 bool images to float32 network inputs.

Invert so strokes are 1.0 and background 0.0, resize 105 -> ``size`` (28 in MAML),
float32, shape ``(characters, drawers, size, size, 1)``. Two resize filters
(``resize=``), described in :mod:`mamlx.tasks.omniglot`: ``"lanczos"`` (default,
gray edges) and ``"nearest"`` (MAML's binary images). Both are separable, so a
resize is one matrix product per axis (:func:`_resize_matrix`).
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from mamlx._checks import check_count
from mamlx.tasks.omniglot_sources import RAW_SIZE

__all__ = ["RESIZES", "preprocess_omniglot"]

RESIZES = ("lanczos", "nearest")


@functools.lru_cache(maxsize=8)
def _resize_matrix(size: int, resize: str) -> np.ndarray:
    """Weights ``(size, 105)`` of PIL's Lanczos or nearest-neighbour resize along one axis.

    Column ``j`` is PIL's output for an image whose column ``j`` is 1 and the rest
    0, so ``A @ img @ A.T`` is exactly ``Image.resize((size, size), filter)`` on the
    float image (both filters are separable), computed with one BLAS call per batch.
    For ``"nearest"`` each row of ``A`` holds a single 1: a pixel selection.
    """
    resample = {"lanczos": Image.Resampling.LANCZOS, "nearest": Image.Resampling.NEAREST}[resize]
    cols = []
    for j in range(RAW_SIZE):
        impulse = np.zeros((RAW_SIZE, RAW_SIZE), np.float32)
        impulse[:, j] = 1.0
        resized = Image.fromarray(impulse, mode="F").resize((size, size), resample)
        cols.append(np.asarray(resized)[0])
    return np.stack(cols, axis=1)


def _check_resize(size: int, resize: str) -> None:
    """Reject a bad output size or filter before any file is read or hashed."""
    check_count("size (output side length)", size)
    if resize not in RESIZES:
        raise ValueError(f"unknown resize filter {resize!r}; use one of {RESIZES}")


def _as_bool_images(raw: np.ndarray) -> np.ndarray:
    """Check the shape of raw images and return them as bool (see preprocess_omniglot)."""
    if raw.ndim != 4 or raw.shape[2:] != (RAW_SIZE, RAW_SIZE):
        raise ValueError(
            f"raw Omniglot images must have shape (characters, drawers, 105, 105), got {raw.shape}"
        )
    if raw.dtype == bool:
        return raw
    if not (np.issubdtype(raw.dtype, np.integer) or np.issubdtype(raw.dtype, np.floating)):
        raise ValueError(
            f"raw Omniglot images must be bool (True = background), got dtype {raw.dtype}"
        )
    binary = (raw == 0) | (raw == 1)
    if not binary.all():
        bad = raw[~binary]
        nans = int(np.isnan(bad).sum()) if np.issubdtype(raw.dtype, np.floating) else 0
        found = f"{nans} NaN values" if nans else ""
        others = np.unique(bad[~np.isnan(bad)] if nans else bad)
        if len(others):
            shown = ", ".join(str(v) for v in others[:5].tolist())
            more = ", ..." if len(others) > 5 else ""
            found += f"{' and ' if found else ''}values {{{shown}{more}}}"
        raise ValueError(
            f"raw Omniglot images must be bool (True = background) or hold only 0 and 1, "
            f"got dtype {raw.dtype} with {found}; for 0/255 grayscale pass `gray >= 128`"
        )
    return raw.astype(bool)


def preprocess_omniglot(raw: np.ndarray, size: int = 28, resize: str = "lanczos") -> np.ndarray:
    """Turn raw Omniglot images into network inputs (see the module's preprocessing notes).

    Args:
      raw: bool ``(characters, drawers, 105, 105)``, ``True`` = background (white),
        exactly as in the official PNGs and the npz arrays. A numeric array whose
        values are all 0 or 1 is accepted and read as bool (1 = background).
      size: output side length (28 in MAML / Vinyals et al.).
      resize: ``"lanczos"`` (PIL's Lanczos on the float image) or ``"nearest"``
        (PIL's nearest neighbour, as MAML's script did to the 1-bit PNGs: binary output).

    Returns:
      float32 ``(characters, drawers, size, size, 1)``: inverted (strokes 1.0),
      resized, clipped to [0, 1].

    Raises:
      ValueError: if ``raw`` does not have shape ``(C, D, 105, 105)``, or is not
        bool and holds values other than 0 and 1 (NaN, or 0/255 grayscale: pass
        ``gray >= 128``); a ``size`` below 1 or an unknown ``resize``.

    Example:
      >>> raw = np.ones((1, 20, 105, 105), bool)  # blank pages
      >>> preprocess_omniglot(raw, resize="nearest").shape
      (1, 20, 28, 28, 1)
    """
    _check_resize(size, resize)
    raw = _as_bool_images(np.asarray(raw))
    c, d = raw.shape[:2]
    flat = raw.reshape(c * d, RAW_SIZE, RAW_SIZE)
    weights = _resize_matrix(int(size), resize)
    out = np.empty((c * d, size, size), np.float32)
    for s in range(0, len(flat), 2048):  # bounded memory: 2048 float images at a time
        strokes = 1.0 - flat[s : s + 2048].astype(np.float32)
        out[s : s + 2048] = weights @ (strokes @ weights.T)
    np.clip(out, 0.0, 1.0, out=out)
    return out.reshape(c, d, size, size, 1)

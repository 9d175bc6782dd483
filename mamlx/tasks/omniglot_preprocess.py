"""Omniglot preprocessing: raw 105x105 bool images to float32 network inputs.

Invert so strokes are 1.0 and background 0.0, resize 105 -> ``size`` (28 in MAML),
float32, shape ``(characters, drawers, size, size, 1)``. Two resize filters
(``resize=``), described in :mod:`mamlx.tasks.omniglot`: ``"lanczos"`` (default,
gray edges) and ``"nearest"`` (MAML's binary images). Both are separable, so a
resize is one matrix product per axis (:func:`_resize_matrix`).
:func:`read_omniglot_images` applies the same preprocessing to image files.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from mamlx._checks import check_count
from mamlx.tasks.image_files import read_image
from mamlx.tasks.omniglot_sources import RAW_SIZE

__all__ = ["GRAY_MODES", "RESIZES", "preprocess_omniglot", "read_omniglot_images"]

RESIZES = ("lanczos", "nearest")


@functools.lru_cache(maxsize=8)
def _resize_matrix(size: int, resize: str, in_size: int = RAW_SIZE) -> np.ndarray:
    """Weights ``(size, in_size)`` of PIL's Lanczos or nearest-neighbour resize along one axis.

    Column ``j`` is PIL's output for an image whose column ``j`` is 1 and the rest
    0, so ``A @ img @ A.T`` is exactly ``Image.resize((size, size), filter)`` on the
    float image (both filters are separable), computed with one BLAS call per batch.
    For ``"nearest"`` each row of ``A`` holds a single 1: a pixel selection.
    ``in_size`` is 105 for the official images (other sides: user images,
    :func:`read_omniglot_images`).
    """
    resample = {"lanczos": Image.Resampling.LANCZOS, "nearest": Image.Resampling.NEAREST}[resize]
    cols = []
    for j in range(in_size):
        impulse = np.zeros((in_size, in_size), np.float32)
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
    out = _strokes(raw.reshape(c * d, RAW_SIZE, RAW_SIZE), int(size), resize)
    return out.reshape(c, d, size, size, 1)


def _strokes(flat: np.ndarray, size: int, resize: str) -> np.ndarray:
    """Bool square pages ``(n, side, side)`` (``True`` = background) to float32
    ``(n, size, size)``: inverted (strokes 1.0), resized, clipped to [0, 1]."""
    weights = _resize_matrix(size, resize, flat.shape[-1])
    out = np.empty((len(flat), size, size), np.float32)
    for s in range(0, len(flat), 2048):  # bounded memory: 2048 float images at a time
        strokes = 1.0 - flat[s : s + 2048].astype(np.float32)
        out[s : s + 2048] = weights @ (strokes @ weights.T)
    np.clip(out, 0.0, 1.0, out=out)
    return out


#: PIL modes :func:`read_omniglot_images` turns into gray (8-bit gray, palette, RGB, alpha).
GRAY_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA")


def _gray_on_white(im: Image.Image) -> Image.Image:
    """8-bit gray, as the official PNGs are read; transparent pixels become white paper."""
    if im.mode in ("LA", "PA", "RGBA") or (im.mode == "P" and "transparency" in im.info):
        paper = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(paper, im.convert("RGBA")).convert("L")
    return im.convert("L")


def read_omniglot_images(
    paths: Sequence[str | os.PathLike], size: int = 28, resize: str = "lanczos"
) -> np.ndarray:
    """Image files of handwritten characters as Omniglot training inputs.

    The preprocessing of the training arrays: the official 1-bit PNGs are read as gray
    and thresholded (``>= 128`` is background, as the zip loader reads them), then
    inverted, resized and clipped (:func:`preprocess_omniglot`). So an official
    105x105 PNG gives the training array's image of that drawing. Other files are
    brought to that start first: RGB is converted to gray (PIL's luma, the loader's
    conversion), transparent pixels count as white paper, and a page darker than half
    (light strokes on a dark background) is inverted. Any square side of at least
    ``size`` is resized with the same filter.

    Args:
      paths: image files (PNG, JPEG, ...): square, gray or RGB(A), 8 bits per channel.
      size: the run's ``image_size``.
      resize: the run's ``resize`` filter, ``"lanczos"`` or ``"nearest"``.

    Returns:
      float32 ``(N, size, size, 1)``, strokes 1.0, background 0.0.

    Raises:
      ValueError: no paths, a file that cannot be decoded, a mode other than
        :data:`GRAY_MODES` (16-bit, CMYK, ...), an image that is not square or smaller
        than ``size``; each names the file.

    Example:
      >>> import tempfile
      >>> path = Path(tempfile.mkdtemp()) / "dot.png"
      >>> page = Image.new("L", (105, 105), 255)
      >>> page.paste(0, (30, 30, 75, 75))  # a black square on white paper
      >>> page.save(path)
      >>> x = read_omniglot_images([path])
      >>> x.shape, round(float(x[0, 14, 14, 0]), 3), float(x[0, 0, 0, 0])
      ((1, 28, 28, 1), 1.0, 0.0)
    """
    _check_resize(size, resize)
    size = int(size)
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("no image files given")
    pages = []
    for p in paths:
        im = read_image(
            p,
            dataset="Omniglot",
            modes=GRAY_MODES,
            convert=_gray_on_white,
            min_size=size,
            fix_mode="save it as an 8-bit gray or RGB PNG",
        )
        page = np.asarray(im) >= 128  # True = background, as in the official images
        pages.append(page if page.mean() >= 0.5 else ~page)
    out = np.empty((len(pages), size, size, 1), np.float32)
    sides: dict[int, list[int]] = {}
    for i, page in enumerate(pages):
        sides.setdefault(page.shape[0], []).append(i)
    for idx in sides.values():
        out[idx, ..., 0] = _strokes(np.stack([pages[i] for i in idx]), size, resize)
    return out

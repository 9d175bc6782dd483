"""Omniglot: loaders (npz arrays, official zip archives, TFDS) and the standard splits.

Data: Lake, Salakhutdinov & Tenenbaum (2015), "Human-level concept learning
through probabilistic program induction", Science 350(6266); 1623 handwritten
characters from 50 alphabets, 20 drawers each, 105x105 binary images
(https://github.com/brendenlake/omniglot, MIT License).

**Character order.** Every loader returns characters sorted by their official
character id 1..1623: the 4-digit prefix of the PNG names in the official
archives (``0108_01.png`` is character 108, drawer 1). Ids run through the
alphabets in the order of :data:`OMNIGLOT_ALPHABETS` (the 30 background
alphabets, ids 1..964, then the 20 evaluation alphabets, ids 965..1623) and,
inside an alphabet, by character number (``characterNN``): id = first id of
the alphabet + NN - 1. The drawer axis is ordered by drawer number ``YY``
(npz and zip sources; TFDS does not keep the drawer, see
:func:`load_omniglot_tfds`). So the npz, zip and TFDS paths agree.

**Preprocessing**: invert so strokes are 1.0 and background 0.0, resize 105 -> 28,
float32, shape ``(characters, 20, 28, 28, 1)``. Two resize filters (``resize=``):

* ``"lanczos"`` (default): PIL's Lanczos (antialiasing) filter on the float image,
  clipped to [0, 1]; gray edges. All results in ``benchmarks/results`` use it.
* ``"nearest"``: what MAML's ``resize_images.py`` (Finn et al. 2017) actually
  produced. It asks PIL for Lanczos, but the official PNGs are 1-bit (mode ``"1"``),
  for which PIL always resizes nearest-neighbour, so the images stay binary 0 / 1.

Processed arrays are cached in ``cache_dir("omniglot")`` (see :mod:`mamlx.tasks.cache`),
keyed by source content, size, filter and :data:`CACHE_VERSION`.

This module holds the loaders and re-exports the rest: the alphabet table, archives
and file readers are in :mod:`mamlx.tasks.omniglot_sources`, the resize in
:mod:`mamlx.tasks.omniglot_preprocess`, the class splits in
:mod:`mamlx.tasks.omniglot_splits`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mamlx.tasks.cache import cache_dir as _cache_dir
from mamlx.tasks.cache import cached_arrays
from mamlx.tasks.cache import load_npz as load_npz
from mamlx.tasks.download import sha256_file as sha256_file
from mamlx.tasks.omniglot_preprocess import RESIZES as RESIZES
from mamlx.tasks.omniglot_preprocess import _check_resize, preprocess_omniglot
from mamlx.tasks.omniglot_sources import _FIRST_ID as _FIRST_ID
from mamlx.tasks.omniglot_sources import (
    _HOW_TO_GET,
    NUM_BACKGROUND,
    NUM_CHARACTERS,
    NUM_DRAWERS,
    OMNIGLOT_ALPHABETS,
    OMNIGLOT_ARCHIVES,
    RAW_SIZE,
    _read_npz_images,
    _read_zip,
    fetch_omniglot_archive,
)
from mamlx.tasks.omniglot_sources import _LAST_ID as _LAST_ID
from mamlx.tasks.omniglot_splits import OmniglotSplit, omniglot_split

__all__ = [
    "OMNIGLOT_ALPHABETS",
    "OMNIGLOT_ARCHIVES",
    "OmniglotChars",
    "OmniglotSplit",
    "fetch_omniglot_archive",
    "load_omniglot",
    "load_omniglot_npz",
    "load_omniglot_tfds",
    "load_omniglot_zip",
    "omniglot_split",
    "preprocess_omniglot",
]


CACHE_VERSION = 1


class OmniglotChars(NamedTuple):
    """Preprocessed Omniglot characters.

    Attributes:
      images: float32 ``(characters, 20, size, size, 1)``, strokes 1.0, background 0.0.
      char_ids: int32 ``(characters,)``, official character ids (1..1623), ascending.
    """

    images: np.ndarray
    char_ids: np.ndarray


def _cache_key(source: str, size: int, resize: str) -> str:
    """Cache key of processed arrays; the default filter keeps the keys of older caches."""
    filt = "" if resize == "lanczos" else f";resize={resize}"
    return f"{source};size={size}{filt};v={CACHE_VERSION}"


def _cached(key: str, size: int, resize: str, cache: bool, cache_root, build) -> OmniglotChars:
    """Return cached processed arrays for ``key`` or build, preprocess and cache them."""

    def preprocess() -> dict[str, np.ndarray]:
        parts = build()  # [(raw bool (C, 20, 105, 105), ids (C,)), ...]
        ids = np.concatenate([i for _, i in parts])
        if len(np.unique(ids)) != len(ids):
            raise ValueError("the Omniglot sources given hold some characters more than once")
        images = np.concatenate([preprocess_omniglot(r, size, resize) for r, _ in parts])
        order = np.argsort(ids, kind="stable")
        if np.any(order != np.arange(len(ids))):
            images, ids = images[order], ids[order]
        return {"images": images, "char_ids": ids.astype(np.int32)}

    arrays = cached_arrays(
        "omniglot",
        "processed",
        key,
        preprocess,
        fields=("images", "char_ids"),
        cache=cache,
        root=cache_root,
    )
    return OmniglotChars(arrays["images"], arrays["char_ids"])


# ----------------------------------------------------------------------------- npz source


def load_omniglot_npz(
    root: str | os.PathLike,
    *,
    sets: Sequence[str] = ("background", "evaluation"),
    size: int = 28,
    resize: str = "lanczos",
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> OmniglotChars:
    """Load Omniglot from ``images_background.npz`` / ``images_evaluation.npz``.

    Each file holds ``images`` bool ``(C, 20, 105, 105)`` (True = background);
    row ``c`` is character id ``c + 1`` (background) or ``c + 965`` (evaluation).

    Args:
      root: folder holding the npz files.
      sets: which of ``"background"``, ``"evaluation"`` to load.
      size: output side length.
      resize: ``"lanczos"`` or ``"nearest"`` (MAML's binary images); see the module notes.
      cache: read / write the processed arrays in the cache.
      cache_dir: cache root (default ``~/.cache/mamlx``; see :func:`~mamlx.tasks.cache_dir`).

    Returns:
      :class:`OmniglotChars` sorted by character id.

    Raises:
      FileNotFoundError: a file is missing (names the path and how to get the data).
      ValueError: ``sets`` is empty or unknown, or a file has the wrong shape,
        is corrupt or is not an npz archive (names the path); a bad ``size`` or ``resize``.

    Example:
      >>> chars = load_omniglot_npz("data/omniglot")  # doctest: +SKIP
      >>> chars.images.shape  # doctest: +SKIP
      (1623, 20, 28, 28, 1)
    """
    _check_resize(size, resize)
    root = Path(root)
    if isinstance(sets, str) or not sets:
        raise ValueError(
            f"sets={sets!r}: pass a non-empty sequence of 'background' and/or 'evaluation'"
        )
    offsets = {"background": 1, "evaluation": NUM_BACKGROUND + 1}
    counts = {"background": NUM_BACKGROUND, "evaluation": NUM_CHARACTERS - NUM_BACKGROUND}
    paths = []
    for s in sets:
        if s not in offsets:
            raise ValueError(f"unknown Omniglot set {s!r}; use 'background' or 'evaluation'")
        p = root / f"images_{s}.npz"
        if not p.is_file():
            raise FileNotFoundError(f"Omniglot file {p} not found. {_HOW_TO_GET}")
        paths.append((s, p))
    key = _cache_key("npz:" + ",".join(f"{s}={sha256_file(p)}" for s, p in paths), size, resize)

    def build():
        parts = []
        for s, p in paths:
            images = _read_npz_images(p)
            want = (counts[s], NUM_DRAWERS, RAW_SIZE, RAW_SIZE)
            if images.shape != want or images.dtype != bool:
                raise ValueError(
                    f"{p}: 'images' must be bool {want}, got {images.dtype} {images.shape}"
                )
            parts.append((images, np.arange(len(images)) + offsets[s]))
        return parts

    return _cached(key, size, resize, cache, cache_dir, build)


# ----------------------------------------------------------------------------- zip source


def load_omniglot_zip(
    archives: Sequence[str | os.PathLike],
    *,
    size: int = 28,
    resize: str = "lanczos",
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> OmniglotChars:
    """Load Omniglot from official archives (``images_background.zip`` and the like).

    Layout ``<root>/<Alphabet>/characterNN/XXXX_YY.png`` (105x105 1-bit PNG),
    where ``XXXX`` is the character id and ``YY`` the drawer. Any subset archive
    with that layout (``images_background_small1.zip``) works too.

    Args:
      archives: paths of zip files; their characters are merged and sorted by id.
      size: output side length.
      resize: ``"lanczos"`` or ``"nearest"`` (MAML's binary images); see the module notes.
      cache: read / write the processed arrays in the cache.
      cache_dir: cache root.

    Returns:
      :class:`OmniglotChars` sorted by character id.

    Raises:
      FileNotFoundError: an archive is missing.
      ValueError: a corrupt or truncated archive, an image of the wrong size, a
        character without its 20 drawers, an unknown alphabet, a bad ``size`` or ``resize``.
    """
    _check_resize(size, resize)
    paths = [Path(a) for a in archives]
    if not paths:
        raise ValueError("load_omniglot_zip needs at least one archive path")
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"Omniglot archive {p} not found. {_HOW_TO_GET}")
    key = _cache_key("zip:" + ",".join(sorted(sha256_file(p) for p in paths)), size, resize)

    def build():
        return [_read_zip(p) for p in paths]

    return _cached(key, size, resize, cache, cache_dir, build)


# ----------------------------------------------------------------------------- TFDS source


def load_omniglot_tfds(
    splits: Sequence[str] = ("train", "test"),
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    size: int = 28,
    resize: str = "lanczos",
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> OmniglotChars:
    """Load Omniglot through TensorFlow Datasets (``pip install mamlx[tfds]``).

    Uses ``tfds.data_source("omniglot")`` (no TensorFlow needed). TFDS split
    ``train`` is the background set, ``test`` the evaluation set; TFDS label
    ``l`` is character id ``l + 1``. TFDS does not keep the drawer number, so
    the drawer axis follows the data source's order (the same 20 images per
    character as the other sources, possibly in another order).

    Args:
      splits: TFDS split names to load and merge.
      data_dir: TFDS data folder.
      download: let TFDS download and prepare the data if needed.
      size: output side length.
      resize: ``"lanczos"`` or ``"nearest"`` (MAML's binary images); see the module notes.
      cache: read / write the processed arrays in the cache.
      cache_dir: cache root.

    Returns:
      :class:`OmniglotChars` sorted by character id.

    Raises:
      ImportError: tensorflow-datasets is not installed.
      ValueError: a character without exactly 20 images, images of the wrong size,
        or a bad ``size`` / ``resize``.
    """
    _check_resize(size, resize)
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError(
            "load_omniglot_tfds needs tensorflow-datasets: pip install 'mamlx[tfds]'"
        ) from e
    key = _cache_key(f"tfds:{','.join(splits)}@{tfds.__version__}:{data_dir}", size, resize)

    def build():
        per_char: dict[int, list[np.ndarray]] = {}
        for split in splits:
            src = tfds.data_source("omniglot", split=split, data_dir=data_dir, download=download)
            for i in range(len(src)):
                ex = src[i]
                img = np.asarray(ex["image"])
                if img.shape[:2] != (RAW_SIZE, RAW_SIZE):
                    raise ValueError(
                        f"tfds omniglot[{split}][{i}]: image shape {img.shape}, "
                        f"expected ({RAW_SIZE}, {RAW_SIZE}, 3)"
                    )
                img = img[..., 0] if img.ndim == 3 else img
                per_char.setdefault(int(ex["label"]) + 1, []).append(img >= 128)
        if not per_char:
            raise ValueError(f"tfds omniglot splits {list(splits)} are empty")
        ids = np.array(sorted(per_char))
        for cid in ids:
            if len(per_char[cid]) != NUM_DRAWERS:
                raise ValueError(
                    f"tfds omniglot: character id {cid} has {len(per_char[cid])} images, "
                    f"expected {NUM_DRAWERS}"
                )
        return [(np.stack([np.stack(per_char[c]) for c in ids]), ids)]

    return _cached(key, size, resize, cache, cache_dir, build)


# ----------------------------------------------------------------------------- dispatcher


def load_omniglot(
    source: str = "npz",
    root: str | os.PathLike | None = None,
    *,
    download: bool = False,
    size: int = 28,
    resize: str = "lanczos",
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> OmniglotChars:
    """Load all 1623 Omniglot characters from one of three sources.

    Args:
      source: ``"npz"`` (``root`` holds ``images_{background,evaluation}.npz``),
        ``"zip"`` (``root`` holds ``images_{background,evaluation}.zip``; default
        root is ``cache_dir("omniglot")``, filled when ``download=True``) or
        ``"tfds"`` (``root`` is the TFDS data dir).
      root: see ``source``.
      download: fetch missing official archives (``zip``) or let TFDS download.
      size: output side length (28 in MAML).
      resize: ``"lanczos"`` or ``"nearest"`` (MAML's binary images); see the module notes.
      cache: read / write the processed arrays in the cache.
      cache_dir: cache root (default ``~/.cache/mamlx``; see :func:`~mamlx.tasks.cache_dir`).

    Returns:
      :class:`OmniglotChars`, images ``(1623, 20, size, size, 1)`` float32 sorted
      by character id.

    Raises:
      FileNotFoundError: files are missing (the message says how to get them).
      ValueError: unknown source, corrupt files, checksum mismatch, bad ``size`` / ``resize``.

    Example:
      >>> chars = load_omniglot("zip", download=True)  # doctest: +SKIP
      >>> split = omniglot_split(chars, "vinyals", seed=0)  # doctest: +SKIP
    """
    _check_resize(size, resize)
    if source == "npz":
        if root is None:
            raise FileNotFoundError(
                "load_omniglot(source='npz') needs root= the folder holding "
                f"images_background.npz and images_evaluation.npz. {_HOW_TO_GET}"
            )
        return load_omniglot_npz(root, size=size, resize=resize, cache=cache, cache_dir=cache_dir)
    if source == "zip":
        folder = Path(root) if root is not None else _cache_dir("omniglot", root=cache_dir)
        paths = []
        for name in ("images_background.zip", "images_evaluation.zip"):
            p = folder / name
            if not p.is_file():
                if not download:
                    raise FileNotFoundError(
                        f"Omniglot archive {p} not found; pass download=True to fetch "
                        f"{OMNIGLOT_ARCHIVES[name][0]} (sha256-verified)"
                    )
                p = fetch_omniglot_archive(name, dest_dir=folder)
            paths.append(p)
        return load_omniglot_zip(paths, size=size, resize=resize, cache=cache, cache_dir=cache_dir)
    if source == "tfds":
        return load_omniglot_tfds(
            data_dir=root,
            download=download,
            size=size,
            resize=resize,
            cache=cache,
            cache_dir=cache_dir,
        )
    raise ValueError(f"unknown Omniglot source {source!r}; use 'npz', 'zip' or 'tfds'")

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

Processed arrays are cached in ``cache_dir("omniglot")``, keyed by source content,
size, filter and :data:`CACHE_VERSION`.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import re
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from mamlx._checks import check_count
from mamlx.tasks.download import cache_dir as _cache_dir
from mamlx.tasks.download import download_url, load_npz, save_npz, sha256_file

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

RESIZES = ("lanczos", "nearest")

CACHE_VERSION = 1
NUM_CHARACTERS = 1623
NUM_BACKGROUND = 964
NUM_DRAWERS = 20
RAW_SIZE = 105

#: (set, alphabet, first id, last id), in official id order (as alphabets.tsv).
OMNIGLOT_ALPHABETS: tuple[tuple[str, str, int, int], ...] = tuple(
    (s, a, int(f), int(last))
    for s, a, f, last in (
        line.split()
        for line in """
background Arcadian 1 26
background Armenian 27 67
background Asomtavruli_(Georgian) 68 107
background Balinese 108 131
background Bengali 132 177
background Blackfoot_(Canadian_Aboriginal_Syllabics) 178 191
background Braille 192 217
background Cyrillic 218 250
background Early_Aramaic 251 272
background Syriac_(Estrangelo) 273 295
background Anglo-Saxon_Futhorc 296 324
background Futurama 325 350
background Grantha 351 393
background Greek 394 417
background Gujarati 418 465
background Hebrew 466 487
background Japanese_(hiragana) 488 539
background Inuktitut_(Canadian_Aboriginal_Syllabics) 540 555
background Malay_(Jawi_-_Arabic) 556 595
background Japanese_(katakana) 596 642
background Korean 643 682
background Latin 683 708
background Alphabet_of_the_Magi 709 728
background Mkhedruli_(Georgian) 729 769
background Burmese_(Myanmar) 770 803
background N_Ko 804 836
background Ojibwe_(Canadian_Aboriginal_Syllabics) 837 850
background Sanskrit 851 892
background Tagalog 893 909
background Tifinagh 910 964
evaluation Angelic 965 984
evaluation Atemayar_Qelisayer 985 1010
evaluation Atlantean 1011 1036
evaluation Aurek-Besh 1037 1062
evaluation Avesta 1063 1088
evaluation Ge_ez 1089 1114
evaluation Glagolitic 1115 1159
evaluation Gurmukhi 1160 1204
evaluation Kannada 1205 1245
evaluation Keble 1246 1271
evaluation Malayalam 1272 1318
evaluation Manipuri 1319 1358
evaluation Mongolian 1359 1388
evaluation Old_Church_Slavonic_(Cyrillic) 1389 1433
evaluation Oriya 1434 1479
evaluation Syriac_(Serto) 1480 1502
evaluation Sylheti 1503 1530
evaluation Tengwar 1531 1555
evaluation Tibetan 1556 1597
evaluation ULOG 1598 1623
""".strip().splitlines()
    )
)
_FIRST_ID = {a: f for _, a, f, _ in OMNIGLOT_ALPHABETS}
_LAST_ID = {a: last for _, a, _, last in OMNIGLOT_ALPHABETS}

_URL = "https://github.com/brendenlake/omniglot/raw/master/python/"
#: name -> (url, sha256, size in bytes) of the official archives. Checksums as
#: recorded by TensorFlow Datasets (url_checksums/omniglot.txt, v4.9.10); the
#: small1 value is also in the project's data README.
OMNIGLOT_ARCHIVES: dict[str, tuple[str, str, int]] = {
    "images_background.zip": (
        _URL + "images_background.zip",
        "ad41ab679c8b5d90b271ef46be6987cc81211774a695c29dcc5367b2b26ee640",
        9464212,
    ),
    "images_evaluation.zip": (
        _URL + "images_evaluation.zip",
        "1f61a8f3366785b057fc117d9228e78a16e3d976c8953b2a10fcc74cf0609cee",
        6462886,
    ),
    "images_background_small1.zip": (
        _URL + "images_background_small1.zip",
        "f38eb80f801274ac2b4dff5b24289016bfaba4a7d5bb50deebf27104ad6cb8a4",
        1319022,
    ),
    "images_background_small2.zip": (
        _URL + "images_background_small2.zip",
        "3ccaa407515a8778e5d0861875af38b17e418f301ad5bb3b5a6b65d901a41c7f",
        1580917,
    ),
}

_HOW_TO_GET = (
    "Omniglot is at https://github.com/brendenlake/omniglot (python/images_background.zip "
    "and python/images_evaluation.zip); load_omniglot(source='zip', download=True) fetches "
    "and verifies them"
)


class OmniglotChars(NamedTuple):
    """Preprocessed Omniglot characters.

    Attributes:
      images: float32 ``(characters, 20, size, size, 1)``, strokes 1.0, background 0.0.
      char_ids: int32 ``(characters,)``, official character ids (1..1623), ascending.
    """

    images: np.ndarray
    char_ids: np.ndarray


class OmniglotSplit(NamedTuple):
    """A named, seeded class split of Omniglot.

    Attributes:
      name: ``"vinyals"`` or ``"background"``.
      seed: the seed that drew the split.
      train, val, test: float32 ``(characters, 20, H, W, 1)`` arrays per split
        (``val`` may hold zero characters).
      train_ids, val_ids, test_ids: int32 official character ids per split.
      train_rotations: 4 if the split's convention treats the 90-degree rotations
        of each training character as new classes (pass ``rotate=True`` to the
        sampler for ``train``), else 1.
    """

    name: str
    seed: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    train_ids: np.ndarray
    val_ids: np.ndarray
    test_ids: np.ndarray
    train_rotations: int

    @property
    def num_train_classes(self) -> int:
        """Training classes counting rotations.

        4400 for the default Vinyals split (1100 characters x 4), 4800 with
        ``num_val=0`` (all 1200 training characters x 4).
        """
        return len(self.train_ids) * self.train_rotations


# ----------------------------------------------------------------------------- preprocessing


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


def _cache_key(source: str, size: int, resize: str) -> str:
    """Cache key of processed arrays; the default filter keeps the keys of older caches."""
    filt = "" if resize == "lanczos" else f";resize={resize}"
    return f"{source};size={size}{filt};v={CACHE_VERSION}"


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


def _cached(key: str, size: int, resize: str, cache: bool, cache_root, build) -> OmniglotChars:
    """Return cached processed arrays for ``key`` or build, preprocess and cache them."""
    path = None
    if cache:
        name = hashlib.sha256(key.encode()).hexdigest()[:20]
        path = _cache_dir("omniglot", root=cache_root) / f"processed-{name}.npz"
        hit = load_npz(path, key)
        if hit is not None:
            return OmniglotChars(hit["images"], hit["char_ids"])
    parts = build()  # [(raw bool (C, 20, 105, 105), ids (C,)), ...]
    ids = np.concatenate([i for _, i in parts])
    if len(np.unique(ids)) != len(ids):
        raise ValueError("the Omniglot sources given hold some characters more than once")
    images = np.concatenate([preprocess_omniglot(r, size, resize) for r, _ in parts])
    order = np.argsort(ids, kind="stable")
    if np.any(order != np.arange(len(ids))):
        images, ids = images[order], ids[order]
    chars = OmniglotChars(images, ids.astype(np.int32))
    if path is not None:
        save_npz(path, key, images=chars.images, char_ids=chars.char_ids)
    return chars


# ----------------------------------------------------------------------------- npz source


def _read_npz_images(path: Path) -> np.ndarray:
    """The ``images`` array of an npz archive, or a ``ValueError`` naming ``path``."""
    bad = f"{path} is corrupt or not an npz archive"
    hint = "; replace it with a good copy of the file"
    if path.stat().st_size == 0:
        raise ValueError(f"{bad}: the file is empty (0 bytes){hint}")
    try:
        z = np.load(path, allow_pickle=False)
    except ValueError as e:  # numpy's own message here talks about pickles: misleading
        raise ValueError(f"{bad}: unrecognised file format (neither .npz nor .npy){hint}") from e
    except (EOFError, OSError, zipfile.BadZipFile) as e:
        raise ValueError(f"{bad} ({type(e).__name__}: {e}){hint}") from e
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ValueError(
            f"{path} is not an npz archive: it holds a single .npy array "
            f"({z.dtype} {z.shape}); save it with np.savez(path, images=...)"
        )
    with z:
        if "images" not in z.files:
            raise ValueError(f"{path}: no 'images' array in the npz archive (found {z.files})")
        try:
            return z["images"]
        except (EOFError, OSError, ValueError, zipfile.BadZipFile, zlib.error) as e:
            raise ValueError(f"{bad} ({type(e).__name__}: {e}){hint}") from e


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
      cache_dir: cache root (default ``$MAMLX_CACHE`` or ``~/.cache/mamlx``).

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

_MEMBER = re.compile(
    r"^(?:.*/)?(?P<alphabet>[^/]+)/character(?P<num>\d+)/(?P<prefix>\d+)_(?P<drawer>\d+)\.png$"
)


def fetch_omniglot_archive(
    name: str = "images_background.zip",
    *,
    url: str | None = None,
    sha256: str | None = None,
    dest_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Download an official Omniglot archive and verify its SHA-256.

    Args:
      name: a key of :data:`OMNIGLOT_ARCHIVES`, e.g. ``"images_evaluation.zip"``.
      url: override the official URL (e.g. a mirror or a ``file://`` copy); the
        checksum still comes from the table unless ``sha256`` is given.
      sha256: override the expected checksum.
      dest_dir: where to put it (default ``cache_dir("omniglot")``).
      cache_dir: cache root when ``dest_dir`` is not given.

    Returns:
      Path of the verified archive.

    Raises:
      ValueError: unknown name, checksum mismatch or truncated download.
    """
    if name not in OMNIGLOT_ARCHIVES:
        raise ValueError(f"unknown Omniglot archive {name!r}; known: {sorted(OMNIGLOT_ARCHIVES)}")
    table_url, table_sha, table_size = OMNIGLOT_ARCHIVES[name]
    dest = Path(dest_dir) if dest_dir is not None else _cache_dir("omniglot", root=cache_dir)
    return download_url(
        url or table_url,
        dest / name,
        sha256=sha256 or table_sha,
        size=table_size if sha256 is None else None,
    )


def _read_zip(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Raw bool images ``(C, 20, 105, 105)`` and ids from one official archive."""
    if not path.is_file():
        raise FileNotFoundError(f"Omniglot archive {path} not found. {_HOW_TO_GET}")
    bad = (
        f"{path} is not a valid Omniglot zip archive (truncated or corrupt download?); "
        "delete it and fetch it again"
    )
    found: dict[int, dict[int, np.ndarray]] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                m = _MEMBER.match(info.filename)
                if m is None or "__MACOSX" in info.filename:
                    continue
                alphabet = m["alphabet"]
                if alphabet not in _FIRST_ID:
                    raise ValueError(f"{path}: unknown alphabet {alphabet!r} in {info.filename}")
                cid = _FIRST_ID[alphabet] + int(m["num"]) - 1
                if cid > _LAST_ID[alphabet] or int(m["prefix"]) != cid:
                    raise ValueError(
                        f"{path}: {info.filename} does not match the official numbering "
                        f"(expected character id {cid})"
                    )
                with Image.open(io.BytesIO(zf.read(info))) as im:
                    img = np.asarray(im.convert("L")) >= 128
                if img.shape != (RAW_SIZE, RAW_SIZE):
                    raise ValueError(
                        f"{path}: image {info.filename} is {img.shape[1]}x{img.shape[0]}, "
                        f"expected {RAW_SIZE}x{RAW_SIZE}"
                    )
                found.setdefault(cid, {})[int(m["drawer"])] = img
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, UnidentifiedImageError) as e:
        raise ValueError(f"{bad} ({e})") from e
    if not found:
        raise ValueError(f"{path} holds no Omniglot images (<Alphabet>/characterNN/XXXX_YY.png)")
    ids = np.array(sorted(found))
    raw = np.empty((len(ids), NUM_DRAWERS, RAW_SIZE, RAW_SIZE), bool)
    for i, cid in enumerate(ids):
        drawers = found[cid]
        if sorted(drawers) != list(range(1, NUM_DRAWERS + 1)):
            raise ValueError(
                f"{path}: character {cid} has drawers {sorted(drawers)}, expected 1..{NUM_DRAWERS}"
            )
        for d in range(NUM_DRAWERS):
            raw[i, d] = drawers[d + 1]
    return raw, ids


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
      cache_dir: cache root (default ``$MAMLX_CACHE`` or ``~/.cache/mamlx``).

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


# ----------------------------------------------------------------------------- splits


def omniglot_split(
    chars: OmniglotChars,
    name: str = "vinyals",
    *,
    seed: int = 0,
    num_val: int | None = None,
) -> OmniglotSplit:
    """Split Omniglot characters into train / val / test classes.

    * ``"vinyals"`` (Vinyals et al. 2016, used by MAML): a seeded permutation of
      all 1623 characters; the first 1200 are training characters, of which the
      last ``num_val`` (default 100, as in MAML's code) are carved out for
      validation (1100 / 100), and the remaining 423 are test characters.
      Training characters count with their 90-degree rotations as new classes
      (``train_rotations=4``: 4800 classes from 1200 characters).
    * ``"background"`` (Lake et al. 2015): the 30 background alphabets (964
      characters) train, the 20 evaluation alphabets (659) test; ``num_val``
      (default 0) whole background alphabets, drawn with ``seed``, go to val.

    Args:
      chars: all 1623 characters (e.g. from :func:`load_omniglot`).
      name: ``"vinyals"`` or ``"background"``.
      seed: seed of the permutation (numpy ``default_rng``); same seed, same split.
      num_val: see above.

    Returns:
      :class:`OmniglotSplit` with arrays and character ids per split.

    Raises:
      ValueError: unknown name, missing characters, or a ``num_val`` out of range.
    """
    ids = np.asarray(chars.char_ids)
    need = np.arange(1, NUM_CHARACTERS + 1)
    if name == "background":
        bg_alpha = [a for s, a, _, _ in OMNIGLOT_ALPHABETS if s == "background"]
        num_val = 0 if num_val is None else num_val
        if not 0 <= num_val < len(bg_alpha):
            raise ValueError(f"num_val={num_val} alphabets must be in [0, {len(bg_alpha)})")
        val_alpha = np.random.default_rng(seed).permutation(len(bg_alpha))[:num_val]
        val_ids = np.concatenate(
            [np.arange(_FIRST_ID[bg_alpha[i]], _LAST_ID[bg_alpha[i]] + 1) for i in val_alpha]
            or [np.empty(0, np.int64)]
        )
        bg = np.arange(1, NUM_BACKGROUND + 1)
        parts = (np.setdiff1d(bg, val_ids), np.sort(val_ids), need[NUM_BACKGROUND:])
        rotations = 1
    elif name == "vinyals":
        num_val = 100 if num_val is None else num_val
        if not 0 <= num_val < 1200:
            raise ValueError(f"num_val={num_val} characters must be in [0, 1200)")
        perm = np.random.default_rng(seed).permutation(need)
        parts = (
            np.sort(perm[: 1200 - num_val]),
            np.sort(perm[1200 - num_val : 1200]),
            np.sort(perm[1200:]),
        )
        rotations = 4
    else:
        raise ValueError(f"unknown Omniglot split {name!r}; use 'vinyals' or 'background'")
    missing = np.setdiff1d(np.concatenate(parts), ids)
    if len(missing):
        raise ValueError(
            f"split {name!r} needs {len(missing)} characters not in the loaded data "
            f"(e.g. ids {missing[:5].tolist()}); load both background and evaluation sets"
        )
    rows = [np.searchsorted(ids, p) for p in parts]
    train, val, test = (np.asarray(chars.images)[r] for r in rows)
    return OmniglotSplit(
        name, seed, train, val, test, *(p.astype(np.int32) for p in parts), rotations
    )

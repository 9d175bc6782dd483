"""Omniglot's official data: the alphabet / character-id table, the archives and their readers.

Data: Lake, Salakhutdinov & Tenenbaum (2015), "Human-level concept learning
through probabilistic program induction", Science 350(6266); 1623 handwritten
characters from 50 alphabets, 20 drawers each, 105x105 binary images
(https://github.com/brendenlake/omniglot, MIT License). Character ids and their
order are described in :mod:`mamlx.tasks.omniglot`.

* :data:`OMNIGLOT_ALPHABETS`: (set, alphabet, first id, last id) of the 50 alphabets.
* :data:`OMNIGLOT_ARCHIVES` and :func:`fetch_omniglot_archive`: the official zip
  archives with their URLs, SHA-256 checksums and sizes.
* ``_read_npz_images`` / ``_read_zip``: raw bool images ``(C, 20, 105, 105)``
  (``True`` = background) from an npz array file or an official archive, with a
  ``ValueError`` naming the file when it is corrupt.
"""

from __future__ import annotations

import io
import os
import re
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from mamlx.tasks.cache import cache_dir as _cache_dir
from mamlx.tasks.download import download_url

__all__ = ["OMNIGLOT_ALPHABETS", "OMNIGLOT_ARCHIVES", "fetch_omniglot_archive"]

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

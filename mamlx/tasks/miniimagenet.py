"""mini-ImageNet from a user-supplied image folder and the Ravi & Larochelle split CSVs.

Data: Vinyals et al. (2016), "Matching Networks for One Shot Learning"; class
split of Ravi & Larochelle (2017), "Optimization as a Model for Few-Shot
Learning": 64 train / 16 val / 20 test classes of 600 images each, listed in
``train.csv`` / ``val.csv`` / ``test.csv`` (header ``filename,label``, rows like
``n0153282900000005.jpg,n01532829``). The images are not redistributable here:
the user supplies a folder holding them, flat or in an ``images/`` sub-folder.

Each split becomes one uint8 array ``(classes, images_per_class, 84, 84, 3)``
(RGB, resized with a Lanczos filter as in Ravi & Larochelle's script), classes
in order of first appearance in the CSV, images in CSV order. Arrays are cached
in ``cache_dir("miniimagenet")`` (:func:`mamlx.tasks.cache.cached_arrays`), keyed by
the CSV content, the image folder, the size and :data:`CACHE_VERSION`; the cache also
records each image's size and modification time, and an image replaced since is read
again (the cache stays usable when the images are deleted after it was built).
:func:`read_miniimagenet_images` turns other image files into the same format.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from mamlx.tasks.cache import cached_arrays
from mamlx.tasks.download import sha256_file
from mamlx.tasks.image_files import read_image

__all__ = [
    "RGB_MODES",
    "MiniImageNetSplit",
    "load_miniimagenet",
    "read_miniimagenet_images",
    "read_split_csv",
]

CACHE_VERSION = 2
SPLITS = ("train", "val", "test")

_HOW_TO_GET = (
    "mini-ImageNet images are not shipped with mamlx: obtain the images of the Ravi & "
    "Larochelle (2017) release (e.g. via https://github.com/twitter/meta-learning-lstm) "
    "and pass the folder holding them"
)


class MiniImageNetSplit(NamedTuple):
    """One mini-ImageNet split as an array.

    Attributes:
      name: ``"train"``, ``"val"`` or ``"test"``.
      images: uint8 ``(classes, images_per_class, size, size, 3)``.
      class_names: WordNet ids (``"n01532829"``), one per class, in array order.
    """

    name: str
    images: np.ndarray
    class_names: tuple[str, ...]


def read_split_csv(path: str | os.PathLike) -> dict[str, list[str]]:
    """Read a split CSV (``filename,label``) into ``{label: [filenames]}``.

    Args:
      path: the CSV file.

    The file is read as UTF-8; a leading byte-order mark is ignored.

    Returns:
      Ordered mapping from class (in order of first appearance) to file names.

    Raises:
      FileNotFoundError: the CSV is missing.
      ValueError: not UTF-8 text, wrong header, an empty file name or label, a file
        name listed twice (in one class or two), no rows (empty split) or classes
        of unequal size; row errors name the CSV and its line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"mini-ImageNet split file {path} not found; it is one of the Ravi & Larochelle "
            "(2017) CSVs train.csv / val.csv / test.csv"
        )
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); save the CSV as UTF-8"
        ) from e
    if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
        raise ValueError(f"{path}: expected a header 'filename,label'")
    classes: dict[str, list[str]] = {}
    seen: dict[str, tuple[int, str]] = {}  # filename -> (line, label)
    for n, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != 2:
            raise ValueError(f"{path}:{n}: expected 'filename,label', got {row!r}")
        fname, label = row[0].strip(), row[1].strip()
        if not fname or not label:
            what = "file name" if not fname else "label"
            raise ValueError(f"{path}:{n}: empty {what} in row {row!r}")
        if fname in seen:
            line, first = seen[fname]
            raise ValueError(
                f"{path}:{n}: file {fname!r} is listed again (label {label!r}; first at "
                f"line {line} with label {first!r}); each image belongs to one row"
            )
        seen[fname] = (n, label)
        classes.setdefault(label, []).append(fname)
    if not classes:
        raise ValueError(f"{path}: the split is empty (no rows)")
    sizes = {len(v) for v in classes.values()}
    if len(sizes) != 1:
        raise ValueError(f"{path}: classes have different numbers of images: {sorted(sizes)}")
    return classes


def _check_disjoint(csv_path: Path, split: str, names: tuple[str, ...]) -> None:
    """Raise if a class of ``split`` is also in another split CSV beside ``csv_path``."""
    mine = set(names)
    clashes = []
    for other in SPLITS:
        other_path = csv_path.with_name(f"{other}.csv")
        if other == split or not other_path.is_file():
            continue
        shared = [c for c in read_split_csv(other_path) if c in mine]
        if shared:
            listed = ", ".join(shared[:5]) + (", ..." if len(shared) > 5 else "")
            clashes.append(f"{len(shared)} with {other_path} ({listed})")
    if clashes:
        raise ValueError(
            f"{csv_path} shares classes with the other split CSVs of its folder: "
            f"{'; '.join(clashes)}; the train / val / test classes of mini-ImageNet must be "
            "disjoint"
        )


def _file_stats(folder: Path, files: list[str]) -> np.ndarray:
    """int64 ``(len(files), 2)``: size and mtime_ns of each file, -1 where it is missing."""
    out = np.full((len(files), 2), -1, np.int64)
    for i, f in enumerate(files):
        try:
            st = os.stat(folder / f)
        except FileNotFoundError:
            continue
        out[i] = st.st_size, st.st_mtime_ns
    return out


def _image_folder(image_dir: Path, files: list[str]) -> Path:
    """``image_dir`` or ``image_dir/images``: whichever holds the listed images."""
    candidates = (image_dir, image_dir / "images")
    for folder in candidates:
        if any((folder / f).is_file() for f in files[:50]):
            return folder
    return candidates[1] if candidates[1].is_dir() else candidates[0]


def _rgb_array(im: Image.Image, size: int) -> np.ndarray:
    """uint8 ``(size, size, 3)``: RGB, resized with Lanczos (Ravi & Larochelle's script)."""
    im = im.convert("RGB")
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(im, dtype=np.uint8)


#: PIL modes :func:`read_miniimagenet_images` converts to RGB, as the loader does
#: (gray is repeated over the channels, an alpha channel is dropped).
RGB_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr")


def read_miniimagenet_images(paths: Sequence[str | os.PathLike], size: int = 84) -> np.ndarray:
    """Image files as mini-ImageNet training inputs: the loader's conversion and resize.

    Each file is converted to RGB (PIL's ``convert("RGB")``: gray repeated over the
    channels, CMYK converted, alpha dropped) and resized to ``size`` with Lanczos where
    it is larger, exactly as :func:`load_miniimagenet` builds the training arrays.

    Args:
      paths: image files (JPEG, PNG, ...): square, at least ``size`` pixels, 8 bits per
        channel.
      size: the run's ``image_size`` (84).

    Returns:
      uint8 ``(N, size, size, 3)``, as the training arrays (the samplers scale them to
      [0, 1]).

    Raises:
      ValueError: no paths, a file that cannot be decoded, a mode other than
        :data:`RGB_MODES` (16-bit or float images), an image that is not square or
        smaller than ``size``; each names the file.

    Example:
      >>> import tempfile
      >>> path = Path(tempfile.mkdtemp()) / "red.png"
      >>> Image.new("RGB", (100, 100), (255, 0, 0)).save(path)
      >>> x = read_miniimagenet_images([path])
      >>> x.shape, x.dtype.name, x[0, 0, 0].tolist()
      ((1, 84, 84, 3), 'uint8', [255, 0, 0])
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("no image files given")
    out = np.empty((len(paths), size, size, 3), np.uint8)
    for i, p in enumerate(paths):
        im = read_image(
            p,
            dataset="mini-ImageNet",
            modes=RGB_MODES,
            convert=lambda im: im.convert("RGB"),
            min_size=size,
            fix_mode="save it as an 8-bit RGB JPEG or PNG",
        )
        out[i] = _rgb_array(im, size)
    return out


def _load_image(path: Path, size: int) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return _rgb_array(im, size)
    except FileNotFoundError:
        raise FileNotFoundError(f"mini-ImageNet image {path} not found. {_HOW_TO_GET}") from None
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"cannot decode mini-ImageNet image {path}: {e}") from e


def load_miniimagenet(
    image_dir: str | os.PathLike,
    split: str = "train",
    *,
    csv_dir: str | os.PathLike | None = None,
    size: int = 84,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> MiniImageNetSplit:
    """Load one mini-ImageNet split as a uint8 array.

    Args:
      image_dir: folder with the images named as in the CSV rows
        (``n0153282900000005.jpg``), directly or in ``image_dir/images``.
      split: ``"train"``, ``"val"`` or ``"test"`` (reads ``<csv_dir>/<split>.csv``).
      csv_dir: folder holding the split CSVs (default ``image_dir``).
      size: output side length (84 in the standard benchmark).
      cache: read / write the array in the cache.
      cache_dir: cache root (default ``~/.cache/mamlx``; see :func:`~mamlx.tasks.cache_dir`).

    Returns:
      :class:`MiniImageNetSplit`; ``images`` is ``(64, 600, 84, 84, 3)`` uint8 for
      the full train split. Feed it to :func:`~mamlx.tasks.fewshot_sampler`,
      which scales it to float32 in [0, 1].

    Raises:
      FileNotFoundError: a CSV or an image is missing (names the path).
      ValueError: unknown split, a bad CSV (see :func:`read_split_csv`), a class also
        listed in another split CSV of the same folder, an unreadable image.

    Example:
      >>> train = load_miniimagenet("~/data/miniimagenet", "train")  # doctest: +SKIP
      >>> train.images.shape  # doctest: +SKIP
      (64, 600, 84, 84, 3)
    """
    if split not in SPLITS:
        raise ValueError(f"unknown mini-ImageNet split {split!r}; use one of {SPLITS}")
    image_dir = Path(image_dir).expanduser()
    csv_path = Path(csv_dir if csv_dir is not None else image_dir).expanduser() / f"{split}.csv"
    classes = read_split_csv(csv_path)
    names = tuple(classes)
    _check_disjoint(csv_path, split, names)
    files = [f for fs in classes.values() for f in fs]
    per_class = len(files) // len(names)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"mini-ImageNet image folder {image_dir} not found. {_HOW_TO_GET}")

    key = (
        f"miniimagenet:{split}:{sha256_file(csv_path)}:{image_dir.resolve()}"
        f";size={size};v={CACHE_VERSION}"
    )
    folder = _image_folder(image_dir, files)
    # Taken before the images are read, so a file changed while building is read again.
    stats = _file_stats(folder, files)

    def unchanged(hit: dict[str, np.ndarray]) -> bool:
        # Trust the cache unless an image that is still there changed since (replaced
        # files at the same path); deleted images are fine, the cache holds them.
        if hit["stats"].shape != stats.shape:
            return False
        present = stats[:, 0] >= 0
        return np.array_equal(hit["stats"][present], stats[present])

    def build() -> dict[str, np.ndarray]:
        missing = [f for f, st in zip(files, stats, strict=True) if st[0] < 0]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} of {len(files)} mini-ImageNet images listed in {csv_path} are "
                f"missing from {folder} (first: {missing[0]}). {_HOW_TO_GET}"
            )
        images = np.empty((len(files), size, size, 3), np.uint8)

        def fill(i: int) -> None:
            images[i] = _load_image(folder / files[i], size)

        with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:  # PIL releases the GIL
            list(pool.map(fill, range(len(files))))
        images = images.reshape(len(names), per_class, size, size, 3)
        return {"images": images, "stats": stats}

    arrays = cached_arrays(
        "miniimagenet",
        split,
        key,
        build,
        fields=("images", "stats"),
        cache=cache,
        root=cache_dir,
        valid=unchanged,
    )
    return MiniImageNetSplit(split, arrays["images"], names)

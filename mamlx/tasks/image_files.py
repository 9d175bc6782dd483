"""Image files given by users: read one, with a one-line error naming the file and the fix.

The data sets' image readers (``images`` in the data-set table,
:func:`mamlx.tasks.omniglot_preprocess.read_omniglot_images` and
:func:`mamlx.tasks.miniimagenet.read_miniimagenet_images`) turn files into the training
arrays' format; this module holds what they share: the file is decoded in full, its mode
(channels) checked against the ones the data set converts, and it must be square and at
least as large as the run's inputs (an upsampled image is not what the network saw).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from PIL import Image, UnidentifiedImageError

__all__ = ["read_image"]


def _channels(im: Image.Image) -> str:
    n = len(im.getbands())
    return f"{n} channel{'s' if n != 1 else ''}"


def read_image(
    path: str | os.PathLike,
    *,
    dataset: str,
    modes: tuple[str, ...],
    convert: Callable[[Image.Image], Image.Image],
    min_size: int,
    fix_mode: str,
) -> Image.Image:
    """Decode one image file, check it and convert it.

    Args:
      path: the image file (any format PIL reads: PNG, JPEG, BMP, ...).
      dataset: the data set's name, for the messages.
      modes: the PIL modes ``convert`` accepts (others are refused, naming the mode).
      convert: ``convert(image) -> image`` in the data set's mode (e.g. gray or RGB).
      min_size: the smallest side accepted (the run's ``image_size``).
      fix_mode: what to do with an image of another mode (the end of that message).

    Returns:
      The converted image (a copy; the file is closed).

    Raises:
      FileNotFoundError: no such file.
      ValueError: not an image PIL can decode, an unsupported mode, not square, or a side
        below ``min_size``: one line naming the file and the fix.

    Example:
      >>> import tempfile
      >>> path = Path(tempfile.mkdtemp()) / "page.png"
      >>> Image.new("RGB", (40, 30), "white").save(path)
      >>> read_image(path, dataset="Omniglot", modes=("RGB",), convert=lambda im: im.copy(),
      ...            min_size=28, fix_mode="")
      Traceback (most recent call last):
      ...
      ValueError: .../page.png is 40x30 pixels: Omniglot images must be square; crop it to a square
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not an image file")
    try:
        with Image.open(path) as im:
            im.load()
            mode, (w, h), channels = im.mode, im.size, _channels(im)
            out = convert(im) if mode in modes else None
    except FileNotFoundError:
        raise FileNotFoundError(f"image file {path} not found") from None
    except UnidentifiedImageError as e:
        raise ValueError(
            f"{path} is not an image file that can be read; give image files (PNG, JPEG, ...)"
        ) from e
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        why = (str(e).splitlines() or [type(e).__name__])[0]
        raise ValueError(
            f"{path} cannot be read as an image ({why}); replace it with a good copy"
        ) from e
    if out is None:
        raise ValueError(
            f"{path} has image mode {mode!r} ({channels}), which {dataset} does not convert; "
            f"{fix_mode}"
        )
    if w != h:
        raise ValueError(
            f"{path} is {w}x{h} pixels: {dataset} images must be square; crop it to a square"
        )
    if w < min_size:
        raise ValueError(
            f"{path} is {w}x{h} pixels, smaller than this run's {min_size}x{min_size} inputs; "
            f"give images of at least {min_size}x{min_size} pixels"
        )
    return out

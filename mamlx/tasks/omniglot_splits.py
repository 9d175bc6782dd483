"""Omniglot class splits: Vinyals et al. (2016) and Lake et al.'s background / evaluation.

:func:`omniglot_split` turns all 1623 characters (:class:`~mamlx.tasks.OmniglotChars`)
into seeded train / val / test class arrays, an :class:`OmniglotSplit`; its
``train_rotations`` says whether the split's convention counts the 90-degree rotations
of each training character as new classes (done by the sampler, ``rotate=True``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from mamlx.tasks.omniglot_sources import (
    _FIRST_ID,
    _LAST_ID,
    NUM_BACKGROUND,
    NUM_CHARACTERS,
    OMNIGLOT_ALPHABETS,
)

if TYPE_CHECKING:
    from mamlx.tasks.omniglot import OmniglotChars

__all__ = ["OmniglotSplit", "omniglot_split"]


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

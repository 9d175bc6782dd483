"""The published numbers mamlx reproduces: one table, read by the presets and the benchmarks.

Each :class:`Published` row is one accuracy (%) from one paper's table, with its 95%
interval where the paper gives one, the test protocol where the paper (or its reference
code) fixes it, and the preset that trains for it. :mod:`mamlx.presets` builds its sources
from these rows, and ``benchmarks/ledger.py`` keeps every run of ours beside them in
``benchmarks/results/reproduction.json``.

Protocols: ``transductive`` says whether batch norm at test time uses the statistics of
the query batch (MAML's and first-order MAML's numbers in Nichol et al. 2018's table are
"+ Transduction", Reptile's are not); ``test_rotated`` whether the test classes include
the 90-degree rotations of the test characters (Snell et al. 2017 say so; MAML's
reference code rotates test characters; Reptile's code augments only the training
characters). ``None``: the paper does not say, or it does not apply.
"""

from __future__ import annotations

from typing import NamedTuple


class Published(NamedTuple):
    """One published accuracy (%) and where it comes from."""

    method: str  # "maml", "maml-noconv", "fomaml", "reptile", "protonet", "finetune", ...
    dataset: str  # "omniglot" or "miniimagenet"
    ways: int
    shots: int
    mean: float
    interval: float | None  # half-width of the 95% interval; None: the table gives none
    source: str  # "Finn et al. 2017"
    table: str  # "Table 1"
    preset: str | None = None  # the mamlx preset that trains for it
    transductive: bool | None = None
    test_rotated: bool | None = None
    what: str = ""  # e.g. "MAML, no conv (fully connected 256-128-64-64)"
    digits: int = 1  # decimals as printed in the paper

    @property
    def setting(self) -> str:
        """``"5w1s"``."""
        return f"{self.ways}w{self.shots}s"

    @property
    def protocol(self) -> str:
        """The test protocol as a short label: ``"transductive+rotated"``, ``"paper"``."""
        parts = []
        if self.transductive is not None:
            parts.append("transductive" if self.transductive else "non-transductive")
        if self.test_rotated is not None:
            parts.append("rotated" if self.test_rotated else "unrotated")
        return "+".join(parts) or "paper"

    @property
    def key(self) -> str:
        """Method, data set, setting and protocol: ``"maml/omniglot/5w1s/transductive+rotated"``."""
        return f"{self.method}/{self.dataset}/{self.setting}/{self.protocol}"

    @property
    def number(self) -> str:
        """``"98.7 ± 0.4"``, or ``"96.0"`` where the table gives no interval."""
        d = self.digits
        if self.interval is None:
            return f"{self.mean:.{d}f}"
        return f"{self.mean:.{d}f} ± {self.interval:.{d}f}"

    def cite(self) -> str:
        """The citation a preset carries.

        Example:
          >>> find("maml", "omniglot", 5, 1).cite()
          'Finn et al. 2017, Table 1: Omniglot 5-way 1-shot 98.7 ± 0.4'
        """
        data = {"omniglot": "Omniglot", "miniimagenet": "mini-ImageNet"}[self.dataset]
        what = f"{self.what}, " if self.what else ""
        return (
            f"{self.source}, {self.table}: {what}{data} {self.ways}-way {self.shots}-shot "
            f"{self.number}"
        )


def _rows(
    method, dataset, numbers, source, table, *, preset="{method}-{setting}", settings=None, **kw
):
    """Rows of one method in one table: ``numbers`` (``"98.7 ± 0.4"`` or ``"96.0"``, as
    printed) in the order of ``settings``."""
    settings = settings or (((5, 1), (5, 5), (20, 1), (20, 5)) if dataset == "omniglot" else _MINI)
    out = []
    for (ways, shots), text in zip(settings, numbers.split(", "), strict=True):
        mean, _, interval = text.partition(" ± ")
        name = preset.format(method=method, setting=f"{ways}w{shots}s") if preset else None
        digits = len(mean.partition(".")[2])
        out.append(
            Published(
                method,
                dataset,
                ways,
                shots,
                float(mean),
                float(interval) if interval else None,
                source,
                table,
                name,
                digits=digits,
                **kw,
            )
        )
    return out


_MINI = ((5, 1), (5, 5))
_FINN = "Finn et al. 2017"
_NICHOL = "Nichol et al. 2018"
_MAMLPP = "Antoniou et al. 2019"
_SNELL = "Snell et al. 2017"
_SUNG = "Sung et al. 2018"
_RAVI = "Ravi & Larochelle 2017"
_MAML = dict(transductive=True, test_rotated=True)  # batch statistics; reference code rotates
_NOCONV = "MAML, no conv (fully connected 256-128-64-64)"

#: Every published number mamlx cites, one row each (Omniglot: 5w1s, 5w5s, 20w1s, 20w5s;
#: mini-ImageNet: 5w1s, 5w5s).
PUBLISHED: tuple[Published, ...] = (
    *_rows("maml", "omniglot", "98.7 ± 0.4, 99.9 ± 0.1, 95.8 ± 0.3, 98.9 ± 0.2", _FINN,
           "Table 1", **_MAML),
    *_rows("maml-noconv", "omniglot", "89.7 ± 1.1, 97.5 ± 0.6", _FINN, "Table 1",
           settings=_MINI, what=_NOCONV, **_MAML),
    *_rows("maml", "miniimagenet", "48.70 ± 1.84, 63.11 ± 0.92", _FINN, "Table 1",
           preset="maml-mini-{setting}", transductive=True),
    *_rows("fomaml", "miniimagenet", "48.07 ± 1.75, 63.15 ± 0.91", _FINN, "Table 1",
           preset="fomaml-mini-{setting}", transductive=True, what="first-order MAML"),
    # Nichol et al. run first-order MAML with their own settings; the fomaml presets run
    # Finn et al.'s, first order.
    *_rows("fomaml", "omniglot", "98.3 ± 0.5, 99.2 ± 0.2, 89.4 ± 0.5, 97.9 ± 0.1", _NICHOL,
           "Table 2", transductive=True, what="first-order MAML + transduction"),
    *_rows("reptile", "omniglot", "95.39 ± 0.09, 98.90 ± 0.10, 88.14 ± 0.15, 96.65 ± 0.33",
           _NICHOL, "Table 2", transductive=False, test_rotated=False,
           what="Reptile, non-transductive"),
    *_rows("maml++", "omniglot", "99.47, 99.93, 97.65 ± 0.05, 99.33 ± 0.03", _MAMLPP,
           "Table 1", what="MAML++, single model"),
    *_rows("maml++", "miniimagenet", "52.15 ± 0.26, 68.32 ± 0.44", _MAMLPP, "Table 2",
           preset="maml++-mini-{setting}", what="MAML++, single model"),
    *_rows("finetune", "miniimagenet", "28.86 ± 0.54, 49.79 ± 0.79",
           f"{_RAVI} (as in {_FINN})", "Table 1", preset="finetune-mini-{setting}",
           what="fine-tuning baseline"),
    *_rows("nn", "miniimagenet", "41.08 ± 0.70, 51.04 ± 0.65",
           f"{_RAVI} (as in {_FINN})", "Table 1", preset="nn-mini-{setting}",
           what="nearest-neighbour baseline"),
    *_rows("meta-lstm", "miniimagenet", "43.44 ± 0.77, 60.60 ± 0.71", _RAVI, "Table 1",
           preset="meta-lstm-mini-{setting}", what="meta-learner LSTM"),
    # Metric learners on Omniglot: Vinyals split, 28x28, Conv-4 of 64 filters.
    *_rows("protonet", "omniglot", "98.8, 99.7, 96.0, 98.9", _SNELL, "Table 1",
           test_rotated=True),
    *_rows("matching", "omniglot", "98.1, 98.9, 93.8, 98.5", "Vinyals et al. 2016", "Table 1"),
    *_rows("relation", "omniglot", "99.6 ± 0.2, 99.8 ± 0.1, 97.6 ± 0.2, 99.1 ± 0.1", _SUNG,
           "Table 1"),
    *_rows("siamese", "omniglot", "97.3, 98.4, 88.2, 97.0",
           "Koch et al. 2015 (as in Vinyals et al. 2016)", "Table 1"),
    # Metric learners on mini-ImageNet (5-way, 600 test episodes): no presets yet.
    *_rows("protonet", "miniimagenet", "49.42 ± 0.78, 68.20 ± 0.66", _SNELL, "Table 2",
           preset=None),
    *_rows("matching", "miniimagenet", "43.56 ± 0.84, 55.31 ± 0.73", f"{_RAVI} (as in {_SNELL})",
           "Table 2", preset=None, what="Matching Networks FCE"),
    *_rows("relation", "miniimagenet", "50.44 ± 0.82, 65.32 ± 0.70", _SUNG, "Table 2",
           preset=None),
)  # fmt: skip

#: Presets that train for a published number under a smaller budget (the CPU variants).
BASED_ON: dict[str, str] = {
    "fomaml-5w1s-cpu": "fomaml-5w1s",
    "protonet-20w1s-cpu": "protonet-20w1s",
}


def find(method: str, dataset: str, ways: int, shots: int) -> Published:
    """The published row of one method, data set and setting.

    Example:
      >>> find("reptile", "omniglot", 20, 5).number
      '96.65 ± 0.33'
    """
    rows = [
        p
        for p in PUBLISHED
        if (p.method, p.dataset, p.ways, p.shots) == (method, dataset, ways, shots)
    ]
    if len(rows) != 1:
        raise KeyError(f"{len(rows)} published rows for {method} {dataset} {ways}w{shots}s")
    return rows[0]


def for_preset(name: str) -> Published | None:
    """The published number a preset (or the preset it is based on) trains for, else None.

    Example:
      >>> for_preset("protonet-20w1s-cpu").key
      'protonet/omniglot/20w1s/rotated'
      >>> for_preset("meta-lstm-5w1s") is None
      True
    """
    name = BASED_ON.get(name, name)
    rows = [p for p in PUBLISHED if p.preset == name]
    return rows[0] if rows else None


def by_key(key: str) -> Published:
    """The published row with this :attr:`Published.key`."""
    for p in PUBLISHED:
        if p.key == key:
            return p
    raise KeyError(key)

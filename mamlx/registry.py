"""The two tables the edges of mamlx read: learners and data sets.

Configuration, the CLI, presets, the evaluator and the benchmark harness look a learner
or a data set up here; nothing else dispatches on their names. A new learner is one
module plus one :func:`register_learner` call, and then it trains from Python, from
``mamlx train DATASET --algo NAME`` and in the benchmark harness alike.

* A **learner entry** names a factory ``build(config, context) -> MetaLearner``, the
  learner's own frozen config dataclass (its settings, with documented fields), the
  data families it accepts (``"regression"``, ``"classification"``), the network it
  needs (``"classifier"``: a model with one output per class, adapted by gradient
  steps; ``"embedding"``: a feature extractor) and the outer optimizer it is trained
  with (``"adam"``, or ``"sgd"`` on Reptile's pseudo-gradient).
* A **data-set entry** names its configuration class (episode shape, splits, network
  settings) and a ``load(config) -> Data`` function that reads the files once and
  returns the arrays, the samplers and the network factories a learner builds on;
  image data sets also name an ``images(config, paths)`` reader that gives image
  files the training arrays' preprocessing (what ``mamlx predict`` reads).

Example:
  >>> from mamlx import registry
  >>> "maml" in registry.learner_names() and "omniglot" in registry.dataset_names()
  True
  >>> registry.get_learner("protonet").families
  ('classification',)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

FAMILIES = ("regression", "classification")
NETWORKS = ("classifier", "embedding")
OUTER_OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class LearnerEntry:
    """One row of the learner table.

    Attributes:
      name: the name configurations and the CLI use (``--algo NAME``).
      build: ``build(config, context) -> MetaLearner``; ``config`` is an instance of
        ``config``, ``context`` a :class:`mamlx.datasets.Context` (network factories,
        ways, input shape, task map).
      config: frozen dataclass of the learner's own settings; every field has a
        default and a line in the class docstring.
      families: data families the learner accepts.
      network: ``"classifier"`` (adapted by gradient steps, one output per class or a
        regression output) or ``"embedding"`` (a feature extractor).
      outer: the outer optimizer, ``"adam"`` or ``"sgd"``.
      per_task_kernels: the learner adapts the convolutions per task (their kernels
        carry the task axis under ``vmap``), which picks the convolution implementation.
      train_sampler: optional ``train_sampler(config, run_config) -> Sampler`` for
        learners that do not train on episodes (Siamese networks train on pairs).
      description: one line for ``mamlx list`` and ``--help``.
      reference: the paper.
    """

    name: str
    build: Callable[[Any, Any], Any]
    config: type
    families: tuple[str, ...]
    network: str = "classifier"
    outer: str = "adam"
    per_task_kernels: bool = False
    train_sampler: Callable[[Any, Any], Any] | None = None
    description: str = ""
    reference: str = ""

    def field_names(self) -> tuple[str, ...]:
        """The learner's own settings (its config dataclass's fields)."""
        return tuple(f.name for f in dataclasses.fields(self.config) if f.init)


@dataclass(frozen=True)
class DatasetEntry:
    """One row of the data-set table.

    Attributes:
      name: the name configurations and the CLI use (``mamlx train NAME``).
      config: the run configuration class of the data set (a
        :class:`mamlx.config.RunConfig` subclass with the data set's defaults).
      load: ``load(run_config) -> mamlx.datasets.Data``: arrays and samplers; the only
        place that reads files.
      context: ``context(run_config) -> mamlx.datasets.Context``: the networks a
        learner builds on (no data needed).
      family: ``"regression"`` or ``"classification"``.
      channels: image channels (0 for non-image data).
      description: one line for ``mamlx list`` and ``--help``.
      images: optional ``images(run_config, paths) -> np.ndarray`` ``(N, H, W, C)``:
        image files in the training arrays' format, by the training preprocessing
        (``mamlx predict`` / ``mamlx embed``, :func:`mamlx.runs.read_images`); ``None``
        for data that is not read from image files.
    """

    name: str
    config: type
    load: Callable[[Any], Any]
    context: Callable[[Any], Any]
    family: str
    channels: int = 0
    description: str = ""
    images: Callable[[Any, Any], Any] | None = None


_LEARNERS: dict[str, LearnerEntry] = {}
_DATASETS: dict[str, DatasetEntry] = {}
_builtins_loaded = False


def _load_builtins() -> None:
    """Import the modules that register mamlx's own learners and data sets (once)."""
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        import mamlx.datasets  # noqa: F401 - registers sinusoid, omniglot, miniimagenet
        import mamlx.learners  # noqa: F401 - registers the built-in learners
        import mamlx.learners_verification  # noqa: F401 - triplet, sphereface, cosface, arcface


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def register_learner(
    name: str,
    build: Callable[[Any, Any], Any],
    config: type,
    *,
    families: tuple[str, ...],
    network: str = "classifier",
    outer: str = "adam",
    per_task_kernels: bool = False,
    train_sampler: Callable[[Any, Any], Any] | None = None,
    description: str = "",
    reference: str = "",
    replace: bool = False,
) -> LearnerEntry:
    """Add a learner to the table (see :class:`LearnerEntry` for the arguments).

    Args:
      replace: allow replacing an entry of the same name (otherwise an error).

    Returns:
      The new entry.

    Raises:
      ValueError: a name already taken, a config that is not a dataclass with defaults,
        or an unknown family, network or outer optimizer.

    Example:
      >>> import dataclasses
      >>> @dataclasses.dataclass(frozen=True)
      ... class NoSettings:
      ...     pass
      >>> entry = register_learner("doc-example", lambda c, ctx: None, NoSettings,
      ...                          families=("classification",), network="embedding")
      >>> entry.field_names()
      ()
      >>> unregister_learner("doc-example")
    """
    _load_builtins()
    if not name or not isinstance(name, str):
        raise ValueError(f"a learner's name must be a non-empty string, got {name!r}")
    if name in _LEARNERS and not replace:
        raise ValueError(f"a learner named {name!r} is already registered (replace=True)")
    if not (dataclasses.is_dataclass(config) and isinstance(config, type)):
        raise ValueError(f"learner {name!r}: config must be a dataclass type, got {config!r}")
    missing = [
        f.name
        for f in dataclasses.fields(config)
        if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ValueError(f"learner {name!r}: config fields without a default: {missing}")
    if not families:
        raise ValueError(f"learner {name!r}: give the data families it accepts, {FAMILIES}")
    for fam in families:
        _check_choice(f"learner {name!r} family", fam, FAMILIES)
    _check_choice(f"learner {name!r} network", network, NETWORKS)
    _check_choice(f"learner {name!r} outer optimizer", outer, OUTER_OPTIMIZERS)
    entry = LearnerEntry(
        name,
        build,
        config,
        tuple(families),
        network,
        outer,
        per_task_kernels,
        train_sampler,
        description,
        reference,
    )
    _LEARNERS[name] = entry
    return entry


def unregister_learner(name: str) -> None:
    """Remove a learner from the table (tests and notebooks that register toys)."""
    _LEARNERS.pop(name, None)


def register_dataset(
    name: str,
    config: type,
    load: Callable[[Any], Any],
    context: Callable[[Any], Any],
    *,
    family: str,
    channels: int = 0,
    description: str = "",
    images: Callable[[Any, Any], Any] | None = None,
    replace: bool = False,
) -> DatasetEntry:
    """Add a data set to the table (see :class:`DatasetEntry` for the arguments)."""
    if name in _DATASETS and not replace:
        raise ValueError(f"a data set named {name!r} is already registered (replace=True)")
    _check_choice(f"data set {name!r} family", family, FAMILIES)
    if images is not None and not callable(images):
        raise ValueError(f"data set {name!r}: images must be a function, got {images!r}")
    entry = DatasetEntry(name, config, load, context, family, channels, description, images=images)
    _DATASETS[name] = entry
    return entry


def get_learner(name: str) -> LearnerEntry:
    """The entry of a registered learner; an unknown name lists the known ones."""
    _load_builtins()
    if name not in _LEARNERS:
        raise ValueError(f"unknown learner {name!r}; registered learners: {learner_names()}")
    return _LEARNERS[name]


def get_dataset(name: str) -> DatasetEntry:
    """The entry of a registered data set; an unknown name lists the known ones."""
    _load_builtins()
    if name not in _DATASETS:
        raise ValueError(f"unknown data set {name!r}; registered data sets: {dataset_names()}")
    return _DATASETS[name]


def learner_names(family: str | None = None) -> list[str]:
    """Registered learners (that accept ``family``, if given), sorted."""
    _load_builtins()
    return sorted(n for n, e in _LEARNERS.items() if family is None or family in e.families)


def dataset_names() -> list[str]:
    """Registered data sets, sorted."""
    _load_builtins()
    return sorted(_DATASETS)


def learners_with_field(field: str) -> list[str]:
    """Registered learners whose config has a field ``field`` (for error messages)."""
    _load_builtins()
    return sorted(n for n, e in _LEARNERS.items() if field in e.field_names())

"""Using a trained run: load it without its data, classify image files, embed them.

* :func:`load_run` reads a run directory (``config.json`` and the best validation
  checkpoint ``best.npz``, else the latest) and builds its learner without loading the
  data set: a :class:`Run` ``(config, learner, params, step, checkpoint)``.
* :func:`read_images` turns image files into the run's inputs with the preprocessing of
  the training arrays: the data set's ``images`` reader in the data-set table
  (:mod:`mamlx.registry`).
* :func:`classify` adapts on a labelled support set and labels queries;
  :func:`predict_folders` does it for a support folder with one sub-folder per class
  (``mamlx predict``). :func:`embed` and :func:`embed_folder` give a metric learner's
  embeddings (``mamlx embed``).

Batch norm normalises with each call's batch statistics (transductive, as in training
and evaluation), so queries are labelled together, as one batch, and images embedded
together give the embeddings of that batch.

Example:
  >>> import json, tempfile
  >>> from mamlx import checkpoint, init_state
  >>> from mamlx.config import FewShotConfig, outer_optimizer
  >>> from mamlx.experiments import build_learner
  >>> config = FewShotConfig(algo="protonet", filters=8)
  >>> run_dir = Path(tempfile.mkdtemp())
  >>> _ = (run_dir / "config.json").write_text(json.dumps(config.to_dict()))
  >>> state = init_state(build_learner(config), outer_optimizer(config), jax.random.PRNGKey(0))
  >>> _ = checkpoint.save_step(run_dir, 0, state)  # what `mamlx train` writes
  >>> run = load_run(run_dir)
  >>> run.config.algo, run.step, run.checkpoint.name
  ('protonet', 0, 'step_000000000.npz')
  >>> x = jax.random.uniform(jax.random.PRNGKey(1), (6, 28, 28, 1))
  >>> classify(run, x[:4], np.array([0, 1, 2, 0]), x[4:]).shape
  (2,)
  >>> embed(run, x).shape
  (6, 8)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mamlx import checkpoint, registry
from mamlx.algorithms.base import MetaLearner, call_with_key
from mamlx.config import RunConfig, config_from_dict, outer_optimizer
from mamlx.experiments import build_learner
from mamlx.tasks.fewshot import images_as_float
from mamlx.types import Params, PRNGKey

__all__ = [
    "Prediction",
    "Run",
    "class_folders",
    "classify",
    "embed",
    "embed_folder",
    "image_files",
    "load_run",
    "load_state",
    "predict_folders",
    "read_config",
    "read_images",
]

PathLike = str | os.PathLike


class Run(NamedTuple):
    """A trained run, ready to use (:func:`load_run`).

    Attributes:
      config: the run's configuration (its ``config.json``).
      learner: the learner built from it (no data loaded).
      params: the meta-parameters of the checkpoint.
      step: the training step of the checkpoint.
      checkpoint: the checkpoint file read (``best.npz`` or ``checkpoints/step_*.npz``).
    """

    config: RunConfig
    learner: MetaLearner
    params: Params
    step: int
    checkpoint: Path


def read_config(run_dir: PathLike) -> RunConfig:
    """The configuration of a run directory (its ``config.json``).

    Raises:
      ValueError: not a run directory, or a ``config.json`` that is not valid JSON or
        not a valid configuration.
    """
    run_dir = Path(run_dir)
    path = run_dir / "config.json"
    if not path.is_file():
        raise ValueError(f"{run_dir} is not a mamlx run directory (no config.json)")
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); was it edited or cut short?") from e
    try:
        return config_from_dict(saved)
    except (TypeError, KeyError, AttributeError, ValueError) as e:
        raise ValueError(f"{path}: not a valid mamlx configuration: {e}") from e


def load_state(
    run_dir: PathLike,
    config: RunConfig,
    learner: MetaLearner,
    optimizer: Any = None,
    *,
    best: bool = True,
) -> tuple[Any, Path]:
    """The saved training state of a run and the file it came from.

    Reads ``best.npz`` (the best validation) if ``best`` and it exists, else the latest
    checkpoint. Read only: a run that is still training is left as it is.

    Args:
      run_dir: the run directory.
      config: its configuration (the seed of the template state).
      learner: the learner built from it.
      optimizer: its outer optimizer (default :func:`mamlx.config.outer_optimizer`).
      best: prefer ``best.npz``.

    Returns:
      ``(TrainState, path)``.

    Raises:
      ValueError: no checkpoint yet, or one that does not match the configuration.
    """
    from mamlx import train as training

    run_dir = Path(run_dir)
    optimizer = outer_optimizer(config) if optimizer is None else optimizer
    template = training.init_state(learner, optimizer, jax.random.PRNGKey(config.seed))
    path = run_dir / "best.npz"
    if not (best and path.is_file()):
        path = checkpoint.latest_checkpoint(run_dir)
        if path is None:
            raise ValueError(f"{run_dir} has no checkpoint yet; train it first")
    return checkpoint.load(path, template)[0], path


def load_run(run_dir: PathLike, *, best: bool = True) -> Run:
    """A trained run's configuration, learner and meta-parameters, without its data.

    Args:
      run_dir: a run directory written by ``mamlx train`` (or :func:`mamlx.fit` with a
        ``config.json`` beside its checkpoints).
      best: load ``best.npz`` (the best validation) where there is one; ``False``: the
        latest checkpoint.

    Returns:
      A :class:`Run`.

    Raises:
      ValueError: not a run directory, no checkpoint yet, or one that does not match.

    Example (see the module docstring for one that runs):
      >>> run = load_run("runs/p")  # doctest: +SKIP
      >>> run.learner.predict(run.learner.adapt(run.params, sx, sy), qx)  # doctest: +SKIP
    """
    config = read_config(run_dir)
    learner = build_learner(config)
    state, path = load_state(run_dir, config, learner, best=best)
    return Run(config, learner, state.params, int(state.step), path)


def read_images(config: RunConfig, paths: Sequence[PathLike]) -> np.ndarray:
    """Image files as a run's inputs, preprocessed as its training arrays.

    The data set's ``images`` reader (:class:`mamlx.registry.DatasetEntry`): for Omniglot
    :func:`mamlx.tasks.omniglot_preprocess.read_omniglot_images` (gray, thresholded,
    inverted, resized to ``image_size`` with the run's ``resize``: float32), for
    mini-ImageNet :func:`mamlx.tasks.miniimagenet.read_miniimagenet_images` (RGB,
    Lanczos to ``image_size``: uint8).

    Args:
      config: the run's configuration.
      paths: image files.

    Returns:
      ``(N, H, W, C)`` in the training arrays' dtype and range.

    Raises:
      ValueError: a data set that reads no image files, or a file its reader refuses.

    Example:
      >>> import tempfile
      >>> from PIL import Image
      >>> from mamlx.config import FewShotConfig
      >>> path = Path(tempfile.mkdtemp()) / "blank.png"
      >>> Image.new("L", (105, 105), 255).save(path)  # a blank white page
      >>> x = read_images(FewShotConfig(), [path])
      >>> x.shape, float(x.max())
      ((1, 28, 28, 1), 0.0)
    """
    reader = registry.get_dataset(config.task).images
    if reader is None:
        raise ValueError(
            f"{config.task} runs take no image files (the data set has no image reader)"
        )
    return reader(config, [Path(p) for p in paths])


def _check_classes(run: Run, support_y: np.ndarray) -> int:
    """The number of support classes; every label 0..N-1 must be present."""
    labels = np.unique(support_y)
    n = len(labels)
    if support_y.ndim != 1 or not np.array_equal(labels, np.arange(n)):
        raise ValueError(
            f"support labels must be integers 0..N-1, each class present, got {labels.tolist()}"
        )
    if n < 2:
        raise ValueError(f"the support set has {n} class; give at least 2")
    config = run.config
    if config.entry.network == "classifier" and n > config.ways:
        raise ValueError(
            f"{n} support classes, but this {config.algo} run's classifier has {config.ways} "
            f"outputs (trained with --ways {config.ways}); give at most {config.ways} classes"
        )
    return n


def _resolve_steps(config: RunConfig, steps: int | None) -> int | None:
    if steps is None:
        return config.eval_steps
    if config.eval_steps is None:
        raise ValueError(
            f"steps={steps}: {config.algo} adapts without gradient steps (no inner loop)"
        )
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    return steps


@functools.lru_cache(maxsize=8)
def _adapted_logits(learner: MetaLearner, steps: int | None) -> Callable:
    """``jit(predict(adapt(params, sx, sy, steps), qx))``, compiled once per learner and
    step count (repeated calls of :func:`classify` with the same run reuse it)."""

    def adapted_logits(params, sx, sy, qx, key):
        state = call_with_key(learner.adapt, params, sx, sy, steps=steps, key=key)
        return learner.predict(state, qx)

    return jax.jit(adapted_logits)


def classify(
    run: Run,
    support_x: Any,
    support_y: Any,
    query_x: Any,
    *,
    steps: int | None = None,
    key: PRNGKey | None = None,
) -> np.ndarray:
    """Labels of ``query_x`` after adapting the run's learner on a support set.

    ``argmax`` over the first ``N`` outputs of
    ``learner.predict(learner.adapt(params, support_x, support_y, steps), query_x)``, ``N``
    the number of support classes: a classifier head has ``ways`` outputs (``N`` may be
    fewer), a metric learner one per support example with absent classes masked.

    Args:
      run: a :class:`Run`.
      support_x: ``(S, H, W, C)`` inputs in the run's format (:func:`read_images`).
      support_y: int ``(S,)`` labels 0..N-1, every class present, ``N >= 2``.
      query_x: ``(Q, H, W, C)``, labelled together as one batch.
      steps: adaptation steps (default: the run's test setting, ``config.eval_steps``);
        only for learners with an inner loop.
      key: the learner's key (stochastic learners; default: none, their own default).

    Returns:
      int ``(Q,)`` labels in 0..N-1.

    Raises:
      ValueError: bad labels, fewer than 2 classes, more classes than a classifier's
        ``ways``, or ``steps`` for a learner without inner loop.
    """
    support_y = np.asarray(support_y)
    n = _check_classes(run, support_y)
    steps = _resolve_steps(run.config, steps)
    logits = _adapted_logits(run.learner, steps)(
        run.params,
        images_as_float(jnp.asarray(support_x)),
        jnp.asarray(support_y, jnp.int32),
        images_as_float(jnp.asarray(query_x)),
        key,
    )
    return np.asarray(jnp.argmax(logits[:, :n], axis=-1))


def _files(folder: Path) -> list[Path]:
    """The files directly in ``folder`` (hidden ones skipped), sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def _folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def class_folders(folder: PathLike) -> tuple[list[str], list[list[Path]]]:
    """The classes of a support folder: one sub-folder per class, named after it.

    Args:
      folder: holds one sub-folder per class with that class's image files.

    Returns:
      ``(names, files)``: class names sorted (label ``i`` is ``names[i]``) and each
      class's files, sorted.

    Raises:
      ValueError: no such folder, fewer than 2 class folders, an empty class folder, or
        files beside the class folders (each message names the folder and the fix).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"support folder {folder} does not exist (or is not a folder)")
    classes = _folders(folder)
    if len(classes) < 2:
        raise ValueError(
            f"support folder {folder} has {len(classes)} class folder(s); give one sub-folder "
            f"per class, named after it, holding its images (at least 2 classes)"
        )
    loose = _files(folder)
    if loose:
        raise ValueError(
            f"support folder {folder} holds {loose[0].name} beside its class folders; move each "
            f"image into the sub-folder of its class"
        )
    files = []
    for c in classes:
        found = _files(c)
        if not found:
            raise ValueError(
                f"class folder {c} holds no image files; put at least one image of class "
                f"{c.name!r} in it (or remove the folder)"
            )
        files.append(found)
    return [c.name for c in classes], files


def image_files(folder: PathLike, what: str = "image") -> list[tuple[Path, str | None]]:
    """The image files of a folder and of its sub-folders, with the sub-folder's name.

    Args:
      folder: image files directly inside (no class) and/or in sub-folders (one level;
        the sub-folder's name is their class); a single file is taken as it is.
      what: the folder's role, for the message.

    Returns:
      ``[(path, class name or None)]``: the folder's own files first, then each
      sub-folder's, all sorted by name.

    Raises:
      ValueError: no such folder, or no files in it.
    """
    folder = Path(folder)
    if folder.is_file():
        return [(folder, None)]
    if not folder.is_dir():
        raise ValueError(f"{what} folder {folder} does not exist")
    found: list[tuple[Path, str | None]] = [(p, None) for p in _files(folder)]
    for sub in _folders(folder):
        found += [(p, sub.name) for p in _files(sub)]
    if not found:
        raise ValueError(
            f"{what} folder {folder} holds no image files (directly or in sub-folders)"
        )
    return found


class Prediction(NamedTuple):
    """What :func:`predict_folders` found.

    Attributes:
      paths: the query files, in order.
      predicted: the predicted class name of each.
      classes: the support classes (sorted folder names; label ``i`` is ``classes[i]``).
      truth: the class of each query file in a sub-folder of the query folder, else ``None``.
    """

    paths: list[Path]
    predicted: list[str]
    classes: list[str]
    truth: list[str | None]

    @property
    def accuracy(self) -> float | None:
        """Fraction right among the query files with a class (``None``: none has one)."""
        pairs = [(p, t) for p, t in zip(self.predicted, self.truth, strict=True) if t is not None]
        return sum(p == t for p, t in pairs) / len(pairs) if pairs else None


def _check_image_run(run: Run, command: str) -> None:
    entry = registry.get_dataset(run.config.task)
    if entry.family != "classification" or entry.images is None:
        raise ValueError(
            f"{command} works on image classification runs; this is a {run.config.task} run"
        )


def predict_folders(
    run: Run,
    support: PathLike,
    query: PathLike,
    *,
    steps: int | None = None,
    key: PRNGKey | None = None,
) -> Prediction:
    """Adapt on a support folder and classify the query files (``mamlx predict``).

    Args:
      run: a :class:`Run` of an image data set.
      support: one sub-folder per class, named after it, with its images
        (:func:`class_folders`); label ``i`` is the ``i``-th name in sorted order.
      query: image files to classify, and/or sub-folders named after support classes
        (their files are scored against that name: :attr:`Prediction.accuracy`).
      steps: adaptation steps (default: the run's ``eval_steps``).
      key: see :func:`classify`.

    Returns:
      A :class:`Prediction`.

    Raises:
      ValueError: the folder errors of :func:`class_folders` and :func:`image_files`, a
        query sub-folder that is not a support class, the image errors of
        :func:`read_images`, and those of :func:`classify`.
    """
    _check_image_run(run, "mamlx predict")
    classes, per_class = class_folders(support)
    queries = image_files(query, "query")
    for path, name in queries:
        if name is not None and name not in classes:
            raise ValueError(
                f"query folder {path.parent} is not a class of {support} (classes: "
                f"{', '.join(classes)}); name it as its support class, or move its files up"
            )
    support_y = np.concatenate([np.full(len(f), i) for i, f in enumerate(per_class)])
    sx = read_images(run.config, [p for files in per_class for p in files])
    qx = read_images(run.config, [p for p, _ in queries])
    labels = classify(run, sx, support_y, qx, steps=steps, key=key)
    return Prediction(
        [p for p, _ in queries],
        [classes[i] for i in labels.tolist()],
        classes,
        [name for _, name in queries],
    )


def _embedding(run: Run) -> tuple[Callable, Params]:
    """``(embed_fn, params)`` of a metric learner's embedding network.

    The learner is built again with a context that records the embedding it asks its
    data set for (``Context.embedding``); its parameters are the sub-tree of the
    run's parameters with that network's structure and shapes.
    """
    config = run.config
    entry = registry.get_learner(config.algo)
    if entry.network != "embedding":
        metric = [
            n for n in registry.learner_names() if registry.get_learner(n).network == "embedding"
        ]
        raise ValueError(
            f"mamlx embed is for the metric learners ({', '.join(metric)}): {config.algo} "
            f"adapts a classifier, so it has no fixed embedding; use mamlx predict"
        )
    ctx = registry.get_dataset(config.task).context(config)
    made: list[tuple] = []

    def embedding(**options):
        made.append(ctx.embedding(**options))
        return made[-1]

    entry.build(config.learner, dataclasses.replace(ctx, embedding=embedding))
    if not made:
        raise ValueError(f"{config.algo} does not build on its data set's embedding network")
    embed_fn, init_fn = made[0]
    want = jax.eval_shape(init_fn, jax.random.PRNGKey(0))

    def same(tree) -> bool:
        if jax.tree.structure(tree) != jax.tree.structure(want):
            return False
        pairs = zip(jax.tree.leaves(tree), jax.tree.leaves(want), strict=True)
        return all(np.shape(a) == b.shape for a, b in pairs)

    parts = run.params.values() if isinstance(run.params, dict) else ()
    for tree in (run.params, *parts):
        if same(tree):
            return embed_fn, tree
    raise ValueError(f"the parameters of this {config.algo} run hold no embedding network")


def embed(run: Run, x: Any) -> np.ndarray:
    """A metric learner's embeddings of inputs ``x``, flattened to ``(N, D)``.

    The run's embedding network (ProtoNet's, Matching Networks' ``f'`` before the full
    context embedding, the Relation Network's feature maps flattened), applied to ``x``
    as one batch.

    Args:
      run: a :class:`Run` of a metric learner (registry ``network == "embedding"``).
      x: ``(N, H, W, C)`` inputs in the run's format (:func:`read_images`).

    Returns:
      float32 ``(N, D)``.

    Raises:
      ValueError: a learner that adapts a classifier (no fixed embedding).
    """
    return _apply(_embedding(run), x)


def _apply(embedding: tuple[Callable, Params], x: Any) -> np.ndarray:
    embed_fn, params = embedding
    out = np.asarray(jax.jit(embed_fn)(params, images_as_float(jnp.asarray(x))))
    return out.reshape(out.shape[0], -1)


def embed_folder(run: Run, folder: PathLike) -> tuple[list[Path], np.ndarray]:
    """Embeddings of the image files of a folder (``mamlx embed``).

    Args:
      run: a :class:`Run` of a metric learner.
      folder: image files, directly and/or in sub-folders (:func:`image_files`).

    Returns:
      ``(paths, embeddings)``: row ``i`` is the embedding of ``paths[i]``.
    """
    _check_image_run(run, "mamlx embed")
    embedding = _embedding(run)  # a classifier's run fails before any file is read
    paths = [p for p, _ in image_files(folder, "image")]
    return paths, _apply(embedding, read_images(run.config, paths))

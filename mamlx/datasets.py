"""The built-in data sets' rows in the data-set table: sine waves, Omniglot, mini-ImageNet.

Each row has a ``load(config) -> Data`` (the arrays on the device and the episode
samplers; the only code here that reads files) and a ``context(config) -> Context``
(the networks a learner builds on: the classifier that gradient-based learners adapt
and the embedding of the metric learners), so a learner is built the same way on every
data set (:func:`mamlx.experiments.build`). The image data sets' rows also have an
``images(config, paths)``: image files preprocessed as the training arrays
(:func:`mamlx.runs.read_images`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mamlx import registry
from mamlx.algorithms.base import resolve_task_map
from mamlx.config import FewShotConfig, MiniImageNetConfig, RunConfig, SinusoidConfig
from mamlx.models import MLP, model
from mamlx.models.conv import default_impl


class Data(NamedTuple):
    """What a data set's ``load`` returns.

    Attributes:
      train: the training array passed to the sampler (``None`` for generated tasks).
      sampler: training episodes.
      eval_sampler: validation and test episodes (the test protocol).
      splits: held-out arrays by name (``"val"``, ``"test"``), possibly empty.
    """

    train: Any
    sampler: Any
    eval_sampler: Any = None
    splits: dict | None = None


@dataclass(frozen=True)
class Context:
    """The networks and settings a learner's ``build`` gets from the data set.

    Attributes:
      run: the run configuration.
      input_shape: one example's shape.
      task_map: how tasks are mapped (``run.task_map``).
      classifier: ``classifier() -> (apply_fn, init_fn)``: one output per class
        (regression: one output), for learners that adapt a whole model.
      embedding: ``embedding(**options) -> (embed_fn, init_fn)``: the data set's
        feature extractor (image data: :class:`mamlx.models.ConvEmbedding` options
        ``pool_blocks`` and ``flatten``).
      train_classes: classes of the training split counting rotations where the run
        rotates (the output count of a classifier over all training classes, as the
        transfer baselines train); 0 where the data has no classes.
      train_rotate: whether those classes count the 90-degree rotations (Omniglot's
        Vinyals split with ``rotate``): what a sampler over all training classes passes
        as ``rotate``.
    """

    run: RunConfig
    input_shape: tuple[int, ...]
    task_map: str
    classifier: Callable[[], tuple]
    embedding: Callable[..., tuple]
    train_classes: int = 0
    train_rotate: bool = False

    def feature_shape(self, embed: tuple) -> tuple[int, ...]:
        """Per-example output shape of ``embed = (embed_fn, init_fn)`` on this data.

        Example:
          >>> ctx = context(FewShotConfig(algo="protonet", filters=8))
          >>> ctx.feature_shape(ctx.embedding())
          (8,)
        """
        embed_fn, init_fn = embed
        x = jax.ShapeDtypeStruct((2, *self.input_shape), jnp.float32)
        out = jax.eval_shape(lambda k, x: embed_fn(init_fn(k), x), jax.random.PRNGKey(0), x)
        return tuple(out.shape[1:])


def context(config: RunConfig) -> Context:
    """The :class:`Context` of a run configuration (its data set's ``context``)."""
    return registry.get_dataset(config.task).context(config)


# --- sine waves ---------------------------------------------------------------------------


def sinusoid_model(hidden: tuple[int, ...] = (40, 40)):
    """``(apply_fn, init_fn)`` of the sine-wave MLP 1-hidden-1 with ReLU.

    Example:
      >>> apply_fn, init_fn = sinusoid_model((8,))
      >>> apply_fn(init_fn(jax.random.PRNGKey(0)), jnp.ones((3, 1))).shape
      (3, 1)
    """
    return model(lambda rngs: MLP((1, *hidden, 1), rngs=rngs))


def _no_embedding(**_):
    raise ValueError("sine-wave regression has no embedding network; use a gradient-based learner")


def _sinusoid_context(config: SinusoidConfig) -> Context:
    return Context(
        config, (1,), config.task_map, lambda: sinusoid_model(config.hidden), _no_embedding
    )


def _sinusoid_load(config: SinusoidConfig) -> Data:
    from mamlx.tasks import sinusoid

    return Data(None, sinusoid(config.shots), sinusoid(config.shots), {})


# --- image classification -----------------------------------------------------------------


def conv_default(per_task_kernels: bool, task_map: str = "auto") -> str:
    """The convolution of a few-shot learner when ``conv_impl`` is not given.

    Learners that adapt the convolutions per task (MAML, first-order MAML, Reptile,
    Meta-SGD, iMAML, the meta-LSTM) carry the task axis on their kernels under ``vmap``
    (:func:`mamlx.models.conv.default_impl` with ``batched_kernels``); ANIL and the
    metric learners share the kernels, and ``task_map="map"`` runs one task at a time:
    those get the backend's default.
    """
    batched = per_task_kernels and resolve_task_map(task_map) == "vmap"
    return default_impl(batched_kernels=batched)


def fewshot_conv_impl(config: FewShotConfig) -> str:
    """The convolution a few-shot configuration's Conv-4 uses: ``conv_impl`` or
    :func:`conv_default` (the model and ``run.json``'s record both come from here)."""
    return config.conv_impl or conv_default(config.entry.per_task_kernels, config.task_map)


def _image_shape(config: FewShotConfig) -> tuple[int, int, int]:
    channels = registry.get_dataset(config.task).channels
    return (config.image_size, config.image_size, channels)


def fewshot_model(config: FewShotConfig, ways: int | None = None):
    """``(apply_fn, init_fn)`` of the classifier of a few-shot configuration: the Conv-4,
    or the fully connected network of "MAML, no conv" (``backbone="mlp"``)."""
    from mamlx.models.conv4 import Conv4
    from mamlx.models.mlp import FCNet

    shape, impl = _image_shape(config), fewshot_conv_impl(config)
    if config.backbone == "mlp":
        size = int(np.prod(shape))
        return model(lambda rngs: FCNet(ways or config.ways, in_features=size, rngs=rngs))
    return model(
        lambda rngs: Conv4(
            ways or config.ways,
            in_shape=shape,
            filters=config.filters,
            pool=config.pool,
            transductive=True,
            conv_impl=impl,
            readout=config.readout,
            rngs=rngs,
        )
    )


def fewshot_embedding(config: FewShotConfig, **options):
    """``(embed_fn, init_fn)`` of the Conv-4 embedding (Snell et al.: max-pool every block)."""
    from mamlx.models import ConvEmbedding

    channels = _image_shape(config)[-1]
    return model(lambda r: ConvEmbedding(channels, filters=config.filters, **options, rngs=r))


def image_context(
    train_classes: Callable[[FewShotConfig], int],
    train_rotate: Callable[[FewShotConfig], bool] = lambda config: False,
):
    """``context`` of an image data set whose training split has ``train_classes(config)``
    classes, counting rotations where ``train_rotate(config)``."""

    def context(config: FewShotConfig) -> Context:
        return Context(
            config,
            _image_shape(config),
            config.task_map,
            lambda: fewshot_model(config),
            lambda **options: fewshot_embedding(config, **options),
            train_classes(config),
            bool(train_rotate(config)),
        )

    return context


def _omniglot_train_classes(config: FewShotConfig) -> int:
    """Training classes of an Omniglot split (:func:`mamlx.tasks.omniglot_split` defaults):
    Vinyals: 1100 characters (100 of the 1200 are validation), x4 when rotating;
    background: the 964 characters of the 30 background alphabets."""
    from mamlx.tasks.omniglot_sources import NUM_BACKGROUND

    if config.split == "background":
        return NUM_BACKGROUND
    return 1100 * (4 if _omniglot_train_rotate(config) else 1)


def _omniglot_train_rotate(config: FewShotConfig) -> bool:
    """Only the Vinyals split counts rotations as training classes (as ``load`` does)."""
    return config.rotate and config.split == "vinyals"


def _omniglot_arrays(config: FewShotConfig, root: str | None) -> tuple[dict, int]:
    from mamlx.tasks import load_omniglot, omniglot_split

    kw = dict(size=config.image_size, resize=config.resize, cache_dir=config.cache_dir or None)
    if root and os.path.isfile(os.path.join(root, "images_background.npz")):
        chars = load_omniglot("npz", root, **kw)
    else:
        try:
            chars = load_omniglot("zip", root, download=True, **kw)
        except OSError as e:
            where = root or "the mamlx cache"
            raise OSError(
                f"Omniglot is not in {where} (images_background.npz or the official zips) "
                f"and could not be downloaded: {e}"
            ) from e
    split = omniglot_split(chars, config.split, seed=config.seed)
    return {"train": split.train, "val": split.val, "test": split.test}, split.train_rotations


def _miniimagenet_arrays(config: FewShotConfig, root: str | None) -> tuple[dict, int]:
    from mamlx.tasks import load_miniimagenet

    if root is None:
        raise FileNotFoundError(
            "mini-ImageNet needs --data-dir (or $MAMLX_DATA_DIR/miniimagenet): a folder "
            "with the images and the train/val/test CSVs of Ravi & Larochelle"
        )
    arrays = {
        name: load_miniimagenet(
            root, name, size=config.image_size, cache_dir=config.cache_dir or None
        ).images
        for name in ("train", "val", "test")
    }
    return arrays, 1


def _omniglot_images(config: FewShotConfig, paths: Sequence[str | os.PathLike]) -> np.ndarray:
    """Image files as this run's Omniglot inputs (its ``image_size`` and ``resize``)."""
    from mamlx.tasks.omniglot_preprocess import read_omniglot_images

    return read_omniglot_images(paths, size=config.image_size, resize=config.resize)


def _miniimagenet_images(config: FewShotConfig, paths: Sequence[str | os.PathLike]) -> np.ndarray:
    """Image files as this run's mini-ImageNet inputs (uint8 RGB, its ``image_size``)."""
    from mamlx.tasks.miniimagenet import read_miniimagenet_images

    return read_miniimagenet_images(paths, size=config.image_size)


def _image_load(arrays_fn: Callable) -> Callable[[FewShotConfig], Data]:
    """``load`` of an image data set whose ``arrays_fn(config, root)`` gives the splits."""

    def load(config: FewShotConfig) -> Data:
        from mamlx.tasks import fewshot_sampler

        root = config.data_dir or None
        if root is not None and not os.path.isdir(root):  # a typo, not a place to download to
            raise FileNotFoundError(f"data folder {root} does not exist")
        arrays, rotations = arrays_fn(config, root)
        splits = {k: jnp.asarray(v) for k, v in arrays.items()}
        if config.eval_rotate and rotations == 1:
            raise ValueError(
                f"eval_rotate=True: the {config.task} {config.split!r} split has no rotated "
                f"classes (only Omniglot's Vinyals split counts rotations as classes)"
            )
        rotate = config.rotate and rotations > 1
        sampler = fewshot_sampler(config.ways, config.shots, config.queries, rotate=rotate)
        eval_sampler = fewshot_sampler(
            config.eval_ways or config.ways,
            config.eval_shots or config.shots,
            config.eval_queries or config.queries,
            rotate=config.eval_rotate,
        )
        if splits["val"].shape[0] == 0:  # e.g. the background split without val alphabets
            del splits["val"]
        for name, arr in splits.items():  # fail now (not inside jit) if a split is too small
            smp = sampler if name == "train" else eval_sampler
            try:
                jax.eval_shape(smp.sample, jax.random.PRNGKey(0), arr)
            except ValueError as e:
                raise ValueError(
                    f"{config.task} {config.split!r} split, {name} classes: {e}"
                ) from e
        held_out = {k: v for k, v in splits.items() if k != "train"}
        return Data(splits["train"], sampler, eval_sampler, held_out)

    return load


registry.register_dataset(
    "sinusoid",
    SinusoidConfig,
    _sinusoid_load,
    _sinusoid_context,
    family="regression",
    description="sine-wave regression (Finn et al. 2017, Sec. 5.1); generated, needs no data",
)
registry.register_dataset(
    "omniglot",
    FewShotConfig,
    _image_load(_omniglot_arrays),
    image_context(_omniglot_train_classes, _omniglot_train_rotate),
    family="classification",
    channels=1,
    description="Omniglot characters, 28x28 gray (Lake et al. 2015; Vinyals et al. split)",
    images=_omniglot_images,
)
registry.register_dataset(
    "miniimagenet",
    MiniImageNetConfig,
    _image_load(_miniimagenet_arrays),
    image_context(lambda config: 64),  # Ravi & Larochelle: 64 / 16 / 20 classes
    family="classification",
    channels=3,
    description="mini-ImageNet, 84x84 RGB, Ravi & Larochelle's 64/16/20 class split",
    images=_miniimagenet_images,
)

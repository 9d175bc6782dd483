"""The verification learners' settings and their rows in the learner table.

``triplet`` (FaceNet's triplet loss on few-shot episodes) and the angular-margin softmax
learners ``sphereface``, ``cosface`` and ``arcface`` (one factory,
:func:`mamlx.algorithms.angular.angular_margin`, each name with its paper's margins),
all on the data set's Conv-4 embedding. The angular learners train on labelled batches
over every training class (their ``train_sampler``), ``ways * (shots + queries)``
images per batch, so every learner of a run sees as many images per step. All are
tested few-shot like every learner (:func:`mamlx.evaluate`) and as verifiers
(:mod:`mamlx.verification`).

Example:
  >>> from mamlx import registry
  >>> from mamlx.config import FewShotConfig
  >>> FewShotConfig(algo="arcface").learner
  ArcFaceConfig(s=64.0, m1=1, m2=0.5, m3=0.0)
  >>> registry.get_learner("triplet").network
  'embedding'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mamlx import registry
from mamlx.algorithms.angular import angular_margin
from mamlx.algorithms.margin import MININGS, check_margins
from mamlx.algorithms.triplet import triplet
from mamlx.config import check_choices, check_positive_fields, set_counts
from mamlx.learners import class_batches, training_classes

CLASSIFICATION = ("classification",)


@dataclass(frozen=True)
class TripletConfig:
    """Settings of the triplet-loss embedding (Schroff et al. 2015, FaceNet): an episode of
    ``ways`` classes and ``shots + queries`` images each is the P×K batch; squared
    distances between L2-normalised embeddings.

    Attributes:
      margin: the triplet margin α (FaceNet: 0.2).
      mining: ``"semi_hard"`` (FaceNet: the nearest negative farther than the positive,
        else the farthest) or ``"batch_hard"`` (Hermans, Beyer & Leibe 2017: the farthest
        positive and the nearest negative per anchor).
    """

    margin: float = 0.2
    mining: str = "semi_hard"
    CHOICES: ClassVar[dict[str, tuple]] = {"mining": MININGS}

    def __post_init__(self):
        check_positive_fields(self, "margin")
        check_choices(self, self.CHOICES)


@dataclass(frozen=True)
class AngularConfig:
    """Settings of an angular-margin softmax: the true class's logit is
    ``s·(cos(m1·θ + m2) − m3)``, the others ``s·cos θ``.

    Attributes:
      s: logit scale of the normalised features (64 in SphereFace's normalised form,
        CosFace and ArcFace; AM-softmax uses 30).
      m1: multiplicative angular margin, an integer (SphereFace: 4; the others 1).
      m2: additive angular margin in radians, in [0, π/2) (ArcFace: 0.5; the others 0).
      m3: additive cosine margin, in [0, 1) (CosFace: 0.35; the others 0).
    """

    s: float = 64.0
    m1: int = 1
    m2: float = 0.0
    m3: float = 0.0

    def __post_init__(self):
        check_positive_fields(self, "s")
        check_positive_fields(self, "m2", "m3", zero=True)
        check_margins(self.s, self.m1, self.m2, self.m3)
        set_counts(self, 1, "m1")


_ATTRIBUTES = """
    Attributes:
      s: logit scale of the normalised features (64 in SphereFace's normalised form,
        CosFace and ArcFace; AM-softmax uses 30).
      m1: multiplicative angular margin, an integer (SphereFace: 4; the others 1).
      m2: additive angular margin in radians, in [0, π/2) (ArcFace: 0.5; the others 0).
      m3: additive cosine margin, in [0, 1) (CosFace: 0.35; the others 0).
"""


@dataclass(frozen=True)
class SphereFaceConfig(AngularConfig):
    __doc__ = (
        "SphereFace (Liu et al., CVPR 2017): A-Softmax with the multiplicative margin m1 = 4 "
        "and the monotone extension ψ; features normalised at ArcFace's scale s = 64.\n"
        + _ATTRIBUTES
    )

    s: float = 64.0
    m1: int = 4


@dataclass(frozen=True)
class CosFaceConfig(AngularConfig):
    __doc__ = (
        "CosFace (Wang et al., CVPR 2018): additive cosine margin m3 = 0.35 at s = 64 "
        "(AM-softmax: the same margin at s = 30).\n" + _ATTRIBUTES
    )

    s: float = 64.0
    m3: float = 0.35


@dataclass(frozen=True)
class ArcFaceConfig(AngularConfig):
    __doc__ = (
        "ArcFace (Deng et al., CVPR 2019): additive angular margin m2 = 0.5 at s = 64.\n"
        + _ATTRIBUTES
    )

    s: float = 64.0
    m2: float = 0.5


def _check_pk_batch(run) -> None:
    if run.ways < 2 or run.shots + run.queries < 2:
        raise ValueError(
            f"the triplet loss mines inside an episode: it needs ways >= 2 and "
            f"shots + queries >= 2 (a positive pair per class), got ways={run.ways}, "
            f"shots={run.shots}, queries={run.queries}"
        )


def _triplet(config: TripletConfig, ctx):
    _check_pk_batch(ctx.run)
    return triplet(
        *ctx.embedding(), margin=config.margin, mining=config.mining, task_map=ctx.task_map
    )


def _angular(config: AngularConfig, ctx):
    embed = ctx.embedding()
    return angular_margin(
        *embed,
        classes=training_classes(ctx.run),
        feature_dim=ctx.feature_shape(embed)[0],
        s=config.s,
        m1=config.m1,
        m2=config.m2,
        m3=config.m3,
        task_map=ctx.task_map,
    )


def _class_batches(config: AngularConfig, run):
    """Labelled batches of ``ways * (shots + queries)`` images over every training class
    (:func:`mamlx.learners.class_batches`: rotations as classes where the split counts them)."""
    return class_batches(run, run.ways * (run.shots + run.queries))


registry.register_learner(
    "triplet",
    _triplet,
    TripletConfig,
    families=CLASSIFICATION,
    network="embedding",
    description="triplet loss on normalised embeddings, semi-hard or batch-hard mining",
    reference="Schroff, Kalenichenko & Philbin, CVPR 2015 (FaceNet); Hermans et al. 2017",
)
for _name, _config, _desc, _ref in (
    (
        "sphereface",
        SphereFaceConfig,
        "SphereFace: multiplicative angular margin softmax over all training classes",
        "Liu, Wen, Yu, Li, Raj & Song, CVPR 2017",
    ),
    (
        "cosface",
        CosFaceConfig,
        "CosFace: additive cosine margin softmax over all training classes",
        "Wang, Wang, Zhou, Ji, Gong, Zhou, Li & Liu, CVPR 2018",
    ),
    (
        "arcface",
        ArcFaceConfig,
        "ArcFace: additive angular margin softmax over all training classes",
        "Deng, Guo, Xue & Zafeiriou, CVPR 2019",
    ),
):
    registry.register_learner(
        _name,
        _angular,
        _config,
        families=CLASSIFICATION,
        network="embedding",
        train_sampler=_class_batches,
        description=_desc,
        reference=_ref,
    )
del _name, _config, _desc, _ref

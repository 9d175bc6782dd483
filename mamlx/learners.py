"""The built-in learners' settings and their rows in the learner table.

Each learner has a small frozen config dataclass of its own settings (documented
fields, the paper's defaults where the paper gives them) and a ``build(config,
context)`` that calls its factory in :mod:`mamlx.algorithms` with the network the data
set provides (:class:`mamlx.datasets.Context`). Registering a learner of your own
works the same way (:func:`mamlx.registry.register_learner`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import optax

from mamlx import registry
from mamlx.algorithms.anil import anil
from mamlx.algorithms.hallucination import hallucination
from mamlx.algorithms.imaml import imaml
from mamlx.algorithms.maml import fomaml, maml
from mamlx.algorithms.mamlpp import mamlpp
from mamlx.algorithms.matching import matching
from mamlx.algorithms.meta_lstm import meta_lstm
from mamlx.algorithms.metasgd import metasgd
from mamlx.algorithms.pretrain import pretrain
from mamlx.algorithms.protonet import protonet
from mamlx.algorithms.relation import relation
from mamlx.algorithms.reptile import reptile
from mamlx.algorithms.siamese import pair_sampler, siamese
from mamlx.algorithms.transfer import HEADS, TEST_RULES, transfer
from mamlx.config import check_bools, check_choices, check_positive_fields, set_counts

BOTH = ("regression", "classification")
CLASSIFICATION = ("classification",)


@dataclass(frozen=True)
class GradientConfig:
    """Settings of MAML, first-order MAML, Meta-SGD and ANIL (Finn et al. 2017, Omniglot).

    Attributes:
      inner_lr: inner SGD step size α (Meta-SGD: the initial per-parameter rate).
      inner_steps: inner steps during meta-training.
      eval_inner_steps: inner steps at validation and test time.
      transductive: batch norm uses the statistics of the query batch (MAML's and
        Reptile's setting); ``False`` predicts each query with the support set only
        (Nichol et al. 2018, Sec. 6).
    """

    inner_lr: float = 0.4
    inner_steps: int = 1
    eval_inner_steps: int = 3
    transductive: bool = True

    def __post_init__(self):
        check_positive_fields(self, "inner_lr")
        set_counts(self, 0, "inner_steps", "eval_inner_steps")
        check_bools(self, "transductive")


@dataclass(frozen=True)
class ReptileConfig(GradientConfig):
    """Settings of Reptile (Nichol, Achiam & Schulman 2018).

    Attributes:
      inner_opt: ``"sgd"`` at ``inner_lr``, or ``"adam"`` with β₁ = 0 (the paper's).
      inner_batch: support examples per inner step in meta-training, a random order
        reshuffled every pass (the paper's minibatches); 0: the whole support set.
      reset_inner_state: a fresh inner optimizer state for every task; ``False``: the state
        carries over from task to task and into test (Nichol et al.'s code; see
        :func:`mamlx.reptile`).
      (the others as :class:`GradientConfig`; the outer step is SGD on φ − θ̃ at
      ``meta_lr``.)
    """

    inner_opt: str = "sgd"
    inner_batch: int = 0
    reset_inner_state: bool = True
    CHOICES: ClassVar[dict[str, tuple]] = {"inner_opt": ("sgd", "adam")}

    def __post_init__(self):
        super().__post_init__()
        check_choices(self, self.CHOICES)
        set_counts(self, 0, "inner_batch")
        check_bools(self, "reset_inner_state")


@dataclass(frozen=True)
class IMAMLConfig(GradientConfig):
    """Settings of implicit MAML (Rajeswaran et al. 2019); mamlx defaults.

    Attributes:
      lam: the proximal regularisation λ of the inner problem.
      cg_steps: conjugate-gradient iterations of the implicit meta-gradient.
      (inner_lr, inner_steps, eval_inner_steps, transductive as :class:`GradientConfig`.)
    """

    inner_steps: int = 5
    eval_inner_steps: int = 5
    lam: float = 1.0
    cg_steps: int = 5

    def __post_init__(self):
        super().__post_init__()
        check_positive_fields(self, "lam")
        set_counts(self, 1, "cg_steps")


@dataclass(frozen=True)
class MetaLSTMConfig(GradientConfig):
    """Settings of the meta-learner LSTM (Ravi & Larochelle 2017).

    Attributes:
      inner_lr: the initial input gate σ(b_I), i.e. the starting learning rate, in (0, 1).
      inner_steps: LSTM updates on the support set (training and test: ``eval_inner_steps``).
      lstm_hidden: width of the meta-learner LSTM.
      second_order: differentiate through the support loss and gradient fed to the
        LSTM (the paper does not).
    """

    inner_lr: float = 0.1
    inner_steps: int = 5
    eval_inner_steps: int = 5
    lstm_hidden: int = 20
    second_order: bool = False

    def __post_init__(self):
        super().__post_init__()
        if not self.inner_lr < 1:
            raise ValueError(
                f"meta-lstm reads inner_lr as the initial input gate σ(b_I), so it must be "
                f"< 1, got {self.inner_lr}"
            )
        if self.inner_steps < 1:
            raise ValueError(f"meta-lstm needs inner_steps >= 1, got {self.inner_steps}")
        set_counts(self, 1, "lstm_hidden")
        check_bools(self, "second_order")


@dataclass(frozen=True)
class MAMLPlusPlusConfig(GradientConfig):
    """Settings of MAML++ (Antoniou, Edwards & Storkey, ICLR 2019); defaults from the
    authors' Omniglot configurations (HowToTrainYourMAMLPytorch). With every option off
    (``--no-multi-step-loss --no-per-step-bn --no-lslr``, ``first_order_epochs 0``) it is MAML.
    See :mod:`mamlx.algorithms.mamlpp`; the outer cosine schedule is the run's
    ``meta_lr_schedule="cosine"``.

    Attributes:
      inner_lr: inner step size (with ``lslr``: every learned rate's starting value).
      inner_steps: inner steps during meta-training (the paper's 5).
      eval_inner_steps: inner steps at validation and test time.
      first_order: first-order meta-gradients throughout.
      multi_step_loss: the query loss after every inner step, annealed toward the last (MSL).
      msl_epochs: epochs over which the multi-step loss anneals (the authors' 10).
      first_order_epochs: derivative-order annealing: first order for this many epochs (0: off).
      per_step_bn: per-step batch-norm weights and biases (BNWB).
      lslr: learned per-layer, per-step inner learning rates (LSLR).
      epoch_steps: training steps per epoch, the unit of ``msl_epochs`` and
        ``first_order_epochs`` (0: a hundredth of the run's steps, the paper's 100 epochs).
      (transductive as :class:`GradientConfig`.)
    """

    inner_lr: float = 0.1
    inner_steps: int = 5
    eval_inner_steps: int = 5
    first_order: bool = False
    multi_step_loss: bool = True
    msl_epochs: int = 10
    first_order_epochs: int = 0
    per_step_bn: bool = True
    lslr: bool = True
    epoch_steps: int = 0

    def __post_init__(self):
        super().__post_init__()
        set_counts(self, 0, "msl_epochs", "first_order_epochs", "epoch_steps")
        check_bools(self, "first_order", "multi_step_loss", "per_step_bn", "lslr")
        if self.inner_steps == 0 and (self.multi_step_loss or self.per_step_bn or self.lslr):
            raise ValueError(
                "MAML++'s per-step options (multi_step_loss, per_step_bn, lslr) need "
                "inner_steps >= 1, got 0"
            )


@dataclass(frozen=True)
class PretrainConfig:
    """Settings of the pre-training baseline (the course's "find φ that performs well
    now": the loss at φ itself; fine-tuned at test time).

    Attributes:
      inner_lr: test-time fine-tuning step size.
      inner_steps: fine-tuning steps (training does not adapt).
      eval_inner_steps: fine-tuning steps at validation and test time.
    """

    inner_lr: float = 0.4
    inner_steps: int = 1
    eval_inner_steps: int = 3

    def __post_init__(self):
        check_positive_fields(self, "inner_lr")
        set_counts(self, 0, "inner_steps", "eval_inner_steps")


@dataclass(frozen=True)
class TransferConfig:
    """Settings of the transfer baselines: one classifier over all training classes,
    adapted at test time (Chen et al. 2019, Baseline / Baseline++; Ravi & Larochelle 2017,
    the fine-tuning and nearest-neighbour baselines). See :mod:`mamlx.algorithms.transfer`.

    Attributes:
      head: ``"linear"`` (Baseline) or ``"cosine"`` (Baseline++), in training and at test.
      test_rule: ``"finetune"`` a fresh N-way head on the support set, or ``"nn"``
        (nearest neighbour in the embedding).
      inner_lr: test-time fine-tuning step size (full-batch gradient descent).
      eval_inner_steps: test-time fine-tuning steps (validation and test).
      finetune_body: fine-tune the embedding along with the head.
      scale: temperature of the cosine head.
      batch: images per training batch (``meta_batch`` batches per step), drawn uniformly
        over all training classes.
      classes: outputs of the training head; 0: every training class of the split,
        counting rotations where the run rotates (Omniglot's Vinyals split: 4400).
    """

    head: str = "linear"
    test_rule: str = "finetune"
    inner_lr: float = 0.1
    eval_inner_steps: int = 100
    finetune_body: bool = False
    scale: float = 10.0
    batch: int = 128
    classes: int = 0
    CHOICES: ClassVar[dict[str, tuple]] = {"head": HEADS, "test_rule": TEST_RULES}

    def __post_init__(self):
        check_positive_fields(self, "inner_lr", "scale")
        set_counts(self, 0, "eval_inner_steps", "classes")
        set_counts(self, 1, "batch")
        check_bools(self, "finetune_body")
        check_choices(self, self.CHOICES)


@dataclass(frozen=True)
class ProtoNetConfig:
    """Prototypical Networks (Snell et al. 2017) have no settings of their own: the
    embedding is the data set's Conv-4 and the distance is squared Euclidean."""


@dataclass(frozen=True)
class MatchingConfig:
    """Settings of Matching Networks (Vinyals et al. 2016).

    Attributes:
      scale: cosine-attention temperature (1 in the paper).
      fce_steps: processing steps of the full-context attention LSTM (0: no full-context
        embeddings).
    """

    scale: float = 1.0
    fce_steps: int = 0

    def __post_init__(self):
        check_positive_fields(self, "scale")
        set_counts(self, 0, "fce_steps")


@dataclass(frozen=True)
class RelationConfig:
    """Settings of Relation Networks (Sung et al. 2018): the embedding max-pools in its
    first two blocks only (7x7 maps on Omniglot).

    Attributes:
      hidden: width of the relation module's fully connected layer (8 in the paper).
      aggregate: ``"sum"`` of a class's support features (the paper's K-shot rule) or
        ``"mean"``.
    """

    hidden: int = 8
    aggregate: str = "sum"
    CHOICES: ClassVar[dict[str, tuple]] = {"aggregate": ("sum", "mean")}

    def __post_init__(self):
        set_counts(self, 1, "hidden")
        check_choices(self, self.CHOICES)


@dataclass(frozen=True)
class SiameseConfig:
    """Settings of Siamese networks (Koch et al. 2015).

    Attributes:
      train_on: ``"pairs"`` (the paper: verification pairs, ``ways * (shots + queries)``
        per step, half of them same-class) or ``"episodes"`` (pairs inside episodes).
    """

    train_on: str = "pairs"
    CHOICES: ClassVar[dict[str, tuple]] = {"train_on": ("pairs", "episodes")}

    def __post_init__(self):
        check_choices(self, self.CHOICES)


@dataclass(frozen=True)
class HallucinationConfig:
    """Settings of ProtoNet with hallucinated examples (Wang et al. 2018).

    Attributes:
      num_hallucinated: generated examples per class.
      noise_dim: size of the noise z (0: the embedding width).
      hidden: hidden width of the generator MLP (0: the embedding width).
    """

    num_hallucinated: int = 1
    noise_dim: int = 0
    hidden: int = 0

    def __post_init__(self):
        set_counts(self, 0, "num_hallucinated", "noise_dim", "hidden")


def _gradient_kwargs(config, ctx) -> dict:
    return dict(
        inner_lr=config.inner_lr,
        inner_steps=config.inner_steps,
        task_map=ctx.task_map,
        transductive=config.transductive,
    )


def _factory(make):
    """``build`` of a learner that takes :func:`_gradient_kwargs` and the classifier."""

    def build(config, ctx):
        return make(*ctx.classifier(), **_gradient_kwargs(config, ctx))

    return build


def _reptile(config: ReptileConfig, ctx):
    inner_opt = (
        optax.adam(config.inner_lr, b1=0.0) if config.inner_opt == "adam" else config.inner_lr
    )
    return reptile(
        *ctx.classifier(),
        inner_opt=inner_opt,
        inner_steps=config.inner_steps,
        task_map=ctx.task_map,
        transductive=config.transductive,
        inner_batch=config.inner_batch,
        reset_inner_state=config.reset_inner_state,
    )


def _imaml(config: IMAMLConfig, ctx):
    return imaml(
        *ctx.classifier(), lam=config.lam, cg_steps=config.cg_steps, **_gradient_kwargs(config, ctx)
    )


def _meta_lstm(config: MetaLSTMConfig, ctx):
    return meta_lstm(
        *ctx.classifier(),
        inner_steps=config.inner_steps,
        init_lr=config.inner_lr,
        hidden_size=config.lstm_hidden,
        second_order=config.second_order,
        task_map=ctx.task_map,
        transductive=config.transductive,
    )


def _mamlpp(config: MAMLPlusPlusConfig, ctx):
    steps = ctx.run.steps
    epoch_steps = config.epoch_steps or steps / 100
    schedules = {
        "msl_epochs": config.msl_epochs if config.multi_step_loss else 0,
        "first_order_epochs": config.first_order_epochs,
    }
    for name, epochs in schedules.items():
        if epochs * epoch_steps > steps:
            raise ValueError(
                f"{name}={epochs} epochs of {epoch_steps:g} steps is longer than training "
                f"({steps} steps): lower it, or epoch_steps"
            )
    return mamlpp(
        *ctx.classifier(),
        first_order=config.first_order,
        multi_step_loss=config.multi_step_loss,
        msl_epochs=config.msl_epochs,
        first_order_epochs=config.first_order_epochs,
        per_step_bn=config.per_step_bn,
        lslr=config.lslr,
        epoch_steps=epoch_steps,
        **_gradient_kwargs(config, ctx),
    )


def _pretrain(config: PretrainConfig, ctx):
    return pretrain(
        *ctx.classifier(),
        inner_lr=config.inner_lr,
        inner_steps=config.inner_steps,
        task_map=ctx.task_map,
    )


def training_classes(run, classes: int = 0) -> int:
    """Outputs of a classifier over all training classes: ``classes``, or (0) every training
    class of the run's split, counting rotations where it does
    (:attr:`mamlx.datasets.Context.train_classes`)."""
    classes = classes or registry.get_dataset(run.task).context(run).train_classes
    if not classes:
        raise ValueError(
            f"{run.algo!r} classifies every training class, but {run.task!r} does not give "
            f"their number (Context.train_classes): set classes"
        )
    return classes


def class_batches(run, batch: int, classes: int = 0):
    """Labelled batches of ``batch`` images over every training class of the run's split,
    rotations as classes where the split counts them (:func:`mamlx.tasks.batches.class_batch_sampler`)."""
    from mamlx.tasks.batches import class_batch_sampler

    rotate = registry.get_dataset(run.task).context(run).train_rotate
    return class_batch_sampler(batch, rotate=rotate, classes=training_classes(run, classes))


def _transfer(config: TransferConfig, ctx):
    embed = ctx.embedding()
    return transfer(
        *embed,
        classes=training_classes(ctx.run, config.classes),
        feature_dim=ctx.feature_shape(embed)[0],
        head=config.head,
        test_rule=config.test_rule,
        inner_lr=config.inner_lr,
        inner_steps=config.eval_inner_steps,
        finetune_body=config.finetune_body,
        scale=config.scale,
        task_map=ctx.task_map,
    )


def _transfer_batches(config: TransferConfig, run):
    """Plain supervised batches over every training class (rotations as classes)."""
    return class_batches(run, config.batch, config.classes)


def _protonet(config: ProtoNetConfig, ctx):
    return protonet(*ctx.embedding(), task_map=ctx.task_map)


def _matching(config: MatchingConfig, ctx):
    embed = ctx.embedding()
    return matching(
        *embed,
        scale=config.scale,
        fce_steps=config.fce_steps,
        feature_dim=ctx.feature_shape(embed)[0] if config.fce_steps else None,
        task_map=ctx.task_map,
    )


def _relation(config: RelationConfig, ctx):
    embed = ctx.embedding(pool_blocks=2, flatten=False)
    shape = ctx.feature_shape(embed)
    return relation(
        *embed,
        feature_shape=shape,
        filters=shape[-1],
        hidden=config.hidden,
        aggregate=config.aggregate,
        task_map=ctx.task_map,
    )


def _siamese(config: SiameseConfig, ctx):
    embed = ctx.embedding()
    return siamese(
        *embed,
        feature_dim=ctx.feature_shape(embed)[0],
        train_on=config.train_on,
        task_map=ctx.task_map,
    )


def _siamese_pairs(config: SiameseConfig, run):
    """Koch et al. train on verification pairs: ``ways * (shots + queries)`` per step."""
    if config.train_on != "pairs":
        return None
    return pair_sampler(run.ways * (run.shots + run.queries), rotate=run.rotate)


def _hallucination(config: HallucinationConfig, ctx):
    embed = ctx.embedding()
    dim = ctx.feature_shape(embed)[0]
    return hallucination(
        *embed,
        feature_dim=dim,
        num_hallucinated=config.num_hallucinated,
        noise_dim=config.noise_dim or None,
        hidden=config.hidden or None,
        task_map=ctx.task_map,
    )


_FINN = "Finn, Abbeel & Levine, ICML 2017"
register_learner = registry.register_learner
for _name, _make, _desc in (
    ("maml", maml, "MAML, exact second-order meta-gradient"),
    ("fomaml", fomaml, "first-order MAML (inner gradients treated as constants)"),
):
    register_learner(
        _name,
        _factory(_make),
        GradientConfig,
        families=BOTH,
        per_task_kernels=True,
        description=_desc,
        reference=_FINN,
    )
register_learner(
    "maml++",
    _mamlpp,
    MAMLPlusPlusConfig,
    families=BOTH,
    per_task_kernels=True,
    description="MAML++: multi-step loss, derivative-order annealing, per-step batch norm, "
    "learned per-layer per-step inner rates (cosine outer schedule: meta_lr_schedule)",
    reference="Antoniou, Edwards & Storkey, ICLR 2019",
)
register_learner(
    "metasgd",
    _factory(metasgd),
    GradientConfig,
    families=BOTH,
    per_task_kernels=True,
    description="Meta-SGD: learned per-parameter inner learning rates",
    reference="Li, Zhou, Chen & Li 2017",
)
register_learner(
    "anil",
    _factory(anil),
    GradientConfig,
    families=CLASSIFICATION,
    description="ANIL: MAML that adapts the head only",
    reference="Raghu, Raghu, Bengio & Vinyals, ICLR 2020",
)
register_learner(
    "reptile",
    _reptile,
    ReptileConfig,
    families=BOTH,
    outer="sgd",
    per_task_kernels=True,
    description="Reptile: move φ toward the task-adapted weights",
    reference="Nichol, Achiam & Schulman 2018",
)
register_learner(
    "imaml",
    _imaml,
    IMAMLConfig,
    families=BOTH,
    per_task_kernels=True,
    description="implicit MAML: proximal inner loop, conjugate-gradient meta-gradient",
    reference="Rajeswaran, Finn, Kakade & Levine, NeurIPS 2019",
)
register_learner(
    "meta-lstm",
    _meta_lstm,
    MetaLSTMConfig,
    families=CLASSIFICATION,
    per_task_kernels=True,
    description="meta-learner LSTM: a learned update rule and initialisation",
    reference="Ravi & Larochelle, ICLR 2017",
)
register_learner(
    "pretrain",
    _pretrain,
    PretrainConfig,
    families=BOTH,
    description="pre-training baseline: the loss at φ itself, fine-tuned at test time",
    reference="Finn et al. 2017, Sec. 5.1 (the baseline MAML is contrasted with)",
)
register_learner(
    "transfer",
    _transfer,
    TransferConfig,
    families=CLASSIFICATION,
    network="embedding",
    train_sampler=_transfer_batches,
    description="transfer baseline: one classifier over all training classes; fine-tune a "
    "new head (linear or cosine) or nearest neighbour at test time",
    reference="Chen, Liu, Kira, Wang & Huang, ICLR 2019 (Baseline, Baseline++); "
    "Ravi & Larochelle, ICLR 2017 (fine-tuning and nearest-neighbour baselines)",
)
register_learner(
    "protonet",
    _protonet,
    ProtoNetConfig,
    families=CLASSIFICATION,
    network="embedding",
    description="Prototypical Networks: nearest class mean in the embedding",
    reference="Snell, Swersky & Zemel, NeurIPS 2017",
)
register_learner(
    "matching",
    _matching,
    MatchingConfig,
    families=CLASSIFICATION,
    network="embedding",
    description="Matching Networks: cosine attention over the support set",
    reference="Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra, NeurIPS 2016",
)
register_learner(
    "relation",
    _relation,
    RelationConfig,
    families=CLASSIFICATION,
    network="embedding",
    description="Relation Networks: a learned relation module scores query-class pairs",
    reference="Sung, Yang, Zhang, Xiang, Torr & Hospedales, CVPR 2018",
)
register_learner(
    "siamese",
    _siamese,
    SiameseConfig,
    families=CLASSIFICATION,
    network="embedding",
    train_sampler=_siamese_pairs,
    description="Siamese networks: verification pairs, one-shot by the nearest support",
    reference="Koch, Zemel & Salakhutdinov, ICML 2015 deep learning workshop",
)
register_learner(
    "hallucination",
    _hallucination,
    HallucinationConfig,
    families=CLASSIFICATION,
    network="embedding",
    description="ProtoNet with hallucinated support examples from a learned generator",
    reference="Wang, Girshick, Hebert & Hariharan, CVPR 2018",
)
del _name, _make, _desc

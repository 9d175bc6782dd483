"""Learned optimizers as optax transformations, their task families and meta-training.

- :func:`lstm_optimizer`: coordinatewise LSTM optimizer (Andrychowicz et al., 2016).
- :func:`meta_lstm_optimizer`: meta-learner LSTM update rule (Ravi & Larochelle, 2017).
- :func:`make_meta_train_step`: truncated-BPTT meta-training with Adam.
- :func:`quadratic_family`, :func:`mlp_classifier_family`, :func:`sine_family`: optimizees.
"""

from mamlx.optimizers.lstm import (
    LSTMOptimizerState,
    init_lstm_optimizer,
    lstm_optimizer,
    lstm_optimizer_params_sgd,
    preprocess_gradient,
)
from mamlx.optimizers.meta_lstm import (
    MetaLSTMState,
    gate_values,
    init_meta_lstm,
    meta_lstm_optimizer,
    meta_lstm_params_sgd,
    meta_lstm_trajectory,
)
from mamlx.optimizers.tasks import (
    DataTask,
    QuadraticTask,
    TaskFamily,
    mlp_apply,
    mlp_classifier_family,
    mlp_init,
    quadratic_family,
    sine_family,
)
from mamlx.optimizers.truncated_bptt import (
    UnrollConfig,
    evaluate_optimizer,
    make_meta_train_step,
    sample_problems,
    truncated_meta_loss,
    unroll,
)

__all__ = [
    "DataTask",
    "LSTMOptimizerState",
    "MetaLSTMState",
    "QuadraticTask",
    "TaskFamily",
    "UnrollConfig",
    "evaluate_optimizer",
    "gate_values",
    "init_lstm_optimizer",
    "init_meta_lstm",
    "lstm_optimizer",
    "lstm_optimizer_params_sgd",
    "make_meta_train_step",
    "meta_lstm_optimizer",
    "meta_lstm_params_sgd",
    "meta_lstm_trajectory",
    "mlp_apply",
    "mlp_classifier_family",
    "mlp_init",
    "preprocess_gradient",
    "quadratic_family",
    "sample_problems",
    "sine_family",
    "truncated_meta_loss",
    "unroll",
]

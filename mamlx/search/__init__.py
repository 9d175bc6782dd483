"""Learning the learning algorithm by reinforcement learning: searched rules and activations.

An LSTM controller (:func:`controller`) writes a program one token per slot of a
grammar (:class:`SearchSpace`); REINFORCE with a moving-average baseline and an entropy
bonus (:func:`reinforce`) raises the probability of programs whose child runs score well
(:mod:`mamlx.search.child`). Two grammars:

- :data:`UPDATE_RULES`: ``Δw = λ·b(u₁(op₁), u₂(op₂))`` in two groups, Bello et al. (2017),
  "Neural Optimizer Search with Reinforcement Learning", ICML. Any code is an optax
  transformation (:func:`as_optax`) and a formula (:func:`formula`).
- :data:`ACTIVATIONS`: ``b₂(u₃(b₁(u₁(x), u₂(x))), u₄(x))``, Ramachandran, Zoph & Le
  (2017), "Searching for Activation Functions" (:func:`activation`,
  :func:`activation_formula`).

Codes are integer arrays; a batch of them trains side by side under one ``jax.vmap``
(:func:`rule_rewards`, :func:`activation_rewards`), and one controller update (sample,
train every child, update) is one compiled function (:func:`make_search_step`).
"""

from mamlx.search.activations import (
    ACTIVATIONS,
    KNOWN_ACTIVATIONS,
    activation,
    activation_formula,
)
from mamlx.search.child import (
    ChildConfig,
    ChildMLP,
    ChildResult,
    ClassificationTask,
    activation_rewards,
    classification_task,
    rule_rewards,
    synthetic_task,
    train_child,
)
from mamlx.search.grammar import SearchSpace, check_code, choose, decode, encode
from mamlx.search.lstm_controller import Controller, ControllerLSTM, Samples, controller
from mamlx.search.rl import Reinforce, SearchState, make_search_step, reinforce
from mamlx.search.update_rules import (
    KNOWN_RULES,
    UPDATE_RULES,
    RuleState,
    apply_rule,
    as_optax,
    formula,
)

__all__ = [
    "ACTIVATIONS",
    "KNOWN_ACTIVATIONS",
    "KNOWN_RULES",
    "UPDATE_RULES",
    "ChildConfig",
    "ChildMLP",
    "ChildResult",
    "ClassificationTask",
    "Controller",
    "ControllerLSTM",
    "Reinforce",
    "RuleState",
    "Samples",
    "SearchSpace",
    "SearchState",
    "activation",
    "activation_formula",
    "activation_rewards",
    "apply_rule",
    "as_optax",
    "check_code",
    "choose",
    "classification_task",
    "controller",
    "decode",
    "encode",
    "formula",
    "make_search_step",
    "reinforce",
    "rule_rewards",
    "synthetic_task",
    "train_child",
]

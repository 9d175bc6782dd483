"""Figures a person would rather look at than read (matplotlib, headless).

Figures are drawn on a ``matplotlib.figure.Figure`` of their own, never through
pyplot's global state, so a notebook's backend is left as it was."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mamlx.types import PRNGKey


def plot_sinusoid_fits(
    runs: Sequence[tuple[str, Any, Any]],
    sampler: Any,
    key: PRNGKey,
    path: str | os.PathLike,
    *,
    steps: Sequence[int] = (1, 10),
    curves: dict[str, dict[int, tuple[float, float]]] | None = None,
) -> None:
    """The course's toy figure: one sine task fitted after 0, 1 and 10 steps, per run.

    Args:
      runs: ``(name, learner, meta_params)`` for each run, e.g. MAML and pre-training.
      sampler: a :class:`~mamlx.tasks.Sinusoid` sampler (its ``shots`` is K).
      key: PRNG key choosing the task and its support points.
      path: PNG file to write.
      steps: adaptation steps to draw besides the pre-update fit.
      curves: optional ``{name: {steps: (mse, ci)}}`` drawn as MSE-vs-steps panel.
    """
    from matplotlib.figure import Figure

    k_task, k_pts = jax.random.split(key)
    amp, phase = sampler.sample_params(k_task)
    ep = sampler.episode(k_pts, amp, phase)
    xs = jnp.linspace(*sampler.x_range, 200)[:, None]
    ncols = len(runs) + (1 if curves else 0)
    fig = Figure(figsize=(4.5 * ncols, 3.6))
    axes = fig.subplots(1, ncols, squeeze=False)
    for ax, (name, learner, params) in zip(axes[0], runs, strict=False):
        ax.plot(xs[:, 0], amp * jnp.sin(xs[:, 0] + phase), "k-", lw=2, label="ground truth")
        for s, style in zip((0, *steps), (":", "--", "-", "-."), strict=False):
            adapted = learner.adapt(params, ep.support_x, ep.support_y, steps=s)
            label = "pre-update" if s == 0 else f"after {s} step{'s' if s > 1 else ''}"
            ax.plot(xs[:, 0], learner.predict(adapted, xs)[:, 0], style, label=label)
        ax.plot(
            ep.support_x[:, 0], ep.support_y[:, 0], "r^", ms=8, label=f"K={sampler.shots} points"
        )
        ax.set_title(name)
        ax.set_xlabel("x")
        ax.legend(fontsize=7, loc="lower right")
    if curves:
        ax = axes[0, -1]
        for name, curve in curves.items():
            s = np.array(sorted(curve))
            m = np.array([curve[i][0] for i in s])
            ci = np.array([curve[i][1] for i in s])
            ax.plot(s, m, "o-", label=name)
            ax.fill_between(s, m - ci, m + ci, alpha=0.25)
        ax.set_xlabel("gradient steps at test time")
        ax.set_ylabel(f"query MSE (K={sampler.shots})")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
        ax.set_title("MSE ± 95% CI")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_training_curves(records: Sequence[dict], path: str | os.PathLike, title: str = "") -> None:
    """Training loss and validation metrics against meta-steps, from ``metrics.jsonl``.

    Args:
      records: the run's log lines (dicts with ``step``, ``loss`` and, at validations,
        ``val_accuracy`` / ``val_loss``).
      path: the PNG to write.
      title: the figure's title (e.g. the run's configuration in one line).

    Example:
      >>> import tempfile, pathlib
      >>> recs = [{"step": 10, "loss": 1.0}, {"step": 20, "loss": 0.5, "val_accuracy": 0.7}]
      >>> out = pathlib.Path(tempfile.mkdtemp()) / "curves.png"
      >>> plot_training_curves(recs, out)
      >>> out.stat().st_size > 0
      True
    """
    from matplotlib.figure import Figure

    val_keys = [k for k in ("val_accuracy", "val_loss") if any(k in r for r in records)]
    fig = Figure(figsize=(5 + 4 * len(val_keys), 3.6))
    axes = fig.subplots(1, 1 + len(val_keys), squeeze=False)[0]
    steps = [r["step"] for r in records if "loss" in r]
    axes[0].plot(steps, [r["loss"] for r in records if "loss" in r], lw=1)
    axes[0].set(xlabel="meta-step", ylabel="training loss (chunk mean)")
    for ax, k in zip(axes[1:], val_keys, strict=True):
        pts = [(r["step"], r[k]) for r in records if k in r]
        ax.plot(*zip(*pts, strict=True), "o-", ms=3)
        ax.set(xlabel="meta-step", ylabel=k.replace("_", " "))
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)

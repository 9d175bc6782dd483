"""The course's contrast on classification: episodic pre-training, the transfer baselines
(fine-tuning, nearest neighbour, cosine head) and MAML without convolutions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from metric_helpers import tiny_data, tiny_mlp64

from mamlx.algorithms.maml import maml
from mamlx.algorithms.pretrain import pretrain
from mamlx.algorithms.transfer import cosine_logits, nearest_neighbour_logits, transfer
from mamlx.config import FewShotConfig
from mamlx.episodes import Episode
from mamlx.experiments import build_learner
from mamlx.models import count_params, model, tree_cast
from mamlx.models.mlp import FCNet
from mamlx.tasks import fewshot_sampler
from mamlx.tasks.batches import class_batch_sampler


def _fc64(ways=3, size=4):
    apply_fn, init_fn = model(lambda r: FCNet(ways, in_features=size * size, hidden=(6, 5), rngs=r))
    return apply_fn, lambda k: tree_cast(init_fn(k), jnp.float64)


def _episodes(n=3, ways=3, shots=2, queries=2, size=4):
    data = tiny_data(classes=6, examples=6, size=size, dtype=jnp.float64)
    return fewshot_sampler(ways, shots, queries).sample_batch(jax.random.PRNGKey(3), data, n)


# --- episodic pre-training ----------------------------------------------------------------


def test_episodic_pretraining_gradient_is_the_mean_task_gradient_at_phi_and_maml_with_no_step():
    with jax.enable_x64(True):
        apply_fn, init_fn = _fc64()
        params = init_fn(jax.random.PRNGKey(0))
        episodes = _episodes()
        grads, _ = jax.jit(pretrain(apply_fn, init_fn, inner_lr=0.4).meta_grad)(params, episodes)

        def task_loss(p, ep):  # the loss at φ on all of the task's examples, no inner step
            x = jnp.concatenate([ep.support_x, ep.query_x])
            y = jnp.concatenate([ep.support_y, ep.query_y])
            logits = apply_fn(p, x)
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))

        per_task = [
            jax.jit(jax.grad(task_loss))(params, jax.tree.map(lambda a, i=i: a[i], episodes))
            for i in range(3)
        ]
        mean = jax.tree.map(lambda *g: sum(g) / 3, *per_task)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(mean), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)

        # MAML with zero inner steps whose query set is the whole task: the same objective.
        whole = Episode(
            episodes.support_x,
            episodes.support_y,
            jnp.concatenate([episodes.support_x, episodes.query_x], axis=1),
            jnp.concatenate([episodes.support_y, episodes.query_y], axis=1),
        )
        maml_grads, _ = jax.jit(maml(apply_fn, init_fn, inner_lr=0.4, inner_steps=0).meta_grad)(
            params, whole
        )
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(maml_grads), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
        # ... and not MAML's with one step (the contrast is real).
        one, _ = jax.jit(maml(apply_fn, init_fn, inner_lr=0.4, inner_steps=1).meta_grad)(
            params, whole
        )
        assert (
            max(
                float(jnp.abs(a - b).max())
                for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(one), strict=True)
            )
            > 1e-3
        )


# --- transfer baselines -------------------------------------------------------------------


def _transfer(**kw):
    embed, init = tiny_mlp64(dim=4, size=4)
    return transfer(embed, init, classes=6, feature_dim=4, **kw), embed


def _support(seed=1, ways=3, shots=2, queries=3):
    data = tiny_data(classes=6, examples=6, size=4, dtype=jnp.float64, seed=seed)
    return fewshot_sampler(ways, shots, queries).sample(jax.random.PRNGKey(seed), data)


def test_finetune_with_no_step_and_a_zero_head_predicts_uniformly():
    with jax.enable_x64(True):
        learner, _ = _transfer()
        params = learner.init(jax.random.PRNGKey(0))
        ep = _support()
        probs = jax.nn.softmax(learner.predict(learner.adapt(params, *ep[:2], steps=0), ep[2]))
        np.testing.assert_allclose(probs[:, :3], 1 / 3, atol=1e-12)  # three classes present
        np.testing.assert_array_equal(probs[:, 3:], 0.0)  # support columns of no class


def test_head_finetuning_on_a_frozen_body_is_logistic_regression_on_the_embeddings():
    """Against a hand-written softmax-regression solver: zero start, full-batch gradient
    descent on the mean cross-entropy of the support embeddings, ``steps`` steps."""
    lr, steps, ways = 0.3, 25, 3
    with jax.enable_x64(True):
        learner, embed = _transfer(inner_lr=lr)
        params = learner.init(jax.random.PRNGKey(0))
        ep = _support(ways=ways)
        out = learner.predict(learner.adapt(params, *ep[:2], steps=steps), ep[2])

        f = np.asarray(embed(params["embed"], ep.support_x))  # (S, D)
        y = np.eye(ways)[np.asarray(ep.support_y)]
        w, b = np.zeros((f.shape[1], ways)), np.zeros(ways)
        for _ in range(steps):
            z = f @ w + b
            p = np.exp(z - z.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            g = (p - y) / len(f)
            w, b = w - lr * f.T @ g, b - lr * g.sum(0)
        ref = np.asarray(embed(params["embed"], ep.query_x)) @ w + b
        np.testing.assert_allclose(out[:, :ways], ref, rtol=1e-9, atol=1e-12)
        assert np.abs(ref).max() > 0.1  # the head moved


def test_nearest_neighbour_matches_numpy_on_random_embeddings():
    rng = np.random.default_rng(0)
    q, s = rng.normal(size=(7, 5)), rng.normal(size=(9, 5))
    labels = rng.integers(0, 4, size=9)
    labels[:4] = np.arange(4)  # every class present
    out = np.asarray(nearest_neighbour_logits(jnp.asarray(q), jnp.asarray(s), jnp.eye(4)[labels]))
    ref = np.array(
        [
            [-min(((qi - s[j]) ** 2).sum() for j in range(9) if labels[j] == c) for c in range(4)]
            for qi in q
        ]
    )
    np.testing.assert_allclose(out, ref, rtol=1e-5)
    # the arg-max is the label of the single nearest support example
    nearest = labels[np.argmin(((q[:, None] - s[None]) ** 2).sum(-1), axis=1)]
    np.testing.assert_array_equal(out.argmax(1), nearest)


def test_nn_rule_through_the_learner_equals_the_reference():
    with jax.enable_x64(True):
        learner, embed = _transfer(test_rule="nn")
        params = learner.init(jax.random.PRNGKey(0))
        ep = _support()
        out = learner.predict(learner.adapt(params, *ep[:2]), ep.query_x)
        ref = nearest_neighbour_logits(
            embed(params["embed"], ep.query_x),
            embed(params["embed"], ep.support_x),
            jnp.eye(6)[ep.support_y],
        )
        np.testing.assert_allclose(out[:, :3], ref[:, :3], rtol=1e-12)
        assert np.all(np.isneginf(out[:, 3:]))


def test_cosine_head_is_scale_invariant_and_imprinted_at_zero_steps():
    rng = np.random.default_rng(1)
    f, w = jnp.asarray(rng.normal(size=(4, 6))), jnp.asarray(rng.normal(size=(6, 3)))
    base = cosine_logits(f, w, 5.0)
    np.testing.assert_allclose(cosine_logits(3.7 * f, w, 5.0), base, rtol=1e-5)
    np.testing.assert_allclose(
        cosine_logits(f, w * jnp.array([0.5, 2.0, 9.0]), 5.0), base, rtol=1e-5
    )
    assert float(jnp.abs(base).max()) <= 5.0 + 1e-5
    with jax.enable_x64(True):  # 0 steps: the cosine nearest-class-mean rule
        learner, embed = _transfer(head="cosine", scale=3.0)
        params = learner.init(jax.random.PRNGKey(0))
        ep = _support(shots=2)
        out = learner.predict(learner.adapt(params, *ep[:2], steps=0), ep.query_x)
        s = embed(params["embed"], ep.support_x)
        means = jnp.stack([s[ep.support_y == c].mean(0) for c in range(3)])
        ref = cosine_logits(embed(params["embed"], ep.query_x), means.T, 3.0)
        np.testing.assert_allclose(out[:, :3], ref, rtol=1e-9)


def test_finetuning_the_body_moves_the_embedding_and_the_head_only_does_not():
    with jax.enable_x64(True):
        ep = _support()
        frozen, _ = _transfer()
        params = frozen.init(jax.random.PRNGKey(0))
        state = frozen.adapt(params, *ep[:2], steps=3)
        assert all(
            bool((a == b).all())
            for a, b in zip(
                jax.tree.leaves(state.body), jax.tree.leaves(params["embed"]), strict=True
            )
        )
        full, _ = _transfer(finetune_body=True)
        state = full.adapt(params, *ep[:2], steps=3)
        moved = max(
            float(jnp.abs(a - b).max())
            for a, b in zip(
                jax.tree.leaves(state.body), jax.tree.leaves(params["embed"]), strict=True
            )
        )
        assert moved > 1e-4


def test_training_classifies_the_global_labels_and_the_gradient_is_finite_differenced():
    from jax.test_util import check_grads

    with jax.enable_x64(True):
        learner, _ = _transfer(head="cosine")
        params = learner.init(jax.random.PRNGKey(0))
        data = tiny_data(classes=6, examples=6, size=4, dtype=jnp.float64)
        batch = class_batch_sampler(12, classes=6).sample(jax.random.PRNGKey(2), data)
        loss = lambda p: learner.outer_loss(p, batch)[0]
        check_grads(loss, (params,), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


def test_bad_settings_name_the_value():
    embed, init = tiny_mlp64(dim=4, size=4)
    with pytest.raises(ValueError, match="test-time steps.*-1"):
        transfer(embed, init, classes=6, feature_dim=4, inner_steps=-1)
    learner = transfer(embed, init, classes=6, feature_dim=4)
    with jax.enable_x64(True), pytest.raises(ValueError, match="test-time steps.*-2"):
        learner.adapt(learner.init(jax.random.PRNGKey(0)), *_support()[:2], steps=-2)
    with pytest.raises(ValueError, match="test_rule.*'knn'"):
        transfer(embed, init, classes=6, feature_dim=4, test_rule="knn")
    with pytest.raises(ValueError, match="eval_inner_steps"):
        FewShotConfig(algo="transfer", eval_inner_steps=-1)
    # a split whose classes the head cannot index
    sampler = class_batch_sampler(8, rotate=True, classes=6)
    with pytest.raises(ValueError, match="24 classes .*classes=6"):
        sampler.sample(jax.random.PRNGKey(0), tiny_data(classes=6, examples=4, size=4))


def test_transfer_head_spans_every_training_class_of_the_split():
    params = build_learner(FewShotConfig(algo="transfer", filters=8)).init(jax.random.PRNGKey(0))
    assert params["head"]["w"].shape == (8, 4400)  # 1100 Vinyals characters x 4 rotations
    cfg = FewShotConfig(algo="transfer", filters=8, rotate=False, head="cosine")
    assert build_learner(cfg).init(jax.random.PRNGKey(0))["head"]["w"].shape == (8, 1100)
    cfg = FewShotConfig(algo="transfer", filters=8, split="background")
    assert build_learner(cfg).init(jax.random.PRNGKey(0))["head"]["w"].shape == (8, 964)


# --- MAML without convolutions ------------------------------------------------------------


def test_noconv_network_has_the_papers_parameter_count_on_784_inputs():
    params = build_learner(FewShotConfig(backbone="mlp")).init(jax.random.PRNGKey(0))
    widths = [784, 256, 128, 64, 64]
    linear = sum(a * b + b for a, b in zip(widths[:-1], widths[1:], strict=True)) + 64 * 5 + 5
    batch_norm = 2 * sum(widths[1:])  # scale and offset per hidden unit
    assert count_params(params) == linear + batch_norm == 247_621


def test_noconv_batch_norm_normalises_each_hidden_layer_with_batch_statistics():
    net = FCNet(3, in_features=16, hidden=(8,), rngs=__import__("flax").nnx.Rngs(0))
    x = jax.random.normal(jax.random.PRNGKey(0), (10, 4, 4, 1)) * 5 + 3
    h = net.layers[0](x.reshape(10, -1))
    z = (h - h.mean(0)) / jnp.sqrt(h.var(0) + net.norms[0].epsilon)
    ref = net.head(jax.nn.relu(z))  # scale 1, offset 0 at initialisation
    np.testing.assert_allclose(net(x), ref, rtol=1e-4, atol=1e-5)

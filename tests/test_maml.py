"""MAML / first-order MAML / pre-training: closed forms, finite differences, conformance."""

import re
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from mamlx import Episode, fomaml, maml, pretrain, reptile
from mamlx.datasets import sinusoid_model
from mamlx.losses import mse
from mamlx.models import tree_cast
from mamlx.tasks import sinusoid
from mamlx.testing import check_meta_learner


def linear_apply(theta, x):
    return x @ theta


def linear_problem(seed=0, n=6, d=3):
    """Linear regression tasks: MSE loss is quadratic in θ with Hessian H = 2/n XᵀX."""
    k = jax.random.split(jax.random.PRNGKey(seed), 5)
    xs, xq = jax.random.normal(k[0], (n, d)), jax.random.normal(k[1], (n, d))
    ys, yq = jax.random.normal(k[2], (n,)), jax.random.normal(k[3], (n,))
    theta = jax.random.normal(k[4], (d,))
    return theta, Episode(xs, ys, xq, yq)


def quad_grad(theta, x, y):
    n = x.shape[0]
    return 2.0 / n * x.T @ (x @ theta - y)


@pytest.mark.parametrize("eps", [0.05, 0.2])
def test_second_order_meta_gradient_equals_closed_form(eps):
    theta, ep = linear_problem()
    learner = maml(linear_apply, lambda k: theta, inner_lr=eps, inner_steps=1)
    grad = jax.grad(lambda t: learner.outer_loss(t, ep)[0])(theta)
    hess = 2.0 / ep.support_x.shape[0] * ep.support_x.T @ ep.support_x
    adapted = theta - eps * quad_grad(theta, ep.support_x, ep.support_y)
    expected = (jnp.eye(3) - eps * hess) @ quad_grad(adapted, ep.query_x, ep.query_y)
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6)


def test_second_order_two_steps_closed_form():
    theta, ep = linear_problem(seed=3)
    eps = 0.1
    learner = maml(linear_apply, lambda k: theta, inner_lr=eps, inner_steps=2)
    grad = jax.grad(lambda t: learner.outer_loss(t, ep)[0])(theta)
    hess = 2.0 / ep.support_x.shape[0] * ep.support_x.T @ ep.support_x
    t1 = theta - eps * quad_grad(theta, ep.support_x, ep.support_y)
    t2 = t1 - eps * quad_grad(t1, ep.support_x, ep.support_y)
    jac = (jnp.eye(3) - eps * hess) @ (jnp.eye(3) - eps * hess)
    np.testing.assert_allclose(grad, jac @ quad_grad(t2, ep.query_x, ep.query_y), rtol=1e-5)


def test_first_order_drops_hessian_term_and_differs_from_second_order():
    theta, ep = linear_problem(seed=1)
    eps = 0.2
    fo = fomaml(linear_apply, lambda k: theta, inner_lr=eps)
    so = maml(linear_apply, lambda k: theta, inner_lr=eps)
    g_fo = jax.grad(lambda t: fo.outer_loss(t, ep)[0])(theta)
    g_so = jax.grad(lambda t: so.outer_loss(t, ep)[0])(theta)
    adapted = theta - eps * quad_grad(theta, ep.support_x, ep.support_y)
    np.testing.assert_allclose(g_fo, quad_grad(adapted, ep.query_x, ep.query_y), rtol=1e-5)
    assert np.max(np.abs(g_fo - g_so)) > 1e-2  # εH ≠ 0 here


def tiny_mlp_learner(algo, **kw):
    apply_fn, init_fn = sinusoid_model((8,))
    init64 = lambda k: tree_cast(init_fn(k), jnp.float64)
    return algo(apply_fn, init64, inner_lr=0.05, **kw)


def sine_batch64(n=3, shots=5):
    return tree_cast(sinusoid(shots).sample_batch(jax.random.PRNGKey(7), None, n), jnp.float64)


@pytest.mark.parametrize("inner_steps", [1, 2])
def test_maml_meta_gradient_passes_check_grads_float64(inner_steps):
    with jax.enable_x64(True):
        learner = tiny_mlp_learner(maml, inner_steps=inner_steps)
        params = learner.init(jax.random.PRNGKey(0))
        ep = jax.tree.map(lambda a: a[0], sine_batch64())
        f = lambda p: learner.outer_loss(p, ep)[0]
        check_grads(f, (params,), order=2, modes=["rev"], atol=1e-5, rtol=1e-5)


def test_batched_meta_gradient_is_mean_of_per_task_gradients():
    apply_fn, init_fn = sinusoid_model()
    for task_map in ("vmap", "map"):
        learner = maml(apply_fn, init_fn, inner_lr=0.01, inner_steps=2, task_map=task_map)
        params = learner.init(jax.random.PRNGKey(0))
        eps = sinusoid(10).sample_batch(jax.random.PRNGKey(1), None, 4)
        g_batch, metrics = jax.jit(learner.meta_grad)(params, eps)
        task_grad = jax.jit(jax.grad(lambda p, ep: learner.outer_loss(p, ep)[0]))
        per_task = [task_grad(params, jax.tree.map(lambda a, i=i: a[i], eps)) for i in range(4)]
        mean = jax.tree.map(lambda *g: sum(g) / 4, *per_task)
        for a, b in zip(jax.tree.leaves(g_batch), jax.tree.leaves(mean), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
        assert np.isfinite(metrics["loss"])


@pytest.mark.parametrize("transductive", [True, False])
def test_first_order_loop_over_tasks_is_the_mean_of_per_task_gradients(transductive):
    """First-order MAML with ``task_map="map"`` takes all tasks' first inner step at once
    (:func:`mamlx.inner.first_steps`); its meta-gradient and metrics are still the mean of
    the per-task ``outer_loss`` gradients (which adapt task by task), in float64, with SGD
    and with Adam as the inner optimizer (whose state the first step hands on), and the same
    as vectorizing the tasks."""
    import optax

    with jax.enable_x64(True):
        apply_fn, init_fn = sinusoid_model((8,))
        eps = sine_batch64(4)
        for inner_opt in (0.01, optax.adam(0.05)):
            learners = {
                tm: fomaml(apply_fn, init_fn, inner_lr=inner_opt, inner_steps=3, task_map=tm,
                           transductive=transductive)
                for tm in ("map", "vmap")
            }  # fmt: skip
            params = tree_cast(learners["map"].init(jax.random.PRNGKey(0)), jnp.float64)
            g_map, m_map = jax.jit(learners["map"].meta_grad)(params, eps)
            g_vmap, _ = jax.jit(learners["vmap"].meta_grad)(params, eps)
            task = lambda p, i: learners["map"].outer_loss(p, jax.tree.map(lambda a: a[i], eps))
            task_grad = jax.jit(jax.grad(task, has_aux=True), static_argnums=1)
            per_task = [task_grad(params, i) for i in range(4)]
            mean = jax.tree.map(lambda *g: sum(g) / 4, *[g for g, _ in per_task])
            # Measured (jax 0.10.2, CPU): largest relative difference 1e-15, absolute 4.4e-16.
            for a, b, c in zip(*map(jax.tree.leaves, (g_map, mean, g_vmap)), strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
                np.testing.assert_allclose(a, c, rtol=1e-12, atol=1e-14)
            want_loss = np.mean([float(m["loss"]) for _, m in per_task])
            np.testing.assert_allclose(m_map["loss"], want_loss, rtol=1e-12)


def test_remat_gives_the_same_meta_gradient_in_less_memory():
    # Large enough that per-step activations dominate: a 1-128-1 MLP, 100 shots, 10 steps
    # (measured on CPU: 1.8 MB of temporaries without remat, 0.35 MB with).
    apply_fn, init_fn = sinusoid_model((128,))
    eps = sinusoid(100).sample_batch(jax.random.PRNGKey(1), None, 2)
    params = init_fn(jax.random.PRNGKey(0))
    grads, temp = [], {}
    for remat in (False, True):
        learner = maml(apply_fn, init_fn, inner_lr=0.01, inner_steps=10, remat=remat)
        compiled = jax.jit(learner.meta_grad).lower(params, eps).compile()
        temp[remat] = compiled.memory_analysis().temp_size_in_bytes
        grads.append(compiled(params, eps)[0])
    for a, b in zip(*map(jax.tree.leaves, grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert temp[True] < 0.6 * temp[False], temp


def test_pretrain_outer_loss_is_loss_at_shared_params():
    apply_fn, init_fn = sinusoid_model()
    learner = pretrain(apply_fn, init_fn, inner_lr=0.01)
    params = learner.init(jax.random.PRNGKey(0))
    ep = sinusoid(5).sample(jax.random.PRNGKey(3))
    pred = jnp.concatenate([apply_fn(params, ep.support_x), apply_fn(params, ep.query_x)])
    y = jnp.concatenate([ep.support_y, ep.query_y])
    np.testing.assert_allclose(learner.outer_loss(params, ep)[0], jnp.mean((pred - y) ** 2), 1e-6)
    # test-time fine-tuning is plain SGD on the support loss
    adapted = learner.adapt(params, ep.support_x, ep.support_y, steps=1)
    g = jax.grad(lambda p: jnp.mean((apply_fn(p, ep.support_x) - ep.support_y) ** 2))(params)
    for a, p, gi in zip(*map(jax.tree.leaves, (adapted, params, g)), strict=True):
        np.testing.assert_allclose(a, p - 0.01 * gi, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("algo", [maml, fomaml, pretrain])
def test_conformance(algo):
    apply_fn, init_fn = sinusoid_model()
    check_meta_learner(algo(apply_fn, init_fn, inner_lr=0.01), sinusoid(5))


@pytest.mark.parametrize("algo", [maml, pretrain])  # first-order MAML is not a gradient
def test_conformance_finite_differences_float64(algo):
    with jax.enable_x64(True):
        check_meta_learner(tiny_mlp_learner(algo), sinusoid(5), check_fd=True, fd_eps=1e-5)


def test_bad_arguments_raise_clear_errors():
    apply_fn, init_fn = sinusoid_model()
    with pytest.raises(ValueError, match="inner steps must be an integer >= 0"):
        maml(apply_fn, init_fn, inner_lr=0.01, inner_steps=-1)
    with pytest.raises(ValueError, match=r"learning rate \(inner_lr / inner_opt\) must be posi"):
        maml(apply_fn, init_fn, inner_lr=-0.1)
    for lr in (float("inf"), float("-inf"), float("nan")):
        with pytest.raises(ValueError, match=f"must be positive and finite, got {lr!r}"):
            maml(apply_fn, init_fn, inner_lr=lr)
    for lr in (True, np.bool_(True)):
        with pytest.raises(ValueError, match="inner_lr.*got the bool"):
            maml(apply_fn, init_fn, inner_lr=lr)
    with pytest.raises(ValueError, match="inner_lr.*got '0.1'"):
        maml(apply_fn, init_fn, inner_lr="0.1")
    maml(apply_fn, init_fn, inner_lr=np.float32(0.1))  # NumPy scalars are fine
    with pytest.raises(ValueError, match="task_map"):
        maml(apply_fn, init_fn, inner_lr=0.1, task_map="pmap")
    learner = maml(apply_fn, init_fn, inner_lr=0.01)
    with pytest.raises(ValueError, match="inner steps must be an integer >= 0"):
        learner.adapt(learner.init(jax.random.PRNGKey(0)), jnp.zeros((5, 1)), jnp.zeros((5, 1)), -2)


def test_first_order_meta_grad_is_not_the_true_gradient():
    """The finite-difference check must catch an approximate meta-gradient."""
    with jax.enable_x64(True), pytest.raises(AssertionError, match="finite differences"):
        check_meta_learner(tiny_mlp_learner(fomaml), sinusoid(5), check_fd=True, fd_eps=1e-5)


def test_regression_loss_rejects_mismatched_shapes():
    from mamlx.losses import mse, task_metrics

    x = jnp.linspace(-1, 1, 5)[:, None]
    y = jnp.sin(x)
    pred = 2 * y
    np.testing.assert_allclose(mse(pred, y), jnp.mean(jnp.square(y)), rtol=1e-6)
    np.testing.assert_allclose(task_metrics(pred, y)[0], jnp.mean(jnp.square(y)), rtol=1e-6)
    with pytest.raises(ValueError, match=r"\(5, 1\).*\(5,\)"):
        mse(pred, y[:, 0])  # would broadcast to a (5, 5) mean
    with pytest.raises(ValueError, match=r"\(5,\).*\(5, 1\)"):
        jax.jit(mse)(pred[:, 0], y)  # static shapes: checked under jit
    with pytest.raises(ValueError, match=r"\(5, 1\).*\(5,\)"):
        jax.vmap(mse)(pred[None], y[None, :, 0])  # and under vmap
    apply_fn, init_fn = sinusoid_model((4,))
    learner = maml(apply_fn, init_fn, inner_lr=0.01)
    params = learner.init(jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="mse"):
        learner.outer_loss(params, Episode(x, y[:, 0], x, y[:, 0]))
    learner.outer_loss(params, Episode(x, y, x, y))


def test_classification_loss_rejects_labels_not_matching_logits():
    from mamlx.losses import accuracy, cross_entropy, task_metrics

    logits = jnp.asarray([[2.0, 0.0, -1.0], [0.0, 1.0, 0.5]])
    labels = jnp.asarray([0, 2])
    want = -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(2), labels])
    np.testing.assert_allclose(cross_entropy(logits, labels), want, rtol=1e-6)
    loss, metrics = jax.jit(task_metrics)(logits, labels)
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    assert float(metrics["accuracy"]) == 0.5
    # A NaN row (diverged model) is no prediction of class 0: it counts as wrong.
    nan_row = logits.at[1].set(jnp.nan)
    assert float(accuracy(nan_row, jnp.asarray([0, 0]))) == 0.5
    loss, metrics = jax.jit(task_metrics)(nan_row, jnp.asarray([0, 0]))
    assert np.isnan(loss) and float(metrics["accuracy"]) == 0.5
    for bad in (labels[:, None], labels[:1], jnp.zeros((2, 3), jnp.int32)):
        shape = re.escape(str(bad.shape))
        with pytest.raises(ValueError, match=f"cross_entropy.*{shape}.*\\(2, 3\\)"):
            cross_entropy(logits, bad)
        with pytest.raises(ValueError, match=f"accuracy.*{shape}.*\\(2, 3\\)"):
            accuracy(logits, bad)
        with pytest.raises(ValueError, match=shape):
            jax.jit(task_metrics)(logits, bad)


def test_classification_loss_rejects_out_of_range_labels_eagerly():
    from mamlx.losses import accuracy, cross_entropy, task_metrics

    logits = jnp.asarray([[2.0, 0.0, -1.0], [0.0, 1.0, 0.5]])
    # 3 gave a NaN loss (take_along_axis fills), -1 silently read the last class.
    for bad in ([0, 3], [-1, 1], np.asarray([7, 3], np.int32)):
        values = sorted({int(v) for v in bad if not 0 <= v < 3})
        want = re.escape(str(values))
        for fn in (cross_entropy, accuracy, task_metrics):
            with pytest.raises(ValueError, match=f"{want}.*3 classes.*\\[0, 3\\)"):
                fn(logits, jnp.asarray(bad))
    # Concrete labels inside a traced function (e.g. grad w.r.t. the logits) are checked too.
    with pytest.raises(ValueError, match=r"\[3\]"):
        jax.grad(lambda z: cross_entropy(z, jnp.asarray([0, 3])))(logits)
    # Under jit the labels are traced: no check and no host callback in the compiled code.
    jaxpr = str(jax.make_jaxpr(task_metrics)(logits, jnp.asarray([0, 2])))
    assert "callback" not in jaxpr
    for bad in ([0, 3], [-1, 1]):  # -1 would read the last class: NaN instead
        loss, _ = jax.jit(task_metrics)(logits, jnp.asarray(bad))
        assert np.isnan(loss)  # the training loop reports it (NonFiniteLossError)
        g = jax.jit(jax.grad(cross_entropy))(logits, jnp.asarray(bad))
        assert np.isnan(g).any()
    good = np.asarray([0, 2])  # in range: eager and jit agree
    np.testing.assert_allclose(
        cross_entropy(logits, good), jax.jit(cross_entropy)(logits, good), rtol=1e-6
    )


def test_evaluation_reports_the_learners_own_loss():
    # A learner built with loss_fn=L is evaluated with L (predict_loss), not the default MSE.
    from mamlx import evaluate

    def mae(pred, y):
        return jnp.mean(jnp.abs(pred - y))

    apply_fn, init_fn = sinusoid_model((16,))
    for make in (maml, reptile):
        kw = {"inner_lr": 0.01} if make is maml else {"inner_opt": 0.01}
        learner = make(apply_fn, init_fn, inner_steps=1, loss_fn=mae, **kw)
        assert learner.predict_loss is mae
        params = learner.init(jax.random.PRNGKey(0))
        got = evaluate(learner, params, sinusoid(5), key=jax.random.PRNGKey(1), num_tasks=4)
        keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.PRNGKey(1), jnp.arange(4))
        eps = jax.vmap(sinusoid(5).sample)(keys)  # task i from fold_in(key, i)

        def query_mae(ep):
            state = learner.adapt(params, ep.support_x, ep.support_y)
            return mae(learner.predict(state, ep.query_x), ep.query_y)

        np.testing.assert_allclose(
            got[None]["loss"][0], np.mean(jax.vmap(query_mae)(eps)), rtol=1e-5
        )
        default = evaluate(
            learner, params, sinusoid(5), key=jax.random.PRNGKey(1), num_tasks=4, loss_fn=mse
        )
        assert abs(default[None]["loss"][0] - got[None]["loss"][0]) > 1e-3


def test_evaluator_tasks_do_not_depend_on_the_batch_size(monkeypatch):
    # Task i comes from fold_in(key, i): 7 tasks in batches of 3 (the last one cut to 1
    # task), in one batch of 7 or under a batch size of 100 give the same per-task values.
    from mamlx import evaluate, mean_ci
    from mamlx import evaluation as ev

    apply_fn, init_fn = sinusoid_model((16,))
    learner = maml(apply_fn, init_fn, inner_lr=0.01, inner_steps=1)
    params = learner.init(jax.random.PRNGKey(0))
    key = jax.random.PRNGKey(9)

    def one(steps, i):
        ep = sinusoid(5).sample(jax.random.fold_in(key, i))
        state = learner.adapt(params, ep.support_x, ep.support_y, steps=steps)
        return float(mse(learner.predict(state, ep.query_x), ep.query_y))

    for batch in (3, 7, 100):
        got = evaluate(
            learner, params, sinusoid(5), key=key, num_tasks=7, batch_size=batch, steps=[0, None]
        )
        for steps in (0, None):
            values = [one(steps, i) for i in range(7)]
            assert len(np.unique(values)) == 7  # distinct tasks, none repeated across batches
            np.testing.assert_allclose(got[steps]["loss"], mean_ci(values), rtol=1e-5)
    assert got[None]["loss"][0] < got[0]["loss"][0]  # one step on the support set helps

    # A batch that runs out of device memory is halved until it fits: same tasks, same result.
    calls = []

    def two_tasks_fit(size):
        calls.append(size)
        if size > 2:
            raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating")

    monkeypatch.setattr(ev.jax, "jit", _jit_calling(two_tasks_fit))
    run = ev.make_evaluator(learner, sinusoid(5), steps=[None], batch_size=8)
    small = run(params, None, key=key, num_tasks=7)
    np.testing.assert_allclose(small[None]["loss"], got[None]["loss"], rtol=1e-5)
    assert calls == [7, 4, 2, 2, 2, 2]  # then keeps the size that fit
    calls.clear()
    run(params, None, key=key, num_tasks=4)
    assert calls == [2, 2]

    def other_error(size):
        raise jax.errors.JaxRuntimeError("INTERNAL: something else")

    monkeypatch.setattr(ev.jax, "jit", _jit_calling(other_error))
    with pytest.raises(jax.errors.JaxRuntimeError, match="something else"):
        ev.make_evaluator(learner, sinusoid(5), batch_size=8)(params, None, key=key, num_tasks=3)


_JAX_JIT = jax.jit


def _jit_calling(hook, memory=None):
    """A ``jax.jit`` for the evaluator whose compiled calls first call ``hook(tasks)``;
    ``memory(tasks)``, if given, is the size in bytes that XLA reports for them."""
    real_jit = _JAX_JIT  # not a jit patched earlier in the same test

    def jit(fn):
        class Lowered:
            def __init__(self, args):
                self.args = args

            def compile(self):
                compiled = real_jit(fn).lower(*self.args).compile()
                size = jax.eval_shape(fn, *self.args)["loss"].shape[0]

                class Compiled:
                    def __call__(self, *args):
                        hook(size)
                        return compiled(*args)

                    def memory_analysis(self):
                        if memory is None:
                            return compiled.memory_analysis()
                        return SimpleNamespace(
                            argument_size_in_bytes=0,
                            output_size_in_bytes=0,
                            temp_size_in_bytes=memory(size),
                        )

                return Compiled()

        class Jitted:
            def lower(self, *args):
                return Lowered(args)

        return Jitted()

    return jit


def test_evaluator_bounds_its_default_batch_by_input_size_on_cpu(monkeypatch):
    # On CPU a batch that does not fit kills the process (no error to halve on): without a
    # batch_size the evaluator takes as many tasks as CPU_INPUT_FLOATS input values allow.
    # 100 Omniglot 20-way 5-shot tasks (40,000 images) took 24 GB and were OOM-killed.
    from mamlx import evaluation as ev

    apply_fn, init_fn = sinusoid_model((16,))
    learner = maml(apply_fn, init_fn, inner_lr=0.01, inner_steps=1)
    params = learner.init(jax.random.PRNGKey(0))
    key = jax.random.PRNGKey(9)

    class BatchOnly:  # the same tasks' shapes through sample_batch
        def sample_batch(self, key, data, n):
            return sinusoid(5).sample_batch(key, data, n)

    # sinusoid(5): 5 support and 5 query points, x and y each: 20 floats per task.
    assert ev.episode_floats(sinusoid(5), None, key) == 20
    assert ev.episode_floats(BatchOnly(), None, key) == 20
    assert ev.episode_floats(sinusoid(5, 15), None, key) == 40
    monkeypatch.setattr(ev, "CPU_INPUT_FLOATS", 65)
    assert ev.default_batch_size(sinusoid(5), None, key) == 3
    assert ev.default_batch_size(sinusoid(50), None, key) == 1  # never below one task
    monkeypatch.setattr(ev.jax, "default_backend", lambda: "gpu")
    assert ev.default_batch_size(sinusoid(5), None, key) == ev.BATCH_SIZE
    monkeypatch.undo()

    sizes = []
    expected = ev.evaluate(learner, params, sinusoid(5), key=key, num_tasks=7, batch_size=7)
    monkeypatch.setattr(ev, "CPU_INPUT_FLOATS", 65)
    monkeypatch.setattr(ev.jax, "jit", _jit_calling(sizes.append))
    got = ev.evaluate(learner, params, sinusoid(5), key=key, num_tasks=7)
    assert sizes == [3, 3, 3]
    np.testing.assert_allclose(got[None]["loss"], expected[None]["loss"], rtol=1e-5)


def test_evaluator_cuts_a_batch_that_would_not_fit_in_cpu_memory(monkeypatch):
    # On CPU the evaluator asks XLA how much memory a compiled batch takes: one over
    # CPU_MEMORY_FRACTION of the memory available is cut in proportion before it runs (a
    # Relation Network's 26 tasks of 847 MB each were killed by the OS). Same result.
    from mamlx import evaluation as ev

    assert ev.available_memory() > 0
    apply_fn, init_fn = sinusoid_model((16,))
    learner = maml(apply_fn, init_fn, inner_lr=0.01, inner_steps=1)
    params = learner.init(jax.random.PRNGKey(0))
    key = jax.random.PRNGKey(9)
    expected = ev.evaluate(learner, params, sinusoid(5), key=key, num_tasks=10, batch_size=10)

    # The real figures: a larger batch is reported larger.
    run_small = ev.jax.jit(lambda x: (x @ x.T).sum()).lower(jnp.ones((10, 30))).compile()
    run_large = ev.jax.jit(lambda x: (x @ x.T).sum()).lower(jnp.ones((100, 30))).compile()
    assert ev.compiled_bytes(run_large) > ev.compiled_bytes(run_small) > 0

    ran = []
    monkeypatch.setattr(ev, "available_memory", lambda: 1000)  # budget 500 bytes
    monkeypatch.setattr(ev.jax, "jit", _jit_calling(ran.append, memory=lambda n: 160 * n))
    run = ev.make_evaluator(learner, sinusoid(5), batch_size=10)
    got = run(params, None, key=key, num_tasks=10)
    assert ran == [3, 3, 3, 3]  # 10 tasks need 1,600 bytes: cut to 3 (480 bytes); nothing ran at 10
    np.testing.assert_allclose(got[None]["loss"], expected[None]["loss"], rtol=1e-5)

    # One task over the budget still runs, with a warning that says so.
    ran.clear()
    monkeypatch.setattr(ev.jax, "jit", _jit_calling(ran.append, memory=lambda n: 2**30 * n))
    with pytest.warns(UserWarning, match="one task takes 1.0 GiB"):
        got = ev.make_evaluator(learner, sinusoid(5), batch_size=4)(
            params, None, key=key, num_tasks=2
        )
    assert ran == [1, 1]


def test_evaluator_calls_samplers_without_sample_batch_wise():
    # A sampler with only sample_batch gets fold_in(key, first task) per batch.
    from mamlx import evaluate, mean_ci

    class BatchOnly:
        def sample_batch(self, key, data, n):
            return sinusoid(5).sample_batch(key, data, n)

    apply_fn, init_fn = sinusoid_model((16,))
    learner = maml(apply_fn, init_fn, inner_lr=0.01, inner_steps=1)
    params = learner.init(jax.random.PRNGKey(0))
    key = jax.random.PRNGKey(4)
    got = evaluate(learner, params, BatchOnly(), key=key, num_tasks=5, batch_size=3, steps=[0])
    eps = [sinusoid(5).sample_batch(jax.random.fold_in(key, s), None, 3) for s in (0, 3)]
    pred = jax.vmap(
        lambda ep: mse(
            learner.predict(learner.adapt(params, ep.support_x, ep.support_y, steps=0), ep.query_x),
            ep.query_y,
        )
    )
    values = np.concatenate([np.asarray(pred(eps[0])), np.asarray(pred(eps[1]))[:2]])
    np.testing.assert_allclose(got[0]["loss"], mean_ci(values), rtol=1e-5)

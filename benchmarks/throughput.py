"""Meta-training throughput (tasks/s): mamlx (JAX) against PyTorch peers, one run.

Conv-4 on Omniglot-shaped episodes (28x28x1, 15 queries per class), random
data (throughput does not depend on pixel values). For each setting and
algorithm (second-order MAML, first-order MAML, Reptile) it times one full
meta-training step (all tasks' inner SGD, meta-gradient, Adam update):

* ``jax``: the training step users run, the one :func:`mamlx.fit` compiles:
  :func:`mamlx.train.make_step` (sample the meta-batch on device, ``meta_grad``,
  Adam update) scanned :data:`CHUNK` times in one compiled call by
  :func:`mamlx.train.make_chunk`, as ``fit`` runs its chunks (``--chunk``; ``fit``
  and the CLI default to 200, a longer chunk only spreads the per-call overhead
  thinner); time per step = one chunk's time / its steps. Episodes come from
  :func:`mamlx.tasks.fewshot_sampler` (90-degree rotations as new classes, the
  CLI's Omniglot default) over a random float32 array shaped like Omniglot's
  training split (``(1100, 20, 28, 28, 1)``). Tasks mapped with ``vmap`` or ``map``
  (a ``lax.scan`` taking each task's gradient in turn), convolutions through
  :func:`mamlx.models.conv.conv2d`, in a process whose glibc malloc
  :func:`mamlx.runtime.tune_host_allocator` has tuned (first thing in ``main``);
* ``torch-loop``: a learn2learn-style Python loop over tasks,
  ``autograd.grad(create_graph=True)`` on ``torch.func.functional_call``;
* ``torch-vmap``: ``torch.func.grad`` + ``torch.func.vmap`` over tasks.

The torch peers time their own step on one fixed batch, already on the device:
the JAX rows include sampling the episodes and theirs do not, which can only
handicap JAX.

Each torch peer runs in its own process twice: with glibc's default malloc and
with mamlx's tuned settings (``+tuned-malloc``, which speeds torch up too); the
ratio column compares with the fastest of all. Compile / warm-up time is
reported apart; every implementation gets at least the same untimed warm-up
steps (JAX's in whole chunks); throughput is the median over repeated steps (for
JAX, over timed chunks: at least ``--repeats`` steps, rounded up to whole chunks).
Each row also gives the share of the machine's float32 matrix-product peak it
reaches (work per task from XLA's cost analysis of the meta-gradient and Adam
update on a fixed batch: sampling adds no matrix work), and a ceiling table says
what fraction of that peak a given speed-up over PyTorch would need. Results go to
``benchmarks/results/throughput.{json,md}``.
Runs unchanged on a GPU box (JAX and torch pick the accelerator when present).

Usage::

    python benchmarks/throughput.py            # full run
    python benchmarks/throughput.py --quick    # fewer repeats
    python benchmarks/throughput.py --rounds 3 --repeats 3   # interleaved rounds, for a shared machine
    python benchmarks/throughput.py --jax-variants patches/vmap,xla/vmap,patches/map
    python benchmarks/throughput.py --cpu-devices 2    # adds patches/map@2: `mamlx train --cpu-devices 2`
    python benchmarks/throughput.py --quick --settings omniglot-5w1s --no-torch --out /tmp/tp
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np
import optax
from flax import nnx

import mamlx
from mamlx import sharding
from mamlx.cli import MATMUL_PRECISION_CONFIG, MATMUL_PRECISIONS
from mamlx.models import functional
from mamlx.models.conv import default_impl
from mamlx.models.conv4 import Conv4
from mamlx.tasks import fewshot_sampler
from mamlx.train import init_state, make_chunk, make_step

from common import cpu_name  # noqa: E402


@dataclass(frozen=True)
class Setting:
    """One benchmark configuration (Omniglot-shaped, Finn et al. 2017 settings)."""

    name: str
    ways: int
    shots: int
    queries: int
    meta_batch: int
    inner_steps: int
    inner_lr: float
    image: tuple[int, int, int] = (28, 28, 1)
    filters: int = 64
    classes: int = 1100  # training classes of the data array the JAX step samples from
    rotate: bool = True  # ... each also rotated by 90, 180, 270 degrees (Vinyals split)


SETTINGS = {
    "omniglot-5w1s": Setting("omniglot-5w1s", 5, 1, 15, 32, 1, 0.4),
    "omniglot-20w1s": Setting("omniglot-20w1s", 20, 1, 15, 16, 5, 0.1),
}
ALGOS = ("maml", "fomaml", "reptile")
# Where each peer's meta-gradient is compared with mamlx's (same weights and episodes): odd image
# sides, on which torch's padding=1 and JAX's SAME padding are the same function.
CHECK = Setting("check", 3, 1, 2, 2, 2, 0.1, image=(17, 17, 1), filters=4)
PEER_TOLERANCE = 1e-3  # relative; a peer above it computes something else and is not compared
META_LR = 1e-3
MALLOCS = {"both": ("default", "tuned"), "default": ("default",), "tuned": ("tuned",)}
WARMUP = 3  # untimed steps before timing, for every implementation (JAX's in whole chunks)
CHUNK = 5  # meta-steps per compiled JAX call (mamlx.fit's chunk), --chunk
JAX_TIMES = "fit step (sampling included)"
MATMUL_PRECISION = {"level": "default"}  # --matmul-precision: the JAX rows' products (mamlx.cli)


def make_batch(s: Setting, seed: int = 0):
    """Random episodes as numpy arrays: support/query images (NHWC) and labels."""
    rng = np.random.default_rng(seed)
    t, n, k, q = s.meta_batch, s.ways, s.shots, s.queries
    sx = rng.standard_normal((t, n * k, *s.image), dtype=np.float32)
    qx = rng.standard_normal((t, n * q, *s.image), dtype=np.float32)
    sy = np.tile(np.repeat(np.arange(n), k), (t, 1)).astype(np.int32)
    qy = np.tile(np.repeat(np.arange(n), q), (t, 1)).astype(np.int32)
    return sx, sy, qx, qy


def make_data(s: Setting, seed: int = 0) -> np.ndarray:
    """Random pixels in [0, 1) shaped like Omniglot's training array: ``(classes, 20, H, W, C)``."""
    rng = np.random.default_rng(seed)
    return rng.random((s.classes, 20, *s.image), dtype=np.float32)


# --------------------------------------------------------------------------------------
# JAX: the library's own meta-learners and optax update, one compiled step.
# --------------------------------------------------------------------------------------
def _jax_learner(apply_fn, algo: str, s: Setting, task_map: str, init=lambda key: None):
    """The mamlx meta-learner of ``algo`` at the setting's inner steps and rate; ``init`` is
    its ``init_fn`` (none where the caller passes parameters in)."""
    from mamlx import fomaml, maml, reptile

    tm = "map" if task_map.startswith("map") else "vmap"
    if algo == "reptile":  # meta-gradient p - adapted, outer SGD would be the paper's; Adam here
        return reptile(apply_fn, init, inner_opt=s.inner_lr, inner_steps=s.inner_steps, task_map=tm)
    make = fomaml if algo == "fomaml" else maml
    return make(apply_fn, init, inner_lr=s.inner_lr, inner_steps=s.inner_steps, task_map=tm)


def _jax_meta_step(apply_fn, algo: str, s: Setting, task_map: str):
    """Jitted ``(params, opt_state, batch) -> (params, opt_state, loss)`` on a fixed batch: the
    fit step without sampling, whose cost analysis gives the work per task
    (:func:`step_gflop_per_task`); not timed."""
    from mamlx import Episode

    learner = _jax_learner(apply_fn, algo, s, task_map)
    opt = optax.adam(META_LR)

    @jax.jit
    def step(p, opt_state, batch):
        grads, metrics = learner.meta_grad(p, Episode(*batch))
        updates, opt_state = opt.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, metrics["loss"]

    return step, opt


def _build_jax_step(s: Setting, algo: str, impl: str, task_map: str):
    """The fixed-batch step of :func:`_jax_meta_step` and its inputs ``(params, opt_state,
    batch)``, for the cost analysis."""
    model = Conv4(s.ways, in_shape=s.image, filters=s.filters, conv_impl=impl, rngs=nnx.Rngs(0))
    apply_fn, params = functional(model)
    step, opt = _jax_meta_step(apply_fn, algo, s, task_map)
    return step, (params, opt.init(params), tuple(jax.device_put(a) for a in make_batch(s)))


_DATA: dict = {}  # setting -> its data array on the device, shared by all variants


def _build_fit_chunk(s: Setting, algo: str, impl: str, task_map: str, chunk: int, devices: int = 1):
    """``fit``'s compiled call for one configuration and its inputs ``(state, data)``.

    The learner, optimizer and sampler ``fit`` would get, through ``fit``'s own
    :func:`~mamlx.train.make_step` and :func:`~mamlx.train.make_chunk`; with ``devices``
    > 1 the task batch is split over a mesh of that many devices, as ``mamlx train
    --devices N`` does (:mod:`mamlx.sharding`; on a CPU, ``--cpu-devices``).
    """
    model = Conv4(s.ways, in_shape=s.image, filters=s.filters, conv_impl=impl, rngs=nnx.Rngs(0))
    apply_fn, params = functional(model)
    learner = _jax_learner(apply_fn, algo, s, task_map, init=lambda key: params)
    opt = optax.adam(META_LR)
    sampler = fewshot_sampler(s.ways, s.shots, s.queries, rotate=s.rotate)
    if s not in _DATA:
        _DATA[s] = jax.device_put(make_data(s))
    state, data = init_state(learner, opt, jax.random.PRNGKey(0)), _DATA[s]
    mesh = None
    if devices > 1:
        mesh = sharding.task_mesh(devices)
        state, data = sharding.replicate((state, data), mesh)
    run = make_chunk(make_step(learner, sampler, opt, s.meta_batch, mesh=mesh), chunk)
    return run, state, data


_PREPARED: dict = {}  # (setting, algo, impl, task_map, chunk, devices, precision) -> [compiled, state, data, compile_s]


def bench_jax(
    s: Setting,
    algo: str,
    impl: str,
    task_map: str,
    repeats: int,
    chunk: int = CHUNK,
    devices: int = 1,
) -> dict:
    """Time ``fit``'s compiled chunk of ``chunk`` steps; returns compile time and per-step times.

    ``times_s`` holds one entry per timed chunk: its time / ``chunk``; at least ``repeats``
    steps are timed, in ``ceil(repeats / chunk)`` chunks, after ``ceil(WARMUP / chunk)``
    untimed ones; ``devices`` > 1 splits the task batch over that many devices. The
    chunk is compiled once per process (later rounds reuse it, go on
    training from the state the last round left, and report the first compile time).
    """
    key = (s, algo, impl, task_map, chunk, devices, MATMUL_PRECISION["level"])
    if key not in _PREPARED:
        run, state, data = _build_fit_chunk(s, algo, impl, task_map, chunk, devices)
        t0 = time.perf_counter()
        level = MATMUL_PRECISION_CONFIG[MATMUL_PRECISION["level"]]
        with jax.default_matmul_precision(level):  # the executable keeps it
            compiled = run.lower(state, data).compile()
        _PREPARED[key] = [compiled, state, data, time.perf_counter() - t0]
    compiled, state, data, compile_s = _PREPARED[key]
    for _ in range(math.ceil(WARMUP / chunk)):  # the host allocator settles in a few calls
        state, metrics = jax.block_until_ready(compiled(state, data))
    times = []
    for _ in range(math.ceil(repeats / chunk)):
        t0 = time.perf_counter()
        state, metrics = jax.block_until_ready(compiled(state, data))
        times.append((time.perf_counter() - t0) / chunk)
    _PREPARED[key][1] = state
    loss = float(metrics["loss"][-1])
    return {"compile_s": compile_s, "times_s": times, "loss": loss, "steps_per_call": chunk}


def step_gflop_per_task(s: Setting, algo: str) -> float:
    """Floating-point work of one task's meta-training step, from XLA's cost analysis.

    Counted on the meta-gradient and Adam update of a fixed batch (the timed fit step
    less its sampling, which adds no matrix work), vmapped (a ``lax.scan`` body is
    counted once, not per task); mostly the convolutions' matrix products, identical
    for every implementation of the same algorithm.
    """
    step, args = _build_jax_step(s, algo, "patches", "vmap")
    cost = step.lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"]) / s.meta_batch / 1e9


def gemm_peak_gflops(repeats: int = 10) -> float:
    """Best sustained float32 matrix-product rate of this machine through JAX (GFLOP/s).

    The ceiling for any implementation of these steps: their work is mostly
    matrix products; the rest (patches, batch norm, elementwise) only adds time.
    Measured at JAX's default precision, as the benchmarked steps run (on recent
    GPUs that may use TF32).
    """
    best = 0.0
    for m, k, n in ((2048, 2048, 2048), (4096, 576, 64)):
        a, b = jax.numpy.ones((m, k)), jax.numpy.ones((k, n))
        f = jax.jit(lambda a, b: a @ b)
        jax.block_until_ready(f(a, b))
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(f(a, b))
            best = max(best, 2 * m * k * n / (time.perf_counter() - t0) / 1e9)
    return best


# --------------------------------------------------------------------------------------
# PyTorch peers (benchmark-only dependency).
# --------------------------------------------------------------------------------------
def _torch_model(torch, s: Setting):
    nn = torch.nn

    def block(cin):
        return [
            nn.Conv2d(cin, s.filters, 3, stride=2, padding=1),
            nn.BatchNorm2d(s.filters, track_running_stats=False),  # transductive
            nn.ReLU(),
        ]

    layers = block(s.image[2]) + block(s.filters) + block(s.filters) + block(s.filters)
    # 28 -> 14 -> 7 -> 4 -> 2 with padding=1, the JAX model's sizes and work. On even sides JAX's
    # SAME padding puts the extra row and column at the bottom and right only, so the two models
    # differ at the borders there; on odd sides (CHECK's 17 -> 9 -> 5 -> 3 -> 2) they are the
    # same function, which is where the meta-gradients are compared (peer_gradient_error).
    feat = s.filters * 2 * 2
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(feat, s.ways))


def _sync(torch, device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _torch_peer(s: Setting, algo: str, style: str, device, state=None, batch=None):
    """A PyTorch peer: ``(model, grads_fn)``; ``grads_fn()`` leaves the meta-gradient in the
    parameters' ``.grad`` and returns the mean query loss. ``state``: a state dict to start
    from (default: torch's own initialisation); ``batch``: numpy episodes (default: make_batch)."""
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call, grad, vmap

    torch.manual_seed(0)
    model = _torch_model(torch, s)
    if state is not None:
        model.load_state_dict(state, strict=True)
    model = model.to(device)
    params = dict(model.named_parameters())
    names = list(params)
    sx, sy, qx, qy = (torch.from_numpy(a).to(device) for a in batch or make_batch(s))
    sx, qx = sx.permute(0, 1, 4, 2, 3).contiguous(), qx.permute(0, 1, 4, 2, 3).contiguous()
    sy, qy = sy.long(), qy.long()
    second = algo == "maml"

    def loss_fn(p, x, y):
        return F.cross_entropy(functional_call(model, p, (x,)), y)

    def loop_grads():
        for v in params.values():
            v.grad = None
        t = s.meta_batch
        total = 0.0
        if algo == "reptile":
            acc = {k: torch.zeros_like(v) for k, v in params.items()}
        for i in range(t):
            p = dict(params)
            for _ in range(s.inner_steps):
                loss = loss_fn(p, sx[i], sy[i])
                gs = torch.autograd.grad(loss, list(p.values()), create_graph=second)
                if algo != "maml":
                    gs = [g.detach() for g in gs]
                p = {k: v - s.inner_lr * g for (k, v), g in zip(p.items(), gs, strict=True)}
            if algo == "reptile":
                with torch.no_grad():
                    for k in names:
                        acc[k] += (params[k] - p[k]) / t
                    total += float(loss_fn(p, qx[i], qy[i])) / t
            else:
                qloss = loss_fn(p, qx[i], qy[i]) / t
                qloss.backward()
                total += float(qloss.detach())
        if algo == "reptile":
            for k in names:
                params[k].grad = acc[k]
        return total

    def task_fn(p, x_s, y_s, x_q, y_q):
        for _ in range(s.inner_steps):
            g = grad(loss_fn)(p, x_s, y_s)
            if algo != "maml":
                g = {k: v.detach() for k, v in g.items()}
            p = {k: p[k] - s.inner_lr * g[k] for k in names}
        return p, loss_fn(p, x_q, y_q)

    def vmap_grads():
        p0 = {k: v.detach() for k, v in params.items()}
        if algo == "reptile":
            adapted, losses = vmap(task_fn, in_dims=(None, 0, 0, 0, 0))(p0, sx, sy, qx, qy)
            grads = {k: p0[k] - adapted[k].mean(0) for k in names}
            total = losses.mean()
        else:

            def meta_loss(p):
                losses = vmap(lambda *a: task_fn(p, *a)[1])(sx, sy, qx, qy)
                return losses.mean(), losses.mean()

            grads, total = grad(meta_loss, has_aux=True)(p0)
        for k in names:
            params[k].grad = grads[k]
        return float(total)

    return model, loop_grads if style == "loop" else vmap_grads


def bench_torch(s: Setting, algo: str, style: str, repeats: int) -> dict:
    """Time a PyTorch meta step; ``style``: ``'loop'`` (learn2learn) or ``'vmap'`` (torch.func)."""
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, grads_fn = _torch_peer(s, algo, style, device)
    opt = torch.optim.Adam(model.parameters(), lr=META_LR)

    def fn():
        loss = grads_fn()
        opt.step()
        return loss

    t0 = time.perf_counter()
    fn()  # first call: lazy initialisation, reported as warm-up time
    _sync(torch, device)
    warm_s = time.perf_counter() - t0
    for _ in range(WARMUP - 1):
        fn()
    _sync(torch, device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        loss = fn()  # float() of the loss already syncs; sync again to be explicit
        _sync(torch, device)
        times.append(time.perf_counter() - t0)
    return {"compile_s": warm_s, "times_s": times, "loss": loss}


def _jax_to_torch_state(torch, params, s: Setting) -> dict:
    """mamlx Conv4 parameters as the state dict of :func:`_torch_model` (OIHW, NCHW flatten)."""
    sd = {}
    for i in range(4):
        b = params["blocks"][i]
        sd[f"{3 * i}.weight"] = np.transpose(np.asarray(b["kernel"]), (3, 2, 0, 1))
        sd[f"{3 * i}.bias"] = np.asarray(b["bias"])
        sd[f"{3 * i + 1}.weight"] = np.asarray(b["norm"]["scale"])
        sd[f"{3 * i + 1}.bias"] = np.asarray(b["norm"]["bias"])
    head = np.asarray(params["head"]["kernel"]).reshape(2, 2, s.filters, s.ways)
    sd["13.weight"] = head.transpose(3, 2, 0, 1).reshape(s.ways, -1)  # (h, w, c) -> (c, h, w)
    sd["13.bias"] = np.asarray(params["head"]["bias"])
    return {k: torch.from_numpy(np.array(v, copy=True)) for k, v in sd.items()}


def _torch_grads_as_jax(model, s: Setting) -> dict:
    """The ``.grad`` of a :func:`_torch_model` in mamlx's Conv4 layout (inverse of the above)."""
    g = {k: v.grad.detach().cpu().numpy() for k, v in model.named_parameters()}
    blocks = {
        i: {
            "bias": g[f"{3 * i}.bias"],
            "kernel": g[f"{3 * i}.weight"].transpose(2, 3, 1, 0),
            "norm": {"bias": g[f"{3 * i + 1}.bias"], "scale": g[f"{3 * i + 1}.weight"]},
        }
        for i in range(4)
    }
    head = g["13.weight"].reshape(s.ways, s.filters, 2, 2).transpose(2, 3, 1, 0)
    return {"blocks": blocks, "head": {"bias": g["13.bias"], "kernel": head.reshape(-1, s.ways)}}


def peer_gradient_error(
    algo: str, style: str, s: Setting = CHECK, mamlx_algo: str | None = None
) -> float:
    """How far a PyTorch peer's meta-gradient is from mamlx's, from the same weights and episodes.

    The largest absolute difference over all parameters, relative to the largest gradient
    entry. About 1e-6 when both compute the same function in float32. torch.func's ``vmap``
    over second-order MAML with batch norm was measured at about 1e-2 (torch 2.13, CPU; its
    conv-bias gradients, which batch norm makes zero, came out near 3e-3): such a peer is
    listed but left out of the ratios. ``mamlx_algo`` (default ``algo``) sets the mamlx side
    apart, as a negative control of the check itself.
    """
    import torch

    from mamlx import Episode

    model = Conv4(s.ways, in_shape=s.image, filters=s.filters, rngs=nnx.Rngs(0))
    apply_fn, params = functional(model)
    batch = make_batch(s, seed=1)
    learner = _jax_learner(apply_fn, mamlx_algo or algo, s, "vmap")
    want, _ = jax.jit(learner.meta_grad)(params, Episode(*(jax.numpy.asarray(a) for a in batch)))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    state = _jax_to_torch_state(torch, params, s)
    peer, grads_fn = _torch_peer(s, algo, style, device, state=state, batch=batch)
    grads_fn()
    got = _torch_grads_as_jax(peer, s)
    want, got = jax.tree.leaves(jax.tree.map(np.asarray, want)), jax.tree.leaves(got)
    diff = max(float(np.abs(g - w).max()) for g, w in zip(got, want, strict=True))
    return diff / max(float(np.abs(w).max()) for w in want)


def torch_in_subprocess(setting: str, algo: str, style: str, repeats: int, malloc: str) -> dict:
    """Run :func:`bench_torch` in a fresh process, with glibc's default or mamlx's tuned malloc.

    The peers get their own process so that mamlx's allocator tuning (made by
    this script's main process) neither helps nor hurts them unasked; both
    settings are timed and the table compares against the faster one.
    """
    cmd = ["--torch-worker", f"{setting},{algo},{style}", "--repeats", str(repeats)]
    return _worker(cmd, malloc)


def _worker(args: list[str], malloc: str = "default") -> dict:
    """Run this script with ``args`` in a fresh process; its last stdout line as JSON."""
    # The worker does not call tune_host_allocator (see main): glibc's defaults unless `tuned`.
    env = {k: v for k, v in os.environ.items() if k not in mamlx.runtime.MALLOC_ENV}
    env["JAX_PLATFORMS"] = "cpu"  # the worker's JAX must not open the GPU (torch times there)
    if malloc == "tuned":
        env.update(mamlx.runtime.MALLOC_ENV)
    cmd = [sys.executable, __file__, *args]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def default_variants() -> str:
    """The default convolution for per-task kernels, vectorized and (on CPU) looped over
    tasks, and on a CPU split into several devices (``--cpu-devices``) also looped over the
    tasks of each; elsewhere also XLA's own (cuDNN's grouped convolution) for comparison."""
    impl = default_impl(batched_kernels=True)
    if jax.default_backend() == "cpu":
        n = jax.device_count()
        return f"{impl}/vmap,{impl}/map" + (f",{impl}/map@{n}" if n > 1 else "")
    return f"{impl}/vmap" + (",xla/vmap" if impl != "xla" else "")


def parse_variant(text: str) -> tuple[str, str, int]:
    """``"patches/map@2"`` -> ``("patches", "map", 2)`` (no ``@``: one device)."""
    body, at, devices = text.partition("@")
    parts = body.split("/")
    if len(parts) != 2 or not all(parts) or (at and not devices.isdigit()):
        raise ValueError(f"a JAX variant is conv_impl/task_map[@devices], got {text!r}")
    n = int(devices) if devices else 1
    if n < 1:
        raise ValueError(f"a JAX variant needs at least 1 device, got {text!r}")
    return parts[0], parts[1], n


# --------------------------------------------------------------------------------------
def machine_info() -> dict:
    """CPU model, cores, accelerator and library versions."""
    cpu = cpu_name()
    info = {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "jax_matmul_precision": MATMUL_PRECISION["level"],
        "python": platform.python_version(),
        "mamlx_host_allocator": mamlx.runtime.host_allocator_status() or "untuned",
        # Other processes on the machine skew timings (torch's OpenMP pool most).
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["torch_device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except ImportError:
        info["torch"] = None
    return info


def _exact(row: dict) -> bool:
    """A torch row counts for the ratios unless its meta-gradient check failed."""
    err = row.get("meta_grad_error")
    return err is None or err <= PEER_TOLERANCE


def _check_cell(row: dict) -> str:
    err = row.get("meta_grad_error")
    if err is None:
        return "-"
    return f"{err:.0e}" if err <= PEER_TOLERANCE else f"**{err:.0e}, excluded**"


def _percent(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def main(argv=None) -> dict:
    worker = {"--torch-worker", "--torch-check"} & set(sys.argv[1:] if argv is None else argv)
    if not worker:  # mamlx's steps run tuned, from before JAX's first computation (the parser's)
        mamlx.runtime.tune_host_allocator()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 repeats instead of 10")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--algos", default=",".join(ALGOS))
    ap.add_argument(
        "--jax-variants",
        default=None,
        help="comma list of conv_impl/task_map[@devices], e.g. patches/vmap,xla/vmap,"
        "patches/map,patches/map@2 (@N: the task batch split over N devices, as `mamlx train "
        "--devices N`; on a CPU give --cpu-devices) (default: the backend's default conv, and on "
        "CPU both task maps)",
    )
    ap.add_argument(
        "--cpu-devices",
        type=int,
        default=None,
        help="split the CPU into this many JAX devices (jax_num_cpu_devices, as `mamlx train "
        "--cpu-devices`), for variants with @N; the other variants run on the first",
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every implementation this many times, interleaved, and pool the timed steps "
        "(drift of a shared machine then hits all implementations alike)",
    )
    ap.add_argument(
        "--chunk",
        type=int,
        default=CHUNK,
        help=f"meta-steps per compiled JAX call, as mamlx.fit's chunk (default {CHUNK}; "
        "fit's own default is 200): the JAX rows time whole chunks",
    )
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument(
        "--matmul-precision",
        choices=MATMUL_PRECISIONS,
        default="default",
        help="precision of the JAX rows' float32 matrix products, as `mamlx train "
        "--matmul-precision` (default: JAX's; the peers and their check keep theirs)",
    )
    ap.add_argument(
        "--ceiling",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="measure the matrix-product peak and each step's work (XLA cost analysis) for the "
        "ceiling table (default: on CPU only; on a GPU it costs minutes of compilation and the "
        "steps are far from any GEMM peak)",
    )
    ap.add_argument(
        "--torch-malloc",
        choices=tuple(MALLOCS),
        default="both",
        help="glibc malloc settings the torch peers run under (default: both, each its own row; "
        "on a GPU the host allocator hardly matters)",
    )
    ap.add_argument(
        "--peer-check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="first compare every torch peer's meta-gradient with mamlx's on a small setting "
        f"(same weights and episodes); peers off by more than {PEER_TOLERANCE:g} (relative) are "
        "listed but left out of the ratios",
    )
    ap.add_argument(
        "--peer-errors",
        default=None,
        help="JSON file of the check's results: read if it exists (the check does not depend on "
        "the setting), else written; lets several runs on one machine share one check",
    )
    ap.add_argument("--torch-worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--torch-check", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "throughput"))
    args = ap.parse_args(argv)
    if args.cpu_devices is not None:  # before JAX's first computation starts the CPU backend
        try:
            sharding.split_cpu(args.cpu_devices)
        except ValueError as e:
            ap.error(str(e))
    repeats = args.repeats or (3 if args.quick else 10)
    MATMUL_PRECISION["level"] = args.matmul_precision
    if args.matmul_precision == "bfloat16" and jax.default_backend() == "cpu":
        ap.error("--matmul-precision bfloat16 needs a GPU: XLA's CPU backend cannot compile it")
    if args.chunk < 1:
        ap.error(f"--chunk must be at least 1, got {args.chunk}")
    if args.torch_worker:  # child process of torch_in_subprocess: one timing as JSON
        sname, algo, style = args.torch_worker.split(",")
        print(json.dumps(bench_torch(SETTINGS[sname], algo, style, repeats)))
        return {}
    if args.torch_check:  # child process: the peers' meta-gradient errors as JSON
        pairs = [(a, st) for a in args.torch_check.split(",") for st in ("loop", "vmap")]
        print(json.dumps({f"{a},torch-{st}": peer_gradient_error(a, st) for a, st in pairs}))
        return {}
    try:
        variants = [parse_variant(v) for v in (args.jax_variants or default_variants()).split(",")]
    except ValueError as e:
        ap.error(str(e))
    for v in variants:
        if v[2] > jax.device_count():
            ap.error(
                f"variant {v[0]}/{v[1]}@{v[2]} needs {v[2]} devices, {jax.device_count()} "
                "available (on a CPU: --cpu-devices)"
            )
    rows = []
    load_start = machine_info()["load_avg_1m"]
    ceiling = jax.default_backend() == "cpu" if args.ceiling is None else args.ceiling
    peak = gemm_peak_gflops() if ceiling else None
    if peak:
        print(f"float32 matrix-product peak through JAX: {peak:.0f} GFLOP/s", flush=True)
    work = {}  # (setting, algo) -> GFLOP per task
    peer_error = {}  # (algo, "torch-loop"/"torch-vmap") -> meta-gradient error vs mamlx
    if not args.no_torch and args.peer_check:
        saved = Path(args.peer_errors) if args.peer_errors else None
        if saved is not None and saved.is_file():
            errors = json.loads(saved.read_text())
        else:  # one worker process: the peers run on the device they are timed on
            errors = _worker(["--torch-check", args.algos])
            if saved is not None:
                saved.write_text(json.dumps(errors, indent=1))
        for key, err in errors.items():
            algo, peer = key.split(",")
            peer_error[algo, peer] = err
            verdict = "same" if err <= PEER_TOLERANCE else "DIFFERENT: left out of the ratios"
            print(f"meta-gradient check {algo} {peer}: {err:.1e} ({verdict})", flush=True)

    def record(setting, algo, impl, r):
        med = statistics.median(r["times_s"])
        gflop = work.get((setting.name, algo))
        row = {
            "setting": setting.name,
            "algo": algo,
            "impl": impl,
            "tasks_per_s": setting.meta_batch / med,
            "gflop_per_task": gflop,
            "fraction_of_gemm_peak": setting.meta_batch / med * gflop / peak if peak else None,
            "median_step_s": med,
            "min_step_s": min(r["times_s"]),
            "compile_or_warmup_s": r["compile_s"],
            "repeats": len(r["times_s"]),
            "steps_per_call": r.get("steps_per_call", 1),  # JAX: the chunk; torch: one step
            "round_medians_s": r["round_medians_s"],
            "loss": r["loss"],
            "meta_grad_error": peer_error.get((algo, impl.split("+")[0])),
        }
        rows.append(row)
        print(
            f"{setting.name:15s} {algo:8s} {impl:26s} {row['tasks_per_s']:8.1f} tasks/s"
            f"  (median {med * 1e3:7.1f} ms, compile/warm-up {r['compile_s']:.1f} s)",
            flush=True,
        )

    pooled: dict = {}  # (setting, algo, impl) -> timings pooled over rounds

    def pool(setting, algo, impl, r):
        p = pooled.setdefault(
            (setting.name, algo, impl), {**r, "times_s": [], "round_medians_s": []}
        )
        p["times_s"] += r["times_s"]
        p["round_medians_s"].append(statistics.median(r["times_s"]))
        p["loss"] = r["loss"]
        print(  # progress, so that a run cut off by a time limit still shows what it measured
            f"  round {len(p['round_medians_s'])}: {setting.name} {algo} {impl} "
            f"{setting.meta_batch / p['round_medians_s'][-1]:.1f} tasks/s "
            f"(compile/warm-up {r['compile_s']:.1f} s, {time.strftime('%H:%M:%S')})",
            flush=True,
        )

    for _ in range(args.rounds):
        for sname in args.settings.split(","):
            s = SETTINGS[sname]
            for algo in args.algos.split(","):
                if ceiling and (sname, algo) not in work:
                    work[sname, algo] = step_gflop_per_task(s, algo)
                for impl, task_map, devices in variants:
                    r = bench_jax(s, algo, impl, task_map, repeats, args.chunk, devices)
                    at = f"@{devices}" if devices > 1 else ""
                    pool(s, algo, f"jax[{impl}/{task_map}{at}]", r)
                if not args.no_torch:
                    for style in ("loop", "vmap"):
                        for malloc in MALLOCS[args.torch_malloc]:
                            r = torch_in_subprocess(sname, algo, style, repeats, malloc)
                            suffix = "" if malloc == "default" else "+tuned-malloc"
                            pool(s, algo, f"torch-{style}{suffix}", r)
    for (sname, algo, impl), r in pooled.items():
        record(SETTINGS[sname], algo, impl, r)

    # Ratio table: each JAX variant against the fastest torch peer.
    table, bounds = [], []
    for sname in args.settings.split(","):
        for algo in args.algos.split(","):
            sel = [r for r in rows if r["setting"] == sname and r["algo"] == algo]
            torch_best = max(
                (r["tasks_per_s"] for r in sel if r["impl"].startswith("torch") and _exact(r)),
                default=None,
            )
            for r in sel:
                ratio = r["tasks_per_s"] / torch_best if torch_best else None
                table.append({**r, "vs_best_torch": ratio})
            if not ceiling:
                continue
            gflop = work[sname, algo]
            torch_share = torch_best * gflop / peak if torch_best else None
            bounds.append(
                {
                    "setting": sname,
                    "algo": algo,
                    "gflop_per_task": gflop,
                    "tasks_per_s_at_gemm_peak": peak / gflop,
                    "best_torch_fraction_of_peak": torch_share,
                    "fraction_of_peak_for_1_5x_torch": torch_share and 1.5 * torch_share,
                }
            )
    command = "python benchmarks/throughput.py " + " ".join(sys.argv[1:] if argv is None else argv)
    result = {
        "command": command.strip(),
        "machine": {**machine_info(), "load_avg_1m_at_start": load_start},
        "settings": {k: asdict(v) for k, v in SETTINGS.items()},
        "meta_lr": META_LR,
        "jax_times": JAX_TIMES,
        "jax_chunk": args.chunk,
        "repeats": repeats,
        "rounds": args.rounds,
        "gemm_peak_gflops": peak,
        "peer_check": {"setting": asdict(CHECK), "tolerance": PEER_TOLERANCE},
        "rows": table,
        "bounds": bounds,
    }
    md = [
        "# Meta-training throughput (tasks/s, median step; higher is better)",
        "",
        f"Command: `{result['command']}`",
        "",
        "Machine: " + ", ".join(f"{k}={v}" for k, v in result["machine"].items()),
        "",
        f"{args.rounds} interleaved round(s) of {repeats} timed steps per implementation (JAX: "
        f"{math.ceil(repeats / args.chunk)} chunk(s) of {args.chunk}); tasks/s from the median "
        "of all of them, and the range of the per-round medians.",
        "",
        f"JAX rows time the {JAX_TIMES}: mamlx.fit's compiled step (episodes sampled on device "
        f"from an Omniglot-shaped array, meta-gradient, Adam), {args.chunk} per call in a "
        "lax.scan as fit runs it; the torch peers time their own step on one fixed batch, "
        "without sampling.",
        "",
        "Meta-gradient check: each torch peer's meta-gradient against mamlx's from the same "
        f"weights and episodes ({CHECK.ways}-way {CHECK.shots}-shot, {CHECK.image[0]}x"
        f"{CHECK.image[1]} images, {CHECK.filters} filters, {CHECK.inner_steps} inner steps), "
        f"largest relative difference; a peer above {PEER_TOLERANCE:g} computes something else "
        "and is left out of 'vs best torch'."
        if peer_error
        else "Meta-gradient check: not run.",
        "",
        "| setting | algo | implementation | tasks/s | rounds | vs best torch | % of GEMM peak "
        "| median step ms | compile/warm-up s | meta-grad vs mamlx |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in table:
        ratio = f"{r['vs_best_torch']:.2f}x" if r["vs_best_torch"] else "-"
        per_round = [SETTINGS[r["setting"]].meta_batch / m for m in r["round_medians_s"]]
        spread = f"{min(per_round):.1f}–{max(per_round):.1f}" if len(per_round) > 1 else "-"
        md.append(
            f"| {r['setting']} | {r['algo']} | {r['impl']} | {r['tasks_per_s']:.1f} | {spread} "
            f"| {ratio} | {_percent(r['fraction_of_gemm_peak'])} "
            f"| {r['median_step_s'] * 1e3:.0f} | {r['compile_or_warmup_s']:.1f} "
            f"| {_check_cell(r)} |"
        )
    md += (
        []
        if not ceiling
        else [
            "",
            f"## Ceiling: float32 matrix-product peak {peak:.0f} GFLOP/s "
            "(measured through JAX, default precision)",
            "",
            "Work per task from XLA's cost analysis of the meta-gradient and Adam update "
            "(sampling adds no matrix work); at the peak rate a step "
            "could not run faster than work / peak, whatever the implementation.",
            "",
            "| setting | algo | GFLOP/task | tasks/s at peak | best torch, % of peak "
            "| 1.5x best torch needs |",
            "|---|---|---:|---:|---:|---:|",
        ]
    )
    for b in bounds:
        tb, need = b["best_torch_fraction_of_peak"], b["fraction_of_peak_for_1_5x_torch"]
        md.append(
            f"| {b['setting']} | {b['algo']} | {b['gflop_per_task']:.2f} "
            f"| {b['tasks_per_s_at_gemm_peak']:.0f} "
            f"| {_percent(tb)} "
            f"| {'-' if need is None else f'{100 * need:.0f}% of peak'} |"
        )
    print("\n".join(md[6:]))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    return result


if __name__ == "__main__":
    main()

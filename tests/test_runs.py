"""Using a trained run (issue 19): load_run, image files preprocessed as the training arrays,
`mamlx predict` and `mamlx embed`, and their one-line errors."""

from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from mamlx import checkpoint, load_run, registry
from mamlx.cli import main
from mamlx.config import FewShotConfig, MiniImageNetConfig, outer_optimizer
from mamlx.experiments import build_learner
from mamlx.runs import Run, _embedding, classify, embed, read_images
from mamlx.tasks import load_omniglot
from mamlx.train import init_state

from conftest import data_dir

SMALL = "images_background_small1.zip"  # the official archive's raw 105x105 1-bit PNGs
TRAIN = ["--meta-batch", "1", "--val-every", "2", "--val-tasks", "4", "--eval-tasks", "4"]
TRAIN += ["--no-progress", "--no-compile-cache"]


def train(out: Path, *flags: str) -> Path:
    argv = ["train", "omniglot", *flags, *TRAIN, "--data-dir", str(data_dir("omniglot"))]
    assert main([*argv, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def proto(tmp_path_factory) -> Path:
    flags = ["--algo", "protonet", "--filters", "8", "--ways", "5", "--steps", "4"]
    return train(tmp_path_factory.mktemp("runs") / "proto", *flags)


@pytest.fixture(scope="module")
def drawings() -> dict[int, dict[int, bytes]]:
    """PNG bytes of the first 6 characters of the small official archive: {id: {drawer: png}}."""
    found: dict[int, dict[int, bytes]] = {}
    with zipfile.ZipFile(data_dir("omniglot") / SMALL) as zf:
        for name in zf.namelist():
            m = re.search(r"/(\d{4})_(\d{2})\.png$", name)
            if m:
                found.setdefault(int(m[1]), {})[int(m[2])] = zf.read(name)
    return {c: found[c] for c in sorted(found)[:6]}


@pytest.fixture(scope="module")
def training_images() -> np.ndarray:
    """What the Omniglot data set holds: (1623, 20, 28, 28, 1), row = character id - 1."""
    root = data_dir("omniglot")
    return load_omniglot("npz", root, cache_dir=os.environ["MAMLX_CACHE"]).images


def write(folder: Path, drawings: dict, chars: list[int], drawers, classes: bool = True) -> list:
    """The drawers' official PNGs of each character, in a sub-folder ``char<id>`` per
    character (``classes``) or loose in ``folder``; ``[(path, class, id, drawer)]`` in the
    order of the folder listing (loose files, then the sub-folders, each sorted)."""
    out = []
    for cid in chars:
        where = folder / f"char{cid}" if classes else folder
        where.mkdir(parents=True, exist_ok=True)
        for d in drawers:
            path = where / f"{cid:04d}_{d:02d}.png"
            path.write_bytes(drawings[cid][d])
            out.append((path, f"char{cid}" if classes else None, cid, d))
    return sorted(out, key=lambda r: (r[1] is not None, str(r[0])))


def arrays(rows: list, training_images: np.ndarray) -> np.ndarray:
    return np.stack([training_images[cid - 1, d - 1] for _, _, cid, d in rows])


def predicted(out: str) -> list[tuple[str, str]]:
    return [tuple(line.split("\t")) for line in out.splitlines()]


def one_line_error(capsys, *words: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith("mamlx: error: ") and err.count("\n") == 1, err
    for w in words:
        assert w in err, err
    return err


def test_load_run_reads_best_checkpoint_without_data(proto):
    run = load_run(proto)
    assert run.config.algo == "protonet" and run.checkpoint == proto / "best.npz"
    template = init_state(run.learner, outer_optimizer(run.config), jax.random.PRNGKey(1))
    best, meta = checkpoint.load(proto / "best.npz", template)
    assert run.step == meta["step"] == int(best.step)
    for a, b in zip(jax.tree.leaves(run.params), jax.tree.leaves(best.params), strict=True):
        np.testing.assert_array_equal(a, b)
    latest = load_run(proto, best=False)
    assert latest.checkpoint == checkpoint.latest_checkpoint(proto) and latest.step == 4


def test_image_files_are_preprocessed_as_the_training_arrays(
    proto, drawings, training_images, tmp_path
):
    config = load_run(proto).config
    rows = write(tmp_path, drawings, list(drawings)[:3], range(1, 4))
    x = read_images(config, [p for p, *_ in rows])
    assert x.shape == (9, 28, 28, 1) and x.dtype == np.float32
    np.testing.assert_allclose(x, arrays(rows, training_images), atol=1e-6)
    # An RGB copy, and light strokes on a dark page, give the same inputs.
    with Image.open(rows[0][0]) as im:
        page = im.convert("L")
    page.convert("RGB").save(tmp_path / "rgb.png")
    Image.eval(page, lambda v: 255 - v).save(tmp_path / "inverted.png")
    again = read_images(config, [tmp_path / "rgb.png", tmp_path / "inverted.png"])
    np.testing.assert_allclose(again, np.stack([x[0], x[0]]), atol=1e-6)


def test_miniimagenet_files_are_read_as_its_loader_reads_them(tmp_path):
    from mamlx.tasks.miniimagenet import _load_image

    rgb = np.random.default_rng(0).integers(0, 256, (100, 100, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png")
    x = read_images(MiniImageNetConfig(), [tmp_path / "a.png", tmp_path / "gray.png"])
    assert x.shape == (2, 84, 84, 3) and x.dtype == np.uint8
    np.testing.assert_array_equal(x[0], _load_image(tmp_path / "a.png", 84))
    np.testing.assert_array_equal(x[1], _load_image(tmp_path / "gray.png", 84))


def test_predict_and_embed_with_a_metric_learner(
    proto, drawings, training_images, tmp_path, capsys
):
    chars = list(drawings)[:5]
    support = write(tmp_path / "support", drawings, chars, range(1, 3))
    # Loose query files are labelled; those in class folders are scored too.
    query = write(tmp_path / "query", drawings, chars, [3], classes=False)
    query += write(tmp_path / "query", drawings, chars, range(4, 6))
    capsys.readouterr()
    argv = ["predict", str(proto), "--support", str(tmp_path / "support")]
    assert main([*argv, "--query", str(tmp_path / "query")]) == 0
    captured = capsys.readouterr()
    lines = predicted(captured.out)
    assert [Path(p) for p, _ in lines] == [p for p, *_ in query]
    # The direct computation on the arrays the data set holds for these drawings.
    run = load_run(proto)
    names = [f"char{c}" for c in chars]
    sy = jnp.array([names.index(name) for _, name, _, _ in support])

    def logits(params, sx, sy, qx):
        return run.learner.predict(run.learner.adapt(params, sx, sy), qx)

    sx, qx = arrays(support, training_images), arrays(query, training_images)
    direct = np.asarray(jax.jit(logits)(run.params, sx, sy, qx))
    assert [name for _, name in lines] == [names[i] for i in direct.argmax(-1)]
    right = [a[1] == b[1] for a, b in zip(lines, query, strict=True) if b[1] is not None]
    assert f"accuracy {100 * np.mean(right):.2f}% on 10 images" in captured.err
    # Embeddings: (N, D) in the printed file order, the embedding of the training arrays.
    out = tmp_path / "emb.npy"
    assert main(["embed", str(proto), "--images", str(tmp_path / "query"), "--out", str(out)]) == 0
    emb = np.load(out)
    assert emb.shape == (15, 8)
    assert [Path(p) for p in capsys.readouterr().out.splitlines()] == [p for p, *_ in query]
    np.testing.assert_allclose(emb, embed(run, qx), rtol=1e-4, atol=1e-4)


def test_predict_and_embed_use_the_runs_matmul_precision(
    proto, drawings, tmp_path, monkeypatch, capsys, restore_matmul_precision
):
    """The precision the run trained with (run.json), unless --matmul-precision is given; a
    bfloat16 run on a CPU (which cannot compile bfloat16 products) runs at the default."""
    import shutil

    import mamlx.cli as cli

    used = []
    real = cli.set_matmul_precision
    monkeypatch.setattr(cli, "set_matmul_precision", lambda lv: (used.append(lv), real(lv)))
    run = tmp_path / "run"
    shutil.copytree(proto, run)

    def saved(level: str) -> None:
        meta = json.loads((run / "run.json").read_text())
        (run / "run.json").write_text(json.dumps({**meta, "matmul_precision": level}))

    chars = list(drawings)[:2]
    write(tmp_path / "s", drawings, chars, [1])
    write(tmp_path / "q", drawings, chars, [2])
    predict = ["predict", str(run), "--support", str(tmp_path / "s")]
    predict += ["--query", str(tmp_path / "q")]
    embed = ["embed", str(run), "--images", str(tmp_path / "q"), "--out", str(tmp_path / "e.npy")]
    saved("float32")
    assert main(predict) == 0 and main(embed) == 0
    assert used == ["float32", "float32"]
    assert jax.config.jax_default_matmul_precision == "float32"
    assert main([*predict, "--matmul-precision", "default"]) == 0
    assert main([*embed, "--matmul-precision", "tensorfloat32"]) == 0
    assert used[2:] == ["default", "tensorfloat32"]
    saved("bfloat16")
    capsys.readouterr()
    assert main(embed) == 0
    assert used[-1] == "default"
    assert "trained with bfloat16 products, a CPU runs it at float32" in capsys.readouterr().err


def test_bad_folders_and_files_are_one_line_errors(proto, drawings, tmp_path, capsys):
    chars = list(drawings)[:3]
    rows = write(tmp_path / "support", drawings, chars, range(1, 2))
    query = tmp_path / "query"
    query.mkdir()
    (query / "q.png").write_bytes(drawings[chars[0]][5])
    run = str(proto)

    def predict(support: Path, *extra: str) -> int:
        return main(["predict", run, "--support", str(support), "--query", str(query), *extra])

    def broken(name: str, make) -> Path:
        folder = tmp_path / name
        write(folder, drawings, chars, range(1, 2))
        make(folder / f"char{chars[0]}" / "bad.png")
        return folder

    capsys.readouterr()
    text = broken("text", lambda p: p.write_text("not an image"))
    assert predict(text) == 2
    one_line_error(capsys, "bad.png", "not an image file")
    wide = broken("wide", lambda p: Image.new("L", (105, 90), 255).save(p))
    assert predict(wide) == 2
    one_line_error(capsys, "bad.png", "105x90", "square")
    small = broken("small", lambda p: Image.new("L", (20, 20), 255).save(p))
    assert predict(small) == 2
    one_line_error(capsys, "bad.png", "20x20", "at least 28x28")
    deep = np.full((105, 105), 40000, np.uint16)  # 16-bit gray: not converted
    sixteen = broken("sixteen", lambda p: Image.fromarray(deep).save(p))
    assert predict(sixteen) == 2
    one_line_error(capsys, "bad.png", "mode", "8-bit gray or RGB")
    empty = tmp_path / "empty"
    write(empty, drawings, chars, range(1, 2))
    (empty / "nothing").mkdir()
    assert predict(empty) == 2
    one_line_error(capsys, str(empty / "nothing"), "no image files")
    single = tmp_path / "single"
    write(single, drawings, chars[:1], range(1, 3))
    assert predict(single) == 2
    one_line_error(capsys, "1 class folder", "at least 2 classes")
    assert predict(tmp_path / "support", "--steps", "3") == 2
    one_line_error(capsys, "protonet adapts without gradient steps")
    (query / "char9999").mkdir()
    (query / "char9999" / "x.png").write_bytes(rows[0][0].read_bytes())
    assert predict(tmp_path / "support") == 2
    one_line_error(capsys, "char9999", "not a class of")


def test_predict_with_a_classifier_head(drawings, training_images, tmp_path, capsys):
    # A first-order MAML run as `mamlx train` leaves it (config.json and a checkpoint; no
    # best.npz: load_run takes the latest), written here: meta-training it would only add
    # compile time, predict does not care how good the weights are.
    config = FewShotConfig(algo="fomaml", filters=4, ways=5, steps=2)
    maml = tmp_path / "fomaml"
    maml.mkdir()
    (maml / "config.json").write_text(json.dumps(config.to_dict()))
    state = init_state(build_learner(config), outer_optimizer(config), jax.random.PRNGKey(3))
    checkpoint.save_step(maml, 0, state)
    run = load_run(maml)
    assert run.checkpoint == checkpoint.latest_checkpoint(maml) and run.config == config
    chars = list(drawings)
    # Fewer classes than the head's 5 outputs: the arg-max is over the first 3.
    support = write(tmp_path / "s3", drawings, chars[:3], [1])
    query = write(tmp_path / "q3", drawings, chars[:3], [2, 3])
    argv = ["predict", str(maml), "--support", str(tmp_path / "s3")]
    capsys.readouterr()
    assert main([*argv, "--query", str(tmp_path / "q3")]) == 0
    lines = predicted(capsys.readouterr().out)
    sx, qx = arrays(support, training_images), arrays(query, training_images)
    expected = classify(run, sx, np.arange(3), qx)  # argmax(predict(adapt(...))[:, :3])
    assert [name for _, name in lines] == [f"char{chars[i]}" for i in expected]
    argv = ["predict", str(maml), "--support", str(tmp_path / "s6")]
    write(tmp_path / "s6", drawings, chars, [1])
    assert main([*argv, "--query", str(tmp_path / "q3")]) == 2
    one_line_error(capsys, "6 support classes", "5 outputs")
    out = tmp_path / "emb.npy"
    assert main(["embed", str(maml), "--images", str(tmp_path / "q3"), "--out", str(out)]) == 2
    one_line_error(capsys, "metric learners", "fomaml")
    assert not out.exists()


METRIC = [n for n in registry.learner_names() if registry.get_learner(n).network == "embedding"]


@pytest.mark.parametrize("algo", METRIC)
def test_embed_finds_each_metric_learners_embedding(algo):
    # Shapes only (nothing compiled): the sub-tree of the parameters the embedding uses.
    config = FewShotConfig(algo=algo, filters=8)
    learner = build_learner(config)
    params = jax.eval_shape(learner.init, jax.random.PRNGKey(0))
    embed_fn, found = _embedding(Run(config, learner, params, 0, Path("unsaved")))
    assert found is (params if algo == "protonet" else params["embed"])
    out = jax.eval_shape(embed_fn, found, jax.ShapeDtypeStruct((3, 28, 28, 1), jnp.float32))
    assert out.shape == ((3, 7, 7, 8) if algo == "relation" else (3, 8))

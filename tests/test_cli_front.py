"""The front door (issue 19): a metric learner from the command line, inspecting a run,
extending it, Ctrl-C, a corrupt latest checkpoint, and the tables of `mamlx list`."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from mamlx import checkpoint, registry
from mamlx.cli import main
from mamlx.presets import PRESETS

SINE = ["train", "sinusoid", "--meta-batch", "4", "--no-progress", "--no-compile-cache"]


def log(run) -> list[dict]:
    return [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]


def test_protonet_trains_evaluates_and_shows_from_the_command_line(tmp_path, omniglot_dir, capsys):
    run = tmp_path / "proto"
    flags = ["--algo", "protonet", "--filters", "8", "--ways", "10", "--eval-ways", "5"]
    flags += ["--steps", "6", "--meta-batch", "1", "--val-every", "3", "--val-tasks", "8"]
    flags += ["--eval-tasks", "20", "--data-dir", str(omniglot_dir), "--out", str(run)]
    assert main(["train", "omniglot", *flags, "--no-progress", "--no-compile-cache"]) == 0
    assert json.loads((run / "config.json").read_text())["algo"] == "protonet"
    assert main(["eval", str(run)]) == 0
    ev = json.loads((run / "eval.json").read_text())
    assert ev["ways"] == 5 and len(ev["per_task_accuracy"]) == 20
    assert np.isclose(np.mean(ev["per_task_accuracy"]), ev["accuracy"][0], atol=1e-6)
    capsys.readouterr()
    assert main(["show", str(run)]) == 0
    out = capsys.readouterr().out
    assert "omniglot --algo protonet" in out and "step 6 of 6 (finished)" in out
    assert "best.npz" in out and "validation accuracy: best" in out
    assert (run / "curves.png").stat().st_size > 1000


def test_resume_may_train_on_to_more_steps(tmp_path, capsys):
    run = tmp_path / "sine"
    assert main([*SINE, "--steps", "4", "--chunk", "2", "--out", str(run)]) == 0
    assert main(["train", "--resume", str(run), "--steps", "8", "--no-progress"]) == 0
    assert [r["step"] for r in log(run)] == [2, 4, 6, 8]
    assert json.loads((run / "config.json").read_text())["steps"] == 8
    assert "steps 4 -> 8" in capsys.readouterr().out
    # A run whose learning rate decays to 0 at its last step cannot be extended.
    lin = tmp_path / "linear"
    omniglot = registry.get_dataset("omniglot").config
    cfg = omniglot(algo="protonet", meta_lr_schedule="linear", steps=4).to_dict()
    lin.mkdir()
    (lin / "config.json").write_text(json.dumps(cfg))
    assert main(["train", "--resume", str(lin), "--steps", "9"]) == 2
    assert "decays its meta learning rate linearly" in capsys.readouterr().err


def test_a_corrupt_latest_checkpoint_falls_back_to_the_newest_intact_one(tmp_path, capsys):
    run = tmp_path / "sine"
    flags = ["--steps", "4", "--chunk", "2", "--checkpoint-every", "2", "--out", str(run)]
    assert main([*SINE, *flags]) == 0
    latest = checkpoint.latest_checkpoint(run)
    latest.write_bytes(latest.read_bytes()[:100])  # a disk that filled up mid-write
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    text = " ".join(str(w.message) for w in caught)
    assert "step_000000002.npz (step 2)" in text and "step_000000004.npz is corrupt" in text
    assert "resuming" in capsys.readouterr().out
    assert [r["step"] for r in log(run)] == [2, 4]
    assert checkpoint.load(latest, _template(run))[1]["step"] == 4  # rewritten, intact


def _template(run):
    import jax

    from mamlx import init_state
    from mamlx.config import config_from_dict
    from mamlx.experiments import build

    config = config_from_dict(json.loads((run / "config.json").read_text()))
    exp = build(config)
    return init_state(exp.learner, exp.optimizer, jax.random.PRNGKey(config.seed))


def test_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(tmp_path, monkeypatch, capsys):
    import mamlx.train as training

    run = tmp_path / "sine"
    real = training._append
    calls = []

    def interrupt_on_second_chunk(path, record):
        real(path, record)
        calls.append(record["step"])
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(training, "_append", interrupt_on_second_chunk)
    assert main([*SINE, "--steps", "6", "--chunk", "2", "--out", str(run)]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"interrupted at step 4; checkpoint saved; resume with: mamlx train --resume {run}"
    ]
    assert checkpoint.latest_checkpoint(run).name == "step_000000004.npz"
    monkeypatch.setattr(training, "_append", real)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert [r["step"] for r in log(run)] == [2, 4, 6]


def test_list_prints_every_learner_data_set_and_preset(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in [*registry.learner_names(), *registry.dataset_names(), *PRESETS]:
        assert name in out
    assert main(["list", "presets"]) == 0
    out = capsys.readouterr().out
    assert "protonet-20w1s-cpu" in out and "cpu: 20 min" in out and "Snell et al." in out


@pytest.mark.parametrize("task", ["sinusoid", "omniglot", "miniimagenet"])
def test_every_train_flag_has_help_and_lists_its_choices(task, capsys):
    with pytest.raises(SystemExit):
        main(["train", task, "--help"])
    text = capsys.readouterr().out
    assert "(default: )" not in text
    for learner in registry.learner_names(registry.get_dataset(task).family):
        assert learner in text
    if task != "sinusoid":
        for choice in (
            "{stride,max}",
            "{sgd,adam}",
            "{constant,linear,cosine}",
            "{vinyals,background,ravi}",
        ):
            assert choice in text

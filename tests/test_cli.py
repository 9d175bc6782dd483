"""The `mamlx` command end to end on tiny runs."""

import json

import pytest

from mamlx.cli import main


def train(out, *extra):
    return main(
        [
            "train",
            "sinusoid",
            "--steps",
            "40",
            "--meta-batch",
            "4",
            "--chunk",
            "20",
            "--checkpoint-every",
            "20",
            "--no-progress",
            "--no-compile-cache",
            "--out",
            str(out),
            *extra,
        ]
    )


def test_train_then_eval_writes_results_and_figure(tmp_path, capsys):
    assert train(tmp_path / "maml") == 0
    assert train(tmp_path / "pre", "--algo", "pretrain") == 0
    config = json.loads((tmp_path / "maml" / "config.json").read_text())
    assert config["algo"] == "maml" and config["steps"] == 40 and config["task"] == "sinusoid"
    rc = main(
        [
            "eval",
            str(tmp_path / "maml"),
            str(tmp_path / "pre"),
            "--tasks",
            "20",
            "--max-steps",
            "2",
            "--figure",
            str(tmp_path / "fig.png"),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "query MSE" in out and "pretrain" in out
    res = json.loads((tmp_path / "maml" / "eval.json").read_text())
    assert set(res["mse"]) == {"5", "10", "20"} and set(res["mse"]["10"]) == {"0", "1", "2"}
    assert (tmp_path / "fig.png").read_bytes()[:4] == b"\x89PNG"


def test_existing_run_is_not_overwritten_and_resume_checks_config(tmp_path, capsys):
    run = tmp_path / "run"
    assert train(run) == 0
    before = (run / "config.json").read_text()
    assert train(run) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", "sinusoid", "--resume", str(run), "--shots", "5", "--no-progress"]) == 2
    assert "configuration differs" in capsys.readouterr().err
    assert (run / "config.json").read_text() == before
    # resuming a finished run is a no-op that succeeds
    assert main(["train", "--resume", str(run)]) == 0


def test_unknown_algorithm_and_bad_values_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "sinusoid", "--algo", "reptilian"])
    assert e.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
    assert train(tmp_path / "a", "--shots", "0") == 2
    assert "shots" in capsys.readouterr().err
    assert train(tmp_path / "b", "--inner-steps", "-1") == 2
    assert "inner_steps must be >= 0" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert main(["eval", str(tmp_path / "missing")]) == 2
    assert "not a mamlx run directory" in capsys.readouterr().err

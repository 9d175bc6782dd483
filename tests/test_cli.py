"""The `mamlx` command end to end on tiny runs."""

import argparse
import json

import jax
import pytest

from mamlx import cli, evaluate, init_state
from mamlx.cli import main
from mamlx.experiments import build
from mamlx.runs import read_config
from mamlx.tasks import sinusoid


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
    # 300 steps of MAML, not 40: enough for the training to show in eval (see below)
    assert (
        train(tmp_path / "maml", "--steps", "300", "--chunk", "100", "--checkpoint-every", "300")
        == 0
    )
    assert train(tmp_path / "pre", "--algo", "pretrain") == 0
    config = json.loads((tmp_path / "maml" / "config.json").read_text())
    assert config["algo"] == "maml" and config["steps"] == 300 and config["task"] == "sinusoid"
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
    # The reported MSE is the trained network's: after 2 steps on 10 shots it is well below the
    # same network's untrained (its initialisation), adapted the same way on the same 20 tasks
    # (eval draws the K-shot tasks from fold_in(key(seed), K)). Measured (2 CPU cores), trained
    # / untrained with run seeds 0 (this run), 1, 2, 3: 3.05 / 5.00, 3.01 / 4.55, 3.55 / 21.2,
    # 3.27 / 4.97 (ratios 0.61, 0.66, 0.17, 0.66); after 40 steps, seed 1: 3.85 / 4.55 (0.85).
    run_config = read_config(tmp_path / "maml")
    exp = build(run_config)
    untrained = init_state(exp.learner, exp.optimizer, jax.random.PRNGKey(run_config.seed))
    before = evaluate(
        exp.learner,
        untrained.params,
        sinusoid(10, queries=100),
        key=jax.random.fold_in(jax.random.PRNGKey(res["seed"]), 10),
        num_tasks=20,
        steps=[2],
    )[2]["loss"][0]
    after = res["mse"]["10"]["2"][0]
    assert after < 0.8 * before, (after, before)


def test_eval_flag_errors_strict_json_and_runtime_errors(tmp_path, capsys, monkeypatch):
    import jax

    import mamlx.cli as cli

    run = tmp_path / "maml"
    assert train(run) == 0
    # One task has no confidence interval: eval.json says null, and stays strict JSON.
    assert main(["eval", str(run), "--tasks", "1", "--shots", "3", "--max-steps", "1"]) == 0
    res = json.loads((run / "eval.json").read_text(), parse_constant=pytest.fail)
    assert res["mse"]["3"]["1"][1] is None and res["mse"]["3"]["1"][0] > 0
    assert main(["eval", str(run), "--queries", "0"]) == 2
    assert "--queries and --ways must be >= 1" in capsys.readouterr().err
    assert main(["eval", str(run), "--eval-rotate"]) == 2
    assert "--eval-rotate and --ways apply to few-shot runs" in capsys.readouterr().err
    assert main(["eval", str(run), "--ways", "5"]) == 2
    assert "--eval-rotate and --ways apply to few-shot runs" in capsys.readouterr().err
    # A corrupt configuration names its file.
    (run / "config.json").write_text("garbage")
    assert main(["eval", str(run)]) == 2
    err = capsys.readouterr().err
    assert str(run / "config.json") in err and "not valid JSON" in err
    (run / "config.json").write_text('{"task": "sinusoid", "shots": "many"}')
    assert main(["eval", str(run)]) == 2
    assert "not a valid mamlx configuration" in capsys.readouterr().err

    def out_of_memory(args):
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 3e10 bytes")

    monkeypatch.setattr(cli, "cmd_eval", out_of_memory)
    assert main(["eval", str(run)]) == 2
    err = capsys.readouterr().err
    assert "RESOURCE_EXHAUSTED" in err and "one task at a time" in err
    monkeypatch.setattr(cli, "cmd_train", out_of_memory)
    assert main(["train", "sinusoid", "--out", str(tmp_path / "x")]) == 2
    assert "smaller --meta-batch" in capsys.readouterr().err


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
    assert "inner_steps must be an integer >= 0" in capsys.readouterr().err
    # From Python, NumPy integers are fine and are saved as JSON numbers.
    import numpy as np

    from mamlx.config import FewShotConfig, SinusoidConfig

    for config in (SinusoidConfig(shots=np.int64(5)), FewShotConfig(ways=np.int32(20))):
        saved = json.loads(json.dumps(config.to_dict()))
        assert saved.get("shots") == 5 if "hidden" in saved else saved["ways"] == 20
    with pytest.raises(ValueError, match="ways must be an integer >= 1, got 2.5"):
        FewShotConfig(ways=2.5)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert main(["eval", str(tmp_path / "missing")]) == 2
    assert "not a mamlx run directory" in capsys.readouterr().err


def _killed_run(run, monkeypatch, *extra, before_first_checkpoint=False):
    """Train 60 steps (checkpoint every 20), killed at the first checkpoint."""
    from mamlx import checkpoint

    real_save = checkpoint.save_step

    def killed(run_dir, step, tree, **kw):
        if not before_first_checkpoint:
            real_save(run_dir, step, tree, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save_step", killed)
    assert train(run, "--steps", "60", *extra) == 130  # the CLI's Ctrl-C exit code
    monkeypatch.undo()


def _logged_steps(run):
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_resume_restores_the_run_settings_in_either_flag_order(tmp_path, monkeypatch, capsys):
    from mamlx import checkpoint

    monkeypatch.chdir(tmp_path)  # the default run folder would appear here
    for run, resume in [
        (tmp_path / "a", lambda r: ["train", "--resume", str(r)]),
        (tmp_path / "b", lambda r: ["train", "--resume", str(r), "sinusoid"]),
    ]:
        _killed_run(run, monkeypatch)
        assert [s for s, _ in checkpoint.list_checkpoints(run)] == [20]
        assert json.loads((run / "run.json").read_text())["checkpoint_every"] == 20
        assert main(resume(run)) == 0
        # checkpoint_every 20 and chunk 20 came back from run.json (the defaults are 5000, 200)
        assert [s for s, _ in checkpoint.list_checkpoints(run)] == [20, 40, 60]
        assert _logged_steps(run) == [20, 40, 60]
    assert not (tmp_path / "runs").exists()  # `--resume X sinusoid` did not start a new run
    # a run.json from before "resolved" existed, with a key that is no setting, still resumes
    saved = json.loads((run / "run.json").read_text())
    assert saved["resolved"]["task_map"] == "vmap" and "conv_impl" not in saved["resolved"]
    old = {k: v for k, v in saved.items() if k != "resolved"}
    (run / "run.json").write_text(json.dumps({**old, "stale": 1}))
    # flags given on resume win and are kept for the next resume; --distributed can be undone
    assert main(["train", "--resume", str(run), "--chunk", "7", "--no-distributed"]) == 0
    saved = json.loads((run / "run.json").read_text())
    assert saved["chunk"] == 7 and saved["checkpoint_every"] == 20 and not saved["distributed"]
    assert "stale" not in saved and saved["resolved"]["task_map"] == "vmap"
    # another jax version alone is no reason for a note; a different task map is
    for key, value, note in [("jax", "0.0.1", False), ("task_map", "map", True)]:
        saved["resolved"][key] = value
        (run / "run.json").write_text(json.dumps(saved))
        capsys.readouterr()
        assert main(["train", "--resume", str(run)]) == 0
        assert ("note: this run now resolves" in capsys.readouterr().out) == note
        saved = json.loads((run / "run.json").read_text())
        assert saved["resolved"][key] != value  # rewritten with what this machine resolved


def test_resume_log_has_each_step_once(tmp_path, monkeypatch):
    # killed before any checkpoint: the logged chunk is dropped, the run starts over
    run = tmp_path / "early"
    _killed_run(run, monkeypatch, before_first_checkpoint=True)
    assert _logged_steps(run) == [20]
    assert main(["train", "--resume", str(run)]) == 0
    assert _logged_steps(run) == [20, 40, 60]
    # a log line cut short by the kill does not block the resume
    run = tmp_path / "cut"
    _killed_run(run, monkeypatch)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 40, "sec')
    assert main(["train", "--resume", str(run)]) == 0
    assert _logged_steps(run) == [20, 40, 60]


def test_eval_reads_a_run_without_rewriting_its_log(tmp_path):
    from mamlx import checkpoint

    run = tmp_path / "run"
    assert train(run, "--steps", "60") == 0
    checkpoint.latest_checkpoint(run).unlink()  # as if the run were still training
    log = (run / "metrics.jsonl").read_bytes()
    assert main(["eval", str(run), "--tasks", "5", "--max-steps", "1", "--shots", "5"]) == 0
    assert (run / "metrics.jsonl").read_bytes() == log
    assert json.loads((run / "eval.json").read_text())["step"] == 40


def test_cpu_devices_settings_on_new_and_resumed_runs(tmp_path):
    def settings(run_dir, resume, **given):
        args = argparse.Namespace(**{**dict.fromkeys(cli.RUN_DEFAULTS), **given})
        return cli._run_settings(args, run_dir, resume)

    new = settings(tmp_path / "new", False, cpu_devices=2)
    assert (new.cpu_devices, new.devices, new.cpu_devices_given) == (2, 0, True)
    assert settings(tmp_path / "new", False, cpu_devices=1).devices == 1  # one device: no mesh
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "run.json").write_text(json.dumps({**cli.RUN_DEFAULTS, "devices": 1}))
    # asked for on resume: shards over the devices it makes, though the run saved devices 1
    assert settings(saved, True, cpu_devices=2).devices == 0
    (saved / "run.json").write_text(
        json.dumps({**cli.RUN_DEFAULTS, "cpu_devices": 2, "devices": 0})
    )
    back = settings(saved, True)  # restored from run.json, not given
    assert (back.cpu_devices, back.devices, back.cpu_devices_given) == (2, 0, False)
    with pytest.raises(ValueError, match="leave the others idle"):
        settings(saved, True, devices=1)
    assert settings(saved, True, cpu_devices=0, devices=1).cpu_devices == 0


def test_a_cpu_split_run_resumes_on_an_accelerator(tmp_path, monkeypatch, capsys):
    n = len(jax.devices("cpu"))  # this process's backend runs already: its own count is accepted
    run = tmp_path / "run"
    assert train(run, "--cpu-devices", str(n), "--devices", "0") == 0
    assert json.loads((run / "run.json").read_text())["cpu_devices"] == n
    capsys.readouterr()
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")  # as if resumed on a GPU box
    # given there: refused, naming the way out
    assert main(["train", "--resume", str(run), "--cpu-devices", str(n), "--no-progress"]) == 2
    assert "splits a CPU backend; this process computes on gpu" in capsys.readouterr().err
    # saved in run.json, not given: dropped with a note, and the run goes on
    assert main(["train", "--resume", str(run), "--steps", "60", "--no-progress"]) == 0
    assert f"run.json has cpu_devices {n}, for a CPU" in capsys.readouterr().err
    saved = json.loads((run / "run.json").read_text())
    assert saved["cpu_devices"] == 0 and "cpu_devices_given" not in saved


def test_bad_run_flags_and_data_folders_leave_nothing(tmp_path, capsys):
    assert train(tmp_path / "a", "--chunk", "0") == 2
    assert "--chunk must be positive" in capsys.readouterr().err
    assert train(tmp_path / "b", "--devices", "-1") == 2
    assert "--devices must be >= 0" in capsys.readouterr().err
    assert train(tmp_path / "b", "--cpu-devices", "-1") == 2
    assert "--cpu-devices must be >= 0" in capsys.readouterr().err
    assert train(tmp_path / "b", "--cpu-devices", "2", "--devices", "1") == 2
    assert "leave the others idle" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    missing = tmp_path / "nope"
    rc = main(["train", "omniglot", "--data-dir", str(missing), "--out", str(tmp_path / "c")])
    assert rc == 2 and f"data folder {missing} does not exist" in capsys.readouterr().err
    assert not missing.exists() and not (tmp_path / "c").exists()


@pytest.mark.parametrize(
    "level, lowered",
    [
        ("default", "precision = [DEFAULT, DEFAULT]"),
        ("float32", "precision = [HIGHEST, HIGHEST]"),
        ("tensorfloat32", "precision = [HIGH, HIGH]"),
        (
            "bfloat16",
            "lhs_precision_type = bf16, rhs_precision_type = bf16, accumulation_type = f32",
        ),
    ],
)
def test_matmul_precision_levels_reach_the_compiled_products(
    level, lowered, restore_matmul_precision
):
    """JAX's level named 'bfloat16' is its DEFAULT (TF32 on GPUs): ours asks for the
    bfloat16 dot algorithm itself, in the products of the patches convolution too."""
    from mamlx.cli import set_matmul_precision
    from mamlx.models.conv import conv2d

    set_matmul_precision(level, backend="gpu")  # lowered only: what a GPU would compile
    x, w = jax.numpy.ones((2, 8, 8, 16)), jax.numpy.ones((3, 3, 16, 4))
    text = jax.jit(lambda x, w: conv2d(x, w, impl="patches")).lower(x, w).as_text()
    assert lowered in text
    with pytest.raises(ValueError, match="matmul precision must be one of"):
        set_matmul_precision("fp8")
    with pytest.raises(ValueError, match="bfloat16 needs a GPU"):  # XLA:CPU cannot compile it
        set_matmul_precision("bfloat16", backend="cpu")


def test_train_records_matmul_precision_and_eval_uses_the_runs(
    tmp_path, monkeypatch, restore_matmul_precision
):
    import mamlx.cli as cli

    used = []
    real = cli.set_matmul_precision
    monkeypatch.setattr(cli, "set_matmul_precision", lambda lv: (used.append(lv), real(lv)))
    assert train(tmp_path / "r", "--matmul-precision", "float32") == 0
    run = json.loads((tmp_path / "r" / "run.json").read_text())
    assert run["matmul_precision"] == "float32" and used == ["float32"]
    assert jax.config.jax_default_matmul_precision == "float32"
    args = ["eval", str(tmp_path / "r"), "--tasks", "2", "--max-steps", "1"]
    assert main([*args, "--figure", str(tmp_path / "a.png")]) == 0
    assert main([*args, "--figure", str(tmp_path / "b.png"), "--matmul-precision", "default"]) == 0
    assert used == ["float32", "float32", "default"]  # eval: the run's, unless given
    assert main(["train", "--resume", str(tmp_path / "r"), "--steps", "60", "--no-progress"]) == 0
    assert used[-1] == "float32"  # resume keeps the run's precision

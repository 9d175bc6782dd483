"""benchmarks/time_to_target.py: training seconds until validation first reaches a target."""

import json
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import time_to_target as ttt  # noqa: E402


def records():
    # chunks of 10.5 s; validation at steps 2 and 4 and 6
    vals = {2: 0.95, 4: 0.988, 6: 0.99}
    out = []
    for step in range(1, 7):
        r = {"step": step, "seconds": 10.5, "accuracy": 0.9}
        if step in vals:
            r["val_accuracy"] = vals[step]
        out.append(r)
    return out


def test_first_validation_at_the_target_and_the_seconds_summed_to_it():
    got = ttt.time_to_target(records(), 0.987)
    assert got["reached"] and got["step"] == 4 and got["seconds"] == 42.0
    assert ttt.time_to_target(records(), 0.95)["step"] == 2  # at the target counts
    assert "step 4 (98.80 %) after 42.0 s" in ttt.describe(got)


def test_not_reached_names_the_best_validation_and_the_whole_runs_seconds():
    got = ttt.time_to_target(records(), 0.995)
    assert not got["reached"] and got["seconds"] == 63.0
    assert got["best"] == {"step": 6, "val_accuracy": 0.99, "seconds": 63.0}
    assert "did not reach 99.5 % in 63.0 s" in ttt.describe(got)
    assert "no validation recorded" in ttt.describe(ttt.time_to_target(records()[:1], 0.9))


def test_cli(tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records()))
    assert ttt.main([str(tmp_path)]) == 0
    assert "reached 98.7 % at step 4" in capsys.readouterr().out
    assert ttt.main([str(tmp_path / "missing")]) == 2
    assert "metrics.jsonl does not exist" in capsys.readouterr().err


def test_the_first_chunks_compilation_is_split_off():
    recs = records()
    recs[0]["seconds"] = 100.0  # compiles: 89.5 s more than a 1-step chunk takes
    got = ttt.time_to_target(recs, 0.987)
    assert got["seconds"] == 131.5 and got["first_chunk"] == 100.0 and got["steps_only"] == 42.0
    text = ttt.describe(got)
    assert (
        "first chunk (compilation included) took 100.0 s, the compiled steps alone 42.0 s" in text
    )
    assert ttt.time_to_target(recs[:1], 0.9)["steps_only"] is None  # no later chunk to rate it by


def evaluation(per_task, seed=7):
    return {
        "seed": seed,
        "tasks": len(per_task),
        "ways": 5,
        "shots": 1,
        "queries": 1,
        "step": 10,
        "accuracy": [sum(per_task) / len(per_task), 0.0],
        "per_task_accuracy": per_task,
    }


def test_paired_difference_by_hand():
    a, b = evaluation([1, 1, 0.8, 1]), evaluation([1, 0.8, 0.8, 1])
    got = ttt.paired_difference(a, b)  # differences 0, 20, 0, 0 points: mean 5, stdev 10
    assert abs(got["mean"] - 5.0) < 1e-9 and abs(got["interval"] - 1.96 * 10 / 2) < 1e-9
    assert got["differing"] == 1 and got["tasks"] == 4
    assert "+5.00 ± 9.80 points (95 %), 1 tasks scored differently" in ttt.describe_paired(
        got, ("a", "b")
    )
    with pytest.raises(ValueError, match="different test tasks: seed 7 vs 8"):
        ttt.paired_difference(a, evaluation([1, 0.8, 0.8, 1], seed=8))


def test_cli_compare_needs_both_evaluations(tmp_path, capsys):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in records())
        )
    (tmp_path / "a" / "eval.json").write_text(json.dumps(evaluation([1, 1, 0.8, 1])))
    assert ttt.main([str(tmp_path / "a"), "--compare", str(tmp_path / "b")]) == 2
    assert "eval.json does not exist: run mamlx eval first" in capsys.readouterr().err
    (tmp_path / "b" / "eval.json").write_text(json.dumps(evaluation([1, 0.8, 0.8, 1])))
    assert ttt.main([str(tmp_path / "a"), "--compare", str(tmp_path / "b")]) == 0
    assert "paired difference +5.00 ± 9.80" in capsys.readouterr().out


def test_the_h200_report_is_what_the_tool_says_of_the_stored_runs(capsys):
    # benchmarks/results/h200_time_to_target.md quotes the tool's lines on the stored runs
    runs = REPO / "benchmarks" / "results" / "h200_time_to_target"
    report = (REPO / "benchmarks" / "results" / "h200_time_to_target.md").read_text()
    for argv in ([runs / "float32", "--compare", runs / "bfloat16"], [runs / "bfloat16"]):
        assert ttt.main([str(a) for a in argv]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out
        for line in out:
            assert line.replace(str(runs) + "/", "") in report

"""benchmarks/time_to_target.py: training seconds until validation first reaches a target."""

import json
import sys

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

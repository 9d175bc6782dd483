"""The results ledger (benchmarks/ledger.py) and the reproduction runner (reproduce.py)."""

import json
import re
import sys

import pytest

from mamlx import published
from mamlx.presets import MEASURED_TIME, PRESETS

from conftest import REPO, data_dir

sys.path.insert(0, str(REPO / "benchmarks"))
import ledger  # noqa: E402
import reproduce  # noqa: E402


def test_every_preset_citing_a_published_number_has_a_ledger_entry():
    on_disk = json.loads(ledger.LEDGER.read_text())
    keys = [e["key"] for e in on_disk["entries"]]
    assert sorted(keys) == sorted(p.key for p in published.PUBLISHED)  # one entry each
    cited = 0
    for name, (_, _, source) in PRESETS.items():
        p = published.for_preset(name)
        if p is None:
            continue
        cited += 1
        assert p.key in keys, name
        if name not in published.BASED_ON:  # the preset's citation is the table's number
            assert p.number in source and p.source in source, (name, source)
    assert cited >= 40
    for e in on_disk["entries"]:  # the published side is the table's
        p = published.by_key(e["key"])
        assert (e["published"]["mean"], e["published"]["interval"]) == (p.mean, p.interval)
        assert e["verdict"] in ("within", "below", "not run")
        assert e["verdict"] != "not run" or e["reason"]


def test_presets_measured_times_are_the_ledgers_runs():
    """``mamlx list``'s "measured" column (``MEASURED_TIME``) repeats figures of ledger runs:
    each entry that names steps and an accuracy is a run of that preset in the ledger, with
    those steps and that accuracy (as drawn or at the paper's protocol) and a wall time near
    its minutes (the budget; start-up, compilation and validation add up to about 10 %)."""
    pattern = re.compile(r"([\d.]+) min for ([\d,]+) of [\d,]+ steps[^:]*: ([\d.]+) ± ([\d.]+)$")
    runs = [r for e in json.loads(ledger.LEDGER.read_text())["entries"] for r in e["runs"]]
    checked = 0
    for name, by_device in MEASURED_TIME.items():
        assert name in PRESETS, name
        for device, text in by_device.items():
            m = pattern.fullmatch(text)
            if m is None:  # a time only (or a GPU run): nothing of the ledger's to compare
                continue
            minutes, steps, acc, ci = float(m[1]), int(m[2].replace(",", "")), m[3], m[4]
            figures = lambda r: {
                (f"{a:.2f}", f"{i:.2f}") for a, i in filter(None, (r["as_drawn"], r["rotated"]))
            }
            same = [
                r
                for r in runs
                if r["preset"] == name
                and r["device"].lower() == device
                and r["steps"] == steps
                and (acc, ci) in figures(r)
            ]
            assert same, f"{name}: {text!r} is no ledger run of the preset"
            assert any(abs(r["wall_s"] / 60 - minutes) <= 0.15 * minutes for r in same), (
                name,
                text,
            )
            checked += 1
    assert checked >= 16


@pytest.mark.parametrize(
    "ours, pub, expected",
    [
        ((98.0, 0.5), (98.7, 0.4), "within"),  # the intervals overlap
        ((98.0, 0.3), (98.7, 0.4), "within"),  # they touch
        ((99.5, 0.1), (98.7, 0.4), "within"),  # ours is higher
        ((97.0, 0.5), (98.7, 0.4), "below"),
        ((96.58, 0.16), (96.0, None), "within"),  # a published number without an interval
        ((95.5, 0.3), (96.0, None), "below"),
        ((96.1, float("nan")), (96.0, None), "within"),
    ],
)
def test_verdict(ours, pub, expected):
    assert ledger.verdict(*ours, *pub) == expected


def _run(p, mean, interval, tasks, **kw):
    return ledger.make_run(
        p,
        preset=p.preset,
        as_drawn=(mean, interval),
        test_tasks=tasks,
        ways=p.ways,
        shots=p.shots,
        queries=ledger.test_protocol(p)["queries"],
        transductive=p.transductive,
        steps=10,
        wall_s=1.0,
        machine="test machine",
        command="mamlx train ...",
        commit="abc1234",
        source="test",
        **kw,
    )


def test_entry_verdict_counts_only_runs_at_the_papers_protocol():
    p = published.find("maml", "omniglot", 5, 1)
    book = ledger.new_ledger()
    ledger.place(book, _run(p, 99.5, 0.2, 200, run_id="short"), p.key)  # 200 of 600 tasks
    entry = next(e for e in ledger.refresh(book)["entries"] if e["key"] == p.key)
    assert entry["verdict"] == "not run" and "1 run off the protocol" in entry["reason"]
    assert entry["runs"][0]["verdict"] == "within" and not entry["runs"][0]["at_protocol"]
    ledger.place(book, _run(p, 97.0, 0.3, 600, run_id="low"), p.key)
    assert ledger.refresh(book)["entries"][0]["verdict"] == "below"
    ledger.place(book, _run(p, 98.5, 0.3, 600, run_id="ok"), p.key)
    assert ledger.refresh(book)["entries"][0]["verdict"] == "within"
    ledger.place(book, _run(p, 97.2, 0.3, 600, run_id="ok"), p.key)  # same id: replaced
    assert [r["id"] for r in book["entries"][0]["runs"]] == ["short", "low", "ok"]
    assert ledger.refresh(book)["entries"][0]["verdict"] == "below"


def test_markdown_and_readme_are_generated_from_the_json():
    book = ledger.load(ledger.LEDGER)
    assert ledger.LEDGER.with_suffix(".md").read_text() == ledger.markdown(book)
    block = ledger.readme_block(ledger.README.read_text())
    assert block == ledger.summary_table(book)
    assert block.count("\n") == 2 + len(published.PUBLISHED)
    assert ledger.stale() == []


def test_fewshot_table_is_generated_and_names_the_ledgers_runs():
    import fewshot

    md = (ledger.RESULTS / "fewshot.md").read_text()
    assert md == fewshot.table(fewshot.load_runs())  # `fewshot.py --table-only` is current
    not_run = md.split("Not run yet (published number only): ")[1].split("\n")[0].split(", ")
    in_ledger = fewshot.ledger_presets()
    assert "reptile-5w1s" in in_ledger
    assert not set(not_run) & in_ledger  # a preset with a ledger run is never "not run"


def test_an_update_that_fails_to_serialize_leaves_the_old_file(tmp_path):
    path = tmp_path / "reproduction.json"
    ledger.save(ledger.new_ledger(), path)
    before = path.read_bytes()
    p = published.find("protonet", "omniglot", 5, 1)
    bad = _run(p, 98.0, 0.5, 1000, notes="x")
    bad["notes"] = object()  # not JSON
    with pytest.raises(TypeError):
        ledger.add_run(bad, p.key, path)
    bad["notes"], bad["mean"] = "", float("inf")  # strict JSON: no infinities
    with pytest.raises(ValueError):
        ledger.add_run(bad, p.key, path)
    assert path.read_bytes() == before
    assert sorted(f.name for f in tmp_path.iterdir()) == ["reproduction.json", "reproduction.md"]
    good = _run(p, 98.5, 0.5, 1000)  # reaches 98.8 (published without an interval)
    ledger.add_run(good, p.key, path)
    entry = next(e for e in json.loads(path.read_text())["entries"] if e["key"] == p.key)
    assert entry["runs"][0]["verdict"] == "within" and entry["verdict"] == "within"


def test_gpu_plan_fits_its_budget(tmp_path, capsys):
    assert reproduce.main(["--gpu", "--dry-run", "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    by = reproduce.trainers(list(reproduce.GPU_ROWS))
    assert by["reptile-20w5s"] == "reptile-20w5s"  # Reptile: each setting its own settings
    for name, trainer in by.items():
        if name == trainer:
            assert f"{name}: mamlx train omniglot --preset {name}" in out
        else:
            assert f"{name}: trained as {trainer}" in out
    assert out.count("--max-minutes 6.5") == len(set(by.values()))
    runs = len(set(by.values()))
    assert f"{runs} trainings at once, {0.9 / runs:.3f} of the device memory" in out
    assert "training stopped by 8 min, evaluated by 10 min" in out
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_tiny_row_writes_a_well_formed_entry(tmp_path):
    omniglot = data_dir("omniglot")
    path, readme = tmp_path / "ledger.json", ledger.README.read_bytes()
    argv = ["--rows", "maml-noconv-5w1s", "--tiny", "--out", str(tmp_path / "runs")]
    argv += ["--ledger", str(path), "--data-dir", str(omniglot), "--flags=--eval-inner-steps 1"]
    assert reproduce.main(argv) == 0
    book = json.loads(path.read_text())
    key = published.for_preset("maml-noconv-5w1s").key
    (entry,) = [e for e in book["entries"] if e["runs"]]
    assert entry["key"] == key and entry["verdict"] == "not run"
    (run,) = entry["runs"]
    assert 0 <= run["mean"] <= 100 and run["interval"] >= 0 and run["test_tasks"] == 8
    assert run["as_drawn"] and run["rotated"] and run["protocol"]["test_rotated"]
    assert run["protocol"] == {**run["protocol"], "ways": 5, "shots": 1, "queries": 1}
    assert run["protocol"]["transductive"] is True
    assert run["at_protocol"] is False and "8 test tasks" in run["off_protocol"]
    assert run["steps"] == 2 and run["planned_steps"] == 2 and run["wall_s"] > 0
    assert run["command"].startswith("mamlx train omniglot --preset maml-noconv-5w1s")
    assert "--eval-rotate" in run["command"] and run["commit"] and run["machine"]
    assert [s for s, _ in run["curve"]] == [1, 2] and "validation:" in run["notes"]
    assert run["verdict"] in ("within", "below")
    assert path.with_suffix(".md").read_text() == ledger.markdown(ledger.load(path))
    assert ledger.README.read_bytes() == readme  # only the repository's ledger touches it


def test_rows_that_train_alike_share_one_training():
    rows = ["protonet-5w1s", "protonet-5w5s", "protonet-20w5s", "siamese-20w5s", "siamese-5w1s"]
    by = reproduce.trainers(rows)
    assert by == {
        "protonet-5w1s": "protonet-5w1s",  # 60-way 1-shot training: its own
        "protonet-5w5s": "protonet-5w5s",
        "protonet-20w5s": "protonet-5w5s",  # Snell et al.: one 5-shot model, tested at 5 and 20 ways
        "siamese-20w5s": "siamese-20w5s",  # the first of its kind in the list trains
        "siamese-5w1s": "siamese-20w5s",
    }
    for name, trainer in by.items():  # shared only where nothing but the test protocol differs
        a, b = (vars(ledger.preset_config(n)) for n in (name, trainer))
        assert {k for k in a if a[k] != b[k]} <= set(reproduce.TEST_FIELDS)
    a, b = (vars(ledger.preset_config(n)) for n in ("protonet-5w1s", "protonet-5w5s"))
    assert {k for k in a if a[k] != b[k]} - set(reproduce.TEST_FIELDS)


@pytest.mark.slow
def test_a_shared_training_is_tested_at_each_rows_protocol(tmp_path):
    omniglot = data_dir("omniglot")
    out, path = tmp_path / "runs", tmp_path / "ledger.json"
    argv = ["--rows", "protonet-5w5s,protonet-20w5s", "--tiny", "--out", str(out)]
    assert reproduce.main([*argv, "--ledger", str(path), "--data-dir", str(omniglot)]) == 0
    assert (out / "protonet-5w5s" / "best.npz").is_file()
    assert sorted(p.name for p in (out / "protonet-20w5s").iterdir()) == [
        "eval-drawn.json",
        "eval-rotated.json",
    ]
    runs = {e["ways"]: e["runs"][0] for e in json.loads(path.read_text())["entries"] if e["runs"]}
    assert set(runs) == {5, 20}
    for ways, queries in ((5, 15), (20, 5)):
        run = runs[ways]
        assert (run["protocol"]["ways"], run["protocol"]["queries"]) == (ways, queries)
        assert run["command"].startswith("mamlx train omniglot --preset protonet-5w5s")
        assert f"--ways {ways} --shots 5 --queries {queries}" in run["command"]
    drawn = json.loads((out / "protonet-20w5s" / "eval-drawn.json").read_text())
    assert (drawn["ways"], drawn["shots"], drawn["queries"]) == (20, 5, 5)
    assert runs[5]["as_drawn"] != runs[20]["as_drawn"]


def test_a_below_verdict_names_its_measured_cause():
    """A run short of the paper's steps is "below" for its budget, with its last validation
    points; a run at the paper's steps has no measured cause and says so."""
    p = published.find("protonet", "omniglot", 5, 1)
    planned = ledger.paper_steps({"preset": p.preset})
    book = ledger.new_ledger()
    short = _run(p, 90.0, 0.3, 1000, run_id="short", curve=[[100, 80.0], [200, 85.5]])
    ledger.place(book, short, p.key)
    entry = next(e for e in ledger.refresh(book)["entries"] if e["key"] == p.key)
    assert entry["verdict"] == "below"
    assert entry["reason"] == (
        f"budget: 10 of {planned:,} steps (validation: 80.0 (step 100), 85.5 (step 200))"
    )
    assert f"below: budget: 10 of {planned:,} steps" in ledger.summary_table(book)
    ledger.place(book, {**_run(p, 91.0, 0.3, 1000, run_id="long"), "steps": planned}, p.key)
    entry = next(e for e in ledger.refresh(book)["entries"] if e["key"] == p.key)
    assert entry["verdict"] == "below" and entry["reason"] == "cause not measured"


def test_rows_test_rotated_classes_unless_the_paper_did_not():
    """Rotated test classes are a second test on the Vinyals split, skipped where the cited
    paper says its test classes were not rotated (Reptile); tasks follow the ways."""
    import argparse

    args = argparse.Namespace(tiny=False)
    assert reproduce.protocol("reptile-5w5s", args) == (600, False)
    assert reproduce.protocol("reptile-20w1s", args) == (1000, False)
    assert reproduce.protocol("maml-5w5s", args) == (600, True)  # MAML's code rotates
    assert reproduce.protocol("relation-20w5s", args) == (1000, True)  # not said: both

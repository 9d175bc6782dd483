"""The results ledger: every published number we cite and every run of ours beside it.

``results/reproduction.json`` holds one entry per published number of
:data:`mamlx.published.PUBLISHED` (keyed by method, data set, ways, shots and protocol),
each with the runs of ours that train for it, and ``other_runs`` for runs that have no
published counterpart (the meta-learner LSTM on Omniglot and its same-budget MAML rows).
``results/reproduction.md`` and the README's block between ``<!-- ledger:start -->`` and
``<!-- ledger:end -->`` are generated from it, never edited by hand.

    python benchmarks/ledger.py            # regenerate reproduction.md and the README block
    python benchmarks/ledger.py --seed     # (re)read the runs recorded in results/*.json
    python benchmarks/ledger.py --check    # fail if the Markdown or README is stale

A run's verdict: ``within`` when its 95% interval overlaps the published one (a table
without an interval counts as a point) or it is higher, ``below`` otherwise. An entry's
verdict is the best verdict of its runs at the paper's test protocol (ways, shots,
queries per class, batch norm, at least 600 test tasks at 5 ways and 1000 at 20); with
none, ``not run`` and the reason. Runs off the protocol (fewer test tasks, other query
counts) are listed with their own verdicts. Writes are atomic (a temporary file renamed
onto the ledger, under a lock on its folder), so a failed or concurrent update never leaves a
half-written file.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import math
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mamlx import published as pub  # noqa: E402
from mamlx._io import atomic_write  # noqa: E402
from mamlx.presets import PRESETS, preset_config  # noqa: E402

from common import RESULTS  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
LEDGER = RESULTS / "reproduction.json"
README = REPO / "README.md"
START, END = "<!-- ledger:start -->", "<!-- ledger:end -->"
SCHEMA = "mamlx-ledger/1"


# ---------------------------------------------------------------------------- protocol
def protocol_tasks(ways: int, preset_tasks: int = 0) -> int:
    """Test tasks of the protocol: 600 at 5 ways, 1000 at 20 (or the preset's, if more)."""
    return max(preset_tasks, 600 if ways <= 5 else 1000)


def test_protocol(p: pub.Published) -> dict:
    """The test protocol of a published number: ways, shots, queries per class (from the
    preset that trains for it), test tasks, batch norm and test classes."""
    queries, tasks = None, protocol_tasks(p.ways)
    if p.preset in PRESETS:
        c = preset_config(p.preset)
        queries = c.eval_queries or c.queries
        tasks = protocol_tasks(p.ways, c.eval_tasks)
    return {
        "ways": p.ways,
        "shots": p.shots,
        "queries": queries,
        "test_tasks": tasks,
        "transductive": p.transductive,
        "test_rotated": p.test_rotated,
    }


def verdict(mean: float, interval: float | None, pub_mean: float, pub_interval: float | None):
    """``"within"`` if ours is higher or the two 95% intervals overlap, else ``"below"``.

    Example:
      >>> verdict(98.0, 0.5, 98.7, 0.4), verdict(99.5, 0.1, 98.7, 0.4), verdict(97.0, 0.5, 98.7, 0.4)
      ('within', 'within', 'below')
    """
    width = 0.0 if interval is None or math.isnan(interval) else interval
    if mean >= pub_mean or mean + width >= pub_mean - (pub_interval or 0.0):
        return "within"
    return "below"


def device_name(machine: str) -> str:
    """A short device name for a machine line: ``"H100"``, ``"H200"``, ``"CPU"``."""
    m = re.search(r"NVIDIA (?:GeForce )?([A-Z]+\d+\w*)", machine)
    return m.group(1) if m else ("GPU" if "gpu:" in machine.lower() else "CPU")


# ----------------------------------------------------------------------------- runs
def off_protocol(paper: dict, ours: dict, test_tasks: int) -> list[str]:
    """How a run's test differs from the paper's protocol (empty: it does not)."""
    off = []
    for k in ("ways", "shots", "queries"):
        if None not in (paper[k], ours[k]) and ours[k] != paper[k]:
            off.append(f"{ours[k]} {k} (paper: {paper[k]})")
    if test_tasks < paper["test_tasks"]:
        off.append(f"{test_tasks} test tasks (protocol: {paper['test_tasks']})")
    if None not in (paper["transductive"], ours["transductive"]) and (
        ours["transductive"] != paper["transductive"]
    ):
        off.append("transductive" if ours["transductive"] else "non-transductive batch norm")
    if paper["test_rotated"] is False and ours["test_rotated"]:
        off.append("rotated test classes (paper: as drawn)")
    return off


def make_run(
    p: pub.Published | None,
    *,
    preset: str,
    flags: str = "",
    as_drawn: tuple[float, float] | None,
    rotated: tuple[float, float] | None = None,
    test_tasks: int,
    ways: int,
    shots: int,
    queries: int | None,
    transductive: bool | None,
    steps: int | None,
    planned_steps: int | None = None,
    wall_s: float | None,
    machine: str,
    command: str,
    commit: str | None,
    source: str,
    notes: str = "",
    curve: list | None = None,
    run_id: str = "",
) -> dict:
    """One run of ours as the ledger records it: the measurement the paper's protocol asks
    for (rotated test classes where the paper rotates them, if measured), both
    measurements, whether the test protocol is the paper's and why not, and the verdict
    (:func:`refresh` recomputes it)."""
    want_rotated = bool(p and p.test_rotated)
    use_rotated = rotated is not None and (want_rotated or as_drawn is None)
    mean, interval = rotated if use_rotated else as_drawn
    interval = None if interval is None or math.isnan(interval) else interval
    if want_rotated and not use_rotated:
        notes = "test classes as drawn (the paper rotates them: a harder test). " + notes
    mine = dict(ways=ways, shots=shots, queries=queries, transductive=transductive)
    off = (
        off_protocol(test_protocol(p), {**mine, "test_rotated": use_rotated}, test_tasks)
        if p
        else []
    )
    return {
        "id": run_id or f"{preset}{' ' + flags if flags else ''} [{device_name(machine)}]",
        "preset": preset,
        "flags": flags,
        "mean": round(float(mean), 6),
        "interval": None if interval is None else round(float(interval), 6),
        "test_tasks": test_tasks,
        "protocol": {
            "ways": ways,
            "shots": shots,
            "queries": queries,
            "transductive": transductive,
            "test_rotated": use_rotated,
        },
        "as_drawn": [round(float(v), 6) for v in as_drawn] if as_drawn else None,
        "rotated": [round(float(v), 6) for v in rotated] if rotated else None,
        "at_protocol": not off if p else None,
        "off_protocol": "; ".join(off),
        "steps": steps,
        "planned_steps": planned_steps,
        "wall_s": None if wall_s is None else round(float(wall_s), 1),
        "machine": machine,
        "device": device_name(machine),
        "command": command,
        "commit": commit,
        "source": source,
        "verdict": None,
        "notes": notes.strip(),
        **({"curve": curve} if curve else {}),
    }


def curve(run_dir: str | Path) -> list[list[float]]:
    """Validation accuracy (%) per step from a run's ``metrics.jsonl``: ``[[step, acc]]``."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    out = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        if "val_accuracy" in r:
            out[r["step"]] = round(100 * r["val_accuracy"], 2)
    return [[s, a] for s, a in sorted(out.items())]


def curve_note(points: list) -> str:
    """The curve in a few words: ``"validation: 61.2 (step 1000) ... 93.4 (step 9000)"``."""
    if not points:
        return ""
    shown = points if len(points) <= 6 else [*points[:3], *points[-3:]]
    return "validation: " + ", ".join(f"{a:.1f} (step {s})" for s, a in shown)


def run_from_row(row: dict, *, preset: str, source: str, notes: str = "") -> dict:
    """A ledger run from a row of :func:`fewshot.run_preset` (or ``reproduce.py``)."""
    p = pub.for_preset(preset)
    rotated = row.get("accuracy_rotated_test")
    as_drawn = None if row.get("eval_rotate") else (row["accuracy"], row["ci"])
    return make_run(
        p,
        preset=preset,
        flags=row.get("flags", ""),
        as_drawn=as_drawn,
        rotated=(rotated, row["ci_rotated_test"]) if rotated is not None else None,
        test_tasks=row["test_tasks"],
        ways=row["test_ways"],
        shots=row["test_shots"],
        queries=row["test_queries"],
        transductive=(
            None if row.get("batch_norm") is None else row["batch_norm"] == "transductive"
        ),
        steps=row["steps"],
        planned_steps=row.get("planned_steps"),
        wall_s=row["wall_s"],
        machine=row["device"],
        command=row["command"],
        commit=row.get("commit"),
        source=source,
        notes=" ".join(x for x in (notes, curve_note(row.get("curve", []))) if x),
        curve=row.get("curve"),
    )


# --------------------------------------------------------------------------- ledger
def _entry(p: pub.Published) -> dict:
    return {
        "key": p.key,
        "method": p.method,
        "dataset": p.dataset,
        "ways": p.ways,
        "shots": p.shots,
        "protocol": test_protocol(p),
        "published": {
            "mean": p.mean,
            "interval": p.interval,
            "text": p.number,
            "source": p.source,
            "table": p.table,
            "what": p.what,
        },
        "preset": p.preset,
        "runs": [],
        "verdict": "not run",
        "reason": "",
        "next": "",
        "notes": "",
    }


def new_ledger() -> dict:
    """An empty ledger: one entry per published number, no runs."""
    return {
        "schema": SCHEMA,
        "about": "Generated and updated by benchmarks/ledger.py; accuracy in %, intervals "
        "are 95% half-widths.",
        "entries": [_entry(p) for p in pub.PUBLISHED],
        "other_runs": [],
    }


def load(path: str | Path = LEDGER) -> dict:
    """Read the ledger (a new one if there is none), its published side refreshed from
    :data:`mamlx.published.PUBLISHED` (the one table of published numbers)."""
    path = Path(path)
    old = json.loads(path.read_text()) if path.is_file() else {}
    ledger = new_ledger()
    kept = {e["key"]: e for e in old.get("entries", [])}
    for e in ledger["entries"]:
        if e["key"] in kept:
            e["runs"] = kept[e["key"]].get("runs", [])
            e["notes"] = kept[e["key"]].get("notes", "")
    ledger["other_runs"] = old.get("other_runs", [])
    keys = {e["key"] for e in ledger["entries"]}
    for key, e in kept.items():  # a published row renamed or removed: keep its runs
        if key not in keys:
            for r in e.get("runs", []):
                r["notes"] = f"(recorded under {key}, no longer a published row) {r['notes']}"
                ledger["other_runs"].append(r)
    return refresh(ledger)


def not_run_reason(entry: dict) -> tuple[str, str]:
    """Why an entry has no run at the paper's protocol, and the command that would run it."""
    if entry["dataset"] == "miniimagenet":
        return "needs images", ""  # only the split CSVs are here, no mini-ImageNet images
    preset = entry["preset"]
    if preset is None:
        return "no preset", ""
    from reproduce import CPU_ROWS, GPU_ROWS

    if preset in GPU_ROWS:
        return "needs an accelerator", f"python benchmarks/reproduce.py --gpu --rows {preset}"
    if preset in CPU_ROWS:
        return (
            "CPU row, not run yet",
            f"python benchmarks/reproduce.py --rows {preset} (at most {CPU_ROWS[preset]} min)",
        )
    return "needs an accelerator", f"python benchmarks/reproduce.py --gpu --rows {preset}"


def paper_steps(entry: dict) -> int | None:
    """The meta-training steps of the preset that trains for a published number."""
    preset = entry.get("preset")
    return preset_config(preset).steps if preset in PRESETS else None


def below_cause(entry: dict, run: dict) -> str:
    """The measured cause of a ``below`` verdict, from the run's own record: trained for
    fewer steps than the paper's preset (``"budget: 200 of 5,000 steps"``, with the last
    validation points when a curve is recorded), else ``"cause not measured"``.

    Example:
      >>> e = {"preset": "protonet-5w1s"}
      >>> below_cause(e, {"steps": 200, "curve": [[100, 90.0], [200, 93.5]]})
      'budget: 200 of 20,000 steps (validation: 90.0 (step 100), 93.5 (step 200))'
      >>> below_cause(e, {"steps": 20000})
      'cause not measured'
    """
    planned = paper_steps(entry)
    steps = run.get("steps")
    if planned and steps is not None and steps < planned:
        note = curve_note((run.get("curve") or [])[-3:])
        return f"budget: {steps:,} of {planned:,} steps" + (f" ({note})" if note else "")
    return "cause not measured"


def refresh(ledger: dict) -> dict:
    """Recompute every run's verdict and every entry's verdict and reason, in place."""
    for e in ledger["entries"]:
        p = e["published"]
        for r in e["runs"]:
            r["verdict"] = verdict(r["mean"], r["interval"], p["mean"], p["interval"])
            off = off_protocol(e["protocol"], r["protocol"], r["test_tasks"])
            r["at_protocol"], r["off_protocol"] = not off, "; ".join(off)
        at = [r for r in e["runs"] if r.get("at_protocol")]
        if at:
            e["verdict"] = "within" if any(r["verdict"] == "within" for r in at) else "below"
            e["reason"], e["next"] = "", ""
            if e["verdict"] == "below":
                e["reason"] = below_cause(e, max(at, key=lambda r: r["mean"]))
        else:
            e["verdict"] = "not run"
            e["reason"], e["next"] = not_run_reason(e)
            if e["runs"]:
                n = len(e["runs"])
                e["reason"] += f" ({n} run{'s' * (n > 1)} off the protocol)"
    return ledger


def dumps(ledger: dict) -> str:
    """The ledger as JSON text (strict: NaN, infinities and non-JSON values raise)."""
    return json.dumps(ledger, indent=1, ensure_ascii=False, allow_nan=False) + "\n"


def save(ledger: dict, path: str | Path = LEDGER, *, readme: Path | None = None) -> None:
    """Write the ledger atomically (serialized first: a failure leaves the old file as it
    was), then its Markdown beside it, and the README block when ``readme`` is given."""
    text = dumps(ledger)
    path = Path(path)
    with atomic_write(path, "w") as f:
        f.write(text)
    with atomic_write(path.with_suffix(".md"), "w") as f:
        f.write(markdown(ledger))
    if readme is not None:
        update_readme(ledger, readme)


@contextlib.contextmanager
def locked(path: str | Path):
    """Hold an exclusive lock on the ledger's folder (the ledger file itself is replaced
    by each write, so it cannot carry the lock), leaving no file behind."""
    folder = Path(path).parent
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def place(ledger: dict, run: dict, key: str | None) -> dict:
    """Put ``run`` under entry ``key`` (``None``: ``other_runs``), replacing a run of the
    same ``id`` there."""
    if key is None:
        runs = ledger["other_runs"]
    else:
        matches = [e for e in ledger["entries"] if e["key"] == key]
        if not matches:
            raise KeyError(f"no ledger entry {key!r}")
        runs = matches[0]["runs"]
    runs[:] = [r for r in runs if r["id"] != run["id"]] + [run]
    return ledger


def add_run(run: dict, key: str | None, path: str | Path = LEDGER) -> dict:
    """Add or update one run in the ledger file, atomically and under a lock; regenerate
    the Markdown (and the README block for the repository's own ledger)."""
    path = Path(path)
    with locked(path):
        ledger = refresh(place(load(path), run, key))
        save(ledger, path, readme=README if path.resolve() == LEDGER.resolve() else None)
    return ledger


def record_row(
    row: dict, *, preset: str, source: str, notes: str = "", path: str | Path = LEDGER
) -> dict:
    """Record a row of :func:`fewshot.run_preset` / ``reproduce.py`` under its published
    number (``other_runs`` if the preset has none); returns the run."""
    run = run_from_row(row, preset=preset, source=source, notes=notes)
    p = pub.for_preset(preset)
    add_run(run, p.key if p else None, path)
    return run


# ------------------------------------------------------------------------- Markdown
def _ours(r: dict) -> str:
    width = "" if r["interval"] is None else f" ± {r['interval']:.2f}"
    return f"{r['mean']:.2f}{width}"


def _steps(r: dict) -> str:
    if r.get("steps") is None:
        return "—"
    planned = r.get("planned_steps")
    return f"{r['steps']:,}" + (f" of {planned:,}" if planned and planned > r["steps"] else "")


def _best(e: dict) -> dict | None:
    at = [r for r in e["runs"] if r.get("at_protocol")]
    return max(at, key=lambda r: r["mean"]) if at else None


def summary_table(ledger: dict) -> str:
    """One row per published number: its best run of ours at the paper's protocol."""
    lines = [
        "| method | data set | setting | published | source | ours | steps | device | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in ledger["entries"]:
        p, r = e["published"], _best(e)
        ours = "—"
        if r:
            ours = _ours(r) + (" (rotated)" if r["protocol"]["test_rotated"] else "")
        verdict_cell = f"{e['verdict']}: {e['reason']}" if e["reason"] else e["verdict"]
        lines.append(
            f"| {e['method']} | {e['dataset']} | {e['ways']}w{e['shots']}s | {p['text']} "
            f"| {p['source']}, {p['table']} | {ours} | {_steps(r) if r else '—'} "
            f"| {r['device'] if r else '—'} | {verdict_cell} |"
        )
    return "\n".join(lines) + "\n"


def _cell(x) -> str:
    return "—" if x is None else (f"{x[0]:.2f} ± {x[1]:.2f}" if isinstance(x, list) else str(x))


def runs_table(entries: list[tuple[str, dict]]) -> list[str]:
    lines = [
        "| entry | run | compared | as drawn | rotated | test tasks | protocol | steps "
        "| wall time | device | commit | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, r in entries:
        q = r["protocol"]
        proto = (
            f"{q['ways']}w{q['shots']}s, {q['queries']} queries, "
            + {True: "transductive", False: "non-transductive", None: "—"}[q["transductive"]]
            + (f"; off: {r['off_protocol']}" if r["off_protocol"] else "")
        )
        wall = "—" if r["wall_s"] is None else f"{r['wall_s'] / 60:.1f} min"
        lines.append(
            f"| {key} | {r['id']} | {_ours(r)} | {_cell(r['as_drawn'])} | {_cell(r['rotated'])} "
            f"| {r['test_tasks']} | {proto} | {_steps(r)} | {wall} | {r['device']} "
            f"| {r['commit'] or 'not recorded'} | {r.get('verdict') or '—'} |"
        )
    return lines


def markdown(ledger: dict) -> str:
    """``reproduction.md``: the summary, every run, then each run's command and notes."""
    runs = [(e["key"], r) for e in ledger["entries"] for r in e["runs"]]
    counts = {v: sum(e["verdict"] == v for e in ledger["entries"]) for v in ("within", "below")}
    lines = [
        "# Reproduction ledger",
        "",
        f"{len(ledger['entries'])} published numbers; {counts['within']} within reach of a run "
        f"of ours at the paper's test protocol, {counts['below']} below, "
        f"{len(ledger['entries']) - sum(counts.values())} not run. Accuracy (%) ± 95% interval. "
        "Generated from `benchmarks/results/reproduction.json` by `python benchmarks/ledger.py` "
        "(do not edit); the README's table is the first one here.",
        "",
        '"within": the intervals overlap or ours is higher (a published number without an '
        'interval counts as a point); "below": ours is lower beyond both intervals. Only runs '
        "at the paper's test protocol (ways, shots, queries per class, batch norm, at least 600 "
        'test tasks at 5 ways and 1000 at 20) give an entry its verdict. Omniglot "rotated": '
        "the test classes include the test characters' 90-degree rotations, as the papers that "
        "rotate test them; where only the other measurement exists it is used and the notes "
        'say so. Many runs stopped at a wall-clock budget: "steps" gives how far they got.',
        "",
        "## Published numbers and our best run at their protocol",
        "",
        summary_table(ledger).rstrip("\n"),
        "",
        "## Every run",
        "",
        *runs_table(runs),
        "",
    ]
    if ledger["other_runs"]:
        lines += [
            "## Runs without a published number",
            "",
            *runs_table([("—", r) for r in ledger["other_runs"]]),
            "",
        ]
    todo = [e for e in ledger["entries"] if e["verdict"] == "not run"]
    lines += ["## Not run at the paper's protocol", ""]
    lines += [
        f"- {e['key']}: {e['reason']}" + (f"; `{e['next']}`" if e["next"] else "") for e in todo
    ]
    lines += ["", "## Commands and notes", ""]
    for key, r in [*runs, *(("other", r) for r in ledger["other_runs"])]:
        lines.append(f"- {key}, {r['id']}: `{r['command']}`; machine: {r['machine']}")
        if r.get("notes"):
            lines.append(f"  {r['notes']}")
    notes = [f"- {e['key']}: {e['notes']}" for e in ledger["entries"] if e.get("notes")]
    if notes:
        lines += ["", "## Entry notes", "", *notes]
    return "\n".join(lines) + "\n"


def readme_block(text: str) -> str:
    """The README text between the ledger markers."""
    start, end = text.index(START) + len(START), text.index(END)
    return text[start:end].strip("\n") + "\n"


def update_readme(ledger: dict, readme: Path = README) -> None:
    """Replace the README block between the markers with :func:`summary_table`."""
    text = readme.read_text()
    start, end = text.index(START) + len(START), text.index(END)
    new = text[:start] + "\n" + summary_table(ledger) + text[end:]
    if new != text:
        with atomic_write(readme, "w") as f:
            f.write(new)


def stale(path: Path = LEDGER, readme: Path = README) -> list[str]:
    """The generated files that differ from what the ledger gives."""
    ledger = load(path)
    out = []
    if path.with_suffix(".md").read_text() != markdown(ledger):
        out.append(str(path.with_suffix(".md")))
    if readme_block(readme.read_text()) != summary_table(ledger):
        out.append(str(readme))
    return out


# --------------------------------------------------------------------------- seeding
def _test_shape(preset: str) -> tuple[int, int, int, int]:
    """Test ways, shots, queries and tasks a preset's run is evaluated on."""
    c = preset_config(preset)
    return c.eval_ways or c.ways, c.eval_shots or c.shots, c.eval_queries or c.queries, c.eval_tasks


def _planned(command: str, preset: str) -> int | None:
    m = re.search(r"step \d+ of (\d+)", command)
    return int(m.group(1)) if m else (preset_config(preset).steps if preset in PRESETS else None)


def seed_fewshot(ledger: dict, rows: list[dict]) -> None:
    """The rows of ``results/fewshot.json`` (``benchmarks/fewshot.py``)."""
    for row in rows:
        preset = row["preset"]
        ways, shots, queries, tasks = _test_shape(preset)
        notes = row.get("note", "")
        if "test_tasks" not in row:
            notes = f"test tasks: the preset's {tasks} (the row does not record them). " + notes
        rotated = row.get("accuracy_rotated_test")
        run = make_run(
            pub.for_preset(preset),
            preset=preset,
            flags=row.get("flags", ""),
            as_drawn=None if row.get("eval_rotate") else (row["accuracy"], row["ci"]),
            rotated=(rotated, row["ci_rotated_test"]) if rotated is not None else None,
            test_tasks=row.get("test_tasks", tasks),
            ways=ways,
            shots=shots,
            queries=queries,
            transductive=row.get("batch_norm", "transductive") == "transductive",
            steps=row["steps"],
            planned_steps=_planned(row["command"], preset),
            wall_s=row["wall_s"],
            machine=row["device"],
            command=row["command"],
            commit=row.get("commit"),
            source="benchmarks/results/fewshot.json",
            notes=notes,
        )
        p = pub.for_preset(preset)
        place(ledger, run, p.key if p else None)


def seed_metric(ledger: dict, db: dict) -> None:
    """The Omniglot rows of ``results/metric.json`` (``benchmarks/metric.py``; not the
    quick smoke rows, not the hallucination gains, which have no published number)."""
    for name, row in db.get("rows", {}).items():
        if row.get("config") == "quick":
            continue
        preset = "protonet-20w1s-cpu" if row["config"] == "cpu" else name.replace("/", "-")
        preset = row["preset"] if isinstance(row.get("preset"), str) else preset
        p = pub.for_preset(preset)
        ways, shots, queries, _ = _test_shape(preset)
        notes = (
            "commit not recorded by the script (the result was committed in 2e656ed); "
            "stopped by its 20-minute budget"
            if "commit" not in row and name == "protonet/20w1s/cpu"
            else ""
        )
        place(
            ledger,
            make_run(
                p,
                preset=preset,
                as_drawn=(row["accuracy"], row["ci95"]),
                rotated=(row["accuracy_rotated_test"], row["ci95_rotated_test"])
                if "accuracy_rotated_test" in row
                else None,
                test_tasks=row["test_tasks"],
                ways=ways,
                shots=shots,
                queries=queries,
                transductive=None,
                steps=row["steps"],
                wall_s=row["train_s"],
                machine=row["machine"],
                command=row.get("command", "not recorded"),
                commit=row.get("commit"),
                source="benchmarks/results/metric.json",
                notes=notes,
            ),
            p.key if p else None,
        )


#: contrast.json rows that train for a published number: (setting, label) -> (published
#: preset, the preset trained, test-time steps reported).
_CONTRAST = {
    ("5w1s", "MAML"): ("maml-5w1s", "maml-5w1s", "3"),
    ("5w1s", "first-order MAML"): ("fomaml-5w1s", "maml-5w1s --algo fomaml", "3"),
    ("5w1s", "ProtoNet"): ("protonet-5w1s", "protonet-20w1s", "none"),
    ("20w1s", "MAML"): ("maml-20w1s", "maml-20w1s", "10"),
    ("20w1s", "first-order MAML"): ("fomaml-20w1s", "maml-20w1s --algo fomaml", "10"),
    ("20w1s", "ProtoNet"): ("protonet-20w1s", "protonet-20w1s", "none"),
}


def seed_contrast(ledger: dict, db: dict) -> None:
    """The rows of ``results/contrast.json`` that train for a published number (MAML,
    first-order MAML, ProtoNet; its transfer and pre-training baselines have none): 4
    minutes of training each, 200 test tasks, off the papers' protocol."""
    meta = db["meta"]
    for row in db["rows"]:
        target = _CONTRAST.get((row["setting"], row["label"]))
        if target is None:
            continue
        preset, trained, k = target
        p = pub.for_preset(preset)
        ways = int(row["setting"].split("w")[0])
        inner = "" if k == "none" else f" after {k} test-time steps"
        if k == "10":
            inner += " (the preset tests after 5; the contrast measured 0, 1, 3, 10, 50)"
        place(
            ledger,
            make_run(
                p,
                preset=trained,
                as_drawn=tuple(row["accuracy"][k]),
                test_tasks=meta["tasks"],
                ways=ways,
                shots=1,
                queries=15 if ways == 5 else 5,
                transductive=None if row["label"] == "ProtoNet" else True,
                steps=row["trained_steps"],
                wall_s=60 * meta["minutes"],
                machine=meta["machine"],
                command=meta["command"],
                commit=meta["commit"],
                source="benchmarks/results/contrast.json",
                notes=f"`mamlx train --preset {trained}` for {meta['minutes']:g} minutes of "
                f"wall clock, tested{inner}. contrast.md: the 5w1s rows come from the same "
                "command with `--settings 5w1s`; the runs were trained by it without "
                "`--reuse --tasks 200 --settings`.",
                run_id=f"contrast: {row['label']} {row['setting']} [{device_name(meta['machine'])}]",
            ),
            p.key,
        )


def seed_verification(ledger: dict, db: dict) -> None:
    """The one-shot accuracies of ``results/verification.json`` (Siamese network and
    ProtoNet trained for the verification benchmark's budget; its ``tasks`` test tasks)."""
    for row in db["rows"]:
        for setting, (acc, ci) in row.get("fewshot_accuracy", {}).items():
            preset = f"{row['method']}-{setting}"
            p = pub.for_preset(preset)
            if p is None:
                continue
            ways = int(setting.split("w")[0])
            place(
                ledger,
                make_run(
                    p,
                    preset=preset,
                    as_drawn=(acc, ci),
                    test_tasks=db["tasks"],
                    ways=ways,
                    shots=1,
                    queries=15 if ways == 5 else 5,
                    transductive=None,
                    steps=row["steps"],
                    wall_s=row["train_s"],
                    machine=db["machine"],
                    command=row["command"],
                    commit=db["commit"],
                    source="benchmarks/results/verification.json",
                    notes=f"the verification benchmark's model (best step {row['best_step']}, "
                    f"{db['minutes']:g}-minute budget), tested on {db['tasks']} one-shot tasks; "
                    f"benchmark command: `{db['command']}`",
                    run_id=f"verification: {row['method']} [{device_name(db['machine'])}]",
                ),
                p.key,
            )


#: Entry notes kept by the seed (runs that are not reproductions of the entry).
_ENTRY_NOTES = {
    "maml++/omniglot/20w1s/paper": "The MAML++ ablation (benchmarks/results/ablation.md: 60 "
    "steps, 32 filters, meta-batch 4) compares MAML++'s changes at a tiny budget; it is not a "
    "run at this number's settings and is not listed.",
}


def seed(ledger: dict, results: Path = RESULTS) -> dict:
    """Read the runs recorded in ``results/{fewshot,metric,contrast,verification}.json``
    into ``ledger`` (replacing runs of the same id) and refresh it."""
    readers = {
        "fewshot.json": seed_fewshot,
        "metric.json": seed_metric,
        "contrast.json": seed_contrast,
        "verification.json": seed_verification,
    }
    for name, read in readers.items():
        path = results / name
        if path.is_file():
            read(ledger, json.loads(path.read_text()))
    for e in ledger["entries"]:
        e["notes"] = _ENTRY_NOTES.get(e["key"], e.get("notes", ""))
    return refresh(ledger)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ledger", default=str(LEDGER))
    ap.add_argument("--seed", action="store_true", help="(re)read the recorded results files")
    ap.add_argument("--check", action="store_true", help="exit 1 if a generated file is stale")
    args = ap.parse_args(argv)
    path = Path(args.ledger)
    if args.check:
        bad = stale(path)
        print("stale: " + ", ".join(bad) if bad else "up to date")
        return 1 if bad else 0
    with locked(path):
        ledger = load(path)
        if args.seed:
            ledger = seed(ledger)
        save(refresh(ledger), path, readme=README if path.resolve() == LEDGER.resolve() else None)
    print(summary_table(ledger))
    return 0


if __name__ == "__main__":
    sys.exit(main())

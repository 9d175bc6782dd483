"""benchmarks/throughput.py: its PyTorch peers compute what mamlx computes (or are left out),
and its JAX rows time mamlx.fit's own compiled step."""

import importlib.util
import json
import sys
from dataclasses import replace

import numpy as np
import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import throughput  # noqa: E402

needs_torch = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None, reason="the PyTorch peers need the 'bench' extra"
)
# The smallest Omniglot-like setting: 9x9 images, 4 filters, a few classes to sample from.
TINY = replace(throughput.CHECK, name="tiny", image=(9, 9, 1), classes=6)


@needs_torch
@pytest.mark.parametrize("algo", ["maml", "fomaml", "reptile"])
def test_learn2learn_style_loop_has_mamlxs_meta_gradient(algo):
    # Same weights and episodes (odd image sides: torch's padding=1 is JAX's SAME there).
    # Measured (torch 2.13, CPU): 1.0e-6 MAML, 7.5e-7 first order, 1.6e-6 Reptile.
    assert throughput.peer_gradient_error(algo, "loop") < 1e-4


@needs_torch
def test_the_check_tells_first_from_second_order():
    err = throughput.peer_gradient_error("fomaml", "loop", mamlx_algo="maml")
    assert err > 10 * throughput.PEER_TOLERANCE  # measured 0.52 (torch 2.13, CPU)


def test_failed_peers_are_listed_but_not_compared():
    rows = [
        {"impl": "torch-vmap", "meta_grad_error": 1e-2},
        {"impl": "torch-loop", "meta_grad_error": 1e-6},
        {"impl": "torch-loop+tuned-malloc", "meta_grad_error": None},
    ]
    assert [throughput._exact(r) for r in rows] == [False, True, True]
    assert "excluded" in throughput._check_cell(rows[0])
    assert throughput._check_cell(rows[2]) == "-"


def test_jax_rows_time_fits_chunk_of_sampled_steps(tmp_path, monkeypatch):
    monkeypatch.setattr(throughput, "SETTINGS", {"tiny": TINY})
    # The ceiling table's inputs, not measured here (one compilation less; the work per task
    # is the unchanged cost analysis of the meta-gradient step).
    monkeypatch.setattr(throughput, "gemm_peak_gflops", lambda: 100.0)
    monkeypatch.setattr(throughput, "step_gflop_per_task", lambda s, algo: 0.5)
    monkeypatch.setattr(throughput, "_PREPARED", {})
    out = tmp_path / "throughput"
    argv = "--settings tiny --algos fomaml --jax-variants patches/vmap --no-torch --ceiling"
    argv += f" --chunk 2 --repeats 3 --rounds 2 --out {out}"
    result = throughput.main(argv.split())
    (row,) = result["rows"]
    assert result["jax_times"] == "fit step (sampling included)" and result["jax_chunk"] == 2
    assert row["impl"] == "jax[patches/vmap]" and row["steps_per_call"] == 2
    assert row["repeats"] == 4  # 3 steps -> 2 chunks of 2, in each of 2 rounds
    assert np.isfinite(row["loss"]) and row["tasks_per_s"] > 0
    ((compiled, state, _, _),) = throughput._PREPARED.values()
    # Two rounds of 2 untimed + 2 timed chunks of 2 steps, through fit's own step.
    assert int(state.step) == 2 * (2 + 2) * 2
    (bound,) = result["bounds"]
    assert row["gflop_per_task"] == bound["gflop_per_task"] == 0.5
    assert bound["tasks_per_s_at_gemm_peak"] == 200.0
    assert json.loads(out.with_suffix(".json").read_text())["rows"][0]["impl"] == row["impl"]
    assert "fit step (sampling included)" in out.with_suffix(".md").read_text()


def test_variants_name_the_devices_they_shard_over(tmp_path, monkeypatch, capsys):
    assert throughput.parse_variant("patches/map") == ("patches", "map", 1)
    assert throughput.parse_variant("patches/map@2") == ("patches", "map", 2)
    for bad in ("patches", "patches/map@", "patches/map@x", "patches/map@0", "/map", "a/b/c"):
        with pytest.raises(ValueError, match="conv_impl/task_map|at least 1 device"):
            throughput.parse_variant(bad)
    monkeypatch.setattr(throughput, "SETTINGS", {"tiny": TINY})
    many = throughput.jax.device_count() + 1
    for variants, why in (
        (f"patches/map@{many}", "needs"),
        ("patches/map@x", "conv_impl/task_map"),
    ):
        argv = f"--settings tiny --jax-variants {variants} --no-torch --no-ceiling"
        with pytest.raises(SystemExit):  # refused up front, nothing measured
            throughput.main((argv + f" --out {tmp_path / 't'}").split())
        assert why in capsys.readouterr().err
    assert not list(tmp_path.iterdir())

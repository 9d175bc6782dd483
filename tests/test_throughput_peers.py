"""The PyTorch peers of benchmarks/throughput.py compute what mamlx computes (or are left out)."""

import sys

import pytest

from conftest import REPO

pytest.importorskip("torch", reason="the PyTorch peers need the 'bench' extra")
sys.path.insert(0, str(REPO / "benchmarks"))
import throughput  # noqa: E402


@pytest.mark.parametrize("algo", ["maml", "fomaml", "reptile"])
def test_learn2learn_style_loop_has_mamlxs_meta_gradient(algo):
    # Same weights and episodes (odd image sides: torch's padding=1 is JAX's SAME there).
    # Measured (torch 2.13, CPU): 1.0e-6 MAML, 7.5e-7 first order, 1.6e-6 Reptile.
    assert throughput.peer_gradient_error(algo, "loop") < 1e-4


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

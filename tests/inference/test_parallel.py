"""Generation at TP2, PP2 and TP2 x PP2 (gloo ranks) gives the TP1 tokens, greedy and seeded-sampled,
on every rank, from one TP1 checkpoint that reshards on load."""

from __future__ import annotations

import pytest

from nvlm_train.runtime.session import distributed_session
from tests.dist import run_ranks
from tests.inference.workers import generate_worker

pytestmark = pytest.mark.multirank

NEW = 6


@pytest.fixture(scope="module")
def reference(tiny_ckpt):
    with distributed_session():
        return generate_worker(str(tiny_ckpt), NEW, 8), generate_worker(str(tiny_ckpt), NEW, 3, temperature=0.9)


@pytest.mark.parametrize("tp,pp", [(2, 1), (1, 2), (2, 2)], ids=["tp2", "pp2", "tp2pp2"])
def test_layout_gives_the_tp1_tokens(tiny_ckpt, reference, tp, pp):
    from tests.inference.workers import layout_worker

    per_rank = run_ranks(layout_worker, tp * pp, str(tiny_ckpt), tp, pp, NEW)
    greedy, sampled = reference
    assert all(len(tokens) == NEW for _, tokens, _ in greedy)
    for rank, (g, s) in enumerate(per_rank):
        assert g == greedy, (rank, g, greedy)
        assert s == sampled, (rank, s, sampled)

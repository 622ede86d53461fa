"""Generation at TP2, PP2 and TP2 x PP2 (gloo ranks) gives the TP1 tokens, greedy and seeded-sampled,
on every rank, from one TP1 checkpoint that reshards on load. One spawn of 4 ranks runs the three
layouts in turn (TP2 and PP2 with data parallelism 2 beside them)."""

from __future__ import annotations

import pytest

from nvlm_train.runtime.session import distributed_session
from tests.dist import run_ranks
from tests.inference.workers import generate_worker, layouts_worker

pytestmark = pytest.mark.multirank

NEW = 6
LAYOUTS = [(2, 2), (2, 1), (1, 2)]


def test_tp2_pp2_and_tp2pp2_give_the_tp1_tokens(tiny_ckpt):
    with distributed_session():
        greedy = generate_worker(str(tiny_ckpt), NEW, 8)
        sampled = generate_worker(str(tiny_ckpt), NEW, 3, temperature=0.9)
    assert all(len(tokens) == NEW for _, tokens, _ in greedy)
    per_rank = run_ranks(layouts_worker, 4, str(tiny_ckpt), LAYOUTS, NEW)
    for rank, by_layout in enumerate(per_rank):
        assert sorted(by_layout) == sorted(LAYOUTS)
        for layout, (g, s) in by_layout.items():
            assert g == greedy, (rank, layout, g, greedy)
            assert s == sampled, (rank, layout, s, sampled)

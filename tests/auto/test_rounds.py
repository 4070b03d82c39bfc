"""Successive halving: the schedule of rounds, promotion, Pareto ranks."""

from __future__ import annotations

from llmopt.auto.rounds import Round, pareto_ranks, promote, schedule


def test_rounds_thin_out_by_eta_and_grow_recovery_and_proxy_until_the_finalists():
    rounds = schedule(16, 3, 2, 32768, 1024, 4096)
    assert [r.size for r in rounds] == [16, 6, 2]
    assert [r.recovery_tokens for r in rounds] == [0, round(32768 / 3), 32768]
    assert [r.proxy_tokens for r in rounds] == [1024, 3072, 4096]  # capped
    assert [r.final for r in rounds] == [False, False, True]


def test_without_recovery_the_screening_is_the_final_round():
    assert schedule(8, 3, 2, 0, 512, 4096) == [Round(0, 8, 0, 512, True)]


def test_fewer_candidates_than_finalists_all_recover():
    rounds = schedule(2, 3, 3, 1000, 100, 1000)
    assert [(r.size, r.recovery_tokens, r.final) for r in rounds] == [
        (2, 0, False),
        (2, 1000, True),
    ]


def _outcome(cid: str, kl: float, cost: float = 0.5, feasible: bool = True) -> dict:
    return {"candidate": cid, "kl": kl, "cost": cost, "feasible": feasible}


def test_promotion_keeps_the_lowest_proxy_among_the_feasible():
    outcomes = [_outcome("a", 0.3), _outcome("b", 0.1), _outcome("c", 0.05, feasible=False),
                _outcome("d", 0.2)]  # fmt: skip
    assert promote(outcomes, 2) == ["b", "d"]
    assert promote(outcomes, 10) == ["b", "d", "a"]


def test_promotion_breaks_ties_by_id_whatever_the_order_they_finished_in():
    outcomes = [_outcome("z", 0.1), _outcome("a", 0.1), _outcome("m", 0.1)]
    assert promote(outcomes, 2) == ["a", "m"]
    assert promote(outcomes[::-1], 2) == ["a", "m"]


def test_pareto_ranks_peel_fronts():
    points = [(1.0, 5.0), (2.0, 2.0), (5.0, 1.0), (3.0, 3.0), (6.0, 6.0)]
    assert pareto_ranks(points) == [0, 0, 0, 1, 2]


def test_pareto_promotion_spans_the_front_before_the_lowest_proxy():
    outcomes = [_outcome("small", 0.9, cost=0.3), _outcome("good", 0.1, cost=0.6),
                _outcome("dominated", 0.2, cost=0.65)]  # fmt: skip
    assert promote(outcomes, 2) == ["good", "dominated"]
    assert promote(outcomes, 2, pareto=True) == ["good", "small"]

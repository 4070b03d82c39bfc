"""Sharing plans: each strategy's map, keep-ends, explicit maps and their errors."""

from __future__ import annotations

import pytest

from llmopt.errors import BadInput
from llmopt.share.init import INITS
from llmopt.share.plan import make_plan, parse_map


@pytest.mark.parametrize(
    ("strategy", "n", "k", "expected"),
    [
        ("cycle", 6, 3, (0, 1, 2, 0, 1, 2)),
        ("cycle", 5, 2, (0, 1, 0, 1, 0)),
        ("sequence", 6, 3, (0, 0, 1, 1, 2, 2)),
        ("sequence", 7, 3, (0, 0, 0, 1, 1, 2, 2)),
        ("adjacent", 6, 3, (0, 0, 1, 1, 2, 2)),
        ("adjacent", 6, 4, (0, 1, 1, 2, 3, 3)),
        ("adjacent", 5, 3, (0, 1, 1, 2, 2)),
        ("cycle", 4, 4, (0, 1, 2, 3)),
        ("sequence", 4, 1, (0, 0, 0, 0)),
    ],
)
def test_strategy_maps(strategy, n, k, expected):
    plan = make_plan(n, k, strategy)
    assert plan.block_of == expected
    assert plan.num_blocks == k


def test_keep_ends_gives_the_ends_their_own_blocks():
    plan = make_plan(8, 4, "cycle", keep_ends=True)
    assert plan.block_of == (0, 1, 2, 1, 2, 1, 2, 3)
    assert make_plan(8, 4, "sequence", keep_ends=True).block_of == (0, 1, 1, 1, 2, 2, 2, 3)


def test_groups_and_owners():
    plan = make_plan(6, 2, "cycle")
    assert plan.groups() == [[0, 2, 4], [1, 3, 5]]
    assert [plan.owner(b) for b in range(2)] == [0, 1]
    assert plan.as_text() == "0,1,0,1,0,1"


@pytest.mark.parametrize(
    ("n", "k", "strategy", "keep_ends", "needle"),
    [
        (4, 0, "cycle", False, "--unique-layers 0"),
        (4, 5, "cycle", False, "--unique-layers 5"),
        (6, 2, "adjacent", False, "at least 3 blocks"),
        (6, 2, "cycle", True, "--keep-ends needs at least 3"),
        (6, 2, "cyc", False, "did you mean 'cycle'"),
    ],
)
def test_bad_plans_name_the_value(n, k, strategy, keep_ends, needle):
    with pytest.raises(BadInput, match=needle):
        make_plan(n, k, strategy, keep_ends)


def test_explicit_map_is_renumbered_in_order_of_first_use():
    assert parse_map("2,2,0,0", 4).block_of == (0, 0, 1, 1)
    assert parse_map("0, 1, 0, 1", 4, 2).block_of == (0, 1, 0, 1)


@pytest.mark.parametrize(
    ("text", "k", "needle"),
    [
        ("0,0,1", None, "has 3 entries, the model has 4"),
        ("0,0,1,1,2", None, "has 5 entries"),
        ("0,0,1,5", 3, "unknown block id 5"),
        ("0,0,1,1", 3, "block 2 is used by no layer"),
        ("0,a,1,1", None, "comma-separated"),
        ("0,-1,1,1", None, "negative"),
    ],
)
def test_bad_maps(text, k, needle):
    with pytest.raises(BadInput, match=needle):
        parse_map(text, 4, k)


def test_initialisation_weightings():
    plan = make_plan(6, 2, "cycle")
    assert INITS["average"](plan) == [
        {0: 1 / 3, 2: 1 / 3, 4: 1 / 3},
        {1: 1 / 3, 3: 1 / 3, 5: 1 / 3},
    ]
    assert INITS["first"](plan) == [{0: 1.0}, {1: 1.0}]
    # Stepwise spreads the sources over the depth: block 1 of 2 starts from the last layer.
    assert INITS["stepwise"](plan) == [{0: 1.0}, {5: 1.0}]
    ten = make_plan(30, 10, "cycle")
    assert [next(iter(w)) for w in INITS["stepwise"](ten)] == [0, 3, 6, 10, 13, 16, 19, 23, 26, 29]


def test_stepwise_keeps_a_single_layer_block_its_own_weights():
    plan = make_plan(4, 3, "adjacent")  # (0, 1, 2, 2): layer 1 is alone
    assert INITS["stepwise"](plan)[1] == {1: 1.0}

"""Which teacher block each student block reproduces: given, from slimming, same depth, spread."""

from __future__ import annotations

import pytest

from llmopt.errors import BadInput
from llmopt.reconstruct.layers import choose_layer_map, kept_layers, parse_layer_map, segment_ends


def _slim(before: int, removed: list[int]) -> dict:
    return {
        "stage": "slim",
        "metrics": {"slim": {"shape_before": {"layers": before}, "removed": {"layers": removed}}},
    }


def test_each_block_absorbs_the_removed_blocks_after_it():
    assert segment_ends([0, 2, 3], 5) == [1, 2, 4]
    assert segment_ends([0, 1, 2, 3], 4) == [0, 1, 2, 3]


def test_same_depth_maps_block_i_to_block_i():
    assert choose_layer_map(None, 4, 4, None) == ([0, 1, 2, 3], "same depth")


def test_a_shallower_student_spreads_evenly_and_ends_on_the_last_block():
    targets, how = choose_layer_map(None, 2, 4, None)
    assert (targets, how) == ([1, 3], "evenly spread")
    assert choose_layer_map(None, 3, 30, None)[0] == [9, 19, 29]


def test_a_slimmed_student_follows_its_record_and_several_slimmings_compose():
    record = {**_slim(6, [1, 4]), "history": []}  # kept 0, 2, 3, 5
    assert kept_layers(record) == (6, [0, 2, 3, 5])
    assert choose_layer_map(None, 4, 6, record) == ([1, 2, 4, 5], "slimming record")
    # A second slimming of the 4-layer model removes its layer 0 (original 0): kept 2, 3, 5.
    again = {**_slim(4, [0]), "history": [record]}
    assert kept_layers(again) == (6, [2, 3, 5])
    # A teacher of another depth than the slimmed original: the record does not apply.
    assert choose_layer_map(None, 4, 8, record)[1] == "evenly spread"


def test_a_width_only_slimming_leaves_block_i_to_block_i():
    assert kept_layers({**_slim(4, []), "history": []}) is None
    assert choose_layer_map(None, 4, 4, _slim(4, []))[1] == "same depth"


def test_a_given_map_wins_and_is_checked():
    assert choose_layer_map("0:1, 1:3", 2, 4, None) == ([1, 3], "given")
    with pytest.raises(BadInput, match="no target for student block"):
        parse_layer_map("0:1", 2, 4)
    with pytest.raises(BadInput, match="must rise"):
        parse_layer_map("0:3,1:1", 2, 4)
    with pytest.raises(BadInput, match="the teacher has 4 blocks"):
        parse_layer_map("0:1,1:4", 2, 4)
    with pytest.raises(BadInput, match="mapped twice"):
        parse_layer_map("0:1,0:2", 2, 4)
    with pytest.raises(BadInput, match="expected STUDENT:TEACHER"):
        parse_layer_map("0-1", 1, 4)


def test_a_student_deeper_than_its_teacher_is_refused():
    with pytest.raises(BadInput, match="the student has 5 blocks, the teacher 4"):
        choose_layer_map(None, 5, 4, None)

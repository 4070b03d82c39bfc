"""`llmopt auto` refuses bad input with one line and exit status 2, before any work."""

from __future__ import annotations

import pytest

from llmopt.auto.budget import Budget, parse_budget
from llmopt.cli.auto import parse_duration
from llmopt.errors import BadInput


@pytest.mark.parametrize(
    ("text", "expected"),
    [("params=0.6", Budget("params", 0.6)), ("nonzero=0.5", Budget("nonzero", 0.5)),
     ("bytes=1", Budget("bytes", 1.0)), (" latency = 0.7 ", Budget("latency", 0.7))],
)  # fmt: skip
def test_budgets_parse(text, expected):
    assert parse_budget(text) == expected


@pytest.mark.parametrize(
    ("budget", "says"),
    [
        ("params=1.5", "must be a fraction in (0, 1]"),
        ("foo=0.5", "unknown kind 'foo'"),
        ("bytes=0", "must be a fraction in (0, 1]"),
        ("nonzero=-0.2", "must be a fraction in (0, 1]"),
        ("params=nan", "must be a fraction in (0, 1]"),
        ("latency=fast", "is not a number"),
        ("params", "expected KIND=FRACTION"),
        # tiny-llama's embeddings and head alone are 31% of its parameters
        ("params=0.3", "no candidate can meet it"),
        ("nonzero=0.2", "no candidate can meet it"),
        ("bytes=0.05", "no candidate can meet it"),
    ],
)
def test_bad_budgets_are_refused_with_one_line_and_nothing_written(cli, tmp_path, budget, says):
    out = tmp_path / "search"
    result = cli("auto", "tiny-llama", "--budget", budget, "-o", out)
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert says in lines[0] and "--budget" in lines[0]
    assert not out.exists()


def test_the_refusal_names_the_smallest_candidate(cli, tmp_path):
    result = cli("auto", "tiny-llama", "--budget", "params=0.3", "-o", tmp_path / "s")
    assert "keeps 34.1% of its unique parameters" in result.err


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--time-limit", "15x"], "--time-limit '15x'"),
        (["--time-limit", "0"], "must be longer than zero"),
        (["--recovery", "stepz=3"], "unknown key 'stepz'"),
        (["--recovery", "seq_len"], "expected KEY=VALUE"),
        (["--trials", "0"], "--trials"),
    ],
)
def test_bad_options_are_refused_with_one_line(cli, tmp_path, flags, says):
    out = tmp_path / "search"
    result = cli("auto", "tiny-llama", "--budget", "params=0.6", "-o", out, *flags)
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], result.err
    assert not out.exists()


def test_a_folder_that_is_not_a_search_is_refused(cli, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = cli("auto", "tiny-llama", "--budget", "params=0.6", "-o", tmp_path)
    assert result.code == 2 and "is not an llmopt auto folder" in result.err
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize(
    ("text", "seconds"), [("900", 900), ("90s", 90), ("15m", 900), ("1h30m", 5400), ("2.5h", 9000)]
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


def test_a_bad_duration_is_bad_input():
    with pytest.raises(BadInput):
        parse_duration("15 minutes")

"""Every verb's --help prints (argparse %-formats help text: one stray '%' in a config
docstring made `llmopt slim --help` crash)."""

from __future__ import annotations

import pytest

from llmopt.cli import build_parser


def _verbs() -> list[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sorted(sub.choices)


@pytest.mark.parametrize("verb", _verbs())
def test_every_verb_prints_its_help(cli, verb):
    result = cli(verb, "--help")
    assert result.code == 0, result.err
    assert f"llmopt {verb}" in result.out

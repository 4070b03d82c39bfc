"""Outputs: --overwrite replaces only llmopt's folders; locks, leftovers, umask, destinations."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from llmopt.outputs import output_lock

from .conftest import QUICK, copy_model, leftovers, one_line, tree

SHARE = ("--unique-layers", "2", "--no-eval", "--no-progress")
"""The cheapest stage that writes a checkpoint (no data, no training)."""


@pytest.fixture
def llmopt_output(cli, tmp_path):
    out = tmp_path / "out"
    assert cli("share", "tiny-llama", "-o", out, *SHARE).code == 0
    return out


def test_overwrite_refuses_a_folder_llmopt_did_not_write(cli, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    before = tree(tmp_path)
    r = cli("share", "tiny-llama", "-o", mine, *SHARE, "--overwrite")
    assert r.code == 2 and "not replaced: it has no llmopt.json" in one_line(r.err)
    assert tree(tmp_path) == before


def test_overwrite_refuses_an_llmopt_output_holding_other_files(cli, tmp_path, llmopt_output):
    (llmopt_output / "notes.txt").write_text("mine")
    before = tree(tmp_path)
    r = cli("share", "tiny-llama", "-o", llmopt_output, *SHARE, "--overwrite")
    assert r.code == 2 and "files llmopt did not write (notes.txt)" in one_line(r.err)
    assert tree(tmp_path) == before


@pytest.mark.parametrize("where", ["the input itself", "a folder holding the input"])
def test_overwrite_never_replaces_the_input(cli, tmp_path, tiny_llama_dir, where):
    model = copy_model(tiny_llama_dir, tmp_path / "work" / "model")
    target = model if where == "the input itself" else model.parent
    before = tree(tmp_path)
    r = cli("share", model, "-o", target, *SHARE, "--overwrite")
    assert r.code == 2 and "would overwrite the input model" in one_line(r.err)
    assert tree(tmp_path) == before


@pytest.mark.parametrize("overwrite", [(), ("--overwrite",)])
def test_output_dot_is_refused_before_any_work(cli, tmp_path, monkeypatch, overwrite):
    (tmp_path / "data.csv").write_text("a,b\n")
    monkeypatch.chdir(tmp_path)
    before = tree(tmp_path)
    r = cli("share", "tiny-llama", "-o", ".", *SHARE, *overwrite)
    line = one_line(r.err)
    assert r.code == 2 and ("not empty" in line or "no llmopt.json" in line)
    assert tree(tmp_path) == before


def test_overwrite_of_an_llmopt_output_is_whole_or_nothing(cli, tmp_path, llmopt_output,
                                                          monkeypatch):  # fmt: skip
    import llmopt.pipeline.runner as runner

    before = tree(llmopt_output)

    def killed(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(runner, "write_record", killed)  # fails at the very end of the save
    r = cli("share", "tiny-llama", "-o", llmopt_output, *SHARE, "--overwrite")
    assert r.code == 1 and "disk full" in one_line(r.err)
    assert tree(llmopt_output) == before and leftovers(tmp_path) == []
    monkeypatch.undo()
    r = cli("share", "tiny-llama", "-o", llmopt_output, *SHARE, "--overwrite",
            "--strategy", "sequence")  # fmt: skip
    assert r.code == 0, r.err
    assert tree(llmopt_output) != before and leftovers(tmp_path) == []


def test_two_runs_into_one_output_the_second_is_refused_at_once(cli, tmp_path):
    out = tmp_path / "out"
    with output_lock(out):  # another run holds it
        r = cli("share", "tiny-llama", "-o", out, *SHARE)
        assert r.code == 2 and "another llmopt run is writing it" in one_line(r.err)
        assert not out.exists()
        r = cli("train", "tiny-llama", "-o", tmp_path / "other", *QUICK, "--run-dir", out)
        assert r.code == 2 and f"--run-dir {out}: another llmopt run" in one_line(r.err)
    assert leftovers(tmp_path) == []  # the lock is gone with its holder


def test_stale_temporaries_of_a_killed_run_are_removed(cli, tmp_path):
    out = tmp_path / "out"
    for name in (".out.tmp-dead1", ".out.old-4242"):  # what a SIGKILLed run leaves
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"half")
    (tmp_path / ".out.lock").write_text("")  # its lock file, no longer held
    r = cli("share", "tiny-llama", "-o", out, *SHARE)
    assert r.code == 0, r.err
    assert leftovers(tmp_path) == [] and (out / "llmopt.json").is_file()


def test_outputs_follow_the_umask(cli, tmp_path):
    previous = os.umask(0o027)
    try:
        r = cli("train", "tiny-llama", "-o", tmp_path / "out", *QUICK, "--save-every", "1")
    finally:
        os.umask(previous)
    assert r.code == 0, r.err
    paths = [p for p in tmp_path.rglob("*")]
    assert any(p.name == "model.safetensors" for p in paths)  # the output
    assert any(p.name == "model.pt" for p in paths)  # a checkpoint in the run folder
    for path in paths:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o750 if path.is_dir() else 0o640), (path, oct(mode))


def test_an_output_whose_parent_cannot_be_made_is_refused_before_work(cli, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    r = cli("share", "tiny-llama", "-o", tmp_path / "file" / "out", *SHARE)
    assert r.code == 2 and "cannot create its folder" in one_line(r.err)


def test_an_unwritable_output_parent_is_refused_before_work(cli, tmp_path, monkeypatch):
    import llmopt.outputs as outputs

    parent = tmp_path / "locked"
    parent.mkdir(mode=0o500)
    if os.geteuid() == 0:  # root may write anywhere: deny it as the kernel denies a user
        access = os.access
        monkeypatch.setattr(
            outputs.os, "access", lambda path, mode: Path(path) != parent and access(path, mode)
        )
    monkeypatch.setattr("llmopt.pipeline.runner.load_checkpoint", _must_not_load)
    r = cli("share", "tiny-llama", "-o", parent / "out", *SHARE)
    assert r.code == 2 and f"its folder {parent} is not writable" in one_line(r.err)
    r = cli("train", "tiny-llama", "-o", tmp_path / "out", *QUICK, "--run-dir", parent / "run")
    assert r.code == 2 and f"its folder {parent} is not writable" in one_line(r.err)
    assert list(parent.iterdir()) == [] and not (tmp_path / "out").exists()


def test_json_pointing_at_a_folder_is_refused_before_work(cli, tmp_path, monkeypatch):
    import llmopt.pipeline.runner as runner

    monkeypatch.setattr(runner, "load_checkpoint", _must_not_load)
    before = tree(tmp_path)
    r = cli("eval", "tiny-llama", "--json", tmp_path, "--no-speed", "--no-progress")
    assert r.code == 2 and "is a folder" in one_line(r.err)
    assert tree(tmp_path) == before


def _must_not_load(*args, **kwargs):
    raise AssertionError("the model was loaded before the bad input was found")

"""A run folder belongs to one run: reruns refused or clean, resumes exact, rotation safe."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from llmopt.train import Callback
from llmopt.train import checkpoint as ckpt

from .conftest import QUICK, leftovers, one_line, tree

SAVE = ("--save-every", "1", "--keep-last", "10", "--log-every", "1")


def _steps_logged(run_dir) -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines]


def _checkpoints(run_dir) -> list[str]:
    return [p.name for p in ckpt.list_checkpoints(run_dir / "checkpoints")]


@pytest.fixture
def used_run(cli, tmp_path):
    """A finished 4-step run whose run folder R holds checkpoints 1..4 and 4 metric rows."""
    run_dir = tmp_path / "R"
    r = cli("train", "tiny-llama", "-o", tmp_path / "first", *QUICK, *SAVE, "--steps", "4",
            "--run-dir", run_dir)  # fmt: skip
    assert r.code == 0, r.err
    assert _checkpoints(run_dir) == [ckpt.checkpoint_name(s) for s in (1, 2, 3, 4)]
    return run_dir


def test_a_fresh_run_into_a_used_run_folder_is_refused_and_changes_nothing(cli, tmp_path, used_run):
    before = tree(tmp_path)
    r = cli("train", "tiny-llama", "-o", tmp_path / "second", *QUICK, "--run-dir", used_run)
    assert r.code == 2
    line = one_line(r.err)
    assert f"--run-dir {used_run}" in line and "holds an earlier run" in line
    assert f"--resume {used_run}" in line and "--overwrite" in line  # both ways out
    assert tree(tmp_path) == before  # nothing written, nothing lost


def test_overwrite_removes_the_old_run_only_after_every_check(cli, tmp_path, used_run):
    before = tree(used_run)
    # Found in `prepare` (the data is too small for the step), after `check` passed.
    r = cli("train", "tiny-llama", "-o", tmp_path / "second", *QUICK, "--run-dir", used_run,
            "--overwrite", "--micro-batch-size", "100000")  # fmt: skip
    assert r.code == 2 and "one step needs 100000" in one_line(r.err)
    assert tree(used_run) == before


def test_overwrite_with_a_shorter_run_starts_clean(cli, tmp_path, used_run):
    (used_run / "notes.md").write_text("the user's own file")
    r = cli("train", "tiny-llama", "-o", tmp_path / "second", *QUICK, *SAVE,
            "--run-dir", used_run, "--overwrite")  # fmt: skip
    assert r.code == 0, r.err
    # Only this run's checkpoints and rows: nothing of the old run survives to be resumed.
    assert _checkpoints(used_run) == [ckpt.checkpoint_name(1), ckpt.checkpoint_name(2)]
    assert _steps_logged(used_run) == [1, 2]
    assert (used_run / "notes.md").read_text() == "the user's own file"  # not llmopt's: kept
    newest = ckpt.find_checkpoint(used_run)
    assert ckpt.read_meta(newest)["config"]["steps"] == 2  # the new run's, not the old one's
    assert not [n for n in leftovers(tmp_path) if n.endswith(".lock")]


def _weights(folder):
    return load_file(folder / "model.safetensors")


def test_resume_continues_exactly_the_run_it_names(cli, tmp_path, used_run):
    step2 = used_run / "checkpoints" / ckpt.checkpoint_name(2)
    # Into a new run folder: the result equals the straight run, metrics read as one run.
    r = cli("train", "tiny-llama", "-o", tmp_path / "resumed", *QUICK, *SAVE, "--steps", "4",
            "--resume", step2)  # fmt: skip
    assert r.code == 0, r.err
    straight, resumed = _weights(tmp_path / "first"), _weights(tmp_path / "resumed")
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert _steps_logged(tmp_path / "resumed.train") == [1, 2, 3, 4]
    # Back into its own folder from an earlier step: its later checkpoints would be lost.
    before = tree(used_run)
    r = cli("train", "tiny-llama", "-o", tmp_path / "again", *QUICK, *SAVE, "--steps", "4",
            "--resume", step2, "--run-dir", used_run)  # fmt: skip
    assert r.code == 2
    line = one_line(r.err)
    assert "later checkpoints" in line and ckpt.checkpoint_name(4) in line
    assert f"--resume {used_run}" in line and "--overwrite" in line
    assert tree(used_run) == before
    r = cli("train", "tiny-llama", "-o", tmp_path / "again", *QUICK, *SAVE, "--steps", "4",
            "--resume", step2, "--run-dir", used_run, "--overwrite")  # fmt: skip
    assert r.code == 0, r.err
    again = _weights(tmp_path / "again")
    assert all(torch.equal(straight[k], again[k]) for k in straight)
    assert _steps_logged(used_run) == [1, 2, 3, 4]


def test_a_resume_into_a_folder_of_another_run_is_refused(cli, tmp_path, used_run):
    r = cli("train", "tiny-llama", "-o", tmp_path / "other", *QUICK, *SAVE, "--steps", "3",
            "--run-dir", tmp_path / "R2")  # fmt: skip
    assert r.code == 0, r.err
    before = tree(tmp_path / "R2")
    r = cli("train", "tiny-llama", "-o", tmp_path / "mix", *QUICK, *SAVE, "--steps", "4",
            "--resume", used_run, "--run-dir", tmp_path / "R2")  # fmt: skip
    assert r.code == 2 and "holds another run" in one_line(r.err)
    assert tree(tmp_path / "R2") == before


class StopAt(Callback):
    """Asks the trainer to stop (as Ctrl-C does) before step `at`."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_start(self, trainer) -> None:
        if trainer.step == self.at:
            trainer.request_stop()


def test_rotation_after_an_interrupted_run_keeps_the_new_runs_newest(tiny_llama_dir, tmp_path,
                                                                      tiny_tokenizer):  # fmt: skip
    """The library trainer with a run folder that an interrupted longer run left."""
    from llmopt import load_model
    from llmopt.train import TrainConfig, TrainingInterrupted, run_training
    from llmopt.train.data import RowSource, packed_rows

    ids = torch.randint(
        0, len(tiny_tokenizer), (16 * 32,), generator=torch.Generator().manual_seed(1)
    )

    def train(steps: int, callbacks=()):
        config = TrainConfig(steps=steps, micro_batch_size=2, seq_len=32, save_every=2,
                             keep_last=2, progress=False, precision="fp32")  # fmt: skip
        source = RowSource(packed_rows(ids, 32), pad_id=0)
        return run_training(load_model(tiny_llama_dir), config, source, callbacks=callbacks,
                            run_dir=tmp_path)  # fmt: skip

    with pytest.raises(TrainingInterrupted):
        train(20, [StopAt(9)])
    assert _checkpoints(tmp_path) == [ckpt.checkpoint_name(8), ckpt.checkpoint_name(9)]
    train(4)  # a shorter run: its checkpoints 2 and 4 are older by name than 8 and 9
    assert _checkpoints(tmp_path) == [ckpt.checkpoint_name(2), ckpt.checkpoint_name(4)]
    assert ckpt.read_meta(ckpt.find_checkpoint(tmp_path))["config"]["steps"] == 4

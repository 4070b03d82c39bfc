"""Bad input is exit 2, one line, before the expensive work: data, checkpoints, records."""

from __future__ import annotations

import json
import shutil

import pytest

import llmopt.pipeline.runner as runner
from llmopt.train import checkpoint as ckpt

from .conftest import QUICK, copy_model, one_line, tree


def _must_not_load(*args, **kwargs):
    raise AssertionError("the model was loaded before the bad input was found")


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if the stage loads its input model (the refusal must come first)."""
    monkeypatch.setattr(runner, "load_checkpoint", _must_not_load)


@pytest.fixture(scope="module")
def bad_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    (folder / "fake.parquet").write_text("text\nthis is a CSV file, not parquet\n")
    (folder / "latin1.jsonl").write_bytes(b'{"text": "caf\xe9 au lait"}\n')
    (folder / "latin1.txt").write_bytes(b"caf\xe9 au lait\n\nsecond paragraph\n")
    return folder


STAGES_WITH_DATA = {
    "train": ("--data", ("-o", "OUT", *QUICK)),
    "prune": ("--calib-data", ("-o", "OUT", "--method", "wanda", "--sparsity", "0.5",
                               "--no-eval", "--no-progress")),
    "eval": ("--data", ("--no-speed", "--no-progress")),
}  # fmt: skip


@pytest.mark.parametrize("stage", list(STAGES_WITH_DATA))
@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("fake.parquet", "not a readable parquet file"),
        ("latin1.jsonl", "not UTF-8 text (byte 0xe9 at offset 13)"),
        ("latin1.txt", "not UTF-8 text (byte 0xe9 at offset 3)"),
    ],
)
def test_bad_data_files_are_refused_before_the_model_loads(cli, tmp_path, bad_data, no_model_load,
                                                            stage, name, message):  # fmt: skip
    flag, argv = STAGES_WITH_DATA[stage]
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in argv]
    r = cli(stage, "tiny-llama", *argv, flag, bad_data / name)
    assert r.code == 2
    line = one_line(r.err)
    assert str(bad_data / name) in line and message in line
    assert list(tmp_path.iterdir()) == []


def test_the_measurement_data_is_checked_before_the_model_loads(cli, tmp_path, bad_data,
                                                                no_model_load):  # fmt: skip
    r = cli("share", "tiny-llama", "-o", tmp_path / "out", "--unique-layers", "2",
            "--eval-data", bad_data / "fake.parquet")  # fmt: skip
    assert r.code == 2 and "not a readable parquet file" in one_line(r.err)


def test_a_bad_byte_past_the_first_megabyte_is_still_bad_input(cli, tmp_path):
    data = tmp_path / "long.jsonl"
    line = json.dumps({"text": "plain ascii text " * 8}) + "\n"
    data.write_bytes(line.encode() * (2**20 // len(line) + 10) + b'{"text": "\xff"}\n')
    r = cli("train", "tiny-llama", "-o", tmp_path / "out", *QUICK, "--data", data)
    assert r.code == 2 and f"{data}:" in one_line(r.err) and "not UTF-8" in r.err
    assert not (tmp_path / "out").exists()


def test_data_that_yields_no_rows_is_bad_input(cli, tmp_path):
    data = tmp_path / "short.txt"
    data.write_text("a few words\n\nand a few more\n\nthree paragraphs\n")
    r = cli("train", "tiny-llama", "-o", tmp_path / "out", *QUICK, "--data", data)
    assert r.code == 2 and "no rows" in one_line(r.err)
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A complete checkpoint after step 2 of a tiny run."""
    from llmopt.cli import main

    out = tmp_path_factory.mktemp("ck") / "out"
    assert main(["train", "tiny-llama", "-o", str(out), *QUICK, "--save-every", "2"]) == 0
    return out.with_name("out.train") / "checkpoints" / ckpt.checkpoint_name(2)


def _cut(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _flip_a_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the tensor data: the zip still opens
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncated model": (
        lambda c: _cut(c / "model.pt"),
        "truncated or corrupt checkpoint (model.pt",
    ),
    "flipped byte": (lambda c: _flip_a_byte(c / "optimizer.pt"), "fails its CRC"),
    "missing file": (
        lambda c: (c / "rng.pt").unlink(),
        "incomplete checkpoint (rng.pt is missing)",
    ),
    "cut trainer.json": (lambda c: _cut(c / "trainer.json"), "corrupt checkpoint (trainer.json"),
    "trainer.json a list": (
        lambda c: (c / "trainer.json").write_text("[1, 2]"),
        "trainer.json is not a JSON object",
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_resume_checkpoint_is_refused_before_the_model_loads(
    cli, tmp_path, checkpoint, no_model_load, damage
):
    copy = tmp_path / "run" / "checkpoints" / checkpoint.name
    shutil.copytree(checkpoint, copy)
    harm, message = DAMAGE[damage]
    harm(copy)
    before = tree(tmp_path)
    r = cli("train", "tiny-llama", "-o", tmp_path / "out", *QUICK, "--resume", copy)
    assert r.code == 2
    line = one_line(r.err)
    assert f"--resume {copy}" in line and message in line
    assert tree(tmp_path) == before


def test_resume_on_other_data_is_refused_before_the_measurement(cli, tmp_path, checkpoint,
                                                                monkeypatch):  # fmt: skip
    def no_measuring(*args, **kwargs):
        raise AssertionError("measured before the data was checked")

    monkeypatch.setattr(runner, "evaluate_model", no_measuring)
    data = tmp_path / "other.txt"
    data.write_text("\n\n".join(f"paragraph {i} " + "word " * 80 for i in range(40)))
    r = cli("train", "tiny-llama", "-o", tmp_path / "out", "--steps", "2", "--micro-batch-size",
            "2", "--seq-len", "32", "--resume", checkpoint, "--data", data)  # fmt: skip
    assert r.code == 2 and "not the same data" in one_line(r.err)


def test_a_record_that_is_not_a_json_object_is_bad_input(cli, tmp_path, tiny_llama_dir):
    model = copy_model(tiny_llama_dir, tmp_path / "m")
    (model / "llmopt.json").write_text('["not", "a", "record"]')
    r = cli("eval", model, "--no-speed", "--no-progress")
    assert r.code == 2 and "llmopt.json: corrupt (not a JSON object)" in one_line(r.err)


def test_a_teacher_too_large_for_memory_is_refused_before_the_student_loads(
    cli, tmp_path, tiny_llama_dir, no_model_load
):
    teacher = copy_model(tiny_llama_dir, tmp_path / "teacher")
    config = json.loads((teacher / "config.json").read_text())
    (teacher / "config.json").write_text(json.dumps({**config, "hidden_size": 2**30}))
    r = cli("distill", "tiny-llama", "--teacher", teacher, "-o", tmp_path / "out", *QUICK)
    assert r.code == 2
    assert f"--teacher {teacher}: config.json describes" in one_line(r.err)
    assert not (tmp_path / "out").exists()

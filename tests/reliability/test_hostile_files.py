"""Hostile or damaged checkpoints are refused from their numbers, before any allocation."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import save_file

from .conftest import QUICK, copy_model, one_line


def _edit_config(folder: Path, **values) -> Path:
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **values}))
    return folder


def _rewrite(path: Path, tensors=None, metadata=None) -> None:
    """Rewrite a safetensors file with some tensors or metadata entries replaced."""
    with safe_open(str(path), framework="pt") as handle:
        old_meta = handle.metadata() or {}
        old = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    save_file({**old, **(tensors or {})}, str(path), metadata={**old_meta, **(metadata or {})})


@pytest.fixture(scope="module")
def sparse_dir(tmp_path_factory):
    from llmopt.cli import main

    out = tmp_path_factory.mktemp("sparse") / "m"
    assert main(["prune", "tiny-llama", "-o", str(out), "--method", "magnitude", "--sparsity",
                 "0.5", "--save-format", "sparse", "--no-eval", "--no-progress"]) == 0  # fmt: skip
    return out


@pytest.fixture(scope="module")
def shared_dir(tmp_path_factory):
    from llmopt.cli import main

    out = tmp_path_factory.mktemp("shared") / "m"
    assert main(["share", "tiny-llama", "-o", str(out), "--unique-layers", "2",
                 "--save-format", "shared", "--no-eval", "--no-progress"]) == 0  # fmt: skip
    return out


def _huge_sparse(sparse_dir: Path, dest: Path) -> Path:
    """A sparse checkpoint whose header claims a 10^10-element tensor (a 2 KB change)."""
    model = copy_model(sparse_dir, dest)
    weights = model / "sparse_model.safetensors"
    with safe_open(str(weights), framework="pt") as handle:
        shapes = json.loads(handle.metadata()["shapes"])
    name = next(iter(shapes))
    _rewrite(weights, metadata={"shapes": json.dumps({**shapes, name: [100_000, 100_000]})})
    return model


def _refused(cli, tmp_path, model, *messages: str) -> str:
    out = tmp_path / "out"
    r = cli("train", model, "-o", out, *QUICK)
    assert r.code == 2, r.err
    line = one_line(r.err)
    for message in messages:
        assert message in line, line
    assert not out.exists() and not out.with_name("out.train").exists()
    return line


def test_absurd_layer_count_is_refused_before_building_anything(cli, tmp_path, tiny_llama_dir):
    model = _edit_config(copy_model(tiny_llama_dir, tmp_path / "m"), num_hidden_layers=10**6)
    _refused(cli, tmp_path, model, "num_hidden_layers=1000000 is not a count in [0, 1024]")


def test_a_config_too_large_for_memory_is_refused(cli, tmp_path, tiny_llama_dir):
    model = _edit_config(copy_model(tiny_llama_dir, tmp_path / "m"), hidden_size=2**30)  # terabytes
    _refused(cli, tmp_path, model, "config.json describes", "more than the", "of memory")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"intermediate_size": "wide"}, "cannot read its config"),
        ({"num_attention_heads": 0}, "integer modulo by zero"),
        ({"hidden_size": -64}, "config.json does not describe a model"),
        ({"vocab_size": -1}, "config.json does not describe a model"),
    ],
)
def test_a_config_that_describes_no_model_is_bad_input(cli, tmp_path, tiny_llama_dir, values,
                                                       message):  # fmt: skip
    model = _edit_config(copy_model(tiny_llama_dir, tmp_path / "m"), **values)
    _refused(cli, tmp_path, model, message)


def test_dense_header_disagreeing_with_config(cli, tmp_path, tiny_llama_dir):
    model = copy_model(tiny_llama_dir, tmp_path / "m")
    weights = model / "model.safetensors"
    with safe_open(str(weights), framework="pt") as handle:
        embed = handle.get_tensor("model.embed_tokens.weight")
    _rewrite(weights, {"model.embed_tokens.weight": embed.reshape(256, 128).contiguous()})
    _refused(cli, tmp_path, model, "'model.embed_tokens.weight' has shape [256, 128]", "[512, 64]")


def test_sparse_header_disagreeing_with_config(cli, tmp_path, sparse_dir):
    model = copy_model(sparse_dir, tmp_path / "m")
    weights = model / "sparse_model.safetensors"
    with safe_open(str(weights), framework="pt") as handle:
        name = next(k for k in handle.keys() if k.endswith("::bitmask"))  # noqa: SIM118
        mask = handle.get_tensor(name)
    _rewrite(weights, {name: mask[:-1].clone()})  # one byte short of its tensor
    _refused(cli, tmp_path, model, "corrupt sparse checkpoint", "not a bitmask of")


def test_shared_header_disagreeing_with_config(cli, tmp_path, shared_dir):
    model = copy_model(shared_dir, tmp_path / "m")
    weights = model / "llmopt-shared.safetensors"
    with safe_open(str(weights), framework="pt") as handle:
        embed = handle.get_tensor("model.embed_tokens.weight")
    _rewrite(weights, {"model.embed_tokens.weight": embed.reshape(128, 256).contiguous()})
    _refused(cli, tmp_path, model, "has shape [128, 256], its config.json says [512, 64]")


# The proof that nothing large is allocated: the same refusals in a process whose address
# space is capped a little above what it already uses. Had llmopt tried the allocation the
# numbers ask for, it would fail there with the allocator's error, not with these messages.
CAPPED = textwrap.dedent(
    """
    import contextlib, io, json, resource, sys
    import torch
    torch.set_num_threads(1)
    from llmopt.cli import main

    def vm_size():
        for line in open("/proc/self/status"):
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024

    def run(argv):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(argv)
        return code, err.getvalue()

    quick = ["--no-speed", "--no-sample", "--no-progress", "--max-tokens", "64"]
    assert run(["eval", "tiny-llama", *quick])[0] == 0  # every import and cache, warm
    resource.setrlimit(resource.RLIMIT_AS, (vm_size() + 768 * 2**20, resource.RLIM_INFINITY))
    print(json.dumps([run(["eval", model, *quick]) for model in sys.argv[1:]]))
    """
)


def test_no_large_allocation_happens_before_the_refusal(tmp_path, sparse_dir):
    # A compact folder is built from its config before its weights are read: 4.3 GB asked.
    big = _edit_config(copy_model(sparse_dir, tmp_path / "big"), vocab_size=2**23)
    huge = _huge_sparse(sparse_dir, tmp_path / "huge")  # 10^10 elements claimed
    done = subprocess.run([sys.executable, "-c", CAPPED, str(big), str(huge)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    (big_code, big_err), (huge_code, huge_err) = json.loads(done.stdout.splitlines()[-1])
    assert big_code == 2 and "of memory this process may use" in one_line(big_err)
    assert huge_code == 2 and "[100000, 100000]" in one_line(huge_err)
    assert "corrupt sparse checkpoint" in huge_err

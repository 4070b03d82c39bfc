"""Exact gradient accumulation: the split of a step's rows does not change the result.

Rows are padded documents of very different lengths (--no-pack), the case
where the mean of per-micro-batch means (the common bug) differs from the true
per-token mean.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

COMMON = (
    "--steps", "3", "--seq-len", "48", "--no-pack", "--lr", "1e-3", "--warmup", "0",
    "--precision", "fp32", "--no-eval", "--no-progress", "--seed", "3",
)  # fmt: skip


def _train(cli, data, out, *extra):
    r = cli("train", "tiny-llama", "--data", data, "-o", out, *COMMON, *extra)
    assert r.code == 0, r.err
    return out


def _rel_diff(a: dict, b: dict) -> float:
    num = sum(float((a[k].float() - b[k].float()).norm() ** 2) for k in a)
    den = sum(float(a[k].float().norm() ** 2) for k in a)
    return (num / den) ** 0.5


def _max_rel(a: dict, b: dict) -> float:
    # Largest per-tensor relative change: no tensor may hide in the global norm.
    return max(float((a[k] - b[k]).norm() / a[k].norm().clamp_min(1e-12)) for k in a)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, docs_jsonl):
    """mb 8 x accumulation 1, one process, and the weights it started from."""
    from llmopt.cli import main

    out = tmp_path_factory.mktemp("acc") / "mb8"
    assert main(["train", "tiny-llama", "--data", str(docs_jsonl), "-o", str(out), *COMMON,
                 "--micro-batch-size", "8"]) == 0  # fmt: skip
    return out


def test_micro_batches_equal_one_batch(cli, tmp_path, docs_jsonl, reference, load_weights):
    from llmopt.models import resolve_model

    out = _train(
        cli, docs_jsonl, tmp_path / "mb2x4", "--micro-batch-size", "2", "--grad-accum", "4"
    )
    ref, got = load_weights(reference), load_weights(out)
    start = load_weights(resolve_model("tiny-llama"))
    assert _rel_diff(ref, start) > 1e-3  # training moved the weights
    assert _max_rel(ref, got) < 1e-5


def test_mean_of_means_would_differ(docs_jsonl, tiny_tokenizer):
    """The data really has unequal label counts per micro-batch (else the test proves nothing)."""
    from llmopt.train.data import Layout, build_source
    from llmopt.train.objective import count_label_tokens

    source = build_source(str(docs_jsonl), tiny_tokenizer, 48, pack=False, seed=3)
    source.configure(Layout(2, 4))
    counts = [int(count_label_tokens(b)) for b in source.next_step()]
    assert len(set(counts)) > 1, counts


def _errors(stderr: str) -> str:
    """The workers' own messages, without torchrun's warnings."""
    return "\n".join(x for x in stderr.splitlines() if not x.startswith("W"))[-6000:]


def _torchrun(data, out, *extra) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "llmopt.cli", "train", "tiny-llama", "--data", str(data),
               "-o", str(out), *COMMON, "--nproc", "2", *extra]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


@pytest.mark.distributed
def test_two_processes_equal_one(tmp_path, docs_jsonl, reference, load_weights):
    out = tmp_path / "ddp"
    r = _torchrun(docs_jsonl, out, "--micro-batch-size", "2", "--grad-accum", "2")
    assert r.returncode == 0, _errors(r.stderr)
    assert _max_rel(load_weights(reference), load_weights(out)) < 1e-5


@pytest.mark.distributed
def test_fsdp_matches_single_process(tmp_path, docs_jsonl, reference, load_weights):
    out = tmp_path / "fsdp"
    r = _torchrun(docs_jsonl, out, "--micro-batch-size", "2", "--grad-accum", "2", "--fsdp")
    assert r.returncode == 0, _errors(r.stderr)
    ref, got = load_weights(reference), load_weights(out)
    assert set(ref) == set(got)
    assert _max_rel(ref, got) < 1e-5

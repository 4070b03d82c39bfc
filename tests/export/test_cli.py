"""`llmopt export`: writes the file, and refuses bad input with one line and exit status 2."""

from __future__ import annotations

from gguf import GGUFReader


def test_export_gguf(cli, tiny_llama_dir, tmp_path):
    out = tmp_path / "tiny.gguf"
    result = cli("export", tiny_llama_dir, "--format", "gguf", "--type", "q4_0", "--output", out)
    assert result.code == 0, result.err
    assert "Q4_0" in result.out and out.is_file()
    assert GGUFReader(out).fields["general.architecture"].contents() == "llama"
    again = cli("export", tiny_llama_dir, "--format", "gguf", "--output", out)
    assert again.code == 2 and "exists" in again.err


def test_bad_input_is_one_line_and_status_2(cli, tmp_path):
    cases = [
        (["tiny-opt", "--format", "gguf"], "has no GGUF mapping"),
        (["tiny-llama", "--format", "gguf", "--type", "q2"], "--type 'q2': unknown"),
        (
            ["tiny-llama", "--format", "compressed-tensors", "--type", "q8_0"],
            "only for --format gguf",
        ),
        (["tiny-llama", "--format", "compressed-tensors"], "no quantized nn.Linear"),
    ]
    for argv, message in cases:
        result = cli("export", *argv, "--output", tmp_path / "x")
        assert result.code == 2, result.err
        assert message in result.err and result.err.count("\n") == 1

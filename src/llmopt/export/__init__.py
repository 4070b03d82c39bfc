"""Export to where users run models: GGUF (llama.cpp, Ollama) and compressed-tensors (vLLM).

- `gguf.export_gguf`: one .gguf file (f16, q8_0, q4_0, q4_k) with the tokenizer
  and the metadata llama.cpp reads, for the families in `gguf.FAMILIES`.
- `compressed.export_compressed_tensors`: a pack-quantized W4A16 / W8A16
  folder for a model quantized by llmopt.

Both copy an llmopt quantization grid as it is when the target holds it
exactly, so a quantized model is not rounded twice.
"""

from llmopt.export.compressed import export_compressed_tensors
from llmopt.export.gguf import FAMILIES, GGUF_TYPES, export_gguf

__all__ = ["FAMILIES", "GGUF_TYPES", "export_compressed_tensors", "export_gguf"]

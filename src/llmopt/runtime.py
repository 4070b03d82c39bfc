"""Device choice and small runtime facts shared by stages."""

from __future__ import annotations

import platform

import torch

from llmopt.errors import BadInput


def pick_device(name: str = "auto") -> torch.device:
    """'auto' is CUDA when available, else CPU; otherwise the named device.

    Raises:
        BadInput: the named device does not exist here.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BadInput(f"--device {name!r}: not a device name") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BadInput(f"--device {name!r}: CUDA is not available on this machine")
    return device


def versions() -> dict[str, str]:
    """Versions that decide numerics, for provenance records."""
    import transformers

    import llmopt

    return {
        "llmopt": llmopt.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }

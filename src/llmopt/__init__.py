"""llmopt: make language models smaller and cheaper to train, and measure it."""

__version__ = "0.1.0"

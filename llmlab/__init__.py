"""llmlab: a hackable, end-to-end LLM lab."""

__version__ = "0.1.0"

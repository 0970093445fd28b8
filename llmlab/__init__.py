"""llmlab: a hackable, end-to-end LLM lab."""

from typing import Any

__version__ = "0.1.0"


def load(name_or_path: str, **kw: Any) -> Any:
    """Load a named model (`llmlab models`), a checkpoint/HF directory or a .gguf file."""
    from llmlab.lm import load as _load  # torch: `import llmlab` (and `llmlab --help`) stays fast

    return _load(name_or_path, **kw)

"""The one transformer. Names resolve lazily so that `llmlab.model.config` (a dataclass the CLI
reads to build its flags) can be imported without importing torch."""

from typing import Any

_NAMES = {
    "KVCache": "llmlab.model.cache",
    "ModelConfig": "llmlab.model.config",
    "PRESETS": "llmlab.model.config",
    "preset": "llmlab.model.config",
    "ModelOutput": "llmlab.model.transformer",
    "Transformer": "llmlab.model.transformer",
    "AttentionRecord": "llmlab.model.record",
    "record_attention": "llmlab.model.record",
}
__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    if name not in _NAMES:
        raise AttributeError(f"module 'llmlab.model' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_NAMES[name]), name)

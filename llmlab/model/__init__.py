from llmlab.model.cache import KVCache
from llmlab.model.config import PRESETS, ModelConfig, preset
from llmlab.model.transformer import ModelOutput, Transformer

__all__ = ["KVCache", "ModelConfig", "ModelOutput", "PRESETS", "Transformer", "preset"]

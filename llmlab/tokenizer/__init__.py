"""Byte-level BPE tokenizers: load (gpt2, cl100k, smollm2, saved dirs), train, export to HF."""

from llmlab.tokenizer.core import Tokenizer
from llmlab.tokenizer.loaders import load_tokenizer


def train_bpe(*args, **kwargs) -> Tokenizer:  # noqa: ANN002, ANN003 - thin lazy forwarder
    """Train a byte-level BPE tokenizer; see :func:`llmlab.tokenizer.bpe.train_bpe`."""
    from llmlab.tokenizer.bpe import train_bpe as _train

    return _train(*args, **kwargs)


__all__ = ["Tokenizer", "load_tokenizer", "train_bpe"]

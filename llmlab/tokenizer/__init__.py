"""Byte-level BPE tokenizers: load (gpt2, cl100k, smollm2, saved dirs), train, export to HF."""

from llmlab.tokenizer.bpe import train_bpe
from llmlab.tokenizer.core import Tokenizer
from llmlab.tokenizer.loaders import load_tokenizer

__all__ = ["Tokenizer", "load_tokenizer", "train_bpe"]

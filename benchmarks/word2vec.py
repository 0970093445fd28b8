"""word2vec training: llmlab's PyTorch SGNS vs gensim 4's Word2Vec(sg=1), same corpus, same
settings, in one run.

    python benchmarks/word2vec.py [--epochs 5] [--dim 100]

Both train skip-gram with 5 negatives, window 5, min_count 5, subsampling 1e-3 on the KJV
(31k verses, ~790k words). Reports wall time and words per second, and how alike the two
models are: the Spearman correlation of all pairwise cosine similarities among 500 frequent
words (ranks 50-549), and the mean top-10 neighbour overlap, each next to the same figures
for two gensim runs with different seeds (the ceiling) and for an untrained model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, machine, print_machine, stopwatch  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--dim", type=int, default=100)
    args = ap.parse_args()
    print_machine()

    import torch
    from gensim.models import Word2Vec

    from llmlab.foundations import W2VConfig, corpus_sentences, train_word2vec
    from llmlab.foundations import neighbour_overlap as overlap  # short names: the table's
    from llmlab.foundations import pairwise_cosines as pairwise

    sents = corpus_sentences("kjv")
    words_total = sum(len(s) for s in sents)
    cfg = W2VConfig(dim=args.dim, epochs=args.epochs)
    t = stopwatch()
    ours = train_word2vec(cfg, sents, progress=False)
    t_ours = t()
    common = dict(vector_size=args.dim, window=5, min_count=5, sg=1, negative=5, sample=1e-3,
                  epochs=args.epochs)
    t = stopwatch()
    ref = Word2Vec(sents, workers=2, seed=0, **common)
    t_ref = t()
    ref2 = Word2Vec(sents, workers=2, seed=1, **common)

    words = ours.words[50:550]
    a = np.stack([ours.vector(w).numpy() for w in words])
    b, b2 = (np.stack([m.wv[w] for w in words]) for m in (ref, ref2))
    rand = np.random.default_rng(0).uniform(-0.5 / args.dim, 0.5 / args.dim, a.shape)
    pb = pairwise(b)
    # (spearman vs gensim, top-10 overlap) per row of the table
    sim = {name: (float(spearmanr(pairwise(x), pb)[0]), float(overlap(x, b)))
           for name, x in (("llmlab", a), ("gensim_other_seed", b2), ("untrained", rand))}
    print(f"machine: {machine()}, torch {torch.__version__}; KJV {words_total:,} words, "
          f"{args.epochs} epochs, dim {args.dim}")
    print("| trainer | seconds | words/s (x epochs) | spearman vs gensim | top-10 overlap |")
    print("|---|---|---|---|---|")
    wps = lambda s: f"{words_total * args.epochs / s:,.0f}"
    print(f"| llmlab (torch, 1 thread) | {t_ours:.1f} | {wps(t_ours)} | "
          f"{sim['llmlab'][0]:.3f} | {sim['llmlab'][1]:.3f} |")
    print(f"| gensim 4 (2 workers) | {t_ref:.1f} | {wps(t_ref)} | "
          f"{sim['gensim_other_seed'][0]:.3f} (other seed) | {sim['gensim_other_seed'][1]:.3f} |")
    print(f"| untrained | - | - | {sim['untrained'][0]:.3f} | {sim['untrained'][1]:.3f} |")
    print(f"ratio llmlab / gensim time: {t_ours / t_ref:.2f}x")
    print("king - man + woman:", [w for w, _ in ours.analogy("man", "king", "woman", 3)],
          "| gensim:", [w for w, _ in ref.wv.most_similar(positive=["king", "woman"],
                                                          negative=["man"], topn=3)])
    emit({"epochs": args.epochs, "dim": args.dim, "words": words_total,
          "llmlab_s": t_ours, "gensim_s": t_ref, "ratio": t_ours / t_ref,
          "spearman_vs_gensim": {k: v[0] for k, v in sim.items()},
          "top10_overlap": {k: v[1] for k, v in sim.items()}})


if __name__ == "__main__":
    main()

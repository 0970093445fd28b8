"""Encoding speed and compression: llmlab (tiktoken core) vs HF tokenizers, same vocabularies.

    python benchmarks/tokenizer_encode.py [--threads 1 2]

Speed: MB/s of UTF-8 encoded with ``encode_batch`` over the corpus documents (KJV + Python docs,
~15 MB). HF runs the ``tokenizer.json`` that ``save_hf`` wrote for the same tokenizer (the tests
prove both give identical ids; the token totals printed here must agree too). Threads are set
per child process (RAYON_NUM_THREADS for HF, ``num_threads`` for tiktoken).
Compression: chars/token on a held-out 10% of the documents, for gpt2, cl100k, smollm2 and our
trainer's 8192/32768 vocabularies trained on the other 90%.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import documents, emit, machine, print_machine, run_worker, stopwatch  # noqa: E402

from llmlab.tokenizer import load_tokenizer, train_bpe  # noqa: E402

WORK = Path("/tmp/llmlab_bench_encode")


def worker(which: str, source: str, threads: int) -> None:
    docs = documents()
    if which == "ours":
        tok = load_tokenizer(source)
        encode = lambda: tok.encode_batch(docs, num_threads=threads)  # noqa: E731
    else:
        from tokenizers import Tokenizer

        hf = Tokenizer.from_file(str(Path(source) / "tokenizer.json"))
        encode = lambda: [e.ids for e in hf.encode_batch(docs, add_special_tokens=False)]  # noqa: E731
    encode()  # warm-up (lazy init, caches)
    best = float("inf")
    for _ in range(2):
        t = stopwatch()
        ids = encode()
        best = min(best, t())
    mb = sum(len(d.encode("utf-8")) for d in docs) / 1e6
    emit({"mb_per_s": mb / best, "tokens": sum(map(len, ids))})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--worker", nargs=3, metavar=("WHICH", "SOURCE", "THREADS"))
    args = ap.parse_args()
    print_machine()
    if args.worker:
        worker(args.worker[0], args.worker[1], int(args.worker[2]))
        return
    docs = documents()
    split = len(docs) * 9 // 10
    train, held = docs[:split], "".join(docs[split:])
    print(f"corpus: {sum(len(d.encode()) for d in docs) / 1e6:.1f} MB, {len(docs)} documents; "
          f"machine: {machine()}")
    res: dict = {"compression_chars_per_token": {}, "encode_mb_per_s": []}
    tokenizers = {name: load_tokenizer(name) for name in ("gpt2", "cl100k", "smollm2")}
    for vocab in (8192, 32768):
        tokenizers[f"llmlab-bpe-{vocab}"] = train_bpe(train, vocab_size=vocab, progress=False,
                                                      special_tokens=["<|endoftext|>"])
    print(f"\ncompression on held-out {len(held) / 1e6:.2f} M chars")
    print(f"{'tokenizer':<18} {'n_vocab':>8} {'chars/token':>12}")
    for name, tok in tokenizers.items():
        cpt = len(held) / len(tok.encode(held))
        res["compression_chars_per_token"][name] = cpt
        print(f"{name:<18} {tok.n_vocab:>8} {cpt:>12.3f}")

    print("\nencode_batch throughput (MB/s), full corpus")
    print(f"{'tokenizer':<18} {'threads':>7} {'llmlab':>8} {'HF':>8} {'speedup':>8}")
    for name in ("gpt2", "smollm2", "llmlab-bpe-32768"):
        tok = tokenizers[name]
        ours_dir = tok.save(WORK / name)  # the child process loads the very same tokenizer
        tok.save_hf(WORK / name)
        for threads in args.threads:
            ours = run_worker(__file__, ["ours", str(ours_dir), str(threads)], threads)
            hf = run_worker(__file__, ["hf", str(ours_dir), str(threads)], threads)
            if ours["tokens"] != hf["tokens"]:
                raise SystemExit(f"{name}: token totals differ: {ours} vs {hf}")
            print(f"{name:<18} {threads:>7} {ours['mb_per_s']:>8.2f} {hf['mb_per_s']:>8.2f} "
                  f"{ours['mb_per_s'] / hf['mb_per_s']:>8.2f}", flush=True)
            res["encode_mb_per_s"].append({"tokenizer": name, "threads": threads,
                                           "llmlab": ours["mb_per_s"], "hf": hf["mb_per_s"]})
    emit(res)


if __name__ == "__main__":
    main()

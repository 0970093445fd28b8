"""Chat: render a conversation with the model's template, and hold multi-turn history.

ChatML (SmolLM2's format) is written out by hand because it is the thing to learn: each
turn is `<|im_start|>{role}\\n{content}<|im_end|>\\n`, and the prompt ends with an open
assistant turn for the model to complete. Other templates are configurable.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from llmlab.generate.engine import fit_context, make_params, stream_batch

SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


@dataclass
class ChatTemplate:
    turn_start: str = "<|im_start|>{role}\n"
    turn_end: str = "<|im_end|>\n"
    generation_prompt: str = "<|im_start|>assistant\n"
    default_system: str | None = None
    stop: list[str] = field(default_factory=lambda: ["<|im_end|>"])

    def _messages(self, messages: list[dict[str, str]], system: str | None) -> list[dict[str, str]]:
        """Validated messages with the system turn in place."""
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise ValueError(f"message {i} needs 'role' and 'content' fields, got {m!r}")
            if m["role"] not in ("system", "user", "assistant", "tool"):
                raise ValueError(f"message {i}: unknown role {m['role']!r}")
        msgs = list(messages)
        if system is not None:
            msgs = [{"role": "system", "content": system}] + [
                m for m in msgs if m["role"] != "system"
            ]
        elif self.default_system is not None and (not msgs or msgs[0]["role"] != "system"):
            msgs = [{"role": "system", "content": self.default_system}] + msgs
        return msgs

    def render(
        self,
        messages: list[dict[str, str]],
        system: str | None = None,
        add_generation_prompt: bool = True,
    ) -> str:
        out = "".join(
            self.turn_start.format(role=m["role"]) + m["content"] + self.turn_end
            for m in self._messages(messages, system)
        )
        return out + (self.generation_prompt if add_generation_prompt else "")

    def encode(
        self,
        tok: Any,
        messages: list[dict[str, str]],
        system: str | None = None,
        add_generation_prompt: bool = True,
        prefill: str = "",
    ) -> list[int]:
        """Token ids of `render(...) + prefill`. Only the template's markers become special
        tokens; message text is encoded as plain text, so a message (or a retrieved document)
        containing "<|im_end|>" cannot close its turn and open a forged one."""
        ids: list[int] = []
        for m in self._messages(messages, system):
            ids += tok.encode(self.turn_start.format(role=m["role"]), allowed_special="all")
            ids += tok.encode(m["content"], allowed_special="none")
            ids += tok.encode(self.turn_end, allowed_special="all")
        if add_generation_prompt:
            ids += tok.encode(self.generation_prompt, allowed_special="all")
        if prefill:
            ids += tok.encode(prefill, allowed_special="none")
        return ids


CHATML = ChatTemplate()


def template_for(lm: Any) -> ChatTemplate:
    """ChatML, with SmolLM2's default system prompt when the model's template carries it."""
    src = lm.cfg.extra.get("chat_template") or ""
    if "<|im_start|>" in src or not src:
        default = SMOLLM2_SYSTEM if SMOLLM2_SYSTEM in src else None
        return ChatTemplate(default_system=default)
    raise ValueError("only ChatML-style chat templates are supported for now")


def render_chat(
    lm: Any,
    messages: list[dict[str, str]],
    system: str | None = None,
    add_generation_prompt: bool = True,
) -> str:
    return template_for(lm).render(messages, system, add_generation_prompt)


def chat_ids(lm: Any, messages: list[dict[str, str]], system: str | None = None) -> list[int]:
    """Prompt ids for a conversation, in the model's template, ending in an open assistant turn."""
    return template_for(lm).encode(lm.tokenizer, messages, system)


def encode_prompts(
    lm: Any, prompts: list[str], chat: bool, system: str | None = None, prefill: str = ""
) -> list[list[int]]:
    """Each prompt as one user turn (chat) or as plain text; special-token text stays text.
    `prefill` starts the assistant's reply (chat only), e.g. an opening code fence."""
    if chat:
        tpl = template_for(lm)
        return [tpl.encode(lm.tokenizer, [{"role": "user", "content": p}], system,
                           prefill=prefill) for p in prompts]
    if prefill:
        raise ValueError("prefill starts an assistant turn: it needs chat=True")
    return [lm.tokenizer.encode(p, allowed_special="none") for p in prompts]


def chat(lm: Any, messages: list[dict[str, str]], system: str | None = None, **kw: Any) -> str:
    return "".join(stream_chat(lm, messages, system=system, **kw))


def stream_chat(
    lm: Any,
    messages: list[dict[str, str]],
    system: str | None = None,
    truncate: bool = False,
    **kw: Any,
) -> Iterator[str]:
    tpl = template_for(lm)
    ids = tpl.encode(lm.tokenizer, messages, system)
    kw.setdefault("stop", [])
    kw["stop"] = [*kw["stop"], *tpl.stop]
    params = make_params(lm.tokenizer, **kw)
    ids = fit_context([ids], params.max_new_tokens, lm.cfg.max_seq_len, truncate)[0]
    for _, piece in stream_batch(lm.model, lm.tokenizer, [ids], params):
        yield piece


class ChatSession:
    """Multi-turn history with a system prompt; `/reset` and `/system` in the CLI map here."""

    def __init__(self, lm: Any, system: str | None = None, **sampling: Any) -> None:
        self.lm, self.system, self.sampling = lm, system, sampling
        self.history: list[dict[str, str]] = []

    def reset(self) -> None:
        self.history.clear()

    def set_system(self, system: str | None) -> None:
        self.system = system

    def _fit_history(self) -> None:
        """Drop the oldest exchanges until the prompt plus the reply budget fits the context."""
        budget = self.lm.cfg.max_seq_len - int(self.sampling.get("max_new_tokens", 256))
        tpl = template_for(self.lm)
        while len(self.history) > 1:
            if len(tpl.encode(self.lm.tokenizer, self.history, self.system)) <= budget:
                return
            del self.history[:2]  # one user turn and the assistant reply to it

    def send(self, user: str) -> Iterator[str]:
        self.history.append({"role": "user", "content": user})
        self._fit_history()
        reply = []
        try:
            for piece in stream_chat(self.lm, self.history, system=self.system, **self.sampling):
                reply.append(piece)
                yield piece
        finally:
            self.history.append({"role": "assistant", "content": "".join(reply).strip()})

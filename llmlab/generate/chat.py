"""Chat: render a conversation with the model's template (llmlab/tokenizer/chat_template.py),
and hold multi-turn history."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from llmlab.generate.engine import complete, fit_context, make_params, stream_batch
from llmlab.tokenizer.chat_template import ChatTemplate, parse_template


def set_template(lm: Any, template: ChatTemplate | str) -> None:
    """Make `template` (or its Jinja source) the model's own: its tokenizer (so checkpoints
    and HF exports carry it) and its config, where `template_for` reads it."""
    src = template.to_jinja() if isinstance(template, ChatTemplate) else template
    lm.tokenizer.chat_template = src
    lm.cfg.extra["chat_template"] = src


def template_for(lm: Any) -> ChatTemplate:
    """The model's chat template (`parse_template`)."""
    t = parse_template(lm.cfg.extra.get("chat_template") or "")
    if t is None:
        raise ValueError("this model's chat template is neither ChatML nor one of llmlab's; "
                         "fine-tune with --chat-template to give it one")
    return t


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


def generate_text(
    lm: Any,
    prompt: str | list[str],
    chat: bool = False,
    system: str | None = None,
    truncate: bool = False,
    **kw: Any,
) -> str | list[str]:
    """`lm.generate("Once upon a time", max_new_tokens=20, temperature=0)`."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    ids = encode_prompts(lm, prompts, chat, system)
    params = make_params(lm.tokenizer, **kw)
    outs = complete(lm.model, lm.tokenizer, ids, params, truncate=truncate)
    return outs[0].text if isinstance(prompt, str) else [o.text for o in outs]


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

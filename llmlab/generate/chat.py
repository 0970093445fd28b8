"""Chat: render a conversation with the model's template, and hold multi-turn history.

ChatML (SmolLM2's format) is written out by hand because it is the thing to learn: each
turn is `<|im_start|>{role}\\n{content}<|im_end|>\\n`, and the prompt ends with an open
assistant turn for the model to complete. Other templates are configurable: a preset name
(`TEMPLATES`) or a JSON file of `ChatTemplate`'s fields (`load_template`). A model carries its
template as Jinja (`ChatTemplate.to_jinja`), the form transformers' `apply_chat_template`
renders, with the fields in a comment so that we read it back exactly.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmlab.generate.engine import complete, fit_context, make_params, stream_batch

SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


@dataclass
class ChatTemplate:
    turn_start: str = "<|im_start|>{role}\n"
    turn_end: str = "<|im_end|>\n"
    generation_prompt: str = "<|im_start|>assistant\n"
    default_system: str | None = None
    stop: list[str] = field(default_factory=lambda: ["<|im_end|>"])

    def validate(self, where: str = "chat template") -> ChatTemplate:
        for f in ("turn_start", "turn_end", "generation_prompt"):
            if not isinstance(getattr(self, f), str):
                raise ValueError(f"{where}: field '{f}' must be a string")
        if self.default_system is not None and not isinstance(self.default_system, str):
            raise ValueError(f"{where}: field 'default_system' must be a string or null")
        if not (isinstance(self.stop, list) and self.stop
                and all(isinstance(x, str) and x for x in self.stop)):
            raise ValueError(f"{where}: field 'stop' must be a non-empty list of strings")
        if "{role}" not in self.turn_start:
            raise ValueError(f"{where}: field 'turn_start' must contain {{role}}, got "
                             f"{self.turn_start!r}")
        if not self.generation_prompt:
            raise ValueError(f"{where}: field 'generation_prompt' must not be empty")
        if not self.turn_end.startswith(self.stop[0]):
            # SFT trains the assistant's turn through stop[0]: that is how it learns to stop.
            raise ValueError(f"{where}: field 'turn_end' ({self.turn_end!r}) must begin with "
                             f"stop[0] ({self.stop[0]!r})")
        return self

    def start(self, role: str) -> str:
        """The text that opens a `role` turn (replace, not str.format: braces stay literal)."""
        return self.turn_start.replace("{role}", role)

    def to_jinja(self) -> str:
        """The same rendering as `render(messages)` in Jinja, for transformers'
        `apply_chat_template` and every tool that reads tokenizer_config.json."""
        lit = json.dumps  # a JSON string is a valid Jinja string literal
        start = " + message['role'] + ".join(lit(p) for p in self.turn_start.split("{role}"))
        # The fields, for template_for; "#}" escaped, or it would end the comment.
        fields = json.dumps(dataclasses.asdict(self)).replace("#}", "#\\u007d")
        head = f"{{#- llmlab chat template: {fields} -#}}\n"
        turn = f"{start} + message['content'] + {lit(self.turn_end)}"
        out = head
        if self.default_system is not None:
            out += ("{%- if messages | length == 0 or messages[0]['role'] != 'system' -%}"
                    f"{{{{- {lit(self.start('system') + self.default_system + self.turn_end)}"
                    " -}}{%- endif -%}\n")
        out += f"{{%- for message in messages -%}}{{{{- {turn} -}}}}{{%- endfor -%}}\n"
        out += ("{%- if add_generation_prompt -%}"
                f"{{{{- {lit(self.generation_prompt)} -}}}}{{%- endif -%}}")
        return out

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
            self.start(m["role"]) + m["content"] + self.turn_end
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
            ids += tok.encode(self.start(m["role"]), allowed_special="all")
            ids += tok.encode(m["content"], allowed_special="none")
            ids += tok.encode(self.turn_end, allowed_special="all")
        if add_generation_prompt:
            ids += tok.encode(self.generation_prompt, allowed_special="all")
        if prefill:
            ids += tok.encode(prefill, allowed_special="none")
        return ids


CHATML = ChatTemplate()

# Presets by name. Each also works on a model whose vocabulary lacks its markers: they are
# then plain text, learnt in SFT, and generation stops on them as strings.
TEMPLATES: dict[str, ChatTemplate] = {
    "chatml": CHATML,
    "llama3": ChatTemplate(turn_start="<|start_header_id|>{role}<|end_header_id|>\n\n",
                           turn_end="<|eot_id|>",
                           generation_prompt="<|start_header_id|>assistant<|end_header_id|>\n\n",
                           stop=["<|eot_id|>"]),
    "zephyr": ChatTemplate(turn_start="<|{role}|>\n", turn_end="</s>\n",
                           generation_prompt="<|assistant|>\n", stop=["</s>"]),
}
_MARK = re.compile(r"\{#- llmlab chat template: (\{.*\}) -#\}")


def load_template(spec: str) -> ChatTemplate:
    """A preset name (`TEMPLATES`) or a JSON file holding ChatTemplate's fields."""
    if spec in TEMPLATES:
        return TEMPLATES[spec]
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"chat template {spec!r}: not a preset ({', '.join(TEMPLATES)}) "
                         "nor a JSON file")
    try:
        obj = json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from None
    names = [f.name for f in dataclasses.fields(ChatTemplate)]
    if not isinstance(obj, dict) or set(obj) - set(names):
        bad = sorted(set(obj) - set(names)) if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"{path}: expected an object with fields {', '.join(names)}; "
                         f"got {bad}")
    return ChatTemplate(**obj).validate(str(path))


def set_template(lm: Any, template: ChatTemplate | str) -> None:
    """Make `template` (or its Jinja source) the model's own: its tokenizer (so checkpoints
    and HF exports carry it) and its config, where `template_for` reads it."""
    src = template.to_jinja() if isinstance(template, ChatTemplate) else template
    lm.tokenizer.chat_template = src
    lm.cfg.extra["chat_template"] = src


def parse_template(src: str) -> ChatTemplate | None:
    """A model's Jinja chat template as a ChatTemplate: one of ours (read back from the
    fields it carries), ChatML (with SmolLM2's default system prompt if the source has it),
    ChatML for none at all; None for anything else."""
    m = _MARK.match(src)
    if m:
        return ChatTemplate(**json.loads(m.group(1)))
    if "<|im_start|>" in src or not src:
        return ChatTemplate(default_system=SMOLLM2_SYSTEM if SMOLLM2_SYSTEM in src else None)
    return None


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

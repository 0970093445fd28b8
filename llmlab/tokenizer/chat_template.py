"""Chat templates: how a conversation becomes the text (and token ids) a model was tuned on.

ChatML (SmolLM2's format) is written out by hand because it is the thing to learn: each
turn is `<|im_start|>{role}\\n{content}<|im_end|>\\n`, and the prompt ends with an open
assistant turn for the model to complete. Other templates are configurable: a preset name
(`TEMPLATES`) or a JSON file of `ChatTemplate`'s fields (`load_template`). A model carries its
template as Jinja (`ChatTemplate.to_jinja`), the form transformers' `apply_chat_template`
renders, with the fields in a comment so that we read it back exactly (`parse_template`).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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

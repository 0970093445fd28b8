"""pydocs: questions about the Python 3.11 documentation's sections, answered by their text.

`/usr/share/doc/python3.11/html/_sources/**/*.rst.txt` (Debian's python3.11-doc): each
section's title and first prose paragraph -> "In Python's documentation, what does the
section '<title>' of <page> cover?" -> that paragraph (reST markup simplified). A hash of the
question holds a tenth out: SFT (`--data pydocs`) trains on "train", and `llmlab eval --task
gen:pydocs` scores generations against the "test" references (BLEU, ROUGE, EM/F1).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from llmlab.data.corpora import PYDOCS_DIR
from llmlab.data.splits import in_split
from llmlab.tasks.base import EvalConfig, Generate, Task, sample
from llmlab.tasks.text import rouge, text_metrics


def _clean_rst(s: str) -> str:
    s = re.sub(r":\w+:`~?([^`<]*?)(?:\s*<[^>]*>)?`", r"\1", s)  # :func:`x` -> x
    s = re.sub(r"`([^`<]*?)(?:\s*<[^>]*>)?`_*", r"\1", s)
    return " ".join(s.replace("**", "").replace("``", "").split())


def pydocs_examples(split: str, fraction: float = 0.1, limit: int | None = None,
                    root: Path = PYDOCS_DIR) -> list[dict[str, Any]]:
    """[{question, answers, messages}] in file order; the reply is the paragraph's first
    600 characters."""
    if not root.exists():
        raise ValueError(f"{root}: not found (Debian's python3.11-doc package provides it)")
    out = []
    for f in sorted(root.rglob("*.rst.txt")):
        lines = f.read_text(encoding="utf-8", errors="replace").splitlines()
        page = str(f.relative_to(root)).removesuffix(".rst.txt")
        for i in range(1, len(lines) - 1):
            under = lines[i + 1]
            title = lines[i].strip()
            if not title or len(under) < 3 or len(set(under)) != 1 or under[0] not in "=-~^*#":
                continue
            para: list[str] = []
            for ln in lines[i + 2:]:
                if para and not ln.strip():
                    break
                if ln.strip() and not ln.startswith((" ", "..", ":")):
                    para.append(ln)
                elif para:
                    break
            text = _clean_rst(" ".join(para))
            if len(text) < 40:
                continue
            q = f"In Python's documentation, what does the section '{title}' of {page} cover?"
            if in_split(q, split, fraction):
                out.append({"question": q, "answers": [text], "messages": [
                    {"role": "user", "content": q},
                    {"role": "assistant", "content": text[:600]}]})
    return out[:limit] if limit else out


def evaluate_references(lm: Any, items: list[tuple[str, str]], source: str, cfg: EvalConfig,
                        generate: Generate) -> dict[str, Any]:
    """Generations for (prompt, reference) pairs, scored with BLEU, ROUGE and EM/F1; also
    `llmlab eval --task gen:<file.jsonl>`'s scorer."""
    outs = generate(lm, [p for p, _ in items], max_new_tokens=cfg.max_new_tokens or 128,
                    seed=cfg.seed, batch_size=cfg.batch_size, progress=cfg.progress,
                    desc="gen")
    metrics: dict[str, Any] = {**text_metrics(outs, [r for _, r in items]), "n": len(items)}
    # Per item: ROUGE-L (the task's primary metric; their mean is the reported one), the
    # verdict shown beside each example.
    per = [rouge([o], [r])["rougeL"] for (_, r), o in zip(items, outs, strict=True)]
    samples = [{"prompt": p, "reference": r, "output": o, "rougeL": s,
                "verdict": f"ROUGE-L {s:.2f}"}
               for (p, r), o, s in zip(items, outs, per, strict=True)]
    return {"config": {"source": source, "n": len(items)}, "metrics": metrics,
            "samples": samples}


class Pydocs(Task):
    name = "pydocs"
    chat = True

    def examples(self, split: str = "train", n: int | None = None, seed: int | None = 0
                 ) -> list[dict[str, Any]]:
        """The split's examples, shuffled by `seed` (None: file order), then the first `n`."""
        items = pydocs_examples(split)
        return items[:n] if seed is None else sample(items, n, seed)

    def format(self, example: dict[str, Any]) -> str:
        return example["question"]

    def pairs(self, examples: list[dict[str, Any]]) -> list[tuple[str, str]]:
        """(prompt, reference): the reference is the SFT reply, the paragraph cut at 600."""
        return [(self.format(e), e["messages"][1]["content"]) for e in examples]

    def sft_examples(self, split: str) -> list[dict[str, Any]]:
        return self.examples(split, seed=None)

    def evaluate(self, lm: Any, cfg: EvalConfig, generate: Generate) -> dict[str, Any]:
        items = self.pairs(self.examples("test", cfg.limit, cfg.seed))
        return evaluate_references(lm, items, "pydocs", cfg, generate)


PYDOCS = Pydocs()

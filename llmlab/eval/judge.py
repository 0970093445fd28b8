"""Pairwise LLM-as-judge with position swapping.

Each prompt is judged twice, with the answers in both orders, so a judge that favours the
first (or second) slot cannot decide the result: A wins only when preferred in both orders,
a split verdict is a tie. The judge is a local llmlab model or any OpenAI-compatible
`/v1/chat/completions` endpoint (e.g. `llmlab serve`); without a model name, the endpoint's
first model at /v1/models is used, and an endpoint that can't be reached or lists none then
is an error. Failed requests and unparseable verdicts are skipped and counted, never guessed.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from llmlab.data.jsonl import read_jsonl, read_text
from llmlab.eval.intervals import intervals
from llmlab.eval.metrics import wilson_interval
from llmlab.eval.report import log_progress, make_report, report_paths, write_report

# Short, and asking for the number only: SmolLM2-135M answered a longer prompt ("Which
# answer is more helpful, correct and clear? Reply with exactly ...") with prose in 4 of 6
# replies, and this one with a leading digit in 6 of 6 (DEAD_ENDS.md, session 12).
JUDGE_PROMPT = """Question: {prompt}

Answer 1: {first}

Answer 2: {second}

Which answer is better, 1 or 2? Reply with the number only."""

_VERDICT = re.compile(r"^\W*(?:answer\s*)?([12])\b", re.IGNORECASE)

DEFAULT_PROMPTS = [
    "What is the capital of France?", "Explain photosynthesis in one sentence.",
    "Give me three tips for learning a new language.", "What is 12 times 7?",
    "Write a haiku about the sea.", "Why is the sky blue?",
    "Name a famous painting by Leonardo da Vinci.", "How do I reverse a list in Python?",
]

JudgeFn = Callable[[list[str]], list[str | None]]  # judge texts -> replies (None: unreachable)


def parse_verdict(reply: str) -> int | None:
    """1 or 2 from the judge's reply; None when it does not start with a clear choice."""
    m = _VERDICT.match(reply.strip())
    return int(m.group(1)) if m else None


def judge_pairs(prompts: Sequence[str], answers_a: Sequence[str], answers_b: Sequence[str],
                judge: JudgeFn) -> dict[str, Any]:
    """Win rate of A over B (ties count half) with a 95% Wilson interval, plus skips."""
    if not (len(prompts) == len(answers_a) == len(answers_b)):
        raise ValueError(f"judge needs one answer per prompt from each model: got "
                         f"{len(prompts)} prompts, {len(answers_a)} and {len(answers_b)} answers")
    if not prompts:
        raise ValueError("judge over an empty prompt set")
    texts = []
    for p, a, b in zip(prompts, answers_a, answers_b, strict=True):
        texts.append(JUDGE_PROMPT.format(prompt=p, first=a, second=b))  # A first
        texts.append(JUDGE_PROMPT.format(prompt=p, first=b, second=a))  # B first
    replies = judge(texts)
    wins = losses = ties = unreachable = malformed = 0
    items = []
    for i, p in enumerate(prompts):
        r1, r2 = replies[2 * i], replies[2 * i + 1]
        item = {"prompt": p, "answer_a": answers_a[i], "answer_b": answers_b[i],
                "replies": [r1, r2]}  # replies: judge with A first, then with B first
        if r1 is None or r2 is None:
            unreachable += 1
            items.append({**item, "verdict": "skipped", "reason": "unreachable"})
            continue
        v1, v2 = parse_verdict(r1), parse_verdict(r2)
        if v1 is None or v2 is None:
            malformed += 1
            items.append({**item, "verdict": "skipped", "reason": "malformed"})
            continue
        a_first, a_second = v1 == 1, v2 == 2  # did A win in each order?
        verdict = "A" if a_first and a_second else "B" if not (a_first or a_second) else "tie"
        wins += verdict == "A"
        losses += verdict == "B"
        ties += verdict == "tie"
        items.append({**item, "verdict": verdict})
    judged = wins + losses + ties
    score = wins + 0.5 * ties
    lo, hi = wilson_interval(score, judged) if judged else (0.0, 1.0)
    # None, not NaN, with nothing judged: the report is JSON that browsers parse.
    return {"metrics": {"win_rate": score / judged if judged else None,
                        "ci95_low": lo, "ci95_high": hi, "wins": wins, "losses": losses,
                        "ties": ties, "judged": judged, "skipped": unreachable + malformed,
                        "skipped_unreachable": unreachable, "skipped_malformed": malformed},
            "samples": items}


def _v1(base_url: str) -> str:
    """The endpoint's /v1 root: users pass either `http://host:port` or `.../v1`."""
    url = base_url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def listed_model(base_url: str, timeout: float = 30.0, api_key: str | None = None) -> str:
    """The first model id an OpenAI-compatible endpoint lists at GET /v1/models.

    The judge's default model name: guessing one instead would only make every request fail
    later, after the answers were generated, so an endpoint that can't be reached or lists no
    model is an error here, naming the endpoint."""
    import httpx  # a second to import: only for a remote judge

    url = f"{_v1(base_url)}/models"
    hint = "pass --judge-model to name the model"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        r = httpx.get(url, timeout=timeout, headers=headers, trust_env=False)
    except httpx.HTTPError as e:
        raise RuntimeError(f"judge endpoint {base_url}: cannot reach {url} "
                           f"({type(e).__name__}: {e})") from None
    if r.status_code != 200:
        raise RuntimeError(f"judge endpoint {base_url}: GET {url} answered HTTP "
                           f"{r.status_code} ({r.text[:200]!r}); {hint}")
    try:
        data = r.json()["data"]
    except (ValueError, KeyError, TypeError):
        raise RuntimeError(f'judge endpoint {base_url}: {url} did not return a JSON object with '
                           f'a "data" list ({r.text[:200]!r}); {hint}') from None
    ids = [m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)] \
        if isinstance(data, list) else []
    if not ids:
        raise RuntimeError(f"judge endpoint {base_url}: {url} lists no models; {hint}")
    return ids[0]


GIVE_UP_AFTER = 3  # failed requests in a row: the endpoint is down, not one request unlucky


class EndpointJudge:
    """Judge through an OpenAI-compatible server; a failed request yields None for that item.
    After GIVE_UP_AFTER failures in a row the rest are not sent (None too), so a dead or
    wedged endpoint costs at most that many timeouts, never one per prompt; `last_error`
    says why the last request failed."""

    def __init__(self, base_url: str, model: str, timeout: float = 60.0,
                 api_key: str | None = None) -> None:
        self.url, self.model, self.timeout = _v1(base_url), model, timeout
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.last_error: str | None = None

    def __call__(self, texts: list[str]) -> list[str | None]:
        import httpx  # as in listed_model

        out: list[str | None] = []
        in_a_row = 0
        with httpx.Client(timeout=self.timeout, headers=self.headers, trust_env=False) as client:
            for i, t in enumerate(texts):
                if in_a_row >= GIVE_UP_AFTER:
                    print(f"warning: judge endpoint {self.url}: {in_a_row} requests failed in "
                          f"a row; the other {len(texts) - i} are not sent", file=sys.stderr)
                    return out + [None] * (len(texts) - i)
                body = {"model": self.model, "messages": [{"role": "user", "content": t}],
                        "temperature": 0, "max_tokens": 8}
                try:
                    r = client.post(f"{self.url}/chat/completions", json=body)
                    r.raise_for_status()
                    out.append(str(r.json()["choices"][0]["message"]["content"] or ""))
                    in_a_row = 0
                except (httpx.HTTPError, KeyError, IndexError, TypeError, ValueError) as e:
                    detail = ""
                    if isinstance(e, httpx.HTTPStatusError):
                        detail = f": {e.response.text[:200]}"
                    elif isinstance(e, httpx.TimeoutException):
                        detail = f" (no answer within {self.timeout:g} s)"
                    self.last_error = f"{type(e).__name__}: {e}{detail}"
                    print(f"warning: judge request failed: {e}{detail}", file=sys.stderr)
                    out.append(None)
                    in_a_row += 1
        return out


def endpoint_judge(base_url: str, model: str | None = None, timeout: float = 60.0,
                   api_key: str | None = None) -> EndpointJudge:
    """`model` defaults to the first one the server lists at /v1/models, looked up now, so
    that a dead or empty endpoint fails before any answer is generated (`listed_model`)."""
    name = model or listed_model(base_url, min(timeout, 30.0), api_key)
    return EndpointJudge(base_url, name, timeout, api_key)


def local_judge(lm: Any, batch_size: int = 16, progress: bool = True) -> JudgeFn:
    from llmlab.eval.generation import generate  # torch: `llmlab --help` imports this module

    def run(texts: list[str]) -> list[str | None]:
        return list(generate(lm, texts, max_new_tokens=8, batch_size=batch_size,
                             progress=progress, desc="judge"))

    return run


def load_prompts(path: str | None, limit: int | None) -> list[str]:
    """JSONL with a "prompt" field, or plain text (one prompt a line); built-ins when None."""
    if path is None:
        prompts = list(DEFAULT_PROMPTS)
    else:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such prompt file")
        prompts = []
        if p.suffix == ".jsonl":
            for n, obj in read_jsonl(p):
                if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
                    raise ValueError(f'{p}:{n}: expected an object with a string "prompt"')
                prompts.append(obj["prompt"])
        else:
            prompts = [line.strip() for line in read_text(p).splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts[:limit] if limit else prompts


def check_judge_args(a: argparse.Namespace) -> None:
    """Values that fail before a model loads; the playground checks a judge run with this."""
    for flag, v, lo in (("--limit", a.limit, 1), ("--max-new-tokens", a.max_new_tokens, 1),
                        ("--batch-size", a.batch_size, 1), ("--threads", a.threads, 1)):
        if v is not None and v < lo:
            raise ValueError(f"{flag} must be >= {lo}, got {v}")
    if a.judge_timeout <= 0:
        raise ValueError(f"--judge-timeout must be > 0 seconds, got {a.judge_timeout}")


def add_judge_command(sub: argparse._SubParsersAction, guard: Callable, load_model: Callable
                      ) -> None:
    j = sub.add_parser("judge", help="pairwise LLM-as-judge of two models' answers")
    j.add_argument("--model-a", required=True, help="first model: a name, directory or .gguf")
    j.add_argument("--model-b", required=True, help="second model, compared with --model-a")
    j.add_argument("--adapter-a", default=None, help="PEFT adapter directory for --model-a")
    j.add_argument("--adapter-b", default=None, help="PEFT adapter directory for --model-b")
    j.add_argument("--prompts", default=None,
                   help="JSONL ({'prompt': ...}) or text file, one prompt a line (default: the "
                        "bundled prompts)")
    g = j.add_mutually_exclusive_group(required=True)
    g.add_argument("--judge", default=None, help="local llmlab judge model")
    g.add_argument("--judge-base-url", default=None, help="OpenAI-compatible endpoint")
    j.add_argument("--judge-model", default=None,
                   help="model name sent to the endpoint (default: the first it lists at "
                        "/v1/models; an error if it lists none or can't be reached)")
    j.add_argument("--judge-timeout", type=float, default=60.0,
                   help="seconds to wait for each endpoint reply (default: 60)")
    j.add_argument("--limit", type=int, default=None,
                   help="judge only the first N prompts (default: all)")
    j.add_argument("--max-new-tokens", type=int, default=128,
                   help="answer length cap for both models (default: 128)")
    j.add_argument("--batch-size", type=int, default=16,
                   help="prompts per generation batch (default: 16)")
    j.add_argument("--seed", type=int, default=0,
                   help="seeds both models' sampling (default: 0)")
    j.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "int8", "int4"),
                   help="weights of the local models (default: fp32)")
    j.add_argument("--out", default=None,
                   help="JSON report path; an existing directory gets report.json and "
                        "metrics.jsonl (progress, a record as each step starts and ends)")
    j.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's)")
    j.add_argument("--no-progress", action="store_true", help="no progress bars")

    def cmd_judge(a: argparse.Namespace) -> int:
        from llmlab.eval.generation import generate  # torch, as in local_judge

        check_judge_args(a)
        prompts = load_prompts(a.prompts, a.limit)
        out, progress = report_paths(a.out)
        fn: JudgeFn | None = None
        judge_model = a.judge
        if a.judge_base_url:  # resolved first: an endpoint without a model fails before answers
            judge_model = a.judge_model or listed_model(a.judge_base_url,
                                                        min(a.judge_timeout, 30.0))
            fn = endpoint_judge(a.judge_base_url, judge_model, a.judge_timeout)
        steps = [f"answers {a.model_a}", f"answers {a.model_b}", "judge"]
        answers = []
        for i, (name, adapter) in enumerate(((a.model_a, a.adapter_a), (a.model_b, a.adapter_b))):
            log_progress(progress, {"step": i, "of": 3, "task": steps[i], "event": "start"})
            lm = load_model(name, adapter, a.dtype, a.threads)
            answers.append(generate(lm, prompts, max_new_tokens=a.max_new_tokens, seed=a.seed,
                                    batch_size=a.batch_size, progress=not a.no_progress,
                                    desc=f"answers {name}"))
            del lm  # one model in memory at a time
            log_progress(progress, {"step": i + 1, "of": 3, "task": steps[i], "event": "done"})
        if fn is None:
            fn = local_judge(load_model(a.judge, None, a.dtype, a.threads), a.batch_size,
                             not a.no_progress)
        log_progress(progress, {"step": 2, "of": 3, "task": "judge", "event": "start"})
        res = judge_pairs(prompts, answers[0], answers[1], fn)
        m = res["metrics"]
        log_progress(progress, {"step": 3, "of": 3, "task": "judge", "event": "done",
                                "metrics": m})
        rate = "none" if m["win_rate"] is None else f"{m['win_rate']:.3f}"
        print(f"win rate of {a.model_a} over {a.model_b}: {rate} "
              f"(95% CI {m['ci95_low']:.3f}-{m['ci95_high']:.3f}; {m['wins']}W {m['losses']}L "
              f"{m['ties']}T; skipped {m['skipped']}: {m['skipped_unreachable']} unreachable, "
              f"{m['skipped_malformed']} malformed)")
        if out:
            task = {"task": "judge", "config": {"model_b": a.model_b, "adapter_b": a.adapter_b,
                                                "judge": a.judge or a.judge_base_url,
                                                "judge_model": judge_model,
                                                "prompts": a.prompts or "built-in"}, **res,
                    "ci95": intervals("judge", res["metrics"], res["samples"])}
            config = {"limit": a.limit, "max_new_tokens": a.max_new_tokens, "dtype": a.dtype,
                      "judge_prompt": JUDGE_PROMPT}
            rep = make_report(a.model_a, a.adapter_a, a.seed, [task], config)
            print(f"wrote {write_report(rep, out)}", file=sys.stderr)
        if not m["judged"]:  # last, so a playground run shows this as its failure reason
            why = getattr(fn, "last_error", None)
            print(f"error: none of the {len(prompts)} prompts could be judged "
                  f"({m['skipped_unreachable']} without a reply from the judge"
                  f"{f', last: {why}' if why else ''}; {m['skipped_malformed']} without a "
                  "clear 1 or 2)", file=sys.stderr)
        return 0 if m["judged"] else 1

    j.set_defaults(fn=guard(cmd_judge), func=guard(cmd_judge))

"""The evaluation page: what it may evaluate, and the reports of its eval runs.

An evaluation is a playground run of kind "eval" (POST /api/runs): the worker runs `llmlab
eval --out RUNDIR`, whose report.json holds every number shown here (metrics, intervals,
per-item records); this file reads and relays it. A "judge" run is `llmlab eval judge --out
RUNDIR` with this server's own /v1/chat/completions as the judge; its report reads the same."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from llmlab.eval.judge import JUDGE_PROMPT
from llmlab.eval.report import PRIMARY, load_report, summary
from llmlab.lab.options import PPL, eval_tasks
from llmlab.lab.rundir import REPORT
from llmlab.server.errors import ApiError, Text
from llmlab.server.hub import Hub

SOURCES = ["eval.run_task", "eval.intervals", "eval.pass_at_k", "eval.failing_line",
           "eval.summary", "eval.judge_pairs"]


class TextRequest(BaseModel):
    text: Text = Field(min_length=1)


def make_router(hub: Hub) -> APIRouter:
    r = APIRouter(prefix="/api/eval")

    def report(run_id: str) -> dict[str, Any]:
        runs = hub.runs()
        try:
            run = runs.get(run_id)
        except KeyError:
            raise ApiError(404, f"run: no run {run_id!r}", "run") from None
        if run["kind"] not in ("eval", "judge"):
            raise ApiError(400, f"run: {run_id!r} is a {run['kind']} run, not an evaluation",
                           "run")
        path = runs.run_dir(run_id) / REPORT
        if not path.is_file():
            raise ApiError(409, f"run: {run_id!r} has no report yet (status {run['status']})",
                           "run", "conflict_error")
        return {"run": run, "report": load_report(path)}

    @r.get("/options")
    def options() -> dict[str, Any]:
        """Models an eval may load (the bundled causal LM and the runs holding a causal LM),
        and the tasks a request may name."""
        base = {"id": "smollm2-135m-instruct", "label": "SmolLM2-135M-Instruct (base)"}
        runs = [m for m in hub.attention_models()
                if m["id"].startswith("run:") and m.get("kind") != "reward"]
        tasks = [t for t in eval_tasks() if not t.endswith(":")]
        # The judge answers through this server's /v1/chat/completions: a chat model.
        judges = [base, *(m for m in runs if m.get("chat"))]
        return {"models": [base, *runs], "tasks": tasks, "perplexity_prefix": PPL,
                "primary": PRIMARY, "sources": SOURCES, "judges": judges,
                "judge_prompt": JUDGE_PROMPT}

    @r.post("/text", status_code=201)
    def text(req: TextRequest) -> dict[str, Any]:
        """A text to measure perplexity on, stored as an upload: perplexity:upload:HASH."""
        limit = hub.cfg.max_corpus_chars
        if len(req.text) > limit:
            raise ApiError(400, f"text: {len(req.text):,} characters; at most {limit:,}", "text")
        saved = hub.runs().save_corpus(req.text)
        return {**saved, "task": PPL + saved["name"]}

    @r.get("/report/{run_id}")
    def get_report(run_id: str) -> dict[str, Any]:
        """An eval run's results: each task's primary metric with its interval (the chart),
        all metrics, and the run's options; the per-item records come from /examples."""
        got = report(run_id)
        rep = got["report"]
        return {"run": got["run"], "model": rep["model"], "adapter": rep["adapter"],
                "summary": summary(rep), "config": rep["config"],
                "results": [{"task": t["task"], "metrics": t["metrics"],
                             "ci95": t.get("ci95", {}), "config": t.get("config", {})}
                            for t in rep["results"]]}

    @r.get("/report/{run_id}/examples")
    def examples(run_id: str, task: str) -> dict[str, Any]:
        """One task's per-item records: prompt, output, verdict (HumanEval: the sandbox's
        stdout, stderr and the failing line)."""
        for t in report(run_id)["report"]["results"]:
            if t["task"] == task:
                return {"task": task, "samples": t.get("samples", [])}
        raise ApiError(404, f"task: run {run_id!r} did not evaluate {task!r}", "task")

    return r

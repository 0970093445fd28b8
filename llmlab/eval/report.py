"""Evaluation reports (JSON) and their comparison (table + bar chart)."""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

import numpy as np

from llmlab import __version__

# The metric a task is judged by, for the comparison chart.
PRIMARY = {"perplexity": "bits_per_byte", "arithmetic": "accuracy", "trivia": "accuracy",
           "humaneval": "pass@1", "gen": "rougeL", "rag": "hybrid/ndcg@10", "judge": "win_rate"}


def make_report(model: str, adapter: str | None, seed: int, results: list[dict[str, Any]],
                config: dict[str, Any]) -> dict[str, Any]:
    return {
        "llmlab_version": __version__,
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "model": model,
        "adapter": adapter,
        "seed": seed,
        "config": config,
        "tasks": [r["task"] for r in results],
        "results": results,
    }


def write_report(report: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


REPORT_FILE = "report.json"  # in --out DIR
PROGRESS_FILE = "metrics.jsonl"  # in --out DIR: what a playground run's page follows


def report_paths(out: str | None) -> tuple[Path | None, Path | None]:
    """--out FILE: the report; --out DIR (an existing directory, e.g. a playground run's):
    DIR/report.json, and DIR/metrics.jsonl gets a record as each step starts and ends."""
    if out is None:
        return None, None
    path = Path(out)
    if path.is_dir():
        return path / REPORT_FILE, path / PROGRESS_FILE
    return path, None


def log_progress(path: Path | None, record: dict[str, Any]) -> None:
    if path is not None:
        with path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=str) + "\n")


def load_report(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such report")
    try:
        rep = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(rep, dict) or not isinstance(rep.get("results"), list):
        raise ValueError(f"{path}: not an llmlab eval report (no 'results' list)")
    return rep


def label(rep: dict[str, Any], path: str | Path) -> str:
    name = str(rep.get("model", Path(path).stem))
    if rep.get("adapter"):
        name += f"+{Path(str(rep['adapter'])).name}"
    return name


def primary(task: str) -> str:
    return PRIMARY.get(task.split(":")[0], "accuracy")


# Lower is better for these; every other metric shown is higher-is-better.
LOWER_BETTER = {"bits_per_byte", "perplexity", "nll"}


def summary(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each task's primary metric with its 95% interval (None where the task has none):
    what a comparison chart draws, one bar per report."""
    out = []
    for r in report.get("results", []):
        m = primary(r["task"])
        if r.get("metrics", {}).get(m) is None:  # absent, or nothing to measure (a judge
            continue                              # whose every prompt was skipped)
        ci = r.get("ci95", {}).get(m)
        out.append({"task": r["task"], "metric": m, "value": r["metrics"][m],
                    "low": ci["low"] if ci else None, "high": ci["high"] if ci else None,
                    "method": ci["method"] if ci else None,
                    "n": r["metrics"].get("n", r["metrics"].get("judged")),
                    "lower_is_better": m in LOWER_BETTER,
                    "examples": len(r.get("samples", []))})
    return out


def compare_table(reports: list[tuple[str, dict[str, Any]]]) -> tuple[str, list[tuple]]:
    """Text table of every numeric metric, one column per report; also (task, metric, values)
    rows for the chart."""
    rows: dict[tuple[str, str], list[float | None]] = {}
    for j, (_, rep) in enumerate(reports):
        for r in rep["results"]:
            for m, v in r.get("metrics", {}).items():
                if isinstance(v, bool) or not isinstance(v, int | float):
                    continue
                rows.setdefault((r["task"], m), [None] * len(reports))[j] = float(v)
    names = [n for n, _ in reports]
    w = max([len("task / metric"), *(len(f"{t} / {m}") for t, m in rows)])
    lines = [f"{'task / metric':<{w}}" + "".join(f"  {n[:18]:>18}" for n in names)]
    for (t, m), vals in rows.items():
        cells = "".join(f"  {'-' if v is None else f'{v:.4g}':>18}" for v in vals)
        lines.append(f"{t + ' / ' + m:<{w}}{cells}")
    return "\n".join(lines), [(t, m, v) for (t, m), v in rows.items()]


def plot_compare(names: list[str], rows: list[tuple], out: str | Path) -> Path:
    """Grouped bars: each task's primary metric, one bar per report."""
    import matplotlib  # seconds to import: only when a chart is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [(t, m, v) for t, m, v in rows if m == primary(t)]
    if not shown:
        raise ValueError("no primary metric to plot (reports share no known task)")
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(shown) * len(names) ** 0.5), 4))
    x = np.arange(len(shown))
    width = 0.8 / len(names)
    for j, n in enumerate(names):
        vals = [v[j] if v[j] is not None else 0.0 for _, _, v in shown]
        ax.bar(x + j * width - 0.4 + width / 2, vals, width, label=n)
    ax.set_xticks(x, [f"{t}\n{m}" for t, m, _ in shown], fontsize=8)
    ax.set_title("llmlab eval compare")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out

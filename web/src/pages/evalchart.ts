// The evaluation page's drawings: grouped bars with 95% intervals (one group per task, one bar
// per evaluated model) and the per-item records of one bar (prompt, output, verdict, and for
// HumanEval the sandbox's own output and the failing line).
import * as d3 from "d3";
import { el } from "../ui";

export interface Row { task: string; metric: string; value: number; low: number | null; high: number | null; method: string | null; n: number | null; lower_is_better: boolean; examples: number }
export interface Compared { id: string; label: string; rows: Row[] }
export type Example = Record<string, unknown> & { prompt?: string; output?: string; verdict?: string }

const COLORS = d3.schemeTableau10;

export function barChart(runs: Compared[], onPick: (run: Compared, task: string) => void): SVGSVGElement {
  const groups = [...new Set(runs.flatMap((r) => r.rows.map((x) => `${x.task}|${x.metric}`)))];
  const w = Math.max(640, 90 + groups.length * (40 + 34 * runs.length)), h = 300;
  const m = { l: 56, r: 12, t: 14, b: 58 };
  const legendH = 18 * runs.length;
  const svg = d3.create("svg").attr("width", w).attr("height", h + legendH).attr("data-testid", "eval-chart");
  const top = d3.max(runs.flatMap((r) => r.rows.map((x) => Math.max(x.value, x.high ?? x.value)))) ?? 1;
  const y = d3.scaleLinear().domain([0, top > 0 ? top * 1.08 : 1]).nice().range([h - m.b, m.t]);
  const x0 = d3.scaleBand().domain(groups).range([m.l, w - m.r]).paddingInner(0.25).paddingOuter(0.1);
  const x1 = d3.scaleBand().domain(runs.map((r) => r.id)).range([0, x0.bandwidth()]).padding(0.08);
  const name = (g: string) => { const [t, mt] = g.split("|"); return [t, mt]; };
  const xa = svg.append("g").attr("transform", `translate(0,${h - m.b})`).call(d3.axisBottom(x0).tickFormat(() => ""));
  xa.selectAll<SVGGElement, string>(".tick").each(function (g) {
    const [t, mt] = name(g);
    const rows = runs.flatMap((r) => r.rows.filter((x) => x.task === t && x.metric === mt));
    const dir = rows.some((x) => x.lower_is_better) ? " (lower is better)" : "";
    d3.select(this).append("text").attr("y", 16).attr("fill", "currentColor").text(t);
    d3.select(this).append("text").attr("y", 30).attr("fill", "currentColor").text(mt + dir);
  });
  svg.append("g").attr("transform", `translate(${m.l},0)`).call(d3.axisLeft(y).ticks(6, "~g"));
  svg.append("text").attr("x", (m.l + w - m.r) / 2).attr("y", h - 8).attr("text-anchor", "middle").attr("class", "small").text("task and its primary metric (bars: 95% confidence interval)");
  svg.append("text").attr("transform", `translate(13,${(h - m.b + m.t) / 2}) rotate(-90)`).attr("text-anchor", "middle").attr("class", "small").text("metric value");
  runs.forEach((run, i) => {
    const color = COLORS[i % COLORS.length];
    for (const r of run.rows) {
      const g = `${r.task}|${r.metric}`;
      const bx = (x0(g) ?? 0) + (x1(run.id) ?? 0), bw = x1.bandwidth();
      const bar = svg.append("rect").attr("x", bx).attr("y", y(r.value)).attr("width", bw)
        .attr("height", Math.max(0, y(0) - y(r.value))).attr("fill", color).attr("class", "evalbar")
        .attr("data-testid", "eval-bar").attr("data-run", run.id).attr("data-task", r.task)
        .attr("data-value", String(r.value)).style("cursor", "pointer");
      bar.append("title").text(`${run.label}: ${r.task} ${r.metric} = ${d3.format(".4~g")(r.value)}` +
        (r.low != null ? ` (95% CI ${d3.format(".3~g")(r.low)}–${d3.format(".3~g")(r.high!)}, ${r.method}, n=${r.n})` : " (no interval: one text)") + " · click for the examples");
      // The whole column is the click target: a zero bar has no area of its own.
      svg.append("rect").attr("x", bx).attr("y", m.t).attr("width", bw).attr("height", y(0) - m.t)
        .attr("fill", "transparent").attr("pointer-events", "all").style("cursor", "pointer")
        .attr("data-testid", "eval-bar-hit").attr("data-run", run.id).attr("data-task", r.task)
        .on("click", () => onPick(run, r.task)).append("title").text(`${run.label}: ${r.task} · click for the examples`);
      if (r.low != null && r.high != null) {
        const cx = bx + bw / 2;
        const ci = svg.append("g").attr("class", "ci").attr("pointer-events", "none").attr("data-testid", "eval-ci").attr("data-low", String(r.low)).attr("data-high", String(r.high));
        ci.append("line").attr("x1", cx).attr("x2", cx).attr("y1", y(r.low)).attr("y2", y(r.high)).attr("stroke", "#111");
        for (const v of [r.low, r.high]) ci.append("line").attr("x1", cx - 5).attr("x2", cx + 5).attr("y1", y(v)).attr("y2", y(v)).attr("stroke", "#111");
      }
      svg.append("text").attr("pointer-events", "none").attr("x", bx + bw / 2).attr("y", y(r.high ?? r.value) - 4).attr("text-anchor", "middle").attr("class", "small").text(d3.format(".3~g")(r.value));
    }
    const ly = h + 14 + 18 * i;
    svg.append("rect").attr("x", m.l).attr("y", ly - 10).attr("width", 12).attr("height", 12).attr("fill", color);
    svg.append("text").attr("x", m.l + 18).attr("y", ly).attr("class", "small").attr("data-testid", "eval-legend").text(run.label);
  });
  return svg.node()!;
}

const SHOW = ["prompt", "output", "verdict"];

function field(name: string, value: unknown, testid: string): HTMLElement {
  const text = typeof value === "string" ? value : JSON.stringify(value);
  return el("div", { class: "small" }, el("b", {}, `${name}: `),
    el("pre", { class: "generated", "data-testid": testid, style: "margin:2px 0;max-height:14em;overflow:auto" }, text));
}

// One row per item; a HumanEval row also shows the sandbox's stdout/stderr and the failing line.
export function examplesView(title: string, samples: Example[]): HTMLElement {
  if (samples.some((s) => "answer_a" in s)) return judgeView(title, samples);
  const box = el("div", { "data-testid": "eval-examples" }, el("h3", {}, title));
  const fails = samples.filter((s) => s.verdict !== "passed" && s.verdict !== "correct").length;
  box.append(el("p", { class: "muted small" }, `${samples.length} items shown (${fails} not passed). Verdicts are the task's own verifier's (HumanEval: the sandbox's exit status).`));
  samples.forEach((s, i) => {
    const ok = s.verdict === "passed" || s.verdict === "correct";
    const head = el("summary", {}, `#${i + 1} ${String(s.task_id ?? s.question ?? "").slice(0, 90)} — `,
      el("span", { "data-testid": "eval-verdict", style: `font-weight:600;color:${ok ? "#15803d" : "#b91c1c"}` }, String(s.verdict ?? "")));
    const body: HTMLElement[] = SHOW.filter((k) => k in s).map((k) => field(k, s[k], `eval-${k}`));
    for (const k of ["target", "parsed", "answers", "reference"]) if (k in s) body.push(field(k, s[k], `eval-${k}`));
    if ("status" in s) {
      if (s.failing_line) body.push(field(String(s.failing_line).startsWith("assert") ? "failing assert" : "failing line", s.failing_line, "eval-failing"));
      body.push(field("sandbox stdout", s.stdout || "(empty)", "eval-stdout"));
      body.push(field("sandbox stderr", s.stderr || "(empty)", "eval-stderr"));
      body.push(field("program (solution)", s.solution, "eval-solution"));
    }
    box.append(el("details", { "data-testid": "eval-example", "data-verdict": String(s.verdict ?? "") }, head, ...body));
  });
  return box;
}

const VERDICT: Record<string, string> = { A: "A wins", B: "B wins", tie: "tie (split verdict)", skipped: "skipped" };

// A judge's items: the prompt, both answers, and the judge's two replies (A shown first, then
// B shown first) with the verdict the position-swap rule draws from them.
function judgeView(title: string, samples: Example[]): HTMLElement {
  const n = (v: string) => samples.filter((s) => s.verdict === v).length;
  const box = el("div", { "data-testid": "eval-examples" }, el("h3", {}, title),
    el("p", { class: "muted small", "data-testid": "judge-tally" }, `${samples.length} prompts: ${n("A")} won by A, ${n("B")} by B, ${n("tie")} ties, ${n("skipped")} skipped (no reply, or no clear 1 or 2). Win rate of A = (wins + ties / 2) / judged.`));
  samples.forEach((s, i) => {
    const replies = (s.replies as (string | null)[] | undefined) ?? [];
    const head = el("summary", {}, `#${i + 1} ${String(s.prompt ?? "").slice(0, 90)} — `,
      el("span", { "data-testid": "eval-verdict", style: "font-weight:600" }, (VERDICT[String(s.verdict)] ?? String(s.verdict)) + (s.reason ? ` (${String(s.reason)})` : "")));
    box.append(el("details", { "data-testid": "eval-example", "data-verdict": String(s.verdict ?? "") }, head,
      field("prompt", s.prompt, "eval-prompt"), field("answer of A", s.answer_a, "judge-answer-a"), field("answer of B", s.answer_b, "judge-answer-b"),
      field("judge, A shown as answer 1", replies[0] ?? "(no reply)", "judge-reply-1"), field("judge, B shown as answer 1", replies[1] ?? "(no reply)", "judge-reply-2")));
  });
  return box;
}

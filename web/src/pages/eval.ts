// Evaluation: pick models (the bundled SmolLM2, your runs, adapters) and tasks; each model is
// one playground run of `llmlab eval` (so the server stays free and progress shows), and the
// finished runs' reports compare as grouped bars with 95% intervals, with every item a click away.
// A judge run (`llmlab eval judge`) compares two models' answers with this server's own
// /v1/chat/completions as the judge; its win rate is one more bar, its items both verdicts.
// A run's checkpoint is a model too: run:ID@STEP.
// Link format for other pages: #/eval?model=run:ID (preselects it; &go=1 also starts it).
import { getJSON, postJSON } from "../api";
import type { Run } from "../runs";
import { el, labeled, pageHeader, showError } from "../ui";
import { barChart, type Compared, type Example, examplesView, type Row } from "./evalchart";

interface Model { id: string; label: string; kind?: string; status?: string; checkpoints?: number[] }
interface Options { models: Model[]; judges: Model[]; tasks: string[]; perplexity_prefix: string; sources: string[] }
interface Report { run: Run; model: string; adapter: string | null; summary: Row[] }

const DEFAULT_TASKS = ["arithmetic", "humaneval"];
const ACTIVE = ["running", "stopping"];
const EVAL_KINDS = ["eval", "judge"];

// Each run's checkpoints as models of their own (run:ID@STEP), after the run itself.
function withCheckpoints(ms: Model[]): Model[] {
  return ms.flatMap((m) => [m, ...(m.checkpoints ?? []).map((s) => ({ id: `${m.id}@${s}`, label: `${m.label} @ step ${s}` }))]);
}

// What a run evaluated, in words: "MODEL" or "A vs B (judge J)".
function what(r: Run): string {
  const o = r.options as Record<string, string>;
  return r.kind === "judge" ? `${o.model_a} vs ${o.model_b} (judge ${o.judge_model ?? "default"})` : String(o.model);
}

export function evalLink(model: string, go = false): string {
  return `#/eval?model=${encodeURIComponent(model)}${go ? "&go=1" : ""}`;
}

function query(): URLSearchParams {
  const q = location.hash.indexOf("?");
  return new URLSearchParams(q < 0 ? "" : location.hash.slice(q + 1));
}

export function evalPage(root: HTMLElement): void {
  const { root: head, setSources } = pageHeader("eval", "Evaluation");
  const models = el("div", { "data-testid": "eval-models", class: "targets" });
  const tasks = el("div", { "data-testid": "eval-tasks", class: "targets" });
  const ownText = el("textarea", { rows: 2, cols: 50, placeholder: "or paste a text to measure perplexity on", "data-testid": "eval-text" }) as HTMLTextAreaElement;
  const limit = el("input", { type: "number", min: 1, max: 500, value: 8, style: "width:5em", "data-testid": "eval-limit" }) as HTMLInputElement;
  const maxNew = el("input", { type: "number", min: 8, max: 512, value: 96, style: "width:5em", "data-testid": "eval-max-tokens" }) as HTMLInputElement;
  const samples = el("input", { type: "number", min: 1, max: 20, value: 1, style: "width:4em", "data-testid": "eval-samples" }) as HTMLInputElement;
  const ckpt = el("select", { "data-testid": "eval-checkpoint" }, el("option", { value: "" }, "a run's checkpoint…")) as HTMLSelectElement;
  const judgeA = el("select", { "data-testid": "judge-a" }) as HTMLSelectElement;
  const judgeB = el("select", { "data-testid": "judge-b" }) as HTMLSelectElement;
  const judgeBy = el("select", { "data-testid": "judge-model" }) as HTMLSelectElement;
  const judgeN = el("input", { type: "number", min: 1, max: 8, value: 4, style: "width:4em", "data-testid": "judge-limit" }) as HTMLInputElement;
  const judgeGo = el("button", { "data-testid": "judge-start" }, "▶ judge A vs B") as HTMLButtonElement;
  const start = el("button", { "data-testid": "eval-start" }, "▶ evaluate") as HTMLButtonElement;
  const stop = el("button", { "data-testid": "eval-stop", disabled: true }, "■ stop") as HTMLButtonElement;
  const status = el("div", { class: "runstate", "data-testid": "eval-status" });
  const err = el("div", { class: "error", hidden: true, "data-testid": "eval-error" });
  const runsBox = el("div", { "data-testid": "eval-runs" });
  const chartBox = el("div", { "data-testid": "eval-chart-box" });
  const table = el("div", { "data-testid": "eval-table", class: "small" });
  const examples = el("div", {});
  const compared = new Set<string>();
  const reports = new Map<string, Report>();
  let current: Run | null = null;
  let source: EventSource | null = null;
  let queue: string[] = [];

  const checked = (box: HTMLElement) => [...box.querySelectorAll<HTMLInputElement>("input[type=checkbox]:checked")].map((i) => i.value);
  function check(box: HTMLElement, value: string, label: string, on: boolean, testid: string): void {
    let input = box.querySelector<HTMLInputElement>(`input[value="${CSS.escape(value)}"]`);
    if (!input) {
      input = el("input", { type: "checkbox", value, "data-testid": testid }) as HTMLInputElement;
      box.append(el("label", {}, input, ` ${label}`));
    }
    if (on) input.checked = true;
  }

  async function taskSpecs(): Promise<string> {
    const specs = checked(tasks);
    if (ownText.value.trim()) specs.push((await postJSON<{ task: string }>("/api/eval/text", { text: ownText.value })).task);
    if (!specs.length) throw new Error("tasks: pick at least one task");
    return specs.join(",");
  }

  function labelOf(rep: Report): string {
    // The model as picked (run:ID or a bundled name), and which evaluation of it (its id's tail).
    if (rep.run.kind === "judge") return `${what(rep.run)} · judge …${rep.run.id.slice(-4)}`;
    const r = rep.run.options as Record<string, string>;
    return `${r.model ?? rep.model}${rep.adapter ? " (adapter)" : ""} · eval …${rep.run.id.slice(-4)}`;
  }

  async function draw(): Promise<void> {
    const list: Compared[] = [];
    for (const id of compared) {
      if (!reports.has(id)) {
        try { reports.set(id, await getJSON<Report>(`/api/eval/report/${encodeURIComponent(id)}`)); } catch { continue; }
      }
      const rep = reports.get(id)!;
      list.push({ id, label: labelOf(rep), rows: rep.summary });
    }
    if (!list.length) {
      chartBox.replaceChildren(el("p", { class: "muted" }, "Tick finished evaluations below (or evaluate a model) to compare them."));
      table.replaceChildren();
      return;
    }
    chartBox.replaceChildren(barChart(list, pick));
    const fmt = (v: number | null) => (v == null ? "–" : v.toPrecision(4));
    table.replaceChildren(el("table", { "data-testid": "eval-numbers" },
      el("tr", {}, ...["model", "task", "metric", "value", "95% CI", "method", "n"].map((t) => el("th", {}, t))),
      ...list.flatMap((c) => c.rows.map((r) => el("tr", { "data-testid": "eval-number", "data-run": c.id, "data-task": r.task, "data-metric": r.metric, "data-value": String(r.value) },
        ...[c.label, r.task, r.metric, fmt(r.value), r.low == null ? "none (one text)" : `${fmt(r.low)} – ${fmt(r.high)}`, r.method ?? "", String(r.n ?? "")].map((t) => el("td", {}, t)))))));
  }

  async function pick(run: Compared, task: string): Promise<void> {
    try {
      const got = await getJSON<{ samples: Example[] }>(`/api/eval/report/${encodeURIComponent(run.id)}/examples?task=${encodeURIComponent(task)}`);
      examples.replaceChildren(examplesView(`${run.label}: ${task}`, got.samples));
      const firstFail = examples.querySelector<HTMLDetailsElement>("details[data-verdict=failed], details[data-verdict=timeout], details[data-verdict=wrong], details[data-verdict=A], details[data-verdict=B], details[data-verdict=tie]");
      if (firstFail) firstFail.open = true;
    } catch (e) { showError(err, e); }
  }

  async function refresh(): Promise<void> {
    const { runs } = await getJSON<{ runs: Run[] }>("/api/runs");
    const evals = runs.filter((r) => EVAL_KINDS.includes(r.kind));
    const trained = runs.filter((r) => !EVAL_KINDS.includes(r.kind) && r.kind !== "reward" && r.model && !ACTIVE.includes(r.status));
    const evalRow = (r: Run) => {
      const box = el("input", { type: "checkbox", "data-testid": "eval-compare", "data-run": r.id, disabled: r.status !== "finished" }) as HTMLInputElement;
      box.checked = compared.has(r.id);
      box.addEventListener("change", () => { if (box.checked) compared.add(r.id); else compared.delete(r.id); void draw(); });
      const o = r.options as Record<string, string>;
      const task = r.kind === "judge" ? "LLM-as-judge" : o.task;
      return el("li", { "data-testid": "eval-run", "data-status": r.status, "data-kind": r.kind }, box, ` ${r.label || r.id}: ${what(r)} · ${task} · limit ${o.limit ?? "all"} · ${r.status}`,
        r.error ? el("span", { class: "error small" }, ` ${r.error}`) : null);
    };
    const trainRow = (r: Run) => {
      const b = el("button", { "data-testid": "eval-run-evaluate", "data-run": r.id }, "evaluate");
      b.addEventListener("click", () => void evaluate([r.model!]));
      return el("li", {}, b, ` ${r.label || r.id} (${r.kind}${r.adapter ? ", adapter" : ""}, ${r.status}) · link: `, el("a", { href: evalLink(r.model!) }, evalLink(r.model!)));
    };
    runsBox.replaceChildren(
      el("h3", {}, "Evaluations"), evals.length ? el("ul", { class: "list" }, ...evals.map(evalRow)) : el("p", { class: "muted" }, "none yet"),
      el("h3", {}, "Your trained runs"), trained.length ? el("ul", { class: "list" }, ...trained.map(trainRow)) : el("p", { class: "muted" }, "none yet: train one on the SFT, DPO or RL pages"));
    const live = evals.find((r) => ACTIVE.includes(r.status));
    if (live && !current) follow(live);
  }

  function follow(r: Run): void {
    source?.close();
    current = r;
    stop.disabled = false;
    start.disabled = judgeGo.disabled = true;
    status.textContent = `${what(r)}: starting…`;
    status.dataset.status = "running";
    const es = new EventSource(`/api/runs/${encodeURIComponent(r.id)}/events`);
    source = es;
    es.addEventListener("metrics", (e) => {
      const m = JSON.parse((e as MessageEvent).data) as { step: number; of: number; task: string; event: string };
      status.textContent = `${what(r)}: ${m.event === "start" ? "running" : "done"} ${m.task} (step ${m.step + (m.event === "start" ? 1 : 0)} of ${m.of})${queue.length ? ` · ${queue.length} more model(s) queued` : ""}`;
    });
    es.addEventListener("end", (e) => {
      es.close();
      const done = JSON.parse((e as MessageEvent).data) as Run;
      current = null;
      status.dataset.status = done.status;
      status.textContent = `${what(r)}: ${done.status}`;
      if (done.status === "finished") compared.add(done.id);
      else { queue = []; if (done.error) showError(err, `${r.kind === "judge" ? "judge run" : "evaluation"} ${done.status}: ${done.error}`); }
      stop.disabled = true;
      start.disabled = judgeGo.disabled = false;
      void refresh().then(draw).then(next);
    });
  }

  async function launch(model: string): Promise<void> {
    const options = { model, task: await taskSpecs(), limit: Number(limit.value), max_new_tokens: Number(maxNew.value), samples: Number(samples.value), keep_examples: 0 };
    const r = await postJSON<Run>("/api/runs", { kind: "eval", options, label: `eval ${model}` });
    follow(r);
    void refresh();
  }

  async function next(): Promise<void> {
    const m = queue.shift();
    if (m === undefined) return;
    try { await launch(m); } catch (e) { queue = []; showError(err, e); }
  }

  async function evaluate(ms: string[]): Promise<void> {
    err.hidden = true;
    if (!ms.length) { showError(err, "models: pick at least one model"); return; }
    for (const m of ms) check(models, m, m, true, "eval-model");
    queue = [...ms];
    await next();
  }

  start.addEventListener("click", () => void evaluate(checked(models)));
  ckpt.addEventListener("change", () => { if (ckpt.value) check(models, ckpt.value, ckpt.selectedOptions[0].text, true, "eval-model"); ckpt.value = ""; });
  judgeGo.addEventListener("click", async () => {
    err.hidden = true;
    const options = { model_a: judgeA.value, model_b: judgeB.value, judge_model: judgeBy.value, limit: Number(judgeN.value), max_new_tokens: Number(maxNew.value) };
    try {
      const r = await postJSON<Run>("/api/runs", { kind: "judge", options, label: `judge ${judgeA.value} vs ${judgeB.value}` });
      follow(r);
      void refresh();
    } catch (e) { showError(err, e); }
  });
  stop.addEventListener("click", async () => {
    queue = [];
    if (current) try { await postJSON(`/api/runs/${encodeURIComponent(current.id)}/stop`, {}); } catch (e) { showError(err, e); }
  });
  window.addEventListener("hashchange", () => source?.close(), { once: true });

  const q = query();
  getJSON<Options>("/api/eval/options").then(async (o) => {
    setSources(o.sources);
    const want = q.get("model");
    for (const m of o.models) check(models, m.id, m.label, want ? m.id === want : m.id === o.models[0].id, "eval-model");
    const points = withCheckpoints(o.models);
    ckpt.append(...points.filter((m) => m.id.includes("@")).map((m) => el("option", { value: m.id }, m.label)));
    for (const [sel, list] of [[judgeA, points], [judgeB, points], [judgeBy, o.judges]] as const) sel.replaceChildren(...list.map((m) => el("option", { value: m.id }, m.label)));
    judgeB.value = points.find((m) => m.id !== judgeA.value)?.id ?? judgeA.value;  // a second model, when there is one
    if (want && !o.models.some((m) => m.id === want)) check(models, want, want, true, "eval-model");
    for (const t of o.tasks) check(tasks, t, t, DEFAULT_TASKS.includes(t), "eval-task");
    await refresh();
    await draw();
    if (want && q.get("go") === "1" && !current) await evaluate([want]);
  }).catch((e) => showError(err, e));

  root.replaceChildren(head,
    el("section", { class: "controls" }, labeled("models", models), labeled("tasks", tasks), labeled("perplexity on your text", ownText),
      labeled("add a checkpoint (run:ID@STEP)", ckpt),
      labeled("items per task (tokens for perplexity)", limit), labeled("max new tokens", maxNew), labeled("HumanEval samples per problem (pass@k)", samples),
      el("div", { class: "row" }, start, stop)),
    el("section", { class: "controls", "data-testid": "judge-panel" }, el("h3", {}, "LLM-as-judge: A against B"),
      el("p", { class: "muted small" }, "Both models answer the same open prompts; the judge (a chat model served by this server, through its own /v1/chat/completions) reads each pair twice, in both orders. A wins a prompt only when preferred both times; a split verdict is a tie, so a judge that always picks one slot gives ties, not a winner."),
      labeled("model A", judgeA), labeled("model B", judgeB), labeled("judge", judgeBy), labeled("prompts (of 8)", judgeN), el("div", { class: "row" }, judgeGo)),
    status, err, chartBox, table, examples, runsBox);
}

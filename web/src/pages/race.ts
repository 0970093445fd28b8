// The speedrun race on the pretraining page: the baseline (tiny-cpu) and the recipe
// (speedrun-cpu) pretrained in turn on the same data to one target validation bits per byte
// (llmlab.lab.race, /api/pretrain/race). What each recipe is comes from the server's preset
// table; every point drawn is a record of the run's own metrics.jsonl (val_bpb against its
// train_time_s, the Trainer's training seconds), and the times to target are the records'
// time_to_target_s.
import * as d3 from "d3";
import { getJSON, postJSON } from "../api";
import type { Rec } from "../runs";
import { el, fmt, labeled, showError } from "../ui";

interface Recipe { role: string; preset: string; switches: Record<string, string | number>; data: Record<string, string> }
interface Lane { role: string; preset: string; run: string | null; status: string; step: number }
interface Race { id: string; target_val_bpb: number; eval_every: number; max_steps: number | null; status: string; error: string | null; lanes: Lane[] }
interface Setup {
  target_val_bpb: number; max_target_val_bpb: number; eval_every: number; order: string; threads: number;
  recipes: Recipe[]; race: Race | null; sources: string[];
}

const ACTIVE = ["running", "stopping"];
const COLORS: Record<string, string> = { baseline: "#f97316", recipe: "#2563eb" };
const SWITCH_NAMES: Record<string, string> = {
  optimizer: "optimizer", schedule: "lr schedule", batch_size: "batch (sequences)", max_steps: "steps", seq_len: "sequence length",
  lr: "peak lr (AdamW)", muon_lr: "peak lr (Muon)", embed_lr: "token embedding lr", warmup_steps: "warmup steps",
  cooldown: "wsd cooldown share", weight_decay: "weight decay", precision: "precision", tokens_per_step: "tokens a step",
  embeddings: "embedding and head", value_embeds: "value-embedding tables",
};

// A point of the chart: one evaluation record of a run.
interface Point { x: number; y: number; step: number }

export function raceSection(onSources: (keys: string[]) => void): HTMLElement {
  const err = el("div", { class: "error", hidden: true, "data-testid": "race-error" });
  const about = el("p", { class: "muted", "data-testid": "race-about" });
  const recipes = el("div", { "data-testid": "race-recipes" });
  const target = el("input", { type: "number", step: 0.01, min: 0.01, "data-testid": "race-target", style: "width:6em" }) as HTMLInputElement;
  const every = el("input", { type: "number", step: 1, min: 1, "data-testid": "race-every", style: "width:5em" }) as HTMLInputElement;
  const steps = el("input", { type: "number", step: 1, min: 1, placeholder: "each preset's own", "data-testid": "race-steps", style: "width:9em" }) as HTMLInputElement;
  const start = el("button", { "data-testid": "race-start" }, "▶ race") as HTMLButtonElement;
  const stop = el("button", { "data-testid": "race-stop", disabled: true }, "■ stop both") as HTMLButtonElement;
  const state = el("span", { class: "runstate", "data-testid": "race-status" });
  const chart = el("div", { "data-testid": "race-chart" });
  const results = el("div", { class: "stats", "data-testid": "race-results" });

  let setup: Setup | null = null;
  let race: Race | null = null;
  const recs: Record<string, Rec[]> = {};
  const streams: Record<string, EventSource> = {};  // by role
  let poll: number | undefined;

  function points(role: string): Point[] {
    return (recs[role] ?? []).filter((r) => r.val_bpb != null).map((r) => ({ x: r.train_time_s, y: r.val_bpb, step: r.step }));
  }
  const reached = (role: string) => (recs[role] ?? []).find((r) => r.target_reached);

  function showRecipes(s: Setup): void {
    // SWITCH_NAMES's order (llmlab.train.speedrun.SWITCHES'): a switch only one recipe has sits in its place.
    const order = Object.keys(SWITCH_NAMES);
    const keys = [...new Set(s.recipes.flatMap((r) => Object.keys(r.switches)))]
      .sort((a, b) => (order.indexOf(a) + 1 || 99) - (order.indexOf(b) + 1 || 99));
    const cell = (r: Recipe, k: string) => {
      const v = r.switches[k];
      return el("td", { "data-preset": r.preset, "data-key": k }, v === undefined ? "–" : typeof v === "number" && Number.isInteger(v) ? fmt(v) : String(v));
    };
    recipes.replaceChildren(el("table", { class: "small" },
      el("tr", {}, el("th", {}, "switch"), ...s.recipes.map((r) => el("th", {}, `${r.preset} (${r.role})`))),
      ...keys.map((k) => el("tr", {}, el("td", {}, SWITCH_NAMES[k] ?? k), ...s.recipes.map((r) => cell(r, k)))),
      el("tr", {}, el("td", {}, "data"), ...s.recipes.map((r) => el("td", { "data-preset": r.preset, "data-key": "data" }, `${r.data.inputs} · ${r.data.tokenizer}`)))));
    const d = s.recipes[0].data;
    about.textContent = `Both train on the same data (${d.inputs}, tokenizer ${d.tokenizer}) to the same target, evaluating every ${s.eval_every} steps. `
      + `They run ${s.order}, each with the machine to itself (${s.threads} thread${s.threads === 1 ? "" : "s"}), as benchmarks/speedrun_cpu.py runs them; `
      + "the x axis is each run's own training seconds (evaluation excluded), so the curves race as if both had started together.";
  }

  function draw(): void {
    const w = 640, h = 300, m = { l: 56, r: 16, t: 12, b: 38 };
    const tgt = race?.target_val_bpb ?? setup?.target_val_bpb ?? 0;
    const roles = (setup?.recipes ?? []).map((r) => r.role);
    const all = roles.flatMap(points);
    const xMax = Math.max(1, d3.max(all, (p) => p.x) ?? 1);
    const ys = [...all.map((p) => p.y), tgt];
    const [y0, y1] = [d3.min(ys)!, d3.max(ys)!];
    const pad = Math.max(0.02, (y1 - y0) * 0.08);
    const x = d3.scaleLinear().domain([0, xMax * 1.05]).range([m.l, w - m.r]);
    const y = d3.scaleLinear().domain([y0 - pad, y1 + pad]).range([h - m.b, m.t]);
    const svg = d3.create("svg").attr("width", w).attr("height", h).attr("data-testid", "race-svg");
    svg.append("g").attr("transform", `translate(0,${h - m.b})`).call(d3.axisBottom(x).ticks(7));
    svg.append("g").attr("transform", `translate(${m.l},0)`).call(d3.axisLeft(y).ticks(6, "~g"));
    svg.append("text").attr("class", "small axis-label").attr("data-axis", "x").attr("x", (m.l + w - m.r) / 2).attr("y", h - 4).attr("text-anchor", "middle")
      .text("training seconds (each run's own; evaluation excluded)");
    svg.append("text").attr("class", "small axis-label").attr("data-axis", "y").attr("transform", `translate(13,${(h - m.b + m.t) / 2}) rotate(-90)`).attr("text-anchor", "middle")
      .text("validation bits per byte");
    // The target: a horizontal line across the chart.
    svg.append("line").attr("data-testid", "race-target-line").attr("data-y", tgt).attr("x1", m.l).attr("x2", w - m.r).attr("y1", y(tgt)).attr("y2", y(tgt))
      .attr("stroke", "#dc2626").attr("stroke-dasharray", "5 4");
    svg.append("text").attr("x", m.l + 4).attr("y", y(tgt) - 4).attr("class", "small").attr("fill", "#dc2626").text(`target ${tgt} bpb`);
    const line = d3.line<Point>().x((p) => x(p.x)).y((p) => y(p.y));
    (setup?.recipes ?? []).forEach((r, i) => {
      const pts = points(r.role), color = COLORS[r.role] ?? "#64748b";
      const g = svg.append("g").attr("data-testid", "race-series").attr("data-role", r.role).attr("data-preset", r.preset);
      g.append("path").attr("d", line(pts) ?? "").attr("fill", "none").attr("stroke", color).attr("stroke-width", 2);
      g.selectAll("circle.race-pt").data(pts).join("circle").attr("class", "race-pt").attr("r", 3).attr("fill", color)
        .attr("cx", (p) => x(p.x)).attr("cy", (p) => y(p.y)).attr("data-x", (p) => p.x).attr("data-y", (p) => p.y).attr("data-step", (p) => p.step);
      const hit = reached(r.role);
      if (hit) {  // the crossing: a ring on the point and a drop line to its time on the x axis
        g.append("circle").attr("data-testid", "race-hit").attr("data-role", r.role).attr("r", 7).attr("fill", "none").attr("stroke", color).attr("stroke-width", 2)
          .attr("cx", x(hit.time_to_target_s)).attr("cy", y(hit.val_bpb));
        g.append("line").attr("x1", x(hit.time_to_target_s)).attr("x2", x(hit.time_to_target_s)).attr("y1", y(hit.val_bpb) + 7).attr("y2", h - m.b)
          .attr("stroke", color).attr("stroke-dasharray", "2 3");
      }
      // The legend, top right, with the time to target once it is reached.
      const lg = svg.append("g").attr("data-testid", "race-legend-item").attr("data-role", r.role).attr("transform", `translate(${w - m.r - 300},${m.t + 8 + 16 * i})`);
      lg.append("line").attr("x1", 0).attr("x2", 18).attr("stroke", color).attr("stroke-width", 3);
      lg.append("text").attr("x", 24).attr("y", 4).attr("class", "small")
        .text(`${r.preset} (${r.role})` + (hit ? `: target in ${hit.time_to_target_s.toFixed(1)} s` : ""));
    });
    chart.replaceChildren(svg.node()!);
    showResults();
  }

  function showResults(): void {
    const items: HTMLElement[] = [];
    const times: Record<string, number> = {};
    for (const r of setup?.recipes ?? []) {
      const hit = reached(r.role), last = recs[r.role]?.at(-1);
      const lane = race?.lanes.find((l) => l.role === r.role);
      let text = "–";
      if (hit) { times[r.role] = hit.time_to_target_s; text = `${hit.time_to_target_s.toFixed(1)} s (step ${hit.step}, ${fmt(hit.tokens)} tokens)`; }
      else if (lane && !ACTIVE.includes(lane.status) && lane.run && last) text = `not reached in ${last.step} steps`;
      else if (lane?.run) text = "racing…";
      else if (lane) text = "waits its turn";
      items.push(el("div", { class: "stat", "data-testid": `race-time-${r.role}`, "data-value": hit ? String(hit.time_to_target_s) : "" },
        el("span", { class: "k" }, `${r.preset} to target`), el("span", { class: "v" }, text)));
    }
    const ratio = times.recipe !== undefined && times.baseline !== undefined ? times.recipe / times.baseline : null;
    items.push(el("div", { class: "stat", "data-testid": "race-ratio", "data-value": ratio === null ? "" : String(ratio) },
      el("span", { class: "k" }, "recipe time / baseline time"), el("span", { class: "v" }, ratio === null ? "–" : `${ratio.toFixed(3)}×`)));
    results.replaceChildren(...items);
  }

  let queued = false;
  function redraw(): void {
    if (queued) return;
    queued = true;
    requestAnimationFrame(() => { queued = false; draw(); });
  }

  function follow(lane: Lane): void {
    if (!lane.run || streams[lane.role]?.url.endsWith(`/api/runs/${encodeURIComponent(lane.run)}/events`)) return;
    streams[lane.role]?.close();
    const es = new EventSource(`/api/runs/${encodeURIComponent(lane.run)}/events`);
    streams[lane.role] = es;
    // Each connection replays the run from its start.
    es.addEventListener("open", () => { recs[lane.role] = []; redraw(); });
    es.addEventListener("metrics", (e) => { (recs[lane.role] ??= []).push(JSON.parse((e as MessageEvent).data)); redraw(); });
    es.addEventListener("end", () => { es.close(); refresh(); });
  }

  function show(r: Race): void {
    race = r;
    for (const lane of r.lanes) follow(lane);
    const live = ACTIVE.includes(r.status);
    state.textContent = `${r.id}: ${r.status}${live ? " …" : ""} · ` + r.lanes.map((l) => `${l.preset} ${l.run ? `${l.status} step ${l.step}` : "waiting"}`).join(" · ");
    state.dataset.status = r.status;
    stop.disabled = !live || r.status === "stopping";
    start.disabled = live;
    if (r.status === "failed" && r.error) showError(err, `race failed: ${r.error}`);
    clearTimeout(poll);
    if (live) poll = window.setTimeout(refresh, 1000);  // the recipe's run starts when the baseline's ends
    redraw();
  }

  async function refresh(): Promise<void> {
    if (!race) return;
    try { show(await getJSON<Race>(`/api/pretrain/race/${encodeURIComponent(race.id)}`)); } catch (e) { showError(err, e); }
  }

  function attach(r: Race): void {
    for (const k of Object.keys(streams)) { streams[k].close(); delete streams[k]; }
    for (const k of Object.keys(recs)) delete recs[k];
    target.value = String(r.target_val_bpb);
    every.value = String(r.eval_every);
    steps.value = r.max_steps == null ? "" : String(r.max_steps);
    show(r);
  }

  start.addEventListener("click", async () => {
    err.hidden = true;
    const body: Record<string, number> = { target_val_bpb: Number(target.value), eval_every: Number(every.value) };
    if (steps.value.trim()) body.max_steps = Number(steps.value);
    try { attach(await postJSON<Race>("/api/pretrain/race", body)); } catch (e) { showError(err, e); }
  });
  stop.addEventListener("click", async () => {
    if (!race) return;
    try { show(await postJSON<Race>(`/api/pretrain/race/${encodeURIComponent(race.id)}/stop`, {})); } catch (e) { showError(err, e); }
  });
  window.addEventListener("hashchange", () => { clearTimeout(poll); for (const es of Object.values(streams)) es.close(); }, { once: true });

  getJSON<Setup>("/api/pretrain/race").then((s) => {
    setup = s;
    target.value = String(s.target_val_bpb);
    target.max = String(s.max_target_val_bpb);
    every.value = String(s.eval_every);
    showRecipes(s);
    onSources(s.sources);
    recipes.dataset.ready = "1";
    if (s.race) attach(s.race);
    else draw();
  }).catch((e) => showError(err, e));

  return el("section", { class: "race", "data-testid": "race" },
    el("h2", {}, "Race: the speedrun recipe against the baseline"), about, recipes,
    el("div", { class: "row" }, labeled("target val bpb", target), labeled("evaluate every", every), labeled("steps", steps), start, stop, state),
    err, el("div", { class: "row" }, chart, results));
}

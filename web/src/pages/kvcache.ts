// The KV cache (issue #23, item 5): prefill vs decode drawn row by row, cache memory as the
// context grows (SmolLM2, Llama-3.1-8B with GQA and as MHA), measured time per token with
// and without the cache, and int8/int4 error per layer with their speed. Every number comes
// from /api/kvcache/* (llmlab.explain.kvcache); nothing is computed here.
import * as d3 from "d3";
import { postJSON } from "../api";
import { modelSelect } from "../models";
import { debounce, el, labeled, pageHeader, showError } from "../ui";
import "./inside.css";

interface Step { kind: string; reused: [number, number]; computed: [number, number]; cache_len: number }
interface Trace { prompt_len: number; tokens: number[]; pieces: string[]; steps: Step[]; sources: string[] }
interface Series { name: string; n_layer: number; n_head: number; n_kv_head: number; head_dim: number; bytes_per_value: number; per_token: number; bytes: number[] }
interface Memory { contexts: number[]; series: Series[]; dtype: string; max_seq_len: number; sources: string[] }
interface Timing { n_prompt: number; n_new: number; cached_ms: number[]; recompute_ms: number[]; same_tokens: boolean; speedup: number; sources: string[] }
interface Quant { layers: string[]; rel_error: Record<string, number[]>; top1_agree: Record<string, number>; tok_s: Record<string, number>; weight_bytes: Record<string, number>; sources: string[] }

const vis = (t: string) => t.replace(/ /g, "·").replace(/\n/g, "↵");
const COLOURS = ["#2563eb", "#f97316", "#16a34a", "#9333ea"];
const bytes = (b: number) => b >= 2 ** 30 ? `${(b / 2 ** 30).toFixed(2)} GiB` : b >= 2 ** 20 ? `${(b / 2 ** 20).toFixed(1)} MiB` : `${(b / 1024).toFixed(1)} KiB`;

// A line chart with labelled axes and a legend; `log` puts both axes on log scales.
function lines(xs: number[], series: { name: string; ys: number[] }[], o: { x: string; y: string; log?: boolean; yfmt?: (v: number) => string; testid: string; xLabels?: string[] }): SVGSVGElement {
  const w = 900, h = 280, m = { l: 86, r: 16, t: 16, b: 64 };
  const all = series.flatMap((s) => s.ys).filter((v) => v > 0);
  const x = o.log ? d3.scaleLog().base(2).domain(d3.extent(xs) as [number, number]) : d3.scaleLinear().domain(d3.extent(xs) as [number, number]);
  x.range([m.l, w - m.r]);
  const y = (o.log ? d3.scaleLog().domain([d3.min(all)!, d3.max(all)!]) : d3.scaleLinear().domain([0, d3.max(all) ?? 1]).nice()).range([h - m.b, m.t]);
  const svg = d3.create("svg").attr("width", w).attr("height", h + 18 * series.length).attr("data-testid", o.testid);
  const xa = d3.axisBottom(x).tickValues(xs).tickFormat((v) => o.xLabels ? o.xLabels[xs.indexOf(Number(v))] ?? "" : d3.format(",")(Number(v)));
  svg.append("g").attr("transform", `translate(0,${h - m.b})`).call(xa).selectAll("text").attr("transform", "rotate(-35)").attr("text-anchor", "end");
  // Log axis: one tick per factor of 4 (d3's default log ticks crowd a 2^16 range).
  const lo = Math.ceil(Math.log2(d3.min(all) ?? 1)), hi = Math.floor(Math.log2(d3.max(all) ?? 1));
  const ya = d3.axisLeft(y).tickFormat((v) => (o.yfmt ?? d3.format("~g"))(Number(v)));
  if (o.log) ya.tickValues(d3.range(lo + (lo % 2 ? 1 : 0), hi + 1, 2).map((k) => 2 ** k)); else ya.ticks(5);
  svg.append("g").attr("transform", `translate(${m.l},0)`).call(ya);
  svg.append("text").attr("x", (m.l + w - m.r) / 2).attr("y", h - 6).attr("text-anchor", "middle").attr("class", "small").text(o.x);
  svg.append("text").attr("transform", `translate(10,${(h - m.b + m.t) / 2}) rotate(-90)`).attr("text-anchor", "middle").attr("class", "small").text(o.y);
  series.forEach((s, k) => {
    const pts = s.ys.map((v, i) => [xs[i], v] as [number, number]).filter(([, v]) => !o.log || v > 0);
    svg.append("path").attr("d", d3.line().x((p) => x(p[0])).y((p) => y(p[1]))(pts)).attr("fill", "none").attr("stroke", COLOURS[k]).attr("stroke-width", 2);
    svg.append("g").selectAll("circle").data(pts).join("circle").attr("cx", (p) => x(p[0])).attr("cy", (p) => y(p[1])).attr("r", 3).attr("fill", COLOURS[k])
      .append("title").text((p) => `${s.name}: ${(o.yfmt ?? String)(p[1])}`);
    svg.append("rect").attr("x", m.l).attr("y", h + 4 + 18 * k).attr("width", 12).attr("height", 12).attr("fill", COLOURS[k]);
    svg.append("text").attr("x", m.l + 18).attr("y", h + 14 + 18 * k).attr("class", "small legend").text(s.name);
  });
  return svg.node()!;
}

// Steps (rows) x positions (columns): which K/V rows each forward computes, which it reads.
function stepGrid(d: Trace, upto: number): SVGSVGElement {
  const n = d.pieces.length, cw = Math.max(22, Math.min(46, Math.floor(760 / n))), rh = 22, m = { l: 90, t: 90 };
  const svg = d3.create("svg").attr("width", m.l + n * cw + 10).attr("height", m.t + d.steps.length * rh + 40).attr("data-testid", "kv-steps");
  d.pieces.forEach((p, j) => svg.append("text").attr("transform", `translate(${m.l + j * cw + cw / 2},${m.t - 6}) rotate(-60)`).attr("class", "small")
    .attr("fill", j < d.prompt_len ? "#111" : "#b45309").text(vis(p)));
  d.steps.forEach((s, i) => {
    const g = svg.append("g").attr("opacity", i <= upto ? 1 : 0.15);
    g.append("text").attr("x", m.l - 6).attr("y", m.t + i * rh + 15).attr("text-anchor", "end").attr("class", "small").text(i === 0 ? "prefill" : `decode ${i}`);
    for (let j = 0; j < n; j++) {
      const state = j >= s.computed[0] && j < s.computed[1] ? "computed" : j < s.reused[1] ? "reused" : "none";
      g.append("rect").attr("x", m.l + j * cw).attr("y", m.t + i * rh).attr("width", cw - 2).attr("height", rh - 3)
        .attr("class", `kv-${state}`).attr("fill", state === "computed" ? "#f97316" : state === "reused" ? "#93c5fd" : "#f3f4f6")
        .append("title").text(`${i === 0 ? "prefill" : `decode step ${i}`}, position ${j}: ${state === "computed" ? "K/V computed now" : state === "reused" ? "K/V read from the cache" : "not yet"}`);
    }
  });
  const ly = m.t + d.steps.length * rh + 14;
  [["#f97316", "K/V computed this step"], ["#93c5fd", "K/V reused from the cache"]].forEach(([c, t], k) => {
    svg.append("rect").attr("x", m.l + 220 * k).attr("y", ly).attr("width", 12).attr("height", 12).attr("fill", c);
    svg.append("text").attr("x", m.l + 18 + 220 * k).attr("y", ly + 10).attr("class", "small").text(t);
  });
  return svg.node()!;
}

export function kvcachePage(root: HTMLElement): void {
  const { root: head, setSources } = pageHeader("kvcache", "The KV cache");
  const model = modelSelect("kv-model", { causalOnly: true });
  const text = el("input", { type: "text", size: 60, value: "The key and value of every past token are kept, so each new token", "data-testid": "kv-text" }) as HTMLInputElement;
  const nNew = el("input", { type: "number", min: 2, max: 24, value: 8, style: "width:4em", "data-testid": "kv-n" }) as HTMLInputElement;
  const srcs: Record<string, string[]> = {};
  const addSources = (k: string, s: string[]) => { srcs[k] = s; setSources([...new Set(Object.values(srcs).flat())]); };
  const body = () => ({ text: text.value, model: model.el.value, n_new: Number(nNew.value) });
  const box = () => el("div", { class: "error", hidden: true });

  // 1. Prefill vs decode, step by step
  const stepOut = el("div", { class: "lens-wrap" }), stepErr = box();
  const slider = el("input", { type: "range", min: 0, max: 0, value: 0, "data-testid": "kv-step" }) as HTMLInputElement;
  const stepNote = el("p", { class: "small", "data-testid": "kv-step-note" });
  let trace: Trace | null = null;
  function drawSteps(): void {
    if (!trace) return;
    const i = Number(slider.value), s = trace.steps[i];
    const made = s.computed[1] - s.computed[0];
    stepNote.textContent = `${i === 0 ? "Prefill" : `Decode step ${i}`}: computes K/V for ${made} position${made > 1 ? "s" : ""}, reuses ${s.reused[1]} from the cache; the cache then holds ${s.cache_len} rows per layer and head, and the step predicts ${JSON.stringify(trace.pieces[trace.prompt_len + i])}.`;
    stepOut.replaceChildren(stepGrid(trace, i));
  }
  async function loadTrace(): Promise<void> {
    stepErr.hidden = true;
    try {
      trace = await postJSON<Trace>("/api/kvcache/trace", body());
      addSources("trace", trace.sources);
      slider.max = String(trace.steps.length - 1);
      slider.value = slider.max;
      drawSteps();
    } catch (e) { stepOut.replaceChildren(); showError(stepErr, e); }
  }

  // 2. Memory as the context grows
  const memOut = el("div"), memErr = box();
  async function loadMemory(): Promise<void> {
    memErr.hidden = true;
    try {
      const d = await postJSON<Memory>("/api/kvcache/memory", body());
      addSources("memory", d.sources);
      const labels = d.series.map((s, k) => `${k === 0 ? `${s.name} (${d.dtype})` : `${s.name} (bf16)`}: ${s.n_layer} layers × ${s.n_kv_head} KV heads × ${s.head_dim} × 2 × ${s.bytes_per_value} B = ${bytes(s.per_token)} per token`);
      memOut.replaceChildren(lines(d.contexts, d.series.map((s, k) => ({ name: labels[k], ys: s.bytes })), { x: "context length (tokens, log scale)", y: "KV cache size (bytes, log scale)", log: true, yfmt: bytes, testid: "kv-memory" }),
        el("p", { class: "muted small" }, `Batch 1. ${d.series[0].name} can hold at most ${d.max_seq_len.toLocaleString()} tokens (its context); at that length its cache is ${bytes(d.series[0].per_token * d.max_seq_len)}. Llama-3.1-8B's 8 KV heads serve 32 query heads (grouped-query attention): 4× less cache than if every head kept its own K and V, ${bytes(d.series[1].per_token * 131072)} instead of ${bytes(d.series[2].per_token * 131072)} at 128k tokens — more than its 16 GB of bf16 weights either way.`));
    } catch (e) { showError(memErr, e); }
  }

  // 3. Time per token, with and without the cache
  const timeOut = el("div", { "data-testid": "kv-timing" }), timeErr = box();
  async function loadTiming(): Promise<void> {
    timeErr.hidden = true;
    timeOut.replaceChildren(el("p", { class: "muted" }, "measuring on the server…"));
    try {
      const d = await postJSON<Timing>("/api/kvcache/timing", body());
      addSources("timing", d.sources);
      const mean = (a: number[]) => a.reduce((s, v) => s + v, 0) / a.length;
      const xs = d.cached_ms.map((_, i) => d.n_prompt + i);
      timeOut.replaceChildren(
        el("div", { class: "stat" }, el("span", { class: "k" }, "decode, with the cache (mean ms/token after the prefill)"), el("span", { class: "v", "data-testid": "kv-cached-ms" }, mean(d.cached_ms.slice(1)).toFixed(1))),
        el("div", { class: "stat" }, el("span", { class: "k" }, "full recompute of the prefix (mean ms/token)"), el("span", { class: "v", "data-testid": "kv-recompute-ms" }, mean(d.recompute_ms.slice(1)).toFixed(1))),
        el("div", { class: "stat" }, el("span", { class: "k" }, "whole generation, recompute ÷ cached"), el("span", { class: "v", "data-testid": "kv-speedup" }, `${d.speedup.toFixed(2)}×`)),
        el("p", { class: "small" }, d.same_tokens ? "Both produced the same greedy tokens." : "The two runs' tokens differ (floating-point ties)."),
        lines(xs, [{ name: "with the KV cache", ys: d.cached_ms }, { name: "recompute everything each step", ys: d.recompute_ms }], { x: "tokens in the context when the step runs (the first step is the prefill)", y: "wall time of the step (ms)", testid: "kv-timing-chart" }),
        el("p", { class: "muted small" }, "Measured on this server's CPU (once per model and prompt, then kept), batch 1, greedy, in the model's dtype, through its own readable forward pass; other requests share the machine, so the numbers move."));
    } catch (e) { timeOut.replaceChildren(); showError(timeErr, e); }
  }

  // 4. int8 / int4 weights
  const quantOut = el("div", { "data-testid": "kv-quant" }), quantErr = box();
  async function loadQuant(): Promise<void> {
    quantErr.hidden = true;
    quantOut.replaceChildren(el("p", { class: "muted" }, "quantising copies of the model and measuring (tens of seconds on SmolLM2)…"));
    try {
      const d = await postJSON<Quant>("/api/kvcache/quant", body());
      addSources("quant", d.sources);
      const dts = Object.keys(d.rel_error);
      const mean = (a: number[]) => a.slice(0, -1).reduce((s, v) => s + v, 0) / (a.length - 1);
      const table = el("table", { class: "lens", "data-testid": "kv-quant-table" },
        el("tr", {}, ...["weights", "mean rel. error of block outputs", "rel. error of logits", "top-1 token = fp32's", "decode tok/s", "weights held"].map((t) => el("th", {}, t))),
        ...dts.map((k) => el("tr", {}, el("th", {}, k), el("td", {}, mean(d.rel_error[k]).toExponential(2)), el("td", {}, d.rel_error[k].at(-1)!.toExponential(2)),
          el("td", {}, `${(100 * d.top1_agree[k]).toFixed(1)}%`), el("td", { "data-testid": `kv-toks-${k}` }, d.tok_s[k].toFixed(1)), el("td", {}, bytes(d.weight_bytes[k])))));
      const xs = d.layers.map((_, i) => i);
      quantOut.replaceChildren(table,
        lines(xs, dts.filter((k) => k !== "fp32").map((k) => ({ name: `${k} vs fp32`, ys: d.rel_error[k] })), { x: "layer", y: "‖out − out_fp32‖ / ‖out_fp32‖", yfmt: d3.format(".1e"), testid: "kv-quant-chart", xLabels: d.layers.map((l) => l.replace("block ", "")) }),
        el("p", { class: "muted small" }, "Each row quantises a copy of the fp32 model with llmlab's own quantisers (int8: one scale per output row; int4: groups of 32 with a scale and a minimum, llama.cpp's Q4_1) and runs bf16 activations; the fp32 row runs the model again through the same capture, so its 0 checks the comparison. SmolLM2 ships as Q4_1, so its int4 copy lands back on the file's own values, and int8 can show more error than int4 there; on weights that never were 4-bit, int4's error is the larger. int4 holds its nibbles twice (the kernel's packing and a plain copy for prefill). tok/s: batch 1, greedy, prefill excluded, through the project's decoders (the lean CPU decoder for int8/int4)."));
    } catch (e) { quantOut.replaceChildren(); showError(quantErr, e); }
  }

  // Replay the steps one by one: the prefill's block, then one new row at a time.
  let timer: number | undefined;
  const play = el("button", { "data-testid": "kv-play", onclick: () => {
    if (!trace) return;
    clearInterval(timer);
    slider.value = "0";
    drawSteps();
    timer = window.setInterval(() => {
      if (Number(slider.value) >= Number(slider.max)) { clearInterval(timer); return; }
      slider.value = String(Number(slider.value) + 1);
      drawSteps();
    }, 700);
  } }, "▶ step through");
  const measure = el("button", { "data-testid": "kv-quant-run", onclick: loadQuant }, "measure int8 / int4");
  const reload = debounce(() => { loadTrace(); loadTiming(); }, 400);
  text.addEventListener("input", reload);
  nNew.addEventListener("change", reload);
  slider.addEventListener("input", drawSteps);
  model.el.addEventListener("change", () => { loadMemory(); loadTrace(); loadTiming(); quantOut.replaceChildren(); });

  root.replaceChildren(head,
    el("section", { class: "controls" }, labeled("model", model.el), labeled("prompt", text), labeled("new tokens", nNew)),
    el("section", { class: "inside-sec" }, el("h2", {}, "Prefill, then one row per step"),
      el("p", { class: "muted small" }, "Each row is one forward pass of the model, read from the cache's own length before and after it ran. Attention needs every earlier token's key and value, and these never change once computed, so the cache keeps them: the prefill computes the whole prompt at once, then every decode step computes one new row and reads all the others."),
      el("div", { class: "row" }, labeled("show up to step", slider), play), stepNote, stepErr, stepOut),
    el("section", { class: "inside-sec" }, el("h2", {}, "Cache memory as the context grows"), memErr, memOut),
    el("section", { class: "inside-sec" }, el("h2", {}, "Time per token, with and without the cache"),
      el("p", { class: "muted small" }, "Without a cache every step runs the whole sequence again, so its cost grows with the context; with it, a step runs one token and attends over the stored rows."), timeErr, timeOut),
    el("section", { class: "inside-sec" }, el("h2", {}, "int8 and int4 weights: error per layer, and speed"), el("div", { class: "row" }, measure), quantErr, quantOut),
  );
  loadMemory();
  loadTrace();
  loadTiming();
}

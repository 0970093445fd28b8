// Inside the model (issue #23): the logit lens grid, head-role maps (a click opens the head on
// the Self-attention page), ablation, activation patching, the attention-sink toggle
// and prompt A/B (abcompare.ts).
// Every number comes from /api/inside/* (llmlab.explain); nothing is computed here.
import * as d3 from "d3";
import { postJSON } from "../api";
import { heatmap } from "../heatmap";
import { abSection } from "./abcompare";
import { modelSelect } from "../models";
import { debounce, el, labeled, pageHeader, showError } from "../ui";
import "./inside.css";

interface Lens { tokens: string[]; top_pieces: string[][][]; top_probs: number[][][]; final_prob: number[][]; layer_labels: string[]; sources: string[] }
interface Roles { scores: Record<string, number[][]>; copying: number[][] | null; top: Record<string, [number, number, number][]>; n: number; sources: string[] }
interface Ablation { loss: number | null; loss_ablated: number | null; kl: number; top_pieces: string[]; p: number[]; p_ablated: number[]; sources: string[] }
interface Patch { tokens: string[]; clean_tokens: string[]; answer: string; wrong: string; ld_clean: number; ld_corrupt: number; restored: number[][]; sources: string[] }
interface Sinks { tokens: string[]; share: number[][]; weights: number[][]; n_layers: number; n_heads: number; sources: string[] }

const vis = (t: string) => t.replace(/ /g, "·").replace(/\n/g, "↵");
const pct = (p: number) => `${(100 * p).toFixed(1)}%`;
export const ROLE_TEXT: Record<string, string> = {
  previous: "previous-token head: attends to the token just before",
  duplicate: "duplicate-token head: attends to earlier copies of the same token",
  induction: "induction head: attends to the token that followed the current one last time",
  sink: "sink head: parks its attention on the first token",
  copying: "copying head: its OV circuit raises the logit of the token it attends to",
};
// A sentence said twice: previous-token, duplicate and induction patterns all show on it.
const REPEATED = "Mr and Mrs Dursley of number four were proud to say. Mr and Mrs Dursley of number four were proud to say.";

const blueUp = (v: number) => d3.interpolateRdBu(0.5 + v / 2); // -1 red, 0 white, +1 blue
const blues = (v: number) => d3.interpolateBlues(v);

// A colour bar with its axis and label: the legend of a heatmap.
function legend(colour: (v: number) => string, lo: number, hi: number, label: string, testid?: string): SVGSVGElement {
  const w = 340, m = 10, bar = 220;
  const x = d3.scaleLinear().domain([lo, hi]).range([m, m + bar]);
  const svg = d3.create("svg").attr("width", w).attr("height", 50).style("display", "block");
  if (testid) svg.attr("data-testid", testid);
  const id = `lg-${Math.random().toString(36).slice(2)}`;
  const grad = svg.append("defs").append("linearGradient").attr("id", id);
  d3.range(0, 1.01, 0.1).forEach((t) => grad.append("stop").attr("offset", `${100 * t}%`).attr("stop-color", colour(lo + t * (hi - lo))));
  svg.append("rect").attr("x", m).attr("y", 4).attr("width", bar).attr("height", 10).attr("fill", `url(#${id})`);
  svg.append("g").attr("transform", "translate(0,14)").call(d3.axisBottom(x).ticks(5));
  svg.append("text").attr("x", m).attr("y", 46).attr("class", "small").text(label);
  return svg.node()!;
}

const num = (v: number, min: number, testid: string) => el("input", { type: "number", min, value: v, style: "width:4em", "data-testid": testid }) as HTMLInputElement;

// Probabilities of the next token, normal vs ablated: grouped bars with axis and legend.
function bars(labels: string[], a: number[], b: number[]): SVGSVGElement {
  const w = 520, h = 230, m = { l: 48, r: 10, t: 24, b: 70 };
  const x = d3.scaleBand().domain(labels.map((_, i) => String(i))).range([m.l, w - m.r]).padding(0.2);
  const y = d3.scaleLinear().domain([0, Math.max(0.01, ...a, ...b)]).nice().range([h - m.b, m.t]);
  const svg = d3.create("svg").attr("width", w).attr("height", h).attr("data-testid", "abl-chart");
  svg.append("g").attr("transform", `translate(0,${h - m.b})`).call(d3.axisBottom(x).tickFormat((i) => vis(labels[Number(i)])))
    .selectAll("text").attr("transform", "rotate(-45)").attr("text-anchor", "end");
  svg.append("g").attr("transform", `translate(${m.l},0)`).call(d3.axisLeft(y).ticks(5, "%"));
  svg.append("text").attr("transform", `translate(12,${(h - m.b + m.t) / 2}) rotate(-90)`).attr("text-anchor", "middle").attr("class", "small").text("p(next token)");
  const bw = x.bandwidth() / 2;
  [[a, "normal", "#2563eb"], [b, "ablated", "#f97316"]].forEach(([vals, name, col], k) => {
    svg.append("g").selectAll("rect").data(vals as number[]).join("rect")
      .attr("x", (_, i) => x(String(i))! + k * bw).attr("width", bw - 1)
      .attr("y", (v) => y(v)).attr("height", (v) => h - m.b - y(v)).attr("fill", col as string)
      .append("title").text((v, i) => `${vis(labels[i])} ${name}: ${pct(v)}`);
    svg.append("rect").attr("x", w - 150 + 70 * k).attr("y", 6).attr("width", 10).attr("height", 10).attr("fill", col as string);
    svg.append("text").attr("x", w - 136 + 70 * k).attr("y", 15).attr("class", "small").text(name as string);
  });
  return svg.node()!;
}

export function insidePage(root: HTMLElement): void {
  const { root: head, setSources } = pageHeader("inside", "Inside the model");
  const model = modelSelect("in-model");
  const err = el("div", { class: "error", hidden: true, "data-testid": "in-error" });
  const srcs: Record<string, string[]> = {};
  const addSources = (k: string, s: string[]) => { srcs[k] = s; setSources([...new Set(Object.values(srcs).flat())]); };
  const fail = (box: HTMLElement) => (e: unknown) => showError(box, e);

  // 1. Logit lens
  const text = el("input", { type: "text", size: 50, value: "The capital of France is", "data-testid": "lens-text" }) as HTMLInputElement;
  const grid = el("div", { class: "lens-wrap" });
  const lensErr = el("div", { class: "error", hidden: true });
  async function loadLens(): Promise<void> {
    lensErr.hidden = true;
    try {
      const d = await postJSON<Lens>("/api/inside/lens", { text: text.value, model: model.el.value, top_k: 5 });
      addSources("lens", d.sources);
      const colour = (p: number) => d3.interpolateBlues(0.1 + 0.8 * p);
      const rows = d.top_pieces.map((row, l) => l).reverse(); // the last layer on top
      const table = el("table", { class: "lens", "data-testid": "lens-grid" },
        el("tr", {}, el("th", {}, "layer \\ position"), ...d.tokens.map((t) => el("th", {}, vis(t)))),
        ...rows.map((l) => el("tr", {}, el("th", {}, d.layer_labels[l]), ...d.top_pieces[l].map((tops, t) => {
          const p = d.top_probs[l][t][0];
          return el("td", { style: `background:${colour(p)};color:${p > 0.55 ? "#fff" : "#111"}`, "data-testid": `lens-${l}-${t}`, "data-piece": tops[0], "data-p": p,
            title: tops.map((pc, k) => `${JSON.stringify(pc)} ${pct(d.top_probs[l][t][k])}`).join("\n") + `\np(final answer) = ${pct(d.final_prob[l][t])}` }, vis(tops[0]));
        }))));
      grid.replaceChildren(table, legend(colour, 0, 1, "probability of the cell's top token"),
        el("p", { class: "muted small" }, "Each cell: the top token if the model stopped after that layer (final norm + LM head on the residual stream). Hover for the top 5."));
    } catch (e) { fail(lensErr)(e); }
  }

  // 2. Head roles
  const role = el("select", { "data-testid": "role" }, ...Object.keys(ROLE_TEXT).map((r) => el("option", { value: r }, r))) as HTMLSelectElement;
  const roleMap = el("div", { class: "role-wrap" });
  const roleErr = el("div", { class: "error", hidden: true });
  let roles: Roles | null = null;
  const attentionLink = (l: number, h: number, r: string) =>
    `#/attention?${new URLSearchParams({ model: model.el.value, layer: String(l), head: String(h), role: r, text: REPEATED })}`;
  function drawRoles(): void {
    if (!roles) return;
    const r = role.value;
    const vals = r === "copying" ? roles.copying : roles.scores[r];
    if (!vals) { roleMap.replaceChildren(el("p", { class: "muted" }, "No copying score: this model has no LM head.")); return; }
    const nh = vals[0].length;
    const map = heatmap(vals, {
      rowLabels: vals.map((_, l) => `layer ${l}`), colLabels: [...Array(nh).keys()].map((h) => `head ${h}`), cell: Math.max(10, Math.min(22, Math.floor(420 / nh))),
      color: r === "copying" ? blueUp : blues, testid: "role-map",
      onCell: (l, h) => { location.hash = attentionLink(l, h, r); },
    });
    const best = (roles.top[r] ?? []).map(([l, h, s]) => el("li", {}, el("a", { href: attentionLink(l, h, r), "data-testid": "role-top" }, `layer ${l}, head ${h}`), `: ${s.toFixed(3)}`));
    roleMap.replaceChildren(el("div", { class: "split" }, map, el("div", {},
      el("p", {}, ROLE_TEXT[r]),
      r === "copying" ? legend(blueUp, -1, 1, "OV eigenvalue score Σλ / Σ|λ|") : legend(blues, 0, 1, "mean attention weight (repeated random tokens)"),
      el("h4", {}, "Top heads (click to open on Self-attention)"), el("ol", {}, ...best))));
  }
  async function loadRoles(): Promise<void> {
    roleErr.hidden = true;
    roleMap.replaceChildren(el("p", { class: "muted" }, "scoring every head…"));
    try {
      roles = await postJSON<Roles>("/api/inside/heads", { model: model.el.value, n: 24 });
      addSources("heads", roles.sources);
      drawRoles();
    } catch (e) { roleMap.replaceChildren(); fail(roleErr)(e); }
  }

  // 3. Ablation
  const kind = el("select", { "data-testid": "abl-kind" }, el("option", { value: "head" }, "one head"), el("option", { value: "mlp" }, "MLP"), el("option", { value: "attn" }, "attention layer")) as HTMLSelectElement;
  const ablLayer = num(3, 0, "abl-layer"), ablHead = num(0, 0, "abl-head");
  const how = el("select", { "data-testid": "abl-how" }, el("option", { value: "zero" }, "zero"), el("option", { value: "mean" }, "mean over positions")) as HTMLSelectElement;
  const ablOut = el("div", { "data-testid": "abl-out" });
  const ablErr = el("div", { class: "error", hidden: true });
  async function runAblation(): Promise<void> {
    ablErr.hidden = true;
    try {
      const d = await postJSON<Ablation>("/api/inside/ablate", { text: text.value, model: model.el.value, kind: kind.value, layer: Number(ablLayer.value), head: kind.value === "head" ? Number(ablHead.value) : null, how: how.value });
      addSources("ablate", d.sources);
      const loss = d.loss == null ? "needs 2+ tokens" : `${d.loss.toFixed(3)} → ${d.loss_ablated!.toFixed(3)} nats`;
      ablOut.replaceChildren(el("div", { class: "stat" }, el("span", { class: "k" }, "mean next-token loss over the prompt"), el("span", { class: "v", "data-testid": "abl-loss" }, loss)),
        el("div", { class: "stat" }, el("span", { class: "k" }, "KL(normal ‖ ablated), last position"), el("span", { class: "v" }, d.kl.toExponential(3))),
        bars(d.top_pieces, d.p, d.p_ablated));
    } catch (e) { fail(ablErr)(e); }
  }

  // 4. Patching
  const clean = el("input", { type: "text", size: 28, value: "The Eiffel Tower is in", "data-testid": "patch-clean" }) as HTMLInputElement;
  const corrupt = el("input", { type: "text", size: 28, value: "The Colosseum is in", "data-testid": "patch-corrupt" }) as HTMLInputElement;
  const pkind = el("select", { "data-testid": "patch-kind" }, el("option", { value: "resid" }, "residual stream"), el("option", { value: "attn" }, "attention output"), el("option", { value: "mlp" }, "MLP output")) as HTMLSelectElement;
  const patchOut = el("div", { "data-testid": "patch-out" });
  const patchErr = el("div", { class: "error", hidden: true });
  async function runPatch(): Promise<void> {
    patchErr.hidden = true;
    patchOut.replaceChildren(el("p", { class: "muted" }, "patching every layer and position (one batched run per layer)…"));
    try {
      const d = await postJSON<Patch>("/api/inside/patch", { clean: clean.value, corrupt: corrupt.value, model: model.el.value, kind: pkind.value });
      addSources("patch", d.sources);
      const cols = d.tokens.map((t, i) => (t === d.clean_tokens[i] ? vis(t) : `${vis(d.clean_tokens[i])}/${vis(t)}`));
      const rows = d.restored.map((_, l) => (pkind.value === "resid" ? (l === 0 ? "embed" : `after ${l - 1}`) : `layer ${l}`));
      patchOut.replaceChildren(
        el("p", {}, `logit(${JSON.stringify(d.answer)}) − logit(${JSON.stringify(d.wrong)}): clean ${d.ld_clean.toFixed(2)}, corrupted ${d.ld_corrupt.toFixed(2)}. Each cell: the share of that difference restored by copying one activation (row = layer, column = position) from the clean run into the corrupted one; blue = restores the clean answer, red = pushes further away.`),
        heatmap(d.restored.map((r) => r.map((v) => Math.max(-1, Math.min(1, v)))), { rowLabels: rows, colLabels: cols, color: blueUp, cell: 20, testid: "patch-map" }),
        legend(blueUp, -1, 1, "share of the logit difference restored"));
    } catch (e) { patchOut.replaceChildren(); fail(patchErr)(e); }
  }

  // 5. Sinks
  const sLayer = num(5, 0, "sink-layer"), sHead = num(0, 0, "sink-head");
  const remove = el("input", { type: "checkbox", "data-testid": "sink-remove" }) as HTMLInputElement;
  const sinkOut = el("div", { class: "split" });
  const sinkErr = el("div", { class: "error", hidden: true });
  async function loadSinks(): Promise<void> {
    sinkErr.hidden = true;
    try {
      const d = await postJSON<Sinks>("/api/inside/sinks", { text: text.value, model: model.el.value, layer: Number(sLayer.value), head: Number(sHead.value), remove_sink: remove.checked });
      addSources("sinks", d.sources);
      const labels = d.tokens.map(vis);
      sinkOut.replaceChildren(
        el("div", {}, el("h4", {}, `layer ${sLayer.value}, head ${sHead.value}: ${remove.checked ? "sink removed, rows renormalised" : "weights as the model uses them"}`),
          heatmap(d.weights, { rowLabels: labels, colLabels: labels, color: blues, testid: "sink-weights" }), legend(blues, 0, 1, "attention weight (row = query, column = key)")),
        el("div", {}, el("h4", {}, "sink share: mean weight on the first token (layers × heads)"),
          heatmap(d.share, { rowLabels: d.share.map((_, l) => `layer ${l}`), colLabels: [...Array(d.n_heads).keys()].map((h) => `head ${h}`), cell: 14, color: blues, testid: "sink-share",
            onCell: (l, h) => { sLayer.value = String(l); sHead.value = String(h); loadSinks(); } }),
          legend(blues, 0, 1, "weight on the first token"), el("p", { class: "muted small" }, "Click a head to show its weights.")));
    } catch (e) { fail(sinkErr)(e); }
  }

  const reloadText = debounce(() => { loadLens(); loadSinks(); }, 300);
  text.addEventListener("input", reloadText);
  model.el.addEventListener("change", () => { loadLens(); loadRoles(); loadSinks(); });
  role.addEventListener("change", drawRoles);
  for (const c of [sLayer, sHead, remove]) c.addEventListener("change", loadSinks);

  root.replaceChildren(head,
    el("section", { class: "controls" }, labeled("model", model.el), labeled("prompt", text)), err,
    el("section", { class: "inside-sec" }, el("h2", {}, "Logit lens"), lensErr, grid),
    abSection(model.el, (s) => addSources("ab", s)),
    el("section", { class: "inside-sec" }, el("h2", {}, "Head roles, measured"),
      el("p", { class: "muted small" }, "Scored on 24 random tokens repeated once (Olsson et al. 2022): random text has no meaning, so only heads that read the context can predict its second half."),
      el("div", { class: "row" }, labeled("role", role)), roleErr, roleMap),
    el("section", { class: "inside-sec" }, el("h2", {}, "Ablation: knock a part out"),
      el("div", { class: "row" }, labeled("what", kind), labeled("layer", ablLayer), labeled("head", ablHead), labeled("replace with", how),
        el("button", { onclick: runAblation, "data-testid": "abl-run" }, "ablate")), ablErr, ablOut),
    el("section", { class: "inside-sec" }, el("h2", {}, "Activation patching"),
      el("div", { class: "row" }, labeled("clean prompt", clean), labeled("corrupted prompt (same token count)", corrupt), labeled("activation", pkind),
        el("button", { onclick: runPatch, "data-testid": "patch-run" }, "patch")), patchErr, patchOut),
    el("section", { class: "inside-sec" }, el("h2", {}, "Attention sinks"),
      el("p", { class: "muted small" }, "Softmax weights must sum to one, so a head with nothing to read here still puts its weight somewhere: models learn to park it on the first token, which every query can see, and give that token a small value so attending to it changes little (Xiao et al. 2023). Remove the sink to see what the head reads among the real tokens."),
      el("div", { class: "row" }, labeled("layer", sLayer), labeled("head", sHead), el("label", { class: "ctl" }, el("span", {}, "remove first-token sink"), remove)), sinkErr, sinkOut),
  );
  loadLens();
  loadRoles();
  loadSinks();
}

// Next-token prediction: each token coloured by the model's surprisal, its top guesses on
// hover, the text's cross-entropy / perplexity / bits per byte, and two models compared.
import * as d3 from "d3";
import { postJSON } from "../api";
import { modelSelect } from "../models";
import { debounce, el, labeled, pageHeader, showError } from "../ui";
import { lineChart, stat } from "./fcharts";
import "./nexttoken.css";

interface Guess { piece: string; id: number; p: number }
interface Tok { piece: string; id: number; p: number | null; nll: number | null; top: Guess[] }
interface Row {
  model: string; model_name: string; tokens: Tok[]; mean_nll: number; perplexity: number;
  bits_per_byte: number; n_tokens: number; n_scored: number; n_bytes: number;
}
interface Resp { rows: Row[]; sources: string[] }

const MAX_NLL = 12; // colour scale top (nats); higher surprisals share the darkest colour
const colour = d3.scaleSequential(d3.interpolateYlOrRd).domain([0, MAX_NLL]).clamp(true);
const show = (piece: string) => JSON.stringify(piece);
const pct = (p: number) => `${(100 * p).toPrecision(3)}%`;
const SERIES = ["val", "train"]; // fcharts' line colours: blue, orange

function legend(): HTMLElement {
  const w = 260, h = 44, m = 10;
  const x = d3.scaleLinear().domain([0, MAX_NLL]).range([m, w - m]);
  const svg = d3.create("svg").attr("width", w).attr("height", h).attr("data-testid", "nt-legend");
  const id = "nt-grad";
  const grad = svg.append("defs").append("linearGradient").attr("id", id);
  d3.range(0, 1.01, 0.1).forEach((t) => grad.append("stop").attr("offset", `${100 * t}%`).attr("stop-color", colour(t * MAX_NLL)));
  svg.append("rect").attr("x", m).attr("y", 4).attr("width", w - 2 * m).attr("height", 10).attr("fill", `url(#${id})`);
  svg.append("g").attr("transform", "translate(0,14)").call(d3.axisBottom(x).ticks(6).tickFormat((v) => (Number(v) === MAX_NLL ? `${v}+` : String(v))));
  return el("div", { class: "nt-legend" }, svg.node()!, el("span", { class: "small muted" }, "surprisal −log p (nats)"));
}

// One guess list, for the hover box and (as plain lines) the span's title.
function guessLines(t: Tok): string[] {
  if (t.p === null) return [`${show(t.piece)}: the first token, context only (nothing predicts it)`];
  return [`${show(t.piece)}: p = ${pct(t.p)}, −log p = ${t.nll!.toFixed(3)} nats`, "model's top guesses:",
    ...t.top.map((g, k) => `${k + 1}. ${show(g.piece)} ${pct(g.p)}${g.id === t.id ? " ✓" : ""}`)];
}

export function nexttokenPage(root: HTMLElement): void {
  const { root: head, setSources } = pageHeader("nexttoken", "Next-token prediction");
  const text = el("textarea", { rows: 4, cols: 80, "data-testid": "nt-text" }) as HTMLTextAreaElement;
  text.value = "In the beginning God created the heaven and the earth. The capital of France is Paris, and the capital of Italy is Rome.";
  const model = modelSelect("nt-model", { causalOnly: true });
  const other = modelSelect("nt-compare", { causalOnly: true, none: "none" });
  const rows = el("div", { class: "nt-rows", "data-testid": "nt-rows" });
  const plot = el("div", { class: "nt-plot", "data-testid": "nt-plot" });
  const tip = el("div", { class: "nt-tip", hidden: true, "data-testid": "nt-tip" });
  const err = el("div", { class: "error", hidden: true, "data-testid": "nt-error" });
  const busy = el("span", { class: "muted small", "data-testid": "nt-busy" });
  let seq = 0; // answers to superseded queries are dropped

  function hover(span: HTMLElement, t: Tok): void {
    const lines = guessLines(t);
    tip.replaceChildren(el("div", { class: "nt-tip-head" }, lines[0]),
      ...t.top.map((g) => el("div", { class: g.id === t.id ? "nt-guess hit" : "nt-guess" },
        el("span", { class: "nt-gp" }, show(g.piece)), el("span", { class: "nt-gbar", style: `width:${Math.max(1, 80 * g.p)}px` }), el("span", {}, pct(g.p)))));
    const r = span.getBoundingClientRect();
    tip.style.left = `${r.left + window.scrollX}px`;
    tip.style.top = `${r.bottom + window.scrollY + 4}px`;
    tip.hidden = false;
  }

  function drawRow(r: Row, i: number): HTMLElement {
    const toks = el("div", { class: "nt-tokens", "data-testid": `nt-tokens-${i}` }, ...r.tokens.map((t, j) => {
      const bg = t.nll === null ? "#e2e8f0" : colour(t.nll);
      const span = el("span", {
        class: "nt-tok", "data-i": j, "data-nll": t.nll ?? "", title: guessLines(t).join("\n"),
        style: `background:${bg};color:${t.nll !== null && t.nll > 0.6 * MAX_NLL ? "#fff" : "#111"}`,
      }, t.piece);
      span.addEventListener("mouseenter", () => hover(span, t));
      span.addEventListener("mouseleave", () => { tip.hidden = true; });
      return span;
    }));
    const stats = el("div", { class: "stats", "data-testid": `nt-stats-${i}` },
      stat("mean cross-entropy (nats/token)", r.mean_nll.toFixed(4), "ce"), stat("perplexity", r.perplexity.toFixed(3), "ppl"),
      stat("bits per byte", r.bits_per_byte.toFixed(4), "bpb"), stat("tokens (scored)", `${r.n_tokens} (${r.n_scored})`, "tokens"));
    return el("div", { class: "nt-row", "data-testid": `nt-row-${i}` },
      el("h3", { "data-testid": `nt-name-${i}` }, `${r.model_name} `, el("span", { class: "muted small" }, r.model)), stats, toks);
  }

  function draw(d: Resp): void {
    tip.hidden = true;
    rows.className = d.rows.length > 1 ? "nt-rows two" : "nt-rows";
    rows.replaceChildren(...d.rows.map(drawRow));
    const series = d.rows.map((r, i) => ({
      name: r.model_name, cls: SERIES[i],
      values: r.tokens.flatMap((t, j) => (t.nll === null ? [] : [[j, t.nll] as [number, number]])),
    }));
    const top = Math.max(1, ...series.flatMap((r) => r.values.map((v) => v[1])));
    plot.replaceChildren(el("div", { class: "small muted" }, "per-token loss over the text"),
      lineChart(series, { w: 640, h: 220, xLabel: "token position (each model's own tokens)", yLabel: "−log p (nats)", yDomain: [0, top], testid: "nt-chart" }));
    setSources(d.sources);
  }

  async function query(): Promise<void> {
    const my = ++seq;
    const models = [model.el.value, other.el.value].filter((m) => m);
    busy.textContent = "scoring…";
    try {
      const d = await postJSON<Resp>("/api/next_token", { text: text.value, models, top_k: 5 });
      if (my !== seq) return;
      err.hidden = true;
      draw(d);
    } catch (e) {
      if (my === seq) showError(err, e);
    } finally {
      if (my === seq) busy.textContent = "";
    }
  }
  const again = debounce(query, 300);
  text.addEventListener("input", again);
  model.el.addEventListener("change", query);
  other.el.addEventListener("change", query);
  // Runs saved since the page opened show up when a menu is opened.
  for (const s of [model, other]) s.el.addEventListener("focus", () => { s.refresh().catch((e) => showError(err, e)); });
  Promise.all([model.ready, other.ready]).catch((e) => showError(err, e));

  root.replaceChildren(head,
    el("section", { class: "controls" }, labeled("text", text)),
    el("section", { class: "controls" }, labeled("model", model.el), labeled("compare with", other.el), busy),
    legend(), err, rows, plot, tip);
  query();
}

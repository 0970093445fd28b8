// Prompt A/B (issue #23 item 6): two prompts side by side on the Inside page, each with one
// head's attention, the logit lens at its last position and its next-token distribution, and
// what differs highlighted. Every number comes from /api/inside/ab (llmlab.explain.compare).
import * as d3 from "d3";
import { postJSON } from "../api";
import { heatmap } from "../heatmap";
import { debounce, el, labeled, showError } from "../ui";

interface Side { text: string; tokens: string[]; attention: number[][]; lens: { top_pieces: string[][][]; top_probs: number[][][] }; next_pieces: string[]; next_probs: number[] }
interface Moved { piece: string; id: number; p_a: number; p_b: number; delta: number }
interface AB { a: Side; b: Side; layer: number; head: number; n_layers: number; n_heads: number; moved: Moved[]; tv: number; lens_tv: number[]; lens_same_top: boolean[]; layer_labels: string[]; sources: string[] }

const vis = (t: string) => t.replace(/ /g, "·").replace(/\n/g, "↵");
const pct = (p: number) => `${(100 * p).toFixed(1)}%`;
const COL = { a: "#2563eb", b: "#f97316" };

// The tokens whose next-token probability moved most: A's and B's bars per token, axis + legend.
function movedChart(m: Moved[]): SVGSVGElement {
  const w = 560, h = 240, mg = { l: 48, r: 10, t: 24, b: 72 };
  const x = d3.scaleBand().domain(m.map((_, i) => String(i))).range([mg.l, w - mg.r]).padding(0.2);
  const y = d3.scaleLinear().domain([0, Math.max(0.01, ...m.flatMap((v) => [v.p_a, v.p_b]))]).nice().range([h - mg.b, mg.t]);
  const svg = d3.create("svg").attr("width", w).attr("height", h).attr("data-testid", "ab-moved");
  svg.append("g").attr("transform", `translate(0,${h - mg.b})`).call(d3.axisBottom(x).tickFormat((i) => vis(m[Number(i)].piece)))
    .selectAll("text").attr("transform", "rotate(-45)").attr("text-anchor", "end");
  svg.append("g").attr("transform", `translate(${mg.l},0)`).call(d3.axisLeft(y).ticks(5, "%"));
  svg.append("text").attr("transform", `translate(12,${(h - mg.b + mg.t) / 2}) rotate(-90)`).attr("text-anchor", "middle").attr("class", "small").text("p(next token)");
  const bw = x.bandwidth() / 2;
  (["a", "b"] as const).forEach((k, n) => {
    svg.append("g").selectAll("rect").data(m).join("rect")
      .attr("x", (_, i) => x(String(i))! + n * bw).attr("width", bw - 1)
      .attr("y", (v) => y(v[`p_${k}`])).attr("height", (v) => h - mg.b - y(v[`p_${k}`])).attr("fill", COL[k])
      .append("title").text((v) => `${vis(v.piece)} prompt ${k.toUpperCase()}: ${pct(v[`p_${k}`])} (moved ${v.delta >= 0 ? "+" : ""}${pct(v.delta)})`);
    svg.append("rect").attr("x", w - 170 + 80 * n).attr("y", 6).attr("width", 10).attr("height", 10).attr("fill", COL[k]);
    svg.append("text").attr("x", w - 156 + 80 * n).attr("y", 15).attr("class", "small").text(`prompt ${k.toUpperCase()}`);
  });
  return svg.node()!;
}

// The lens at each prompt's last position, layer by layer, A beside B; rows whose top tokens
// differ are marked, with the total variation between the two lens distributions.
function lensTable(d: AB): HTMLTableElement {
  const last = (s: Side, l: number) => [s.lens.top_pieces[l].at(-1)![0], s.lens.top_probs[l].at(-1)![0]] as const;
  const rows = d.layer_labels.map((_, l) => l).reverse();
  return el("table", { class: "lens ab-lens", "data-testid": "ab-lens" },
    el("tr", {}, el("th", {}, "layer"), el("th", {}, "A: top next token"), el("th", {}, "B: top next token"), el("th", {}, "TV(A, B)")),
    ...rows.map((l) => {
      const [pa, qa] = last(d.a, l), [pb, qb] = last(d.b, l);
      const differs = !d.lens_same_top[l];
      return el("tr", { class: differs ? "ab-diff" : "", "data-testid": `ab-row-${l}`, "data-differs": differs },
        el("th", {}, d.layer_labels[l]),
        el("td", { title: pct(qa) }, `${vis(pa)} ${pct(qa)}`), el("td", { title: pct(qb) }, `${vis(pb)} ${pct(qb)}`),
        el("td", { style: `background:${d3.interpolateOranges(d.lens_tv[l])}` }, d.lens_tv[l].toFixed(3)));
    }));
}

export function abSection(model: HTMLSelectElement, addSources: (s: string[]) => void): HTMLElement {
  const a = el("input", { type: "text", size: 34, value: "The capital of France is", "data-testid": "ab-a" }) as HTMLInputElement;
  const b = el("input", { type: "text", size: 34, value: "The capital of Italy is", "data-testid": "ab-b" }) as HTMLInputElement;
  const layer = el("input", { type: "number", min: 0, value: 5, style: "width:4em", "data-testid": "ab-layer" }) as HTMLInputElement;
  const head = el("input", { type: "number", min: 0, value: 1, style: "width:4em", "data-testid": "ab-head" }) as HTMLInputElement;
  const out = el("div", { "data-testid": "ab-out" });
  const err = el("div", { class: "error", hidden: true, "data-testid": "ab-error" });
  async function load(): Promise<void> {
    err.hidden = true;
    try {
      const d = await postJSON<AB>("/api/inside/ab", { a: a.value, b: b.value, model: model.value, layer: Number(layer.value), head: Number(head.value), top_k: 5 });
      addSources(d.sources);
      const side = (s: Side, k: "a" | "b") => {
        const labels = s.tokens.map(vis);
        return el("div", { class: "ab-side", "data-testid": `ab-side-${k}` },
          el("h4", { style: `color:${COL[k]}` }, `Prompt ${k.toUpperCase()}: ${JSON.stringify(s.text)}`),
          heatmap(s.attention, { rowLabels: labels, colLabels: labels, cell: Math.max(12, Math.min(24, Math.floor(300 / labels.length))), testid: `ab-att-${k}` }),
          el("p", { class: "small" }, "next token: ", ...s.next_pieces.map((p, i) => el("span", { class: "ab-next" }, `${vis(p)} ${pct(s.next_probs[i])}`))));
      };
      const top = d.moved[0];
      out.replaceChildren(
        el("div", { class: "split" }, side(d.a, "a"), side(d.b, "b")),
        el("p", { class: "muted small" }, `Attention of layer ${d.layer}, head ${d.head} (row = query, column = key; darker = more weight).`),
        el("h4", {}, "What moved: the next tokens whose probability changed most from A to B"),
        el("p", { "data-testid": "ab-summary" }, `Total variation between the two next-token distributions: ${d.tv.toFixed(3)} (0 = identical, 1 = disjoint). Largest move: ${JSON.stringify(top.piece)} ${pct(top.p_a)} → ${pct(top.p_b)}.`),
        movedChart(d.moved),
        el("h4", {}, "Logit lens at the last position: where the two prompts' predictions part"),
        lensTable(d),
        el("p", { class: "muted small" }, "Highlighted rows: A and B have different top tokens there. TV = total variation between the lens distributions (0 = same)."));
    } catch (e) { showError(err, e); }
  }
  const again = debounce(load, 400);
  for (const c of [a, b]) c.addEventListener("input", again);
  for (const c of [layer, head, model]) c.addEventListener("change", load);
  load();
  return el("section", { class: "inside-sec", "data-testid": "ab-section" }, el("h2", {}, "Prompt A/B"),
    el("p", { class: "muted small" }, "Change one word and see what it changes inside: each prompt's attention, its logit lens and its next-token distribution, and the difference."),
    el("div", { class: "row" }, labeled("prompt A", a), labeled("prompt B", b), labeled("layer", layer), labeled("head", head)), err, out);
}

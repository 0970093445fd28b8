import * as d3 from "d3";
import { getJSON } from "../api";
import { debounce, el, fmt, labeled, pageHeader, showError } from "../ui";
import { loraLive } from "./loralive";

interface Counts {
  d: number; r: number; alpha: number; scale: number; matrix: { full: number; A: number; B: number; lora: number };
  matrix_pct: number; model_trainable: number; model_total: number; sources: string[];
  methods: { method: string; trainable: number; total: number; trainable_pct: number; memory_gb: number; note: string }[];
}
interface Spec { shape: number[]; singular_values: number[]; rel_error: number[]; rank90: number; sources: string[] }

function diagram(d: number, r: number): SVGSVGElement {
  // W drawn d x d; A (r x d) and B (d x r) with r drawn to the same scale, at least 2px.
  const S = 160 / d, rw = Math.max(2, r * S), W = 160;
  const svg = d3.create("svg").attr("width", 520).attr("height", 220).attr("class", "diagram");
  const box = (x: number, y: number, w: number, h: number, cls: string, label: string, sub: string) => {
    svg.append("rect").attr("x", x).attr("y", y).attr("width", w).attr("height", h).attr("class", cls);
    svg.append("text").attr("x", x + w / 2).attr("y", y + h + 16).attr("text-anchor", "middle").text(label);
    svg.append("text").attr("x", x + w / 2).attr("y", y + h + 30).attr("text-anchor", "middle").attr("class", "small").text(sub);
  };
  box(10, 10, W, W, "frozen", "W (frozen ❄)", `${d}×${d}`);
  svg.append("text").attr("x", 190).attr("y", 95).text("+ α/r ·");
  box(250, 10, rw, W, "trained", "B", `${d}×${r}`);
  svg.append("text").attr("x", 260 + rw).attr("y", 95).text("×");
  box(280 + rw, 10, W, rw, "trained", "A", `${r}×${d}`);
  return svg.node()!;
}

function spectrumChart(s: Spec, r: number): SVGSVGElement {
  const w = 520, h = 220, m = { l: 50, r: 50, t: 10, b: 30 };
  const n = s.singular_values.length;
  const x = d3.scaleLinear().domain([0, n]).range([m.l, w - m.r]);
  const y = d3.scaleLog().domain([Math.max(1e-4, d3.min(s.singular_values)!), d3.max(s.singular_values)!]).range([h - m.b, m.t]);
  const y2 = d3.scaleLinear().domain([0, 1]).range([h - m.b, m.t]);
  const svg = d3.create("svg").attr("width", w).attr("height", h).attr("data-testid", "spectrum");
  svg.append("g").attr("transform", `translate(0,${h - m.b})`).call(d3.axisBottom(x).ticks(6));
  svg.append("g").attr("transform", `translate(${m.l},0)`).call(d3.axisLeft(y).ticks(4, "~g"));
  svg.append("g").attr("transform", `translate(${w - m.r},0)`).call(d3.axisRight(y2).ticks(5, "%"));
  svg.append("path").attr("class", "sv").attr("d", d3.line<number>().x((_, i) => x(i)).y((v) => y(Math.max(v, 1e-4)))(s.singular_values));
  svg.append("path").attr("class", "err").attr("d", d3.line<number>().x((_, i) => x(i)).y((v) => y2(v))(s.rel_error));
  const rr = Math.min(r, n);
  svg.append("line").attr("class", "rmark").attr("x1", x(rr)).attr("x2", x(rr)).attr("y1", m.t).attr("y2", h - m.b);
  svg.append("text").attr("x", x(rr) + 4).attr("y", m.t + 12).attr("class", "small").text(`r=${rr}`);
  return svg.node()!;
}

export function loraPage(root: HTMLElement): void {
  const { root: head, setSources } = pageHeader("lora", "LoRA explorer");
  const d = el("input", { type: "range", min: 64, max: 8192, step: 64, value: 4096, "data-testid": "lora-d" }) as HTMLInputElement;
  const r = el("input", { type: "range", min: 1, max: 256, value: 8, "data-testid": "lora-r" }) as HTMLInputElement;
  const a = el("input", { type: "range", min: 1, max: 128, value: 16, "data-testid": "lora-alpha" }) as HTMLInputElement;
  const outs = [d, r, a].map((i) => el("span", { class: "val" }, i.value));
  const base = el("select", { "data-testid": "lora-base" }, ...["llama-3.1-8b", "llama-2-13b", "smollm2-135m"].map((b) => el("option", { value: b }, b))) as HTMLSelectElement;
  const targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"].map((t) =>
    el("input", { type: "checkbox", value: t, checked: t === "q_proj" || t === "v_proj" }) as HTMLInputElement);
  const layer = el("select", {}, ...[...Array(30).keys()].map((i) => el("option", { value: i }, `layer ${i}`))) as HTMLSelectElement;
  const proj = el("select", {}, ...targets.map((t) => el("option", { value: t.value }, t.value))) as HTMLSelectElement;
  const diag = el("div", {}), counts = el("div", { class: "stats", "data-testid": "lora-counts" });
  const table = el("table", { class: "methods", "data-testid": "methods" });
  const spec = el("div", {}), specInfo = el("div", { class: "stats", "data-testid": "spectrum-info" });
  const err = el("div", { class: "error", hidden: true });
  let spectrum: Spec | null = null;
  const srcs: Set<string> = new Set();

  const stat = (k: string, v: string, key?: string) => el("div", { class: "stat" }, el("span", { class: "k" }, k), el("span", { class: "v", "data-stat": key ?? k }, v));

  function renderSpec(): void {
    if (!spectrum) return;
    const rv = Number(r.value), n = spectrum.singular_values.length, rr = Math.min(rv, n);
    spec.replaceChildren(spectrumChart(spectrum, rv));
    specInfo.replaceChildren(
      stat("matrix", `${spectrum.shape[0]}×${spectrum.shape[1]} (SmolLM2 ${proj.value}, layer ${layer.value})`),
      stat(`rank-${rr} relative error ‖W−W_r‖/‖W‖`, `${(100 * spectrum.rel_error[rr]).toFixed(2)}%`, "error"),
      stat("rank keeping 90% of ‖W‖²", String(spectrum.rank90)),
    );
  }

  async function loadCounts(): Promise<void> {
    err.hidden = true;
    outs.forEach((o, i) => (o.textContent = [d, r, a][i].value));
    const tl = targets.filter((t) => t.checked).map((t) => t.value).join(",");
    try {
      const c = await getJSON<Counts>(`/api/lora/counts?d=${d.value}&r=${r.value}&alpha=${a.value}&base=${base.value}&targets=${tl}`);
      diag.replaceChildren(diagram(c.d, c.r));
      counts.replaceChildren(
        stat("full update d×d", fmt(c.matrix.full), "full"), stat("LoRA r·(d+d)", fmt(c.matrix.lora), "lora"),
        stat("A", fmt(c.matrix.A)), stat("B", fmt(c.matrix.B)),
        stat("trainable % of this matrix", `${c.matrix_pct.toFixed(3)}%`, "pct"), stat("scale α/r", c.scale.toFixed(3), "scale"),
        stat(`${base.value}: trainable (PEFT count)`, fmt(c.model_trainable), "model"),
      );
      table.replaceChildren(
        el("tr", {}, ...["method", "trainable params", "trainable %", "train memory (GB)*", "note"].map((h) => el("th", {}, h))),
        ...c.methods.map((m) => el("tr", {}, el("td", {}, m.method), el("td", { class: "num" }, fmt(m.trainable)),
          el("td", { class: "num" }, m.trainable_pct < 0.01 ? m.trainable_pct.toExponential(2) : m.trainable_pct.toFixed(3)),
          el("td", { class: "num" }, m.memory_gb.toFixed(1)), el("td", { class: "small" }, m.note))));
      c.sources.forEach((s) => srcs.add(s));
      setSources([...srcs]);
      renderSpec();
    } catch (e) { showError(err, e); }
  }
  async function loadSpec(): Promise<void> {
    try {
      spectrum = await getJSON<Spec>(`/api/lora/spectrum?layer=${layer.value}&proj=${proj.value}`);
      spectrum.sources.forEach((s) => srcs.add(s));
      setSources([...srcs]);
      renderSpec();
    } catch (e) { showError(err, e); }
  }
  const reload = debounce(loadCounts, 120);
  for (const i of [d, r, a]) i.addEventListener("input", reload);
  base.addEventListener("change", reload);
  targets.forEach((t) => t.addEventListener("change", reload));
  layer.addEventListener("change", loadSpec);
  proj.addEventListener("change", loadSpec);

  root.replaceChildren(
    head,
    el("section", { class: "controls" }, labeled("d (width)", el("span", {}, d, outs[0])), labeled("rank r", el("span", {}, r, outs[1])), labeled("α", el("span", {}, a, outs[2]))),
    err,
    el("div", { class: "split" }, diag, counts),
    el("h2", {}, "Singular-value spectrum of a real SmolLM2 weight"),
    el("section", { class: "controls" }, labeled("layer", layer), labeled("projection", proj)),
    el("p", { class: "muted small" }, "Blue: singular values (log scale). Orange: relative Frobenius error of the best rank-r approximation, sqrt(Σ_{i>r} s_i²)/‖W‖_F (Eckart–Young). The red line is the slider's r."),
    el("div", { class: "split" }, spec, specInfo),
    el("h2", {}, "Methods on a real base model"),
    el("section", { class: "controls" }, labeled("base", base), el("span", { class: "targets" }, ...targets.map((t) => el("label", {}, t, t.value)))),
    table,
    el("p", { class: "muted small" }, "The often-quoted PEFT count 6,553,600 (r=8 on q_proj and v_proj) is llama-2-13b's: 40 layers × 2 × 8 × (5120+5120). Llama-3.1-8B uses grouped-query attention, so its v_proj is 4096→1024 and the same config trains fewer parameters."),
    el("p", { class: "muted small" }, "*Weights + gradients + AdamW state (16 bytes per trained parameter; frozen base bf16, or NF4 for QLoRA); activations excluded. Prefix/prompt tuning: 20 virtual tokens; adapters: bottleneck 64."),
    loraLive((keys) => { keys.forEach((k) => srcs.add(k)); setSources([...srcs]); }),
  );
  loadCounts();
  loadSpec();
}

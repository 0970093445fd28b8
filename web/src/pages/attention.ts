import { getJSON, postJSON } from "../api";
import { diverging, heatmap } from "../heatmap";
import { debounce, el, fmt, labeled, pageHeader, showError } from "../ui";
import { ROLE_TEXT } from "./inside";

interface Att {
  tokens: string[]; causal: boolean; layer: number; head: number | "all"; heads: number[];
  n_layers: number; n_heads: number; weights: number[][][]; top_keys: [number, number][][];
  entropy: number[]; model_name: string;
  stats: { tokens: number; heads: number; layers: number; attention_ops: number };
  sources: string[];
}
interface Pos { sinusoidal: number[][]; rope?: { wrapped: number[][]; head_dim: number; theta: number } }

const visible = (t: string) => t.replace(/ /g, "·").replace(/\n/g, "↵");

export function attentionPage(root: HTMLElement): void {
  const { root: head, setSources } = pageHeader("attention", "Self-attention");
  const text = el("input", { type: "text", value: "The animal didn't cross the street because it was too tired.", size: 60, "data-testid": "att-text" }) as HTMLInputElement;
  const model = el("select", { "data-testid": "att-model" }, el("option", { value: "smollm2" }, "SmolLM2-135M (causal)"), el("option", { value: "minilm" }, "MiniLM-L6 (bidirectional)")) as HTMLSelectElement;
  const path = el("input", { type: "text", placeholder: "/path/to/checkpoint", hidden: true, size: 30 }) as HTMLInputElement;
  const mode = el("select", { "data-testid": "att-mode" }, el("option", { value: "native" }, "model's own"), el("option", { value: "causal" }, "causal"), el("option", { value: "bidirectional" }, "bidirectional")) as HTMLSelectElement;
  const layer = el("input", { type: "range", min: 0, max: 29, value: 0, "data-testid": "att-layer" }) as HTMLInputElement;
  const layerOut = el("span", { class: "val" }, "0");
  const headSel = el("select", { "data-testid": "att-head" }) as HTMLSelectElement;
  const temp = el("input", { type: "range", min: -2, max: 2, step: 0.1, value: 0, "data-testid": "att-temp" }) as HTMLInputElement;
  const tempOut = el("span", { class: "val" }, "1.00");
  const tokens = el("div", { class: "tokens", "data-testid": "tokens" });
  const map = el("div", { class: "map" });
  const stats = el("div", { class: "stats", "data-testid": "stats" });
  const err = el("div", { class: "error", hidden: true, "data-testid": "error" });
  const posBox = el("div", { class: "pos" });
  let data: Att | null = null;
  let selected: number | null = null;
  let nHeads = 0;

  const T = () => Math.pow(10, Number(temp.value));
  const setHeads = (n: number) => {
    if (n === nHeads) return;
    const keep = headSel.value;
    nHeads = n;
    headSel.replaceChildren(...[...Array(n).keys()].map((h) => el("option", { value: h }, `head ${h}`)), el("option", { value: "all" }, "all heads"));
    headSel.value = keep && (keep === "all" || Number(keep) < n) ? keep : "0";
  };

  function renderStats(): void {
    if (!data) return;
    const s = data.stats;
    const rows: [string, string][] = [
      ["model", data.model_name], ["mode", data.causal ? "causal" : "bidirectional"],
      ["tokens", fmt(s.tokens)], ["heads", fmt(s.heads)], ["layers", fmt(s.layers)],
      ["attention ops (n²·heads·layers)", fmt(s.attention_ops)],
    ];
    if (selected != null) {
      const tk = data.top_keys[selected].map(([j, w]) => `${visible(data!.tokens[j])} ${(100 * w).toFixed(1)}%`).join(", ");
      // In the grid the per-query facts are those of the first head shown: say which.
      const of = data.head === "all" ? ` (head ${data.heads[0]})` : "";
      rows.push(["selected token", `#${selected} ${visible(data.tokens[selected])}`], [`top keys${of}`, tk], [`entropy${of} (nats)`, data.entropy[selected].toFixed(3)]);
    }
    stats.replaceChildren(...rows.map(([k, v]) => el("div", { class: "stat" }, el("span", { class: "k" }, k), el("span", { class: "v", "data-stat": k.split(" ")[0] }, v))));
  }

  function render(): void {
    if (!data) return;
    const d = data;
    tokens.replaceChildren(...d.tokens.map((t, i) => el("button", { class: i === selected ? "tok sel" : "tok", "data-testid": `token-${i}`, onclick: () => select(i) }, visible(t))));
    const labels = d.tokens.map(visible);
    const marked = new Set(selected != null ? d.top_keys[selected].map(([j]) => j) : []);
    if (d.head === "all") {
      map.replaceChildren(el("div", { class: "grid" }, ...d.weights.map((w, k) =>
        heatmap(w, { cell: Math.max(4, Math.floor(150 / d.tokens.length)), title: `head ${d.heads[k]}`, selectedRow: selected, onRow: select, testid: k === 0 ? "heatmap" : undefined }))));
    } else {
      map.replaceChildren(heatmap(d.weights[0], { rowLabels: labels, colLabels: labels, selectedRow: selected, marked, onRow: select, testid: "heatmap" }));
    }
    renderStats();
  }

  function select(i: number): void { selected = selected === i ? null : i; render(); }

  let latest = 0; // the newest request: an older one answering late must not overwrite it
  async function load(): Promise<void> {
    err.hidden = true;
    const m = model.value === "path" ? path.value.trim() : model.value;
    if (!m) return;
    const mine = ++latest;
    try {
      const d = await postJSON<Att>("/api/attention", { text: text.value, model: m, mode: mode.value, layer: Number(layer.value), head: headSel.value === "all" ? "all" : Number(headSel.value || 0), temperature: T() });
      if (mine !== latest) return;
      layer.max = String(d.n_layers - 1);
      setHeads(d.n_heads);
      if (selected != null && selected >= d.tokens.length) selected = null;
      data = d;
      setSources([...d.sources, "positions.sinusoidal", "positions.rope"]);
      render();
    } catch (e) { if (mine === latest) showError(err, e); }
  }
  const reload = debounce(load, 250);
  text.addEventListener("input", () => { selected = null; reload(); });
  model.addEventListener("change", () => { path.hidden = model.value !== "path"; layer.value = "0"; nHeads = 0; headSel.value = "0"; reload(); loadPos(); });
  path.addEventListener("change", reload);
  for (const c of [mode, headSel]) c.addEventListener("change", reload);
  layer.addEventListener("input", () => { layerOut.textContent = layer.value; reload(); });
  temp.addEventListener("input", () => { tempOut.textContent = T().toFixed(2); reload(); });

  async function loadPos(): Promise<void> {
    const m = model.value === "path" ? path.value.trim() || "smollm2" : model.value;
    try {
      const p = await getJSON<Pos>(`/api/positions?n=48&d=64&model=${encodeURIComponent(m)}`);
      const parts: Node[] = [el("div", {}, el("h3", {}, "Sinusoidal table (Vaswani et al.), 48 positions × 64 dims"), heatmap(p.sinusoidal, { cell: 6, color: diverging }))];
      if (p.rope) {
        parts.push(el("div", {}, el("h3", {}, `RoPE angles mod 2π: 48 positions × ${p.rope.head_dim / 2} pairs, θ=${p.rope.theta}`),
          heatmap(p.rope.wrapped.map((r) => r.map((a) => a / (2 * Math.PI))), { cell: 6, color: (v) => `hsl(${v * 360},70%,55%)` })));
      } else parts.push(el("p", { class: "muted" }, "This model learns its position embeddings (no RoPE)."));
      posBox.replaceChildren(...parts);
    } catch (e) { showError(err, e); }
  }

  // The server's menu: the bundled models, its `--model-dir` checkpoints, and a free path if allowed.
  // Your playground runs come with one entry per checkpoint too (run:ID@STEP).
  getJSON<{ attention: { id: string; label: string; checkpoints?: number[] }[]; paths: boolean }>("/api/models").then((m) => {
    const keep = model.value;
    model.replaceChildren(...m.attention.flatMap((o) => [el("option", { value: o.id }, o.label),
      ...(o.checkpoints ?? []).map((s) => el("option", { value: `${o.id}@${s}` }, `${o.label} step ${s}`))]),
    ...(m.paths ? [el("option", { value: "path" }, "checkpoint path…")] : []));
    model.value = keep;
  }).catch((e) => showError(err, e));

  setHeads(9);
  // "#/attention?model=…&layer=…&head=…&role=…&text=…": a head opened from Inside the model.
  const hq = location.hash.indexOf("?");
  const q = new URLSearchParams(hq < 0 ? "" : location.hash.slice(hq + 1));
  const roleBox = el("div", { class: "role-banner", "data-testid": "att-role", hidden: true });
  if (q.get("text")) text.value = q.get("text")!;
  const qm = q.get("model");
  if (qm) {
    if (![...model.options].some((o) => o.value === qm)) model.append(el("option", { value: qm }, qm));
    model.value = qm;
  }
  if (q.get("layer")) { layer.max = String(Math.max(29, Number(q.get("layer")))); layer.value = q.get("layer")!; layerOut.textContent = layer.value; }
  if (q.get("head")) { setHeads(Math.max(9, Number(q.get("head")) + 1)); headSel.value = q.get("head")!; }
  const role = q.get("role");
  if (role) {
    roleBox.textContent = `Layer ${layer.value}, head ${headSel.value}, opened from Inside the model. Its measured role: ${ROLE_TEXT[role] ?? role}.`;
    roleBox.hidden = false;
  }
  root.replaceChildren(
    head, roleBox,
    el("section", { class: "controls" }, labeled("sentence", text), labeled("model", model), path, labeled("mask", mode),
      labeled("layer", el("span", {}, layer, layerOut)), labeled("head", headSel), labeled("temperature on scores", el("span", {}, temp, tempOut))),
    err,
    el("p", { class: "muted small" }, "Click a token (or a row) to make it the query: its row is outlined and its top keys marked. Row = query, column = key; weights = softmax(scores / T)."),
    tokens,
    el("div", { class: "split" }, map, stats),
    el("details", { class: "posdetails", open: true }, el("summary", {}, "Positional encodings"), posBox),
  );
  load();
  loadPos();
}

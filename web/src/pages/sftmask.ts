// SFT loss masking: a chat example through a chat template, token by token, trained
// (assistant) or masked (label -100), and how `llmlab sft` packs examples into rows.
import * as d3 from "d3";
import { postJSON } from "../api";
import { debounce, el, fmt, labeled, pageHeader, showError } from "../ui";

interface Tok { id: number; piece: string; label: number; trained: boolean; turn: number; role: string }
interface Cell { id: number; piece: string; label: number; trained: boolean; position: number; doc: number; example: number }
interface Packing { rows: { tokens: Cell[]; used: number }[]; seq_len: number; n_examples: number; cut: string[]; mask: number[][]; mask_docs: number[] }
interface Mask { tokens: Tok[]; n_tokens: number; n_trained: number; text: string; templates: string[]; packing: Packing; sources: string[] }

const ROLE_BG: Record<string, string> = { system: "#f3e8ff", user: "#e0f2fe", assistant: "#dcfce7" };
const EXAMPLE = ["#2563eb", "#ea580c", "#16a34a", "#9333ea", "#db2777", "#0891b2", "#ca8a04", "#4b5563", "#dc2626"];
const exColor = (k: number) => (k < 0 ? "#cbd5e1" : EXAMPLE[k % EXAMPLE.length]);
const exName = (k: number) => (k < 0 ? "padding" : k === 0 ? "your example" : `trivia ${k}`);

const DEFAULT = [
  { role: "user", content: "What is the capital of France?" },
  { role: "assistant", content: "Paris." },
  { role: "user", content: "And of Italy?" },
  { role: "assistant", content: "Rome, since 1871." },
];

// The block-diagonal causal mask of the first packed row: cell (q, k) is filled when query q
// may attend to key k, coloured by the example both belong to.
function maskPlot(p: Packing): SVGSVGElement {
  const n = p.mask.length, cell = Math.max(2, Math.min(10, Math.floor(420 / Math.max(n, 1))));
  const left = 46, top = 10, w = left + n * cell + 10, h = top + n * cell + 40;
  const svg = d3.create("svg").attr("width", w).attr("height", h).attr("data-testid", "sft-mask");
  const g = svg.append("g").attr("transform", `translate(${left},${top})`);
  const cells = p.mask.flatMap((row, q) => row.map((v, k) => ({ q, k, v })));
  g.selectAll("rect").data(cells).join("rect")
    .attr("x", (d) => d.k * cell).attr("y", (d) => d.q * cell).attr("width", cell).attr("height", cell)
    .attr("fill", (d) => (d.v ? exColor(p.mask_docs[d.q] < 0 ? -1 : p.rows[0].tokens[d.q].example) : "#f8fafc"))
    .append("title").text((d) => `query ${d.q} → key ${d.k}: ${d.v ? "attends" : "masked"}`);
  const x = d3.scaleLinear().domain([0, n]).range([0, n * cell]);
  const ticks = x.ticks(Math.min(8, n));
  g.append("g").attr("transform", `translate(0,${n * cell})`).call(d3.axisBottom(x).tickValues(ticks).tickFormat(d3.format("d")));
  g.append("g").call(d3.axisLeft(x).tickValues(ticks).tickFormat(d3.format("d")));
  svg.append("text").attr("x", left + (n * cell) / 2).attr("y", h - 4).attr("text-anchor", "middle").text("key position in the row (attended to)");
  svg.append("text").attr("transform", `translate(12,${top + (n * cell) / 2}) rotate(-90)`).attr("text-anchor", "middle").text("query position");
  return svg.node()!;
}

function swatch(color: string, text: string, extra = ""): HTMLElement {
  return el("span", { class: "small", style: "margin-right:14px" }, el("span", { style: `display:inline-block;width:12px;height:12px;background:${color};${extra};vertical-align:middle;margin-right:4px` }), text);
}

export function sftmaskPage(root: HTMLElement): void {
  const { root: head, setSources } = pageHeader("sftmask", "SFT and loss masking");
  const template = el("select", { "data-testid": "sft-template" }, ...[["chatml", "ChatML"], ["llama3", "Llama 3"], ["zephyr", "Zephyr"]].map(([v, t]) => el("option", { value: v }, t))) as HTMLSelectElement;
  const system = el("input", { type: "text", size: 40, placeholder: "(none)", value: "You are a concise geography tutor.", "data-testid": "sft-system" }) as HTMLInputElement;
  const seqLen = el("input", { type: "number", min: 32, max: 1024, value: 256, style: "width:6em", "data-testid": "sft-seqlen" }) as HTMLInputElement;
  const packN = el("input", { type: "number", min: 0, max: 8, value: 4, style: "width:4em", "data-testid": "sft-pack" }) as HTMLInputElement;
  const turns = el("div", { "data-testid": "sft-turns" });
  const addTurn = el("button", { "data-testid": "sft-add" }, "+ turn");
  const err = el("div", { class: "error", hidden: true, "data-testid": "sft-error" });
  const counts = el("div", { class: "stats", "data-testid": "sft-counts" });
  const view = el("div", { "data-testid": "sft-tokens", style: "font-family:ui-monospace,monospace;line-height:2;background:#fff;border:1px solid #e5e7eb;border-radius:8px;padding:8px;max-width:1100px" });
  const packInfo = el("p", { class: "muted small", "data-testid": "sft-pack-info" });
  const rows = el("div", { "data-testid": "sft-rows" });
  const maskBox = el("div", {});
  let seq = 0;

  function turnRow(role: string, content: string): HTMLElement {
    const sel = el("select", { "data-testid": "sft-role" }, ...["user", "assistant", "system"].map((r) => el("option", { value: r }, r))) as HTMLSelectElement;
    sel.value = role;
    const text = el("textarea", { rows: 2, cols: 70, "data-testid": "sft-content" }) as HTMLTextAreaElement;
    text.value = content;
    const rm = el("button", { title: "remove this turn", "data-testid": "sft-remove" }, "✕");
    const row = el("div", { class: "row", "data-testid": "sft-turn" }, sel, text, rm);
    sel.addEventListener("change", again);
    text.addEventListener("input", again);
    rm.addEventListener("click", () => { row.remove(); again(); });
    return row;
  }
  function messages(): { role: string; content: string }[] {
    return [...turns.querySelectorAll<HTMLElement>("[data-testid=sft-turn]")].map((r) => ({
      role: r.querySelector("select")!.value, content: r.querySelector("textarea")!.value }));
  }

  function drawTokens(m: Mask): void {
    counts.replaceChildren(...([["trained tokens", `${fmt(m.n_trained)} of ${fmt(m.n_tokens)}`], ["share trained", `${((100 * m.n_trained) / Math.max(m.n_tokens, 1)).toFixed(1)}%`]] as [string, string][])
      .map(([k, v]) => el("div", { class: "stat" }, el("span", { class: "k" }, k), el("span", { class: "v" }, v))));
    counts.dataset.trained = String(m.n_trained);
    // One line per turn, tagged with its role; a token belongs to the turn it starts in.
    const lines: HTMLElement[] = [];
    m.tokens.forEach((t, i) => {
      if (!lines.length || t.turn !== Number(lines[lines.length - 1].dataset.turn)) {
        lines.push(el("div", { "data-turn": t.turn }, el("span", { class: "small", style: `background:${ROLE_BG[t.role] ?? "#eee"};border-radius:8px;padding:0 6px;margin-right:6px` }, t.role)));
      }
      lines[lines.length - 1].append(el("span", {
        "data-testid": "sft-tok", "data-i": i, "data-trained": t.trained ? "1" : "0",
        title: `id ${t.id} · label ${t.label} · turn ${t.turn} (${t.role})`,
        style: t.trained ? "background:#fde68a;border:1px solid #d97706;border-radius:3px;padding:1px 2px;margin:1px;white-space:pre"
          : "color:#9ca3af;background:#f3f4f6;border:1px solid #e5e7eb;border-radius:3px;padding:1px 2px;margin:1px;white-space:pre",
      }, t.piece));
    });
    view.replaceChildren(...lines);
  }

  function drawPacking(p: Packing): void {
    const nRows = p.rows.length;
    packInfo.textContent = `${p.n_examples} examples (yours + ${p.n_examples - 1} from the bundled trivia set) packed greedily into ${nRows} row${nRows > 1 ? "s" : ""} of ${p.seq_len} positions. Each position holds an input token; it is trained when its label (the next token) is not −100. Positions restart at 0 where an example starts.` + (p.cut.length ? ` Warning: ${p.cut.join(" ")}` : "");
    const all = new Set(p.rows.flatMap((r) => r.tokens.map((c) => c.example)));
    const legend = el("div", { class: "row" }, ...[...all].sort((a, b) => a - b).map((k) => swatch(exColor(k), exName(k))), swatch("#fde68a", "trained position (label ≠ −100)"));
    rows.replaceChildren(legend, ...p.rows.map((r, ri) => {
      const cells = r.tokens.slice(0, r.used < p.seq_len ? r.used + 1 : r.used).map((c, i) => {
        const start = i === 0 || r.tokens[i - 1].doc !== c.doc;
        return el("span", {
          "data-testid": "sft-cell", "data-row": ri, "data-pos": c.position, "data-doc": c.doc, "data-example": c.example, "data-start": start ? "1" : "0",
          title: `${exName(c.example)} · position ${c.position} · doc ${c.doc} · label ${c.label}`,
          style: `display:inline-flex;flex-direction:column;align-items:center;margin:2px 0;padding:0 2px;border-top:4px solid ${exColor(c.example)};${start ? `border-left:3px solid ${exColor(c.example)};margin-left:6px;` : ""}background:${c.trained ? "#fde68a" : "transparent"}`,
        }, el("span", { style: "font-family:ui-monospace,monospace;font-size:11px;white-space:pre" }, c.doc < 0 ? `pad ×${p.seq_len - r.used}` : c.piece),
        el("span", { class: "muted", style: "font-size:9px" }, c.doc < 0 ? "" : String(c.position)));
      });
      return el("div", { style: "margin:8px 0;max-width:1100px" }, el("div", { class: "small muted" }, `row ${ri}: ${r.used} of ${p.seq_len} positions used`), el("div", { style: "display:flex;flex-wrap:wrap" }, ...cells));
    }));
    const shown = new Set(p.rows[0].tokens.slice(0, p.mask.length).map((c) => c.example));
    maskBox.replaceChildren(
      el("h3", {}, `Attention mask of row 0 (first ${p.mask.length} positions)`),
      el("div", {}, ...[...shown].sort((a, b) => a - b).map((k) => swatch(exColor(k), exName(k))), swatch("#f8fafc", "masked (not attended)", "border:1px solid #cbd5e1")),
      maskPlot(p));
  }

  async function run(): Promise<void> {
    const mine = ++seq;
    try {
      const body = { messages: messages(), template: template.value, system: system.value.trim() ? system.value : null,
        seq_len: Number(seqLen.value), pack_examples: Number(packN.value) };
      const m = await postJSON<Mask>("/api/sft/mask", body);
      if (mine !== seq) return;  // a newer edit is on its way
      err.hidden = true;
      drawTokens(m);
      drawPacking(m.packing);
      view.dataset.rev = String(mine);
      setSources(m.sources);
    } catch (e) { if (mine === seq) showError(err, e); }
  }
  const again = debounce(run, 250);
  turns.append(...DEFAULT.map((m) => turnRow(m.role, m.content)));
  addTurn.addEventListener("click", () => {
    const last = messages().at(-1)?.role;
    turns.append(turnRow(last === "user" ? "assistant" : "user", ""));
    again();
  });
  for (const c of [template, seqLen, packN]) c.addEventListener("change", again);
  system.addEventListener("input", again);
  root.replaceChildren(head,
    el("section", { class: "controls" }, labeled("chat template", template), labeled("system prompt (empty: none)", system), labeled("seq_len", seqLen), labeled("bundled examples packed", packN)),
    el("h2", {}, "The example"), turns, addTurn, err,
    el("h2", {}, "Tokens and labels (what llmlab sft trains on)"),
    el("div", { class: "row" }, swatch("#fde68a", "trained: label = the token, loss computed", "border:1px solid #d97706"), swatch("#f3f4f6", "masked: label −100, no loss", "border:1px solid #e5e7eb")),
    el("div", { class: "split" }, view, counts),
    el("p", { class: "muted small" }, "Llama 3 and Zephyr markers are not in SmolLM2's vocabulary, so they split into plain-text pieces; they are still trained after each reply, which is how the model learns to stop."),
    el("h2", {}, "Packing"), packInfo, rows, maskBox);
  run();
}

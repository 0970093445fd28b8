import { postJSON } from "../api";
import { modelSelect } from "../models";
import { debounce, el, labeled, pageHeader, showError } from "../ui";

interface Next {
  top: { id: number; piece: string; raw_p: number; p: number }[]; kept: number; vocab: number;
  entropy_raw: number; entropy: number; sampled: { id: number; piece: string } | null; generated: string; sources: string[];
}

interface MaskStep {
  token: { id: number; piece: string }; allowed: number; allowed_mass: number;
  top_allowed: { id: number; piece: string; p: number }[]; free_choice: { id: number; piece: string; allowed: boolean };
}
interface MaskTrace { steps: MaskStep[]; vocab: number; text: string; sources: string[] }

const DEFAULT_SCHEMA = { type: "object", properties: { city: { type: "string", maxLength: 20 }, population: { type: "integer", minimum: 0 } }, required: ["city", "population"], additionalProperties: false };

/** Constrained decoding: at each step, how many tokens the JSON schema's grammar still allows. */
function constrainedPanel(prompt: HTMLInputElement, setSources: (s: string[]) => void): HTMLElement {
  const schema = el("textarea", { rows: 4, cols: 70, "data-testid": "dec-schema" }) as HTMLTextAreaElement;
  schema.value = JSON.stringify(DEFAULT_SCHEMA);
  const run = el("button", { "data-testid": "dec-constrained-run" }, "decode under the schema ▸");
  const out = el("div", { class: "generated", "data-testid": "dec-constrained-text" });
  const table = el("table", { class: "steps", "data-testid": "dec-mask-steps" });
  const err = el("div", { class: "error", hidden: true });
  run.addEventListener("click", async () => {
    err.hidden = true;
    try {
      const t = await postJSON<MaskTrace>("/api/decode/constrained", { text: prompt.value, json_schema: JSON.parse(schema.value), max_tokens: 48 });
      out.textContent = t.text;
      table.replaceChildren(
        el("tr", {}, ...["step", "chosen", "allowed tokens", "allowed mass", "likeliest allowed", "model alone would pick"].map((h) => el("th", {}, h))),
        ...t.steps.map((s, i) => el("tr", {},
          el("td", {}, String(i + 1)), el("td", {}, JSON.stringify(s.token.piece)),
          el("td", {}, `${s.allowed} of ${t.vocab}`), el("td", {}, `${(100 * s.allowed_mass).toFixed(1)}%`),
          el("td", { class: "small" }, s.top_allowed.map((a) => JSON.stringify(a.piece)).join(" ")),
          el("td", { class: s.free_choice.allowed ? "" : "cut" }, JSON.stringify(s.free_choice.piece) + (s.free_choice.allowed ? "" : " (masked)")))));
      setSources(t.sources);
    } catch (e) { showError(err, e); }
  });
  return el("section", { class: "constrained" },
    el("h3", {}, "Constrained decoding: the grammar's mask at each step"),
    el("p", { class: "muted small" }, "The prompt above, as a chat turn, decoded greedily under a JSON schema (llguidance builds the grammar). At each step only tokens that can still lead to a valid output keep their probability; the rest are set to −∞ before sampling. 'Allowed mass' is how much of the model's own probability fell inside the mask; a struck-out pick is one the model wanted and the grammar forbade."),
    labeled("JSON schema", schema), el("div", { class: "row" }, run), err, out, table);
}

export function decodingPage(root: HTMLElement): void {
  const { root: head, setSources } = pageHeader("decoding", "Decoding");
  const text = el("input", { type: "text", value: "The capital of France is", size: 50, "data-testid": "dec-text" }) as HTMLInputElement;
  const model = modelSelect("dec-model", { causalOnly: true });  // SmolLM2 or one of your runs
  const chat = el("input", { type: "checkbox" }) as HTMLInputElement;
  const temp = el("input", { type: "range", min: 0, max: 2, step: 0.05, value: 1, "data-testid": "dec-temp" }) as HTMLInputElement;
  const topk = el("input", { type: "number", min: 0, max: 1000, value: 0, style: "width:5em", "data-testid": "dec-topk" }) as HTMLInputElement;
  const topp = el("input", { type: "range", min: 0.05, max: 1, step: 0.05, value: 1, "data-testid": "dec-topp" }) as HTMLInputElement;
  const outs = [temp, topp].map((i) => el("span", { class: "val" }, i.value));
  const step = el("button", { "data-testid": "dec-step" }, "sample next token ▸");
  const reset = el("button", {}, "reset");
  const gen = el("div", { class: "generated", "data-testid": "dec-generated" });
  const bars = el("div", { class: "bars", "data-testid": "dec-bars" }), stats = el("div", { class: "stats" }), err = el("div", { class: "error", hidden: true });
  let appended: number[] = [];
  let seed = 1;

  function draw(n: Next): void {
    const max = Math.max(...n.top.map((t) => Math.max(t.raw_p, t.p)), 1e-9);
    bars.replaceChildren(...n.top.map((t) => el("div", { class: t.p > 0 ? "bar" : "bar cut" },
      el("span", { class: "lbl" }, JSON.stringify(t.piece)),
      el("span", { class: "track" }, el("span", { class: "raw", style: `width:${(100 * t.raw_p) / max}%` }), el("span", { class: "proc", style: `width:${(100 * t.p) / max}%` })),
      el("span", { class: "num" }, `${(100 * t.raw_p).toFixed(1)}% → ${(100 * t.p).toFixed(1)}%`))));
    stats.replaceChildren(...([["tokens kept", `${n.kept} of ${n.vocab}`], ["entropy raw", n.entropy_raw.toFixed(3)], ["entropy after", n.entropy.toFixed(3)]] as [string, string][])
      .map(([k, v]) => el("div", { class: "stat" }, el("span", { class: "k" }, k), el("span", { class: "v" }, v))));
    gen.replaceChildren(el("span", { class: "prompt" }, text.value), el("span", { class: "gen" }, n.generated));
    setSources(n.sources);
  }
  async function query(sample: boolean): Promise<void> {
    err.hidden = true;
    outs[0].textContent = temp.value; outs[1].textContent = topp.value;
    try {
      const body = { text: text.value, model: model.el.value, chat: chat.checked, append_ids: appended, temperature: Number(temp.value), top_k: Number(topk.value), top_p: Number(topp.value), seed: sample ? seed++ : null, k: 15 };
      const n = await postJSON<Next>("/api/decode/next", body);
      if (sample && n.sampled) { appended = [...appended, n.sampled.id]; return query(false); }
      draw(n);
    } catch (e) { showError(err, e); }
  }
  const again = debounce(() => query(false), 200);
  for (const c of [temp, topp, topk]) c.addEventListener("input", again);
  text.addEventListener("input", () => { appended = []; again(); });
  chat.addEventListener("change", () => { appended = []; again(); });
  model.el.addEventListener("change", () => { appended = []; again(); });
  model.el.addEventListener("focus", () => { model.refresh(); });
  step.addEventListener("click", () => query(true));
  reset.addEventListener("click", () => { appended = []; query(false); });
  root.replaceChildren(head,
    el("section", { class: "controls" }, labeled("model", model.el), labeled("prompt", text), labeled("chat template", chat), labeled("temperature", el("span", {}, temp, outs[0])), labeled("top-k (0=off)", topk), labeled("top-p", el("span", {}, topp, outs[1]))),
    el("div", { class: "row" }, step, reset), err, gen,
    el("p", { class: "muted small" }, "Grey: the model's raw softmax. Blue: after temperature → top-k → top-p (the library's processors, transformers' order). Struck-out tokens can no longer be sampled."),
    el("div", { class: "split" }, bars, stats),
    constrainedPanel(text, setSources));
  query(false);
}

// Pretraining: pick a corpus, a tokenizer and a depth, start a run (a worker running
// `llmlab pretrain --preset micro ...`), and watch the losses, the lr schedule, the speed and
// the samples as the run writes them. Every number is the library's (the plan from
// /api/pretrain/shape, the records from the run's own metrics.jsonl and samples.jsonl).
// Below, a race of the CPU speedrun's two recipes (race.ts).
import { getJSON, postJSON } from "../api";
import { runPanel, type Rec, type Run, type Sample } from "../runs";
import { debounce, el, fmt, labeled, pageHeader, showError } from "../ui";
import { lineChart, slider, stat, type Series } from "./fcharts";
import { raceSection } from "./race";

interface Plan {
  depth: number; tokenizer: string; n_params: number; n_params_embedding: number; n_params_blocks: number;
  model: { n_layer: number; d_model: number; n_head: number; head_dim: number; d_ff: number; vocab_size: number; max_seq_len: number };
  lr: number; max_steps: number; tokens_per_step: number; uniform_loss: number; schedule: [number, number][];
  sources: string[]; corpus: { min_chars: number; max_chars: number };
}

// The vocabulary slider's stops: a BPE of 256 bytes + merges + <|endoftext|>.
const VOCABS = [300, 512, 768, 1024, 1536, 2048, 3072, 4096, 8192];

export function pretrainPage(root: HTMLElement): void {
  const { root: head, setSources } = pageHeader("pretrain", "Pretraining");
  const err = el("div", { class: "error", hidden: true, "data-testid": "pt-plan-error" });

  // ---- corpus: a bundled one, or text the reader uploads (kept on the server by its hash)
  const corpus = el("select", { "data-testid": "pt-corpus" }, el("option", { value: "kjv" }, "King James Bible (bundled)"),
    el("option", { value: "pydocs" }, "Python docs (bundled)"), el("option", { value: "upload" }, "your own text…")) as HTMLSelectElement;
  const file = el("input", { type: "file", accept: ".txt,text/plain", "data-testid": "pt-file" }) as HTMLInputElement;
  const text = el("textarea", { rows: 4, cols: 60, placeholder: "paste text here, or choose a .txt file", "data-testid": "pt-text" }) as HTMLTextAreaElement;
  const use = el("button", { "data-testid": "pt-upload" }, "use this text");
  const limits = el("div", { class: "muted small", "data-testid": "pt-limits" });
  const upState = el("div", { class: "muted small", "data-testid": "pt-upload-state" });
  const upErr = el("div", { class: "error", hidden: true, "data-testid": "pt-upload-error" });
  const uploadBox = el("div", { class: "upload", hidden: true }, el("div", { class: "row" }, file, use), text, limits, upState, upErr);
  let uploaded: string | null = null;  // "upload:HASH"

  // ---- tokenizer, depth, steps
  const tokKind = el("select", { "data-testid": "pt-tokenizer" }, el("option", { value: "bpe" }, "BPE trained on the corpus"),
    el("option", { value: "gpt2" }, "GPT-2's (50,257 ids)")) as HTMLSelectElement;
  const vocab = slider(0, VOCABS.length - 1, 1, VOCABS.indexOf(1024), "pt-vocab");
  const depth = slider(1, 8, 1, 3, "pt-depth");
  const steps = slider(50, 3000, 50, 600, "pt-steps");
  const every = slider(10, 500, 10, 100, "pt-every");
  const shape = el("div", { class: "muted", "data-testid": "pt-shape" });
  const tokenizer = () => (tokKind.value === "gpt2" ? "gpt2" : `bpe:${VOCABS[Number(vocab.input.value)]}`);
  const showVocab = () => { vocab.out.textContent = fmt(VOCABS[Number(vocab.input.value)]); vocab.input.disabled = tokKind.value === "gpt2"; };
  showVocab();

  let plan: Plan | null = null;
  let raceSources: string[] = [];  // the race's, after the plan's
  const showSources = () => setSources([...(plan?.sources ?? []), ...raceSources]);
  const loadPlan = debounce(async () => {
    try {
      const q = new URLSearchParams({ depth: depth.input.value, tokenizer: tokenizer(), steps: steps.input.value, preset: "micro" });
      plan = await getJSON<Plan>(`/api/pretrain/shape?${q}`);
      err.hidden = true;
      const m = plan.model;
      shape.textContent = `${m.n_layer} layers × ${m.d_model} wide · ${m.n_head} heads of ${m.head_dim} · MLP ${m.d_ff} · vocab ${fmt(m.vocab_size)} · `
        + `${fmt(plan.n_params)} parameters (${fmt(plan.n_params_embedding)} in the embedding) · peak lr ${plan.lr.toPrecision(2)} · ${fmt(plan.tokens_per_step)} tokens a step`;
      shape.dataset.params = String(plan.n_params);
      limits.textContent = `${fmt(plan.corpus.min_chars)} to ${fmt(plan.corpus.max_chars)} characters of UTF-8 text`;
      showSources();
      draw();
    } catch (e) { showError(err, e); }
  }, 150);
  for (const s of [vocab, depth, steps]) s.input.addEventListener("input", loadPlan);
  vocab.input.addEventListener("input", showVocab);
  tokKind.addEventListener("change", () => { showVocab(); loadPlan(); });
  corpus.addEventListener("change", () => { uploadBox.hidden = corpus.value !== "upload"; });

  async function upload(body: string): Promise<void> {
    upErr.hidden = true;
    upState.textContent = "uploading…";
    try {
      const r = await postJSON<{ name: string; chars: number; bytes: number }>("/api/runs/corpus", { text: body });
      uploaded = r.name;
      upState.textContent = `stored as ${r.name}: ${fmt(r.chars)} characters, ${fmt(r.bytes)} bytes`;
    } catch (e) { uploaded = null; upState.textContent = ""; showError(upErr, e); }
  }
  use.addEventListener("click", () => upload(text.value));
  file.addEventListener("change", async () => {
    const f = file.files?.[0];
    if (!f) return;
    // A file far over the limit is refused here rather than read into the page.
    if (plan && f.size > 4 * plan.corpus.max_chars) { showError(upErr, `${f.name}: ${fmt(f.size)} bytes; at most ${fmt(plan.corpus.max_chars)} characters`); return; }
    text.value = await f.text();
    await upload(text.value);
  });

  // ---- what the run writes
  let recs: Rec[] = [];
  const samples = el("div", { class: "samples", "data-testid": "pt-samples" });
  const stats = el("div", { class: "stats", "data-testid": "pt-stats" });
  const lossBox = el("div", { "data-testid": "pt-loss" }), lrBox = el("div", { "data-testid": "pt-lr" }), speedBox = el("div", { "data-testid": "pt-speed" });
  const hint = el("div", { class: "hint", hidden: true, "data-testid": "pt-model-hint" });

  let queued = false;
  function draw(): void {
    if (queued) return;
    queued = true;
    requestAnimationFrame(() => { queued = false; redraw(); });
  }
  function redraw(): void {
    const train = recs.map((r) => [r.step, r.loss] as [number, number]);
    const val = recs.filter((r) => r.val_loss != null).map((r) => [r.step, r.val_loss] as [number, number]);
    const loss: Series[] = [{ name: "train loss", values: train, cls: "train" }, { name: "validation loss", values: val, cls: "val" }];
    // The reference line spans the steps drawn so far, so the curves keep the chart's width.
    if (plan) loss.push({ name: `uniform guess, ln ${fmt(plan.model.vocab_size)}`, values: [[0, plan.uniform_loss], [recs.at(-1)?.step ?? plan.max_steps, plan.uniform_loss]], cls: "truth" });
    lossBox.dataset.train = JSON.stringify(train);
    lossBox.dataset.val = JSON.stringify(val);
    lossBox.replaceChildren(lineChart(loss, { w: 520, h: 260, xLabel: "step", yLabel: "cross-entropy (nats/token)", testid: "pt-loss-chart" }));
    const lr: Series[] = [{ name: "lr used", values: recs.map((r) => [r.step, r.lr] as [number, number]), cls: "train" }];
    if (plan) lr.unshift({ name: "planned schedule", values: plan.schedule, cls: "truth" });
    lrBox.replaceChildren(lineChart(lr, { w: 400, h: 200, xLabel: "step", yLabel: "learning rate" }));
    const speed = recs.filter((r) => r.tok_per_s != null).map((r) => [r.step, r.tok_per_s] as [number, number]);
    speedBox.replaceChildren(lineChart([{ name: "tokens/s", values: speed, cls: "val" }], { w: 400, h: 200, xLabel: "step", yLabel: "tokens / s" }));
    const last = recs.at(-1), lastVal = val.at(-1);
    stats.replaceChildren(
      stat("step", last ? String(last.step) : "–", "step"),
      stat("train loss", last ? last.loss.toFixed(3) : "–", "loss"),
      stat("validation loss", lastVal ? lastVal[1].toFixed(3) : "–", "val_loss"),
      stat("tokens/s", last?.tok_per_s != null ? fmt(Math.round(last.tok_per_s)) : "–", "tok_per_s"),
      stat("tokens seen", last ? fmt(last.tokens) : "–", "tokens"),
      stat("parameters", plan ? fmt(plan.n_params) : "–", "params"));
  }

  // Attaching a past run shows its own settings, so the plan drawn is the one it follows.
  function adopt(run: Run): void {
    const o = run.options as Record<string, string | number | undefined>;
    if (typeof o.depth === "number") depth.input.value = String(o.depth);
    if (typeof o.max_steps === "number") steps.input.value = String(o.max_steps);
    if (typeof o.eval_every === "number") every.input.value = String(o.eval_every);
    const tok = String(o.tokenizer ?? "");
    if (tok === "gpt2") tokKind.value = "gpt2";
    else if (tok.startsWith("bpe:") && VOCABS.includes(Number(tok.slice(4)))) { tokKind.value = "bpe"; vocab.input.value = String(VOCABS.indexOf(Number(tok.slice(4)))); }
    for (const s of [depth, steps, every]) s.out.textContent = s.input.value;
    showVocab();
    loadPlan();
  }

  const panel = runPanel("pretrain", () => {
    if (corpus.value === "upload" && !uploaded) throw new Error("corpus: upload your text first (use this text)");
    const n = Number(every.input.value);
    return {
      preset: "micro", inputs: corpus.value === "upload" ? uploaded : corpus.value, tokenizer: tokenizer(),
      depth: Number(depth.input.value), max_steps: Number(steps.input.value), eval_every: n, ckpt_every: n,
      // The samples continue a prompt in the corpus's own style; an upload's start from BOS alone.
      sample_prompt: corpus.value === "kjv" ? "And it came to pass" : corpus.value === "pydocs" ? "The" : "",
    };
  }, {
    clear(run) { recs = []; samples.replaceChildren(); hint.hidden = true; adopt(run); draw(); },
    metrics(r) { recs.push(r); draw(); },
    sample(s: Sample) {
      samples.append(el("div", { class: "sample", "data-step": s.step }, el("span", { class: "k" }, `step ${s.step}`), el("pre", {}, s.text ?? "")));
    },
    status(run) {
      const over = !["running", "stopping"].includes(run.status);
      hint.hidden = !(over && run.model);
      if (over && run.model) {
        hint.replaceChildren(`This run is now a model, ${run.model}: pick it in `, el("a", { href: "#/attention", "data-testid": "pt-attention-link" }, "Self-attention"),
          " (or Decoding, Tokenizer, Chat) to look inside what you trained.");
      }
    },
  }, "pt");

  const controls = el("section", { class: "controls" },
    labeled("corpus", corpus), labeled("tokenizer", tokKind), labeled("BPE vocabulary", el("span", {}, vocab.input, vocab.out)),
    labeled("depth", el("span", {}, depth.input, depth.out)), labeled("steps", el("span", {}, steps.input, steps.out)),
    labeled("eval + sample every", el("span", {}, every.input, every.out)));
  root.replaceChildren(head, controls, uploadBox, shape, err, panel.root, hint,
    el("div", { class: "row" }, lossBox, stats), el("div", { class: "row" }, lrBox, speedBox),
    el("h3", {}, "Samples at each evaluation (prompt: “And it came to pass”)"), samples,
    raceSection((keys) => { raceSources = keys; showSources(); }));
  loadPlan();
}

// The LoRA page's live part: fine-tune SmolLM2 with LoRA in a worker (`llmlab sft`, the
// training lab's run panel), and watch the loss, what the run trains and holds in memory, and
// the same held-out questions answered before training and after the latest evaluation.
import { getJSON } from "../api";
import { type Rec, type Run, runPanel, type Sample } from "../runs";
import { el, fmt, labeled, showError } from "../ui";
import { lineChart, stat } from "./fcharts";

const TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
// Fixed for the demo (BENCHMARKS.md "LoRA live demo"): 30 steps finish in about 3 minutes on
// 2 cores. Rows of 160 tokens hold 2-3 trivia examples; each evaluation scores 2 validation
// batches and answers 3 held-out questions (24 tokens: a sentence, or a short answer).
const FIXED = { data: "trivia", peft: "lora", batch_size: 4, seq_len: 160, eval_every: 10,
  eval_batches: 2, sample_prompts: 3, sample_tokens: 24, warmup_steps: 3, log_every: 1, ckpt_every: 10 };

interface Memory { frozen_weights: number; trained_weights: number; gradients: number; adam_moments: number; total: number; full_finetune: number }
interface Info { trainable?: number; total_params?: number; trainable_pct?: number; memory?: Memory }

const mb = (b: number) => `${(b / 2 ** 20).toFixed(1)} MB`;

// `setSources` adds these keys to the page's code panel (the code-panel test scans such calls).
export function loraLive(setSources: (keys: string[]) => void): HTMLElement {
  const num = (v: number, min: number, max: number, step: number, testid: string) =>
    el("input", { type: "number", min, max, step, value: v, "data-testid": testid, class: "num" }) as HTMLInputElement;
  const rank = num(8, 1, 64, 1, "live-r"), alpha = num(16, 1, 256, 1, "live-alpha");
  const steps = num(30, 1, 500, 1, "live-steps"), lr = num(0.001, 0.00001, 0.01, 0.0001, "live-lr");
  const data = el("select", { "data-testid": "live-data" }, el("option", { value: "trivia" }, "trivia (answer with just the answer)")) as HTMLSelectElement;
  const targets = TARGETS.map((t) => el("input", { type: "checkbox", value: t, checked: t === "q_proj" || t === "v_proj", "data-testid": `live-t-${t}` }) as HTMLInputElement);
  const chart = el("div", { "data-testid": "live-loss" });
  const params = el("div", { class: "stats", "data-testid": "live-params" });
  const table = el("table", { class: "methods", "data-testid": "live-ba" });
  const done = el("p", { class: "muted", hidden: true, "data-testid": "live-done" });
  const err = el("div", { class: "error", hidden: true });
  let train: [number, number][] = [], val: [number, number][] = [];
  let samples = new Map<number, Sample[]>();  // step -> that evaluation's answers, in prompt order
  let infoFor = "";

  function options(): Record<string, unknown> {
    const tm = targets.filter((t) => t.checked).map((t) => t.value);
    if (!tm.length) throw new Error("target modules: tick at least one");
    return { ...FIXED, data: data.value, model: "smollm2-135m-instruct", lora_r: Number(rank.value),
      lora_alpha: Number(alpha.value), target_modules: tm.join(","), max_steps: Number(steps.value), lr: Number(lr.value) };
  }

  function drawChart(): void {
    chart.replaceChildren(lineChart([{ name: "train loss", values: train, cls: "train" }, { name: "validation loss", values: val, cls: "val" }],
      { w: 520, h: 240, xLabel: "optimizer step", yLabel: "loss (cross-entropy, nats)", testid: "live-chart" }));
  }

  function drawAnswers(): void {
    const steps = [...samples.keys()].sort((a, b) => a - b);
    const before = samples.get(steps[0]) ?? [], lastStep = steps.length > 1 ? steps[steps.length - 1] : null;
    const after = lastStep !== null ? samples.get(lastStep)! : [];
    table.replaceChildren(
      el("tr", {}, ...["held-out prompt", `before (step ${steps[0] ?? 0})`, lastStep !== null ? `after (step ${lastStep})` : "after (waiting for the first evaluation)", "reference"].map((h) => el("th", {}, h))),
      ...before.map((b, i) => el("tr", { "data-testid": "live-ba-row" },
        el("td", { class: "small" }, String(b.prompt ?? "").replace(/^[^\n]*\n(Question: )?/, "")),
        el("td", { "data-col": "before" }, String(b.answer ?? "")),
        el("td", { "data-col": "after" }, after[i] ? String(after[i].answer ?? "") : "…"),
        el("td", { "data-col": "reference" }, String(b.reference ?? "")))));
  }

  async function loadInfo(run: Run): Promise<void> {
    // run.json (written by the worker before step 0) holds the library's accounting.
    if (infoFor === run.id) return;
    infoFor = run.id;
    try {
      const r = await getJSON<Run & { info: Info }>(`/api/runs/${encodeURIComponent(run.id)}`);
      const i = r.info ?? {}, m = i.memory;
      if (i.trainable === undefined || !m) { infoFor = ""; return; }
      params.replaceChildren(
        stat("trainable parameters", fmt(i.trainable), "live-trainable"),
        stat("all parameters", fmt(i.total_params ?? 0), "live-total"),
        stat("trainable %", `${(i.trainable_pct ?? 0).toFixed(3)}%`, "live-pct"),
        stat("frozen weights (fp32)", mb(m.frozen_weights), "live-frozen"),
        stat("trained weights + gradients + AdamW moments", `${mb(m.trained_weights)} + ${mb(m.gradients)} + ${mb(m.adam_moments)}`, "live-trained"),
        stat("total, activations excluded", mb(m.total), "live-mem"),
        stat("the same run, full fine-tuning", mb(m.full_finetune), "live-full"));
    } catch (e) { infoFor = ""; showError(err, e); }
  }

  const panel = runPanel("sft", options, {
    clear() {
      train = []; val = []; samples = new Map(); infoFor = "";
      params.replaceChildren(); done.hidden = true;
      drawChart(); drawAnswers();
    },
    metrics(r: Rec) {
      if (r.loss !== undefined) train.push([r.step, r.loss]);
      if (r.val_loss !== undefined) val.push([r.step, r.val_loss]);
      drawChart();
      const run = panel.current();
      if (run) void loadInfo(run);
    },
    sample(s: Sample) {
      if (s.answer === undefined) return;  // not a held-out answer (another kind of SFT run)
      const list = samples.get(s.step) ?? [];
      list.push(s);
      samples.set(s.step, list);
      drawAnswers();
      const run = panel.current();
      if (run) void loadInfo(run);
    },
    status(run: Run) {
      if (run.status === "finished" && run.adapter && run.model) {
        done.textContent = `Finished: the adapter is selectable in Chat (and every page's model picker) as ${run.model}.`;
        done.hidden = false;
      }
      if (run.status !== "running") void loadInfo(run);
    },
  }, "lora-run");
  setSources(["sft.run", "sft.loss", "lora.forward", "sft.answers"]);
  drawChart();
  drawAnswers();

  return el("section", { class: "live", "data-testid": "lora-live" },
    el("h2", {}, "Train it live"),
    el("p", { class: "muted small" }, "Fine-tune SmolLM2-135M-Instruct with LoRA on the bundled trivia set, whose replies are bare answers. The base model answers in sentences; within a few dozen steps the adapter teaches it the format (a 135M model learns few new facts). Batch 4 × 160 tokens, an evaluation every 10 steps."),
    el("section", { class: "controls" }, labeled("dataset", data), labeled("rank r", rank), labeled("α", alpha),
      labeled("steps", steps), labeled("learning rate", lr)),
    el("section", { class: "controls" }, el("span", { class: "targets" }, "target modules: ", ...targets.map((t) => el("label", {}, t, t.value)))),
    panel.root, err,
    el("div", { class: "split" }, chart, params),
    el("h3", {}, "The same held-out questions, before and after"),
    table, done);
}

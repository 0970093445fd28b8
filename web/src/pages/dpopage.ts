// DPO: one preference pair's per-token log π/π_ref (the terms the loss sums), the implicit
// rewards and the sigmoid / IPO / hinge losses at any β, and a live DPO run with its
// held-out task accuracy. Every number is the library's (llmlab/align/explain_dpo.py).
import * as d3 from "d3";
import { getJSON, postJSON } from "../api";
import { modelSelect } from "../models";
import { type Rec, runPanel } from "../runs";
import { debounce, el, labeled, pageHeader, showError } from "../ui";
import { lineChart, logSlider } from "./fcharts";
import "./dpopage.css";

interface Side { ids: number[]; pieces: string[]; logp: number[]; logp_ref: number[]; logratio: number[]; seq_logp: number; seq_logp_ref: number; seq_logratio: number; n_tokens: number }
interface LossOut { beta: number; logits: number; ipo_logits: number; losses: Record<string, Record<string, number>>; curve: Record<string, number[]>; sources: string[] }
interface PairView extends LossOut { model: string; same_model: boolean; chosen: Side; rejected: Side }
interface Pair { prompt: string; chosen: string; rejected: string; chosen_reward: number | null; rejected_reward: number | null }
interface Pairs { task: string; tasks: string[]; pairs: Pair[]; prompts: number; settings: Record<string, unknown> }

const TYPES = ["sigmoid", "ipo", "hinge"];
const SIDES = ["chosen", "rejected"] as const;
const f4 = (v: number) => (Math.abs(v) >= 1e4 || (v !== 0 && Math.abs(v) < 1e-3) ? v.toExponential(2) : v.toFixed(4));
const pct = (v: number) => `${(100 * v).toFixed(1)}%`;
const TYPED: Pair = {
  prompt: "Tom has 7 apples. Ann gives Tom 5 more. How many apples does Tom have now?\nWrite the calculation on one line, then 'The answer is N.'",
  chosen: "7 + 5 = 12. The answer is 12.", rejected: "7 + 5 = 13. The answer is 13.", chosen_reward: null, rejected_reward: null,
};

// A stat row whose raw number is in data-value (the tests compare it with the API's).
function num(k: string, v: number, key: string, show = f4): HTMLElement {
  return el("div", { class: "stat" }, el("span", { class: "k" }, k), el("span", { class: "v", "data-stat": key, "data-value": String(v) }, show(v)));
}

export function dpoPage(root: HTMLElement): void {
  const { root: head, setSources } = pageHeader("dpo", "DPO: direct preference optimisation");
  const models = modelSelect("dpo-model", { causalOnly: true });
  const task = el("select", { "data-testid": "dpo-task" }, el("option", { value: "arithmetic-easy-prefs" }, "arithmetic-easy-prefs")) as HTMLSelectElement;
  const pick = el("select", { "data-testid": "dpo-pair-pick" }, el("option", { value: "typed" }, "typed (edit below)")) as HTMLSelectElement;
  const beta = logSlider(0.01, 10, 0.1, "dpo-beta");
  const area = (id: string, rows: number) => el("textarea", { rows, "data-testid": id }) as HTMLTextAreaElement;
  const prompt = area("dpo-prompt", 3), chosen = area("dpo-chosen", 2), rejected = area("dpo-rejected", 2);
  const pairInfo = el("p", { class: "muted small", "data-testid": "dpo-pair-info" });
  const err = el("div", { class: "error", hidden: true, "data-testid": "dpo-error" });
  const same = el("div", { class: "dpo-warn", hidden: true, "data-testid": "dpo-same" });
  const sidesBox = el("div", { "data-testid": "dpo-sides", class: "split" });
  const legend = el("div", { class: "dpo-legend" });
  const lossBox = el("div", { class: "stats", "data-testid": "dpo-losses" });
  const curveBox = el("div", {});
  let view: PairView | null = null;
  let pairs: Pair[] = [];
  let seq = 0, lossSeq = 0;

  function fill(p: Pair): void {
    prompt.value = p.prompt; chosen.value = p.chosen; rejected.value = p.rejected;
    pairInfo.textContent = p.chosen_reward == null ? "A pair you typed: no verifier scores."
      : `Sampled from SmolLM2 and ranked by the task's verifier: chosen scored ${p.chosen_reward}, rejected ${p.rejected_reward}.`;
  }

  function drawSides(v: PairView): void {
    // One symmetric colour scale for both sides: red, π makes the token less likely than
    // π_ref does; green, likelier.
    const m = Math.max(1e-6, ...SIDES.flatMap((s) => v[s].logratio.map(Math.abs)));
    const color = d3.scaleLinear<string>().domain([-m, 0, m]).range(["#f87171", "#ffffff", "#4ade80"]);
    legend.replaceChildren(el("span", { class: "small" }, `log π/π_ref: ${f4(-m)}`),
      ...[-1, -0.5, 0, 0.5, 1].map((t) => el("span", { style: `display:inline-block;width:26px;height:12px;border:1px solid #e5e7eb;background:${color(t * m)}` })),
      el("span", { class: "small" }, `${f4(m)} (hover a token for log π and log π_ref)`));
    sidesBox.replaceChildren(...SIDES.map((side) => {
      const s = v[side];
      const toks = s.pieces.map((p, i) => {
        const span = el("span", { class: "dpo-tok", "data-testid": "dpo-tok", "data-side": side, "data-i": i, "data-lr": String(s.logratio[i]),
          title: `${JSON.stringify(p)} · log π ${f4(s.logp[i])} · log π_ref ${f4(s.logp_ref[i])} · log-ratio ${f4(s.logratio[i])}` }, p);
        span.style.background = color(s.logratio[i]);
        return span;
      });
      return el("div", { class: "dpo-side", style: "flex:1;min-width:420px" }, el("h3", {}, side === "chosen" ? "Chosen ✓" : "Rejected ✗"),
        el("div", { class: "dpo-tokens", "data-testid": `dpo-tokens-${side}` }, ...toks),
        el("div", { class: "stats", "data-testid": `dpo-sums-${side}` },
          num("completion tokens (incl. end of turn)", s.n_tokens, "n", String), num("log π (sum)", s.seq_logp, "logp"),
          num("log π_ref (sum)", s.seq_logp_ref, "logp_ref"), num("log π − log π_ref (the loss's)", s.seq_logratio, "logratio")));
    }));
  }

  function drawLoss(o: LossOut): void {
    const s = o.losses.sigmoid;
    lossBox.dataset.beta = String(o.beta);
    lossBox.replaceChildren(num("β", o.beta, "beta", (v) => v.toPrecision(3)),
      num("implicit reward, chosen β·(log π − log π_ref)", s["rewards/chosen"], "reward-chosen"),
      num("implicit reward, rejected", s["rewards/rejected"], "reward-rejected"),
      num("margin", s["rewards/margin"], "margin"), num("z = Δ log π − Δ log π_ref", o.logits, "z"),
      num("z per token (IPO's)", o.ipo_logits, "z-ipo"),
      ...TYPES.map((k) => num(`loss, ${k}`, o.losses[k].loss, `loss-${k}`)));
    const xs = o.curve.beta.map(Math.log10);
    curveBox.replaceChildren(lineChart(TYPES.map((k) => ({ name: k, cls: k, values: xs.map((x, i) => [x, o.curve[k][i]] as [number, number]) })),
      { w: 460, logY: true, xLabel: "log10 β", yLabel: "loss on this pair", marker: Math.log10(o.beta), testid: "dpo-curve" }));
    setSources(o.sources);
  }

  async function compute(): Promise<void> {
    const mine = ++seq;
    try {
      const v = await postJSON<PairView>("/api/dpo/pair", { model: models.el.value, prompt: prompt.value, chosen: chosen.value, rejected: rejected.value, beta: beta.get() });
      if (mine !== seq) return;
      err.hidden = true;
      view = v;
      same.hidden = !v.same_model;
      same.textContent = "π = π_ref: this is the untrained policy, so every log-ratio is 0, both implicit rewards are 0 and the sigmoid loss is log 2 ≈ 0.693. Train a DPO run below (or pick one of your runs) as the policy.";
      drawSides(v);
      drawLoss(v);
      sidesBox.dataset.rev = String(mine);
    } catch (e) { if (mine === seq) showError(err, e); }
  }
  const again = debounce(compute, 400);

  // β only rescales: the sums stay, the library recomputes the losses.
  const relos = debounce(async () => {
    if (!view) return compute();
    const mine = ++lossSeq;
    const v = view;
    try {
      const o = await postJSON<LossOut>("/api/dpo/loss", { logp_chosen: v.chosen.seq_logp, logp_rejected: v.rejected.seq_logp,
        ref_logp_chosen: v.chosen.seq_logp_ref, ref_logp_rejected: v.rejected.seq_logp_ref, len_chosen: v.chosen.n_tokens, len_rejected: v.rejected.n_tokens, beta: beta.get() });
      if (mine === lossSeq) drawLoss(o);
    } catch (e) { showError(err, e); }
  }, 120);
  beta.input.addEventListener("input", relos);
  for (const a of [prompt, chosen, rejected]) a.addEventListener("input", () => { pick.value = "typed"; again(); });
  pick.addEventListener("change", () => { if (pick.value !== "typed") { fill(pairs[Number(pick.value)]); compute(); } });
  models.el.addEventListener("change", compute);

  async function loadPairs(): Promise<void> {
    pairInfo.textContent = "SmolLM2 is sampling this task's pairs (the first time only; then they are cached)…";
    try {
      const p = await getJSON<Pairs>(`/api/dpo/pairs?task=${encodeURIComponent(task.value)}`);
      pairs = p.pairs;
      settings = p.settings;
      nPrompts = p.prompts;
      if (task.options.length < p.tasks.length) task.replaceChildren(...p.tasks.map((t) => el("option", { value: t }, t)));
      task.value = p.task;
      pick.replaceChildren(...p.pairs.map((q, i) => el("option", { value: String(i) }, `pair ${i + 1}: ${q.prompt.slice(0, 50)}…`)), el("option", { value: "typed" }, "typed (edit below)"));
      pick.dataset.n = String(p.pairs.length);
      pick.value = "0";
      fill(p.pairs[0]);
      compute();
    } catch (e) { showError(err, e); }
  }
  task.addEventListener("change", loadPairs);

  // ---- live run
  let settings: Record<string, unknown> = {};
  let nPrompts = 16;
  const lossType = el("select", { "data-testid": "dpo-loss-type" }, ...TYPES.map((k) => el("option", { value: k }, k))) as HTMLSelectElement;
  const numIn = (id: string, v: number, w = "5em") => el("input", { type: "number", value: v, min: 0, style: `width:${w}`, "data-testid": id }) as HTMLInputElement;
  const steps = numIn("dpo-steps", 30), every = numIn("dpo-eval-every", 5), held = numIn("dpo-heldout", 8);
  const lr = el("input", { type: "text", value: "1e-4", size: 6, "data-testid": "dpo-lr" }) as HTMLInputElement;
  const rewardsBox = el("div", {}), accBox = el("div", {});
  const points = el("p", { class: "muted small", "data-testid": "dpo-points" });
  const collapse = el("div", { class: "dpo-warn", hidden: true, "data-testid": "dpo-collapse" });
  let recs: Rec[] = [];
  const series = (key: string, name: string, cls: string) => ({ name, cls, values: recs.filter((r) => r[key] != null).map((r) => [r.step, r[key]] as [number, number]) });
  const drawLive = debounce(() => {
    rewardsBox.replaceChildren(lineChart([series("rewards/chosen", "rewards/chosen", "chosen"), series("rewards/rejected", "rewards/rejected", "rejected"), series("rewards/margin", "margin", "margin")],
      { w: 460, xLabel: "step", yLabel: "implicit reward (training batch)", testid: "dpo-live-rewards" }));
    const held = series("heldout/accuracy", "held-out task accuracy", "heldout");
    accBox.replaceChildren(lineChart([series("rewards/accuracy", "reward accuracy (batch)", "train"), series("val/rewards/accuracy", "reward accuracy (held-out pairs)", "val"), held],
      { w: 460, xLabel: "step", yLabel: "accuracy", yDomain: [0, 1], testid: "dpo-live-acc" }));
    points.dataset.n = String(recs.length);
    points.dataset.heldout = String(held.values.length);
    points.textContent = `${recs.length} metric records; ${held.values.length} held-out accuracy points` + (held.values.length ? ` (${held.values.map((p) => `step ${p[0]}: ${pct(p[1])}`).join(", ")})` : "");
    // Say so when held-out accuracy has fallen to half its first value or less (≥ 10 points).
    const a = held.values;
    const fell = a.length >= 2 && a[a.length - 1][1] <= a[0][1] / 2 && a[0][1] - a[a.length - 1][1] >= 0.1;
    collapse.hidden = !fell;
    if (fell) collapse.textContent = `Held-out task accuracy collapsed: ${pct(a[0][1])} at step ${a[0][0]} → ${pct(a[a.length - 1][1])} at step ${a[a.length - 1][0]}, while the preference metrics may still be rising. This is BENCHMARKS.md's finding ("DPO on the arithmetic pairs: the preference metrics rise, held-out accuracy collapses").`;
  }, 100);
  const panel = runPanel("dpo", () => ({
    task: task.value, max_examples: nPrompts, val_examples: 4, ...settings, beta: beta.get(), loss_type_dpo: lossType.value,
    max_steps: Number(steps.value), eval_every: Number(every.value), heldout_prompts: Number(held.value), batch_size: 2, lr: Number(lr.value),
  }), {
    clear: () => { recs = []; drawLive(); },
    metrics: (r) => { recs.push(r); drawLive(); },
    sample: () => undefined,
    status: (r) => { if (r.status === "finished") models.refresh(); },
  }, "dpo-run");

  root.replaceChildren(head,
    el("section", { class: "controls" }, labeled("policy π (π_ref: its base, adapters disabled)", models.el), labeled("preference task", task), labeled("pair", pick),
      labeled("β", el("span", {}, beta.input, beta.out))),
    el("div", { class: "dpo-pair" }, labeled("prompt", prompt), labeled("chosen ✓", chosen), labeled("rejected ✗", rejected)), pairInfo, err, same,
    el("h2", {}, "log π/π_ref per token: what the loss sums"), legend, sidesBox,
    el("h2", {}, "Implicit rewards and the loss"),
    el("div", { class: "split" }, lossBox, el("div", {}, curveBox, el("p", { class: "muted small", style: "max-width:460px" },
      "sigmoid: −log σ(β·z). IPO: (z/len − 1/(2β))², each side's log-ratio divided by its length (as TRL). hinge: max(0, 1 − β·z). β scales the implicit rewards; it does not change π or the log-ratios."))),
    el("h2", {}, "Train it live"),
    el("p", { class: "muted small", style: "max-width:1100px" },
      "A DPO run on the task's pairs (LoRA on SmolLM2; π_ref is the base with the adapter disabled). At each evaluation the run answers held-out problems of the task greedily and the task's verifier checks them. Watch both: in this project's own measurement (BENCHMARKS.md, \"DPO on the arithmetic pairs\"), 120 steps raised the held-out pairs' reward accuracy to 0.75 while greedy accuracy on held-out problems fell from 22.0% to 2.2%: DPO learnt the chosen answers' style (\"The answer is N.\"), not the arithmetic."),
    el("section", { class: "controls" }, labeled("loss", lossType), labeled("steps", steps), labeled("eval every", every), labeled("held-out problems", held), labeled("lr", lr)),
    panel.root, collapse, points, el("div", { class: "split" }, rewardsBox, accBox));
  fill(TYPED);
  compute();
  loadPairs();
}

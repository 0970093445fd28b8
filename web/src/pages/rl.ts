// RL with verifiable rewards on one prompt: a GRPO group (G completions, each with its
// verifier's reward and verdict, the group's mean/std and each advantage under a scaling),
// one real GRPO update (per-token advantage, weight, ratio and clip), PPO on the same
// completions (rlppo.ts) and a live GRPO run (rllive.ts). Every number comes from the API.
import * as d3 from "d3";
import { postJSON } from "../api";
import { modelSelect } from "../models";
import { el, labeled, pageHeader, showError } from "../ui";
import { stat } from "./fcharts";
import "./rl.css";
import { rlLive } from "./rllive";
import { ppoSection } from "./rlppo";
import { num, type Comp, type Group } from "./rlui";

interface Step {
  tokens: string[][]; advantages: number[]; weight: number[][]; seq_weight: number[]; ratio: number[][]; seq_ratio: number[] | null;
  clipped_low: number[][]; clipped_high: number[][]; kl: number[][]; loss_before: number; loss_after: number;
  clip_ratio: number; clip_ratio_low: number; clip_ratio_high: number; kl_mean: number; sources: string[];
}

const TASKS = ["arithmetic-easy", "arithmetic", "trivia", "humaneval"];
const HOSTILE = "    while True:\n        pass\n";
const f3 = (x: number) => (Math.abs(x) < 1e-3 && x !== 0 ? x.toExponential(1) : x.toFixed(3));
// Red: more likely after the step, blue: less; the darkest ends are left out so text stays legible.
const ratioColour = d3.scaleDiverging((t: number) => d3.interpolateRdBu(0.15 + 0.7 * t)).domain([1.5, 1, 0.5]).clamp(true);

function sel(testid: string, values: string[], value: string): HTMLSelectElement {
  const s = el("select", { "data-testid": testid }, ...values.map((v) => el("option", { value: v }, v))) as HTMLSelectElement;
  s.value = value;
  return s;
}

// A verdict in the verifier's own words: the sandbox's status for code, else right/wrong.
function verdict(c: Comp): HTMLElement {
  const code = c.checks.find((k) => k.type === "code");
  const word = code ? code.status ?? "?" : c.checks.map((k) => (k.score >= 1 ? (k.type === "format" ? "format ok" : "correct") : (k.type === "format" ? "no format" : "incorrect"))).join(", ");
  const cls = code ? code.status ?? "" : c.reward > 0 ? "correct" : "incorrect";
  const box = el("div", {}, el("span", { class: `rl-verdict ${cls}`, "data-testid": "rl-verdict" }, word));
  if (code) {
    const out = (code.stderr || code.stdout || "").trim().split("\n").slice(-4).join("\n");
    box.append(el("div", { class: "muted small" }, `sandbox ${code.seconds?.toFixed(2)} s`));
    if (out) box.append(el("div", { class: "rl-out", "data-testid": "rl-sandbox-out" }, out));
  }
  return box;
}

export function rlPage(root: HTMLElement): void {
  const { root: head, setSources } = pageHeader("rl", "RL: GRPO and PPO with verifiable rewards");
  const task = sel("rl-task", TASKS, "arithmetic-easy");
  const index = num("rl-index", 0, 0, 199, 1);
  const model = modelSelect("rl-model", { causalOnly: true });
  const reward = sel("rl-reward-kind", ["verifier", "format", "verifier+format"], "verifier");
  const n = num("rl-n", 6, 2, 8, 1, "4em");
  const temp = num("rl-temp", 0.8, 0.1, 2, 0.1, "4em");
  const maxNew = num("rl-max-new", 48, 8, 96, 8, "4em");
  const seed = num("rl-seed", 0, 0, 1e9, 1, "6em");
  const sampleBtn = el("button", { "data-testid": "rl-sample" }, "sample a group");
  const rescore = el("button", { "data-testid": "rl-rescore", title: "score the texts as edited above" }, "re-score my edits");
  const hostile = el("button", { "data-testid": "rl-hostile", title: "replace completion 1 by an infinite loop (humaneval)" }, "try a hostile completion");
  const scale = sel("rl-scale", ["group", "batch", "none"], "group");
  const err = el("div", { class: "error", hidden: true, "data-testid": "rl-error" });
  const busy = el("span", { class: "muted small", "data-testid": "rl-busy" });
  const promptBox = el("pre", { class: "answer", "data-testid": "rl-prompt" });
  const stats = el("div", { class: "stats", "data-testid": "rl-stats" });
  const table = el("table", { class: "rl-table", "data-testid": "rl-group" });
  const note = el("p", { class: "muted small", "data-testid": "rl-scale-note" });

  // GRPO update controls
  const lossType = sel("rl-loss-type", ["dapo", "grpo", "bnpo", "dr_grpo"], "dapo");
  const level = sel("rl-level", ["token", "sequence"], "token");
  const epsLow = num("rl-eps-low", 0.2, 0.01, 0.9, 0.01);
  const epsHigh = num("rl-eps-high", 0.28, 0.01, 5, 0.01);
  const beta = num("rl-beta", 0, 0, 1, 0.01);
  const lr = num("rl-lr", 5e-4, 1e-5, 0.05, 1e-4, "6em");
  const stepBtn = el("button", { "data-testid": "rl-step" }, "one GRPO update");
  const stepErr = el("div", { class: "error", hidden: true, "data-testid": "rl-step-error" });
  const stepStats = el("div", { class: "stats", "data-testid": "rl-step-stats" });
  const stepView = el("div", { "data-testid": "rl-step-view" });

  let group: Group | null = null;

  const body = () => ({ task: task.value, index: Number(index.value), reward: reward.value, model: model.el.value,
    temperature: Number(temp.value), max_new_tokens: Number(maxNew.value) });
  const texts = () => [...table.querySelectorAll<HTMLTextAreaElement>("textarea")].map((t) => t.value);

  function drawGroup(): void {
    if (!group) return;
    const a = group.advantages[scale.value];
    promptBox.textContent = group.prompt;
    stats.replaceChildren(stat("G (completions)", String(group.completions.length), "g"), stat("group mean reward", f3(a.mean[0]), "mean"),
      stat("group std", f3(a.std[0]), "std"), stat(`advantages (${scale.value}) sum`, f3(a.sum), "sum"),
      stat("zero-signal group", a.zero_signal ? "yes: every advantage is 0" : "no", "zero"));
    note.textContent = scale.value === "batch"
      ? `batch scaling divides by the std of the whole batch (${f3(a.batch_std)}); with one prompt shown it equals the group's, in training the batch holds several prompts' groups`
      : scale.value === "none" ? "no scaling: the advantage is the reward minus the group mean (Dr. GRPO)" : "group scaling: (reward − group mean) / (group std + 1e-4)";
    table.replaceChildren(el("tr", {}, el("th", {}, "#"), el("th", {}, "completion (editable)"), el("th", {}, "reward"), el("th", {}, "verdict"), el("th", {}, `advantage (${scale.value})`)),
      ...group.completions.map((c, i) => {
        const ta = el("textarea", { rows: 3, "data-testid": "rl-text" }) as HTMLTextAreaElement;
        ta.value = c.text;
        return el("tr", { "data-testid": "rl-completion" }, el("td", {}, String(i + 1)), el("td", {}, ta),
          el("td", { class: "rl-num", "data-testid": "rl-reward" }, f3(c.reward)), el("td", {}, verdict(c)),
          el("td", { class: "rl-num", "data-testid": "rl-adv" }, f3(a.advantages[i])));
      }));
    setSources(group.sources);
  }

  async function fetchGroup(completions?: { text: string; ids?: number[] }[]): Promise<void> {
    err.hidden = true;
    busy.textContent = completions ? "scoring…" : "sampling and scoring…";
    try {
      group = await postJSON<Group>("/api/rl/group", { ...body(), n: Number(n.value), seed: Number(seed.value), completions });
      drawGroup();
      stepView.replaceChildren();
      stepStats.replaceChildren();
      ppo.clear();
    } catch (e) { showError(err, e); }
    busy.textContent = "";
  }

  sampleBtn.addEventListener("click", () => fetchGroup());
  rescore.addEventListener("click", () => {
    if (!group) return;
    // An unchanged text keeps its sampled tokens; an edited one is tokenized by the server.
    const t = texts();
    fetchGroup(group.completions.map((c, i) => (t[i] === c.text ? { text: c.text, ids: c.ids } : { text: t[i] })));
  });
  hostile.addEventListener("click", () => {
    const areas = table.querySelectorAll<HTMLTextAreaElement>("textarea");
    if (task.value !== "humaneval" || !areas.length) { showError(err, "sample a humaneval group first: the hostile completion is code"); return; }
    areas[0].value = HOSTILE;
    rescore.click();
  });
  scale.addEventListener("change", drawGroup);

  function drawStep(s: Step): void {
    stepStats.replaceChildren(stat("loss before the step", f3(s.loss_before), "loss_before"), stat("loss after (same rollout)", f3(s.loss_after), "loss_after"),
      stat("clipped tokens after", `${(100 * s.clip_ratio).toFixed(1)}% (low ${(100 * s.clip_ratio_low).toFixed(1)}%, high ${(100 * s.clip_ratio_high).toFixed(1)}%)`, "clip"),
      stat("KL(π_new ‖ π_ref), mean k3", f3(s.kl_mean), "kl"));
    const legend = el("p", { class: "muted small" }, `Colour: the ratio π_new/π_old after the update (red > 1: more likely, blue < 1); underlined: clipped (the clip took over: no gradient from that token on a second pass). ` +
      (s.seq_ratio ? "GSPO: one ratio per completion, the geometric mean of its tokens'. " : "") + "Hover a token for its advantage, its weight in the loss, ratio and KL.");
    stepView.replaceChildren(legend, ...s.tokens.map((toks, i) => {
      const line = el("div", { class: "rl-toks", "data-testid": "rl-step-row" }, el("b", {}, `#${i + 1}  A = ${f3(s.advantages[i])}  weight ${f3(s.seq_weight[i])}` + (s.seq_ratio ? `  s = ${f3(s.seq_ratio[i])}` : "") + "   "));
      toks.forEach((t, j) => {
        const clip = s.clipped_low[i][j] || s.clipped_high[i][j];
        const span = el("span", { class: `rl-tok${clip ? " clip" : ""}`, "data-testid": "rl-tok", "data-ratio": String(s.ratio[i][j]), "data-clipped": clip ? "1" : "0",
          style: `background:${ratioColour(s.ratio[i][j])}`, title: `${JSON.stringify(t)}\nadvantage ${f3(s.advantages[i])}\nweight in the loss ${s.weight[i][j].toExponential(2)}\nratio ${s.ratio[i][j].toFixed(4)}${clip ? (s.clipped_low[i][j] ? " (clipped low)" : " (clipped high)") : ""}\nk3 KL ${f3(s.kl[i][j])}` }, t);
        line.append(span);
      });
      return line;
    }));
    setSources(s.sources);
  }

  stepBtn.addEventListener("click", async () => {
    if (!group) { showError(stepErr, "sample a group first"); return; }
    stepErr.hidden = true;
    busy.textContent = "one optimizer step on a LoRA copy…";
    try {
      drawStep(await postJSON<Step>("/api/rl/grpo_step", { ...body(), completions: group.completions.map((c) => ({ text: c.text, ids: c.ids })),
        rewards: group.rewards, scale_rewards: scale.value, loss_type: lossType.value, importance_sampling_level: level.value,
        epsilon: Number(epsLow.value), epsilon_high: Number(epsHigh.value), beta: Number(beta.value), lr: Number(lr.value), seed: Number(seed.value) }));
    } catch (e) { showError(stepErr, e); }
    busy.textContent = "";
  });

  const ppo = ppoSection(() => group, body, () => Number(seed.value), setSources);
  root.replaceChildren(head,
    el("section", { class: "controls" }, labeled("task", task), labeled("prompt #", index), labeled("model", model.el), labeled("reward", reward),
      labeled("G", n), labeled("temperature", temp), labeled("max new tokens", maxNew), labeled("seed", seed)),
    el("div", { class: "row" }, sampleBtn, rescore, hostile, busy), err,
    el("h2", {}, "The prompt and its group"), promptBox,
    el("div", { class: "row" }, labeled("advantage scaling", scale)), note, stats, table,
    el("h2", {}, "One GRPO update on this group"),
    el("p", { class: "muted small" }, "A real AdamW step of the training loss (llmlab/align/grpo.py) on a LoRA copy of the model (q, v; r 8); the model itself is not changed. π_old is the model at sampling time."),
    el("section", { class: "controls" }, labeled("loss aggregation", lossType), labeled("importance ratio", level), labeled("ε_low", epsLow), labeled("ε_high", epsHigh), labeled("β (KL)", beta), labeled("lr", lr)),
    el("div", { class: "row" }, stepBtn), stepErr, stepStats, stepView,
    ppo.root, rlLive());
}

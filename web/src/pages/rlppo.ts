// PPO on the RL page's group: the value head's estimate per token, the per-token reward
// (KL penalty, plus the score at the last token), GAE advantages and returns, then what
// PPO's epochs (real optimizer steps on a LoRA copy) change. Numbers from /api/rl/ppo.
import { postJSON } from "../api";
import { el, labeled, showError } from "../ui";
import { lineChart, stat } from "./fcharts";
import { num, type Group } from "./rlui";

interface Epoch { loss: number; policy_loss: number; value_loss: number; clipfrac: number; vf_clipfrac: number; approxkl: number }
interface PPO {
  tokens: string[][]; scores: number[]; values: number[][]; kl: number[][]; rewards: number[][]; kl_penalty: number[]; advantages: number[][];
  returns: number[][]; epochs: Epoch[]; values_after: number[][]; kl_after: number[][]; ratio_after: number[][]; sources: string[];
}

const f3 = (x: number) => x.toFixed(3);
const pts = (xs: number[]): [number, number][] => xs.map((v, t) => [t, v]);

export function ppoSection(group: () => Group | null, body: () => Record<string, unknown>, seed: () => number, setSources: (k: string[]) => void): { root: HTMLElement; clear: () => void } {
  const klCoef = num("ppo-kl-coef", 0.05, 0, 10, 0.01);
  const gamma = num("ppo-gamma", 1, 0, 1, 0.01);
  const lam = num("ppo-lam", 0.95, 0, 1, 0.01);
  const epochs = num("ppo-epochs", 2, 1, 4, 1, "4em");
  const lr = num("ppo-lr", 5e-4, 1e-5, 0.05, 1e-4, "6em");
  const go = el("button", { "data-testid": "ppo-run" }, "PPO on this group");
  const which = el("select", { "data-testid": "ppo-which" }) as HTMLSelectElement;
  const err = el("div", { class: "error", hidden: true, "data-testid": "ppo-error" });
  const busy = el("span", { class: "muted small" });
  const stats = el("div", { class: "stats", "data-testid": "ppo-stats" });
  const charts = el("div", { class: "rl-charts", "data-testid": "ppo-charts" });
  const toks = el("div", { class: "rl-toks", "data-testid": "ppo-tokens" });
  let res: PPO | null = null;

  function draw(): void {
    if (!res) return;
    const i = Number(which.value || 0);
    const n = res.tokens[i].length;
    stats.replaceChildren(stat("score (verifier)", f3(res.scores[i]), "score"),
      stat("KL penalty (−kl_coef·ΣKL)", f3(res.kl_penalty[i]), "kl_pen"),
      ...res.epochs.map((e, k) => stat(`epoch ${k + 1}: policy / value loss, clipfrac`, `${f3(e.policy_loss)} / ${f3(e.value_loss)}, ${(100 * e.clipfrac).toFixed(0)}%`, `epoch${k}`)));
    charts.replaceChildren(
      lineChart([{ name: "V at the rollout (fresh head)", values: pts(res.values[i]), cls: "rl-e" },
        { name: `V after ${res.epochs.length} epoch(s)`, values: pts(res.values_after[i]), cls: "rl-a" },
        { name: "return (GAE + V)", values: pts(res.returns[i]), cls: "rl-b" }], { w: 460, xLabel: `completion token (0–${n - 1})`, yLabel: "value", testid: "ppo-values" }),
      lineChart([{ name: "GAE advantage (whitened)", values: pts(res.advantages[i]), cls: "rl-c" },
        { name: "reward per token", values: pts(res.rewards[i]), cls: "rl-d" }], { w: 460, xLabel: `completion token (0–${n - 1})`, yLabel: "advantage / reward", testid: "ppo-adv" }),
      lineChart([{ name: "KL at the rollout (π = π_ref)", values: pts(res.kl[i]), cls: "rl-e" },
        { name: "KL after the epochs", values: pts(res.kl_after[i]), cls: "rl-a" }], { w: 460, xLabel: `completion token (0–${n - 1})`, yLabel: "KL estimate (per token)", testid: "ppo-kl" }));
    toks.replaceChildren(...res.tokens[i].map((t, j) => el("span", { class: "rl-tok", "data-testid": "ppo-tok",
      title: `${JSON.stringify(t)}\nV ${f3(res!.values[i][j])} → ${f3(res!.values_after[i][j])}\nreward ${f3(res!.rewards[i][j])} (KL ${f3(res!.kl[i][j])})\nGAE advantage ${f3(res!.advantages[i][j])}\nreturn ${f3(res!.returns[i][j])}\nratio after ${res!.ratio_after[i][j].toFixed(4)}` }, t)));
  }

  go.addEventListener("click", async () => {
    const g = group();
    if (!g) { showError(err, "sample a group first"); return; }
    err.hidden = true;
    busy.textContent = "PPO epochs on a LoRA copy…";
    try {
      res = await postJSON<PPO>("/api/rl/ppo", { ...body(), completions: g.completions.map((c) => ({ text: c.text, ids: c.ids })), rewards: g.rewards,
        kl_coef: Number(klCoef.value), gamma: Number(gamma.value), lam: Number(lam.value), ppo_epochs: Number(epochs.value), lr: Number(lr.value), seed: seed() });
      which.replaceChildren(...res.tokens.map((_, i) => el("option", { value: String(i) }, `completion ${i + 1} (score ${f3(res!.scores[i])})`)));
      draw();
      setSources(res.sources);
    } catch (e) { showError(err, e); }
    busy.textContent = "";
  });
  which.addEventListener("change", draw);

  const root = el("section", {},
    el("h2", {}, "PPO on the same completions"),
    el("p", { class: "muted small" }, "llmlab ppo starts with a value head of zeros on the policy, and the policy equal to the reference, so at the rollout V = 0 and KL = 0: GAE spreads the score at the last token back over the tokens. The epochs then train the value head and the policy (a LoRA copy); the KL shown after them is what the next rollout's penalty would be."),
    el("section", { class: "controls" }, labeled("KL coef", klCoef), labeled("γ", gamma), labeled("λ (GAE)", lam), labeled("PPO epochs", epochs), labeled("lr", lr)),
    el("div", { class: "row" }, go, labeled("completion", which), busy), err, stats, charts, toks);
  return { root, clear: () => { res = null; charts.replaceChildren(); toks.replaceChildren(); stats.replaceChildren(); which.replaceChildren(); } };
}

// Preferences and reward models: SmolLM2 samples answers to one task prompt, the verifier
// ranks them and each pairing mode forms its pair (the library's make_prefs steps); a reward
// run scores a pair with Bradley–Terry; and a reward model trains live (prefs_live.ts).
import { getJSON, postJSON } from "../api";
import { el, labeled, pageHeader, showError } from "../ui";
import { stat } from "./fcharts";
import "./prefs.css";
import { liveSection } from "./prefs_live";

interface SampleOut { text: string; reward: number; hinted: boolean; chars: number; empty: boolean }
interface Pair { prompt: string; chosen: string; rejected: string; chosen_reward: number; rejected_reward: number }
interface Mode { pair: Pair | null; why?: string; chosen?: number; rejected?: number | null; length_diff?: number; candidates?: { chosen: number; rejected: number; length_diff: number }[] }
interface View { task: string; index: number; prompt: string; samples: SampleOut[]; pairings: Record<string, Mode>; sources: string[] }
interface Score { r_chosen: number; r_rejected: number; diff: number; p_chosen: number; loss: number; chosen_tokens: number; rejected_tokens: number; seq_len: number; sources: string[] }
export interface RewardRun { id: string; label: string; status: string; step: number; checkpoints: number[] }
export interface Info { tasks: string[]; pairings: string[]; reward_models: RewardRun[] }

const MODE_TEXT: Record<string, string> = {
  extremes: "the first best-rewarded sample against the first worst-rewarded one",
  "length-matched": "among all best × worst combinations, the two closest in length (characters)",
  perturbed: "a right sample against the same text with its answer changed: same words, same length",
};

export function prefsPage(root: HTMLElement): void {
  const { root: head, setSources } = pageHeader("prefs", "Preferences and reward models");
  const sources: Record<string, string[]> = {};
  const showSources = () => setSources([...(sources.sample ?? []), ...(sources.score ?? [])]);

  // 1. Sampling: k answers to one prompt, ranked by the verifier, paired by each mode.
  const task = el("select", { "data-testid": "prefs-task" }) as HTMLSelectElement;
  const index = el("input", { type: "number", min: 0, max: 4999, value: 2, style: "width:5em", "data-testid": "prefs-index" }) as HTMLInputElement;
  const k = el("input", { type: "number", min: 2, max: 8, value: 4, style: "width:4em", "data-testid": "prefs-k" }) as HTMLInputElement;
  const temp = el("input", { type: "number", min: 0.1, max: 2, step: 0.1, value: 0.7, style: "width:4em" }) as HTMLInputElement;
  const seed = el("input", { type: "number", min: 0, value: 0, style: "width:5em", "data-testid": "prefs-seed" }) as HTMLInputElement;
  const hint = el("input", { type: "checkbox", checked: true, "data-testid": "prefs-hint" }) as HTMLInputElement;
  const go = el("button", { "data-testid": "prefs-sample" }, "sample ▸");
  const busy = el("span", { class: "muted small", "data-testid": "prefs-busy" });
  const err = el("div", { class: "error", hidden: true, "data-testid": "prefs-error" });
  const promptBox = el("div", { class: "answer", "data-testid": "prefs-prompt" });
  const modes = el("div", { class: "pf-modes", role: "radiogroup" });
  const why = el("div", { class: "pf-why", "data-testid": "prefs-why" });
  const cards = el("div", { class: "pf-samples", "data-testid": "prefs-samples" });
  const use = el("button", { "data-testid": "prefs-use" }, "use this pair below ▾");
  let view: View | null = null;
  let mode = "extremes";

  function drawMode(): void {
    if (!view) return;
    const m = view.pairings[mode];
    for (const r of modes.querySelectorAll("input")) (r as HTMLInputElement).checked = r.getAttribute("value") === mode;
    cards.replaceChildren(...view.samples.map((s, i) => {
      const role = m.pair && m.chosen === i ? "chosen" : m.pair && m.rejected === i ? "rejected" : "";
      return el("div", { class: `pf-sample ${role}`, "data-testid": `prefs-card-${i}`, "data-role": role },
        el("div", { class: "pf-head" }, el("span", {}, `#${i}`), el("span", {}, `reward ${s.reward}`),
          el("span", {}, `${s.chars} chars`), s.hinted ? el("span", { title: "this sample's prompt carried the reference answer" }, "saw the hint") : null,
          role ? el("span", { class: "pf-role" }, role === "chosen" ? "✓ chosen" : "✗ rejected") : null),
        el("div", { class: "pf-text" }, s.empty ? "(empty: dropped)" : s.text));
    }));
    const lines: (HTMLElement | string)[] = [el("b", {}, `${mode}: `), MODE_TEXT[mode] ?? ""];
    if (!m.pair) lines.push(el("div", { "data-testid": "prefs-nopair" }, `No pair: ${m.why}`));
    else {
      const rej = m.rejected == null ? "its perturbed copy (shown below)" : `#${m.rejected}`;
      lines.push(el("div", { "data-testid": "prefs-pairline", "data-chosen": String(m.chosen), "data-rejected": String(m.rejected ?? "") },
        `Chosen #${m.chosen} (reward ${m.pair.chosen_reward}) vs rejected ${rej} (reward ${m.pair.rejected_reward}); chosen − rejected length: `,
        el("b", { "data-testid": "prefs-lendiff" }, `${m.length_diff} chars`)));
      if (m.candidates) lines.push(el("div", { class: "small muted" }, "candidates: " + m.candidates.map((c) => `#${c.chosen} vs #${c.rejected}: ${c.length_diff}`).join(" · ")));
      if (m.rejected == null) lines.push(el("div", { class: "pf-text", "data-testid": "prefs-perturbed" }, m.pair.rejected));
    }
    why.replaceChildren(...lines);
    use.toggleAttribute("disabled", !m.pair);
  }

  async function sample(): Promise<void> {
    err.hidden = true;
    busy.textContent = "SmolLM2 is sampling…";
    try {
      view = await postJSON<View>("/api/prefs/sample", { task: task.value, index: Number(index.value), samples: Number(k.value), temperature: Number(temp.value), seed: Number(seed.value), hint: hint.checked });
      promptBox.textContent = view.prompt;
      modes.replaceChildren(...Object.keys(view.pairings).map((name) => {
        const r = el("input", { type: "radio", name: "pf-mode", value: name, "data-testid": `prefs-mode-${name}` }) as HTMLInputElement;
        r.addEventListener("change", () => { mode = name; drawMode(); });
        return el("label", {}, r, ` ${name}`);
      }));
      drawMode();
      sources.sample = view.sources;
      showSources();
      if (!pPrompt.value) fill();
    } catch (e) { showError(err, e); } finally { busy.textContent = ""; }
  }
  go.addEventListener("click", sample);

  // 2. The pair, from the sampling above or typed, and a reward model's view of it.
  const pPrompt = el("textarea", { rows: 2, "data-testid": "prefs-p-prompt" }) as HTMLTextAreaElement;
  const pChosen = el("textarea", { rows: 3, "data-testid": "prefs-p-chosen" }) as HTMLTextAreaElement;
  const pRejected = el("textarea", { rows: 3, "data-testid": "prefs-p-rejected" }) as HTMLTextAreaElement;
  const rmSel = el("select", { "data-testid": "prefs-rm" }) as HTMLSelectElement;
  const rmNote = el("div", { class: "muted small", "data-testid": "prefs-rm-note" });
  const scoreBtn = el("button", { "data-testid": "prefs-score" }, "score with the reward model");
  const scoreErr = el("div", { class: "error", hidden: true });
  const scores = el("div", { class: "stats", "data-testid": "prefs-scores" });
  function fill(): void {
    const p = view?.pairings[mode]?.pair;
    if (!p) return;
    pPrompt.value = p.prompt; pChosen.value = p.chosen; pRejected.value = p.rejected;
    scores.replaceChildren();
  }
  use.addEventListener("click", fill);

  async function refreshModels(): Promise<void> {
    const info = await getJSON<Info>("/api/prefs/info");
    if (!task.options.length) {
      task.replaceChildren(...info.tasks.map((t) => el("option", { value: t }, t)));
      task.value = "arithmetic-easy-prefs";
    }
    const keep = rmSel.value;
    rmSel.replaceChildren(...info.reward_models.flatMap((r) => [el("option", { value: r.id }, `${r.label} (${r.status}, step ${r.step})`),
      ...r.checkpoints.map((s) => el("option", { value: `${r.id}@${s}` }, `${r.label} step ${s}`))]));
    if ([...rmSel.options].some((o) => o.value === keep)) rmSel.value = keep;
    const none = !info.reward_models.length;
    rmNote.textContent = none ? "No reward model yet: train one in section 3 below, then score pairs with it here." : "";
    scoreBtn.toggleAttribute("disabled", none);
  }

  async function score(): Promise<void> {
    scoreErr.hidden = true;
    try {
      const s = await postJSON<Score>("/api/prefs/score", { model: rmSel.value, prompt: pPrompt.value, chosen: pChosen.value, rejected: pRejected.value });
      const bar = el("span", { class: "pf-prob", title: "σ(r_c − r_r)" }, el("span", { style: `width:${(100 * s.p_chosen).toFixed(1)}%` }));
      scores.replaceChildren(stat("r_c = r(prompt, chosen)", s.r_chosen.toFixed(4), "rc"), stat("r_r = r(prompt, rejected)", s.r_rejected.toFixed(4), "rr"),
        stat("r_c − r_r", s.diff.toFixed(4), "diff"), stat("P(chosen ≻ rejected) = σ(r_c − r_r)", s.p_chosen.toFixed(4), "p"),
        stat("BT loss −log σ(r_c − r_r)", s.loss.toFixed(4), "loss"), stat("completion tokens (chosen / rejected)", `${s.chosen_tokens} / ${s.rejected_tokens}`, "tokens"), bar);
      sources.score = s.sources;
      showSources();
    } catch (e) { showError(scoreErr, e); }
  }
  scoreBtn.addEventListener("click", score);

  const live = liveSection(refreshModels);
  root.replaceChildren(head,
    el("h2", {}, "1. Sampling a preference pair"),
    el("p", { class: "muted small pf-note" }, "This is how the bundled *-prefs tasks are made (llmlab.align.data.make_prefs): SmolLM2 samples k answers to a task prompt; with the hint on, the second half of them see the reference answer in their prompt; the task's verifier scores each; a pairing mode picks chosen and rejected. Every mode below pairs the same samples."),
    el("section", { class: "controls" }, labeled("task", task), labeled("prompt #", index), labeled("samples k", k), labeled("temperature", temp), labeled("seed", seed), labeled("hint half the samples", hint), go, busy),
    err, el("div", { class: "muted small" }, "prompt"), promptBox, modes, why, cards, use,
    el("h2", {}, "2. The pair and the reward model's view"),
    el("section", { class: "pf-pair" }, labeled("prompt", pPrompt), labeled("chosen ✓", pChosen), labeled("rejected ✗", pRejected)),
    el("div", { class: "row" }, labeled("reward model", rmSel), scoreBtn), rmNote, scoreErr, scores,
    el("p", { class: "muted small pf-note" }, "Bradley–Terry: P(chosen ≻ rejected) = σ(r_c − r_r). Training minimises −log σ(r_c − r_r) over pairs, so only score differences matter; each score is read at the last token of prompt + answer."),
    el("h2", {}, "3. Train a reward model (live)"), live);
  refreshModels().then(sample).catch((e) => showError(err, e));
}

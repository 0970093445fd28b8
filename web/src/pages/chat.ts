// Chat over the OpenAI-compatible endpoint. With "token probabilities" on, the request asks for
// `logprobs` + `top_logprobs` (the spec's fields), and each reply token is coloured by the
// model's probability for it, its top alternatives on hover.
import { getJSON, postSSE } from "../api";
import { el, labeled, pageHeader, showError } from "../ui";
import "./chat.css";

// One entry of the spec's `choices[].logprobs.content`.
interface TokLogprob { token: string; logprob: number; top_logprobs: { token: string; logprob: number }[] }

const TOP = 5;
const pct = (lp: number) => `${(100 * Math.exp(lp)).toPrecision(3)}%`;
// p = 1 is white, p -> 0 is a strong red: a low-probability pick stands out.
const shade = (lp: number) => `hsl(0, 85%, ${Math.round(100 - 45 * (1 - Math.exp(lp)))}%)`;

function tokenSpans(toks: TokLogprob[], tip: HTMLElement): HTMLElement[] {
  return toks.map((t) => {
    const span = el("span", { class: "chat-tok", "data-testid": "chat-tok", style: `background:${shade(t.logprob)}` }, t.token);
    span.addEventListener("mouseenter", () => {
      tip.replaceChildren(
        el("div", { class: "chat-tip-head" }, `${JSON.stringify(t.token)}: p = ${pct(t.logprob)}, log p = ${t.logprob.toFixed(3)}`),
        el("div", { class: "muted small" }, "the model's top choices here:"),
        ...t.top_logprobs.map((a, k) => el("div", {}, `${k + 1}. ${JSON.stringify(a.token)} ${pct(a.logprob)}${a.token === t.token ? " ✓" : ""}`)),
      );
      const r = span.getBoundingClientRect();
      tip.style.left = `${r.left + window.scrollX}px`;
      tip.style.top = `${r.bottom + window.scrollY + 4}px`;
      tip.hidden = false;
    });
    span.addEventListener("mouseleave", () => { tip.hidden = true; });
    return span;
  });
}

export function chatPage(root: HTMLElement): void {
  const { root: head, setSources } = pageHeader("chat", "Chat");
  setSources(["chat.template", "batch.decode", "batch.emit"]);
  const log = el("div", { class: "chatlog", "data-testid": "chat-log" });
  const input = el("input", { type: "text", size: 60, placeholder: "Ask SmolLM2 something…", "data-testid": "chat-input" }) as HTMLInputElement;
  const temp = el("input", { type: "number", min: 0, max: 2, step: 0.1, value: 0.7, style: "width:4em", "data-testid": "chat-temp" }) as HTMLInputElement;
  const maxTok = el("input", { type: "number", min: 1, max: 512, value: 128, style: "width:5em", "data-testid": "chat-max" }) as HTMLInputElement;
  const probs = el("input", { type: "checkbox", checked: true, "data-testid": "chat-probs" }) as HTMLInputElement;
  const send = el("button", { "data-testid": "chat-send" }, "send");
  const tip = el("div", { class: "chat-tip", hidden: true, "data-testid": "chat-tip" });
  // SmolLM2, or a model you fine-tuned on the LoRA page (served as run:ID, like OpenAI's ft: ids).
  const model = el("select", { "data-testid": "chat-model" }, el("option", { value: "smollm2-135m-instruct" }, "SmolLM2-135M-Instruct")) as HTMLSelectElement;
  const models = () => getJSON<{ attention: { id: string; label: string; chat?: boolean }[] }>("/api/models").then((m) => {
    const keep = model.value;
    model.replaceChildren(el("option", { value: "smollm2-135m-instruct" }, "SmolLM2-135M-Instruct"),
      ...m.attention.filter((o) => o.chat).map((o) => el("option", { value: o.id }, o.label)));
    if ([...model.options].some((o) => o.value === keep)) model.value = keep;
  }).catch((e) => showError(err, e));
  const err = el("div", { class: "error", hidden: true });
  const history: { role: string; content: string }[] = [];
  async function go(): Promise<void> {
    const q = input.value.trim();
    if (!q) return;
    err.hidden = true;
    input.value = "";
    history.push({ role: "user", content: q });
    log.append(el("div", { class: "msg user" }, q));
    const reply = el("div", { class: "msg bot", "data-testid": "chat-reply" });
    log.append(reply);
    let text = "";
    const toks: TokLogprob[] = [];
    const body: Record<string, unknown> = { model: model.value, messages: history, stream: true, temperature: Number(temp.value), max_tokens: Number(maxTok.value) };
    if (probs.checked) Object.assign(body, { logprobs: true, top_logprobs: TOP });
    send.setAttribute("disabled", "");
    try {
      for await (const ev of postSSE("/v1/chat/completions", body)) {
        if (ev.data === "[DONE]") break;
        const j = JSON.parse(ev.data);
        if (j.error) throw new Error(j.error.message);
        text += j.choices?.[0]?.delta?.content ?? "";
        toks.push(...(j.choices?.[0]?.logprobs?.content ?? []));
        reply.textContent = text;
      }
      // The tokens' own text, coloured; the same characters as the reply.
      if (toks.length && toks.map((t) => t.token).join("") === text) reply.replaceChildren(...tokenSpans(toks, tip));
      history.push({ role: "assistant", content: text });
    } catch (e) { showError(err, e); history.pop(); }
    send.removeAttribute("disabled");
  }
  send.addEventListener("click", go);
  model.addEventListener("focus", models);
  model.addEventListener("change", () => { history.length = 0; log.replaceChildren(); });  // a new model starts a new conversation
  models();
  input.addEventListener("keydown", (e) => { if (e.key === "Enter") go(); });
  root.replaceChildren(head, el("section", { class: "controls" }, labeled("model", model), labeled("temperature", temp), labeled("max tokens", maxTok), labeled("token probabilities", probs)), err, log, el("div", { class: "row" }, input, send),
    el("p", { class: "muted small" }, "Served by the same OpenAI-compatible endpoint as /v1/chat/completions (SSE). With token probabilities on, each reply token is shaded by the model's probability for it (white: sure; red: unlikely); hover a token for the alternatives. These are the API's logprobs: the model's own distribution, before temperature and top-p."),
    tip);
}

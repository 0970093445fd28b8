import { getJSON, postSSE } from "../api";
import { el, labeled, pageHeader, showError } from "../ui";

export function chatPage(root: HTMLElement): void {
  const { root: head, setSources } = pageHeader("chat", "Chat");
  setSources(["chat.template", "batch.decode", "batch.emit"]);
  const log = el("div", { class: "chatlog", "data-testid": "chat-log" });
  const input = el("input", { type: "text", size: 60, placeholder: "Ask SmolLM2 something…", "data-testid": "chat-input" }) as HTMLInputElement;
  const temp = el("input", { type: "number", min: 0, max: 2, step: 0.1, value: 0.7, style: "width:4em", "data-testid": "chat-temp" }) as HTMLInputElement;
  const maxTok = el("input", { type: "number", min: 1, max: 512, value: 128, style: "width:5em", "data-testid": "chat-max" }) as HTMLInputElement;
  const send = el("button", { "data-testid": "chat-send" }, "send");
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
    send.setAttribute("disabled", "");
    try {
      for await (const ev of postSSE("/v1/chat/completions", { model: model.value, messages: history, stream: true, temperature: Number(temp.value), max_tokens: Number(maxTok.value) })) {
        if (ev.data === "[DONE]") break;
        const j = JSON.parse(ev.data);
        if (j.error) throw new Error(j.error.message);
        const piece = j.choices?.[0]?.delta?.content ?? "";
        text += piece;
        reply.textContent = text;
      }
      history.push({ role: "assistant", content: text });
    } catch (e) { showError(err, e); history.pop(); }
    send.removeAttribute("disabled");
  }
  send.addEventListener("click", go);
  model.addEventListener("focus", models);
  model.addEventListener("change", () => { history.length = 0; log.replaceChildren(); });  // a new model starts a new conversation
  models();
  input.addEventListener("keydown", (e) => { if (e.key === "Enter") go(); });
  root.replaceChildren(head, el("section", { class: "controls" }, labeled("model", model), labeled("temperature", temp), labeled("max tokens", maxTok)), err, log, el("div", { class: "row" }, input, send),
    el("p", { class: "muted small" }, "Served by the same OpenAI-compatible endpoint as /v1/chat/completions (SSE)."));
}

import { getJSON, postJSON } from "../api";
import { debounce, el, fmt, labeled, pageHeader, showError } from "../ui";

interface Tok { ids: number[]; pieces: string[]; n_tokens: number; n_chars: number; n_bytes: number; vocab_size: number | null; sources: string[] }

export function tokenizerPage(root: HTMLElement): void {
  const { root: head, setSources } = pageHeader("tokenizer", "Tokenizer");
  const text = el("textarea", { rows: 4, cols: 70, "data-testid": "tok-text" }) as HTMLTextAreaElement;
  text.value = "Tokenizers split unbelievably long words — and emoji 🤖 — into pieces.";
  const which = el("select", { "data-testid": "tok-which" }, ...["smollm2", "gpt2", "cl100k", "dir"].map((t) => el("option", { value: t }, t === "dir" ? "trained tokenizer dir…" : t))) as HTMLSelectElement;
  const dir = el("input", { type: "text", placeholder: "/path/to/tokenizer_dir", hidden: true, size: 30 }) as HTMLInputElement;
  const out = el("div", { class: "tokens", "data-testid": "tok-pieces" }), stats = el("div", { class: "stats", "data-testid": "tok-stats" }), err = el("div", { class: "error", hidden: true });
  const palette = ["#fde2e4", "#e2ece9", "#dfe7fd", "#fff1c1", "#e8dff5", "#d7f9f1"];
  async function run(): Promise<void> {
    err.hidden = true;
    const name = which.value === "dir" ? dir.value.trim() : which.value;
    if (!name) return;
    try {
      const t = await postJSON<Tok>("/api/tokenize", { text: text.value, tokenizer: name });
      out.replaceChildren(...t.pieces.map((p, i) => el("span", { class: "piece", style: `background:${palette[i % palette.length]}`, title: `id ${t.ids[i]}` },
        el("span", {}, p.replace(/ /g, "·").replace(/\n/g, "↵")), el("sub", {}, String(t.ids[i])))));
      stats.replaceChildren(...([["tokens", t.n_tokens], ["characters", t.n_chars], ["bytes", t.n_bytes], ["chars / token", t.n_tokens ? (t.n_chars / t.n_tokens).toFixed(2) : "–"], ["vocabulary", t.vocab_size ?? "–"]] as [string, number | string][])
        .map(([k, v]) => el("div", { class: "stat" }, el("span", { class: "k" }, k), el("span", { class: "v" }, typeof v === "number" ? fmt(v) : v))));
      setSources(t.sources);
    } catch (e) { showError(err, e); }
  }
  // The server's --model-dir checkpoints and your playground runs: each one's own tokenizer.
  getJSON<{ attention: { id: string; label: string; kind?: string }[]; paths: boolean }>("/api/models").then((m) => {
    const dirOpt = which.querySelector("option[value=dir]");
    for (const o of m.attention.filter((o) => o.id.startsWith("local:"))) which.insertBefore(el("option", { value: o.id }, `${o.id.slice(6)} (trained, local)`), dirOpt);
    for (const o of m.attention.filter((o) => o.id.startsWith("run:") && o.kind === "pretrain")) which.insertBefore(el("option", { value: o.id }, `${o.label}: its own BPE`), dirOpt);
    if (!m.paths) dirOpt?.remove();  // this server takes no free paths (non-loopback host)
  }).catch((e) => showError(err, e));
  const again = debounce(run, 200);
  text.addEventListener("input", again);
  which.addEventListener("change", () => { dir.hidden = which.value !== "dir"; again(); });
  dir.addEventListener("change", again);
  root.replaceChildren(head, el("section", { class: "controls" }, labeled("text", text), labeled("tokenizer", which), dir), err, out, stats);
  run();
}

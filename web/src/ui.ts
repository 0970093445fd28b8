// DOM helpers. Text always goes in through textContent, never innerHTML, so user text
// (and model output) can't inject markup.
import { getJSON } from "./api";

type Attrs = Record<string, string | number | boolean | EventListener | undefined>;

export function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs = {},
  ...children: (Node | string | null | undefined)[]
): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === false) continue;
    if (typeof v === "function") e.addEventListener(k.replace(/^on/, ""), v);
    else if (k === "text") e.textContent = String(v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) if (c != null) e.append(typeof c === "string" ? document.createTextNode(c) : c);
  return e;
}

export function fmt(n: number): string {
  return n.toLocaleString("en-US");
}

export function showError(box: HTMLElement, err: unknown): void {
  box.textContent = err instanceof Error ? err.message : String(err);
  box.hidden = false;
}

interface Narration { text: string; audio: boolean; audio_url: string | null }

// Page header: title, the explanation (also the narration transcript), ▶ and a code panel.
export function pageHeader(page: string, title: string): { root: HTMLElement; setSources: (k: string[]) => void } {
  const expl = el("p", { class: "explain" });
  const status = el("span", { class: "muted small" });
  const audio = el("audio", { controls: true, hidden: true }) as HTMLAudioElement;
  const play = el("button", { class: "narrate", title: "narration", "data-testid": "narrate" }, "▶ narration");
  let info: Narration | null = null;
  getJSON<Narration>(`/api/narration/${page}`).then((n) => {
    info = n;
    expl.textContent = n.text;
  }).catch(() => { expl.textContent = ""; });
  audio.addEventListener("playing", () => { status.textContent = ""; });
  audio.addEventListener("error", () => { status.textContent = "audio unavailable: transcript shown above"; });
  play.addEventListener("click", () => {
    if (info?.audio && info.audio_url) {
      // The first request synthesizes the WAV on the server (a second or two), later ones are cached.
      if (!audio.src) {
        status.textContent = "loading audio…";
        audio.src = info.audio_url;
      }
      audio.hidden = false;
      audio.play().catch(() => { status.textContent = "audio could not play; the transcript is above"; });
    } else {
      status.textContent = "audio unavailable (optional piper-tts not installed): transcript shown above";
      expl.classList.add("flash");
      setTimeout(() => expl.classList.remove("flash"), 1200);
    }
  });
  const select = el("select", { "aria-label": "source" }) as HTMLSelectElement;
  const meta = el("div", { class: "muted small" });
  const pre = el("pre", { class: "code" });
  const code = el("details", { class: "codepanel" }, el("summary", {}, "code: the llmlab function computing this"), select, meta, pre);
  const load = (k: string) => getJSON<{ source: string; file: string; line: number; qualname: string }>(`/api/source/${k}`)
    .then((s) => { pre.textContent = s.source; meta.textContent = `${s.qualname} — ${s.file}:${s.line}`; })
    .catch((e) => showError(meta, e));
  select.addEventListener("change", () => load(select.value));
  let current = "";
  const setSources = (keys: string[]) => {
    const sig = keys.join(",");
    if (sig === current) return;
    current = sig;
    select.replaceChildren(...keys.map((k) => el("option", { value: k }, k)));
    if (keys.length) load(keys[0]);
  };
  const root = el("section", { class: "head" }, el("h1", {}, title), expl, el("div", { class: "row" }, play, status), audio, code);
  return { root, setSources };
}

export function labeled(label: string, input: HTMLElement): HTMLElement {
  return el("label", { class: "ctl" }, el("span", {}, label), input);
}

export function debounce<T extends unknown[]>(fn: (...a: T) => void, ms: number): (...a: T) => void {
  let t: number | undefined;
  return (...a: T) => { clearTimeout(t); t = window.setTimeout(() => fn(...a), ms); };
}

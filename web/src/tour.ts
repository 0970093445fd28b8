// The guided tour (issue #23 item 7): steps through the playground in the course order. Each
// step drives the UI (route, filled inputs), outlines the named element, shows its transcript
// in a caption box (Back / Next / Leave) and plays its narration. The steps come from
// GET /api/tour (llmlab/server/data/tour.json); the words are narration entries `tour-ID`.
// The position is kept in localStorage, so a left tour resumes where it was; a teacher's
// link starts it: `#/tour` (resume, else the start) or `?tour=STEP` (number or id).
import { getJSON } from "./api";
import { el } from "./ui";
import "./tour.css";

interface Step { id: string; title: string; route: string; target: string; fill: Record<string, string>; text: string; narration: string }
interface Narration { text: string; audio: boolean; audio_url: string | null }
interface Saved { step: number; active: boolean }

const KEY = "llmlab.tour";
let steps: Step[] | null = null;
let box: HTMLElement | null = null;
let pill: HTMLElement | null = null;
let lit: Element | null = null;
let shown = 0; // bumped per step shown: a slow step that is overtaken stops there
const audio = el("audio", { "data-testid": "tour-audio" }) as HTMLAudioElement;

async function load(): Promise<Step[]> {
  steps ??= (await getJSON<{ steps: Step[] }>("/api/tour")).steps;
  return steps;
}

function saved(): Saved | null {
  try {
    const s = JSON.parse(localStorage.getItem(KEY) ?? "null");
    return s && Number.isInteger(s.step) ? s : null;
  } catch { return null; }
}
const save = (s: Saved | null) => (s ? localStorage.setItem(KEY, JSON.stringify(s)) : localStorage.removeItem(KEY));

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// The element once it is on the page and drawn (a box still empty has no height yet); after
// `ms` whatever matches, so a slow page still gets its caption.
async function waitFor(sel: string, ms = 30_000): Promise<Element | null> {
  const end = Date.now() + ms;
  for (;;) {
    const e = document.querySelector(sel);
    if (e && e.getBoundingClientRect().height > 0) return e;
    if (Date.now() > end) return e;
    await sleep(100);
  }
}

let relight = 0; // the timer that keeps the outline on a redrawn element

function light(e: Element, id: string): void {
  lit = e;
  e.classList.add("tour-hl");
  e.setAttribute("data-tour-hl", id);
}

function unlight(): void {
  clearInterval(relight);
  lit?.classList.remove("tour-hl");
  lit?.removeAttribute("data-tour-hl");
  lit = null;
}

function close(): void {
  shown++;
  unlight();
  audio.pause();
  box?.remove();
  box = null;
}

function showPill(i: number): void {
  pill?.remove();
  pill = el("button", { class: "tour-pill", "data-testid": "tour-resume", onclick: () => go(i, true) }, `▶ Resume the tour (step ${i + 1})`);
  document.body.append(pill);
}

async function narrate(s: Step, status: HTMLElement, userAsked: boolean): Promise<void> {
  const n = await getJSON<Narration>(`/api/narration/${s.narration}`);
  if (!n.audio || !n.audio_url) { status.textContent = "audio unavailable (optional piper-tts): the transcript is above"; return; }
  if (!audio.src.endsWith(n.audio_url)) audio.src = n.audio_url;
  audio.currentTime = 0;
  // A browser plays sound only after a click; a step opened from a link waits for ▶.
  await audio.play().then(() => { status.textContent = ""; })
    .catch(() => { status.textContent = userAsked ? "audio could not play; the transcript is above" : "press ▶ to hear it"; });
}

function caption(s: Step, i: number, n: number, userAsked: boolean): void {
  box?.remove();
  const status = el("span", { class: "muted small", "data-testid": "tour-status" });
  const play = el("button", { "data-testid": "tour-play", title: "play the narration", onclick: () => narrate(s, status, true) }, "▶");
  box = el("aside", { class: "tour-box", "data-testid": "tour-box", "data-step": s.id, role: "dialog", "aria-label": "guided tour" },
    el("div", { class: "muted small" }, `Guided tour · step ${i + 1} of ${n}`),
    el("h3", { "data-testid": "tour-title" }, s.title),
    el("p", { "data-testid": "tour-text" }, s.text),
    el("div", { class: "row" }, play, status),
    el("div", { class: "row tour-nav" },
      el("button", { "data-testid": "tour-back", disabled: i === 0, onclick: () => go(i - 1, true) }, "◀ Back"),
      el("button", { "data-testid": "tour-next", class: "primary", onclick: () => (i + 1 < n ? go(i + 1, true) : finish()) }, i + 1 < n ? "Next ▶" : "Finish"),
      el("button", { "data-testid": "tour-leave", onclick: leave }, "Leave")));
  document.body.append(box);
  narrate(s, status, userAsked).catch(() => { status.textContent = "narration unavailable: the transcript is above"; });
}

// Show step i: its caption at once, then its page, its inputs, and the outline.
export async function go(i: number, userAsked = false): Promise<void> {
  const all = await load();
  i = Math.max(0, Math.min(all.length - 1, i));
  const me = ++shown;
  const s = all[i];
  pill?.remove();
  pill = null;
  save({ step: i, active: true });
  unlight();
  caption(s, i, all.length, userAsked);
  if (location.hash !== s.route) {
    // main.ts re-renders on hashchange (its listener was added first, so it has run).
    const changed = new Promise((r) => window.addEventListener("hashchange", r, { once: true }));
    location.hash = s.route;
    await Promise.race([changed, sleep(2000)]);
  }
  for (const [sel, value] of Object.entries(s.fill ?? {})) {
    const input = (await waitFor(sel, 10_000)) as HTMLInputElement | null;
    if (me !== shown) return;
    if (input && input.value !== value) {
      input.value = value;
      input.dispatchEvent(new Event("input", { bubbles: true }));
      input.dispatchEvent(new Event("change", { bubbles: true }));
    }
  }
  const target = await waitFor(s.target);
  if (me !== shown || !target) return;
  light(target, s.id);
  target.scrollIntoView({ block: "center", behavior: "smooth" });
  // Pages redraw (a new model list, a new result): the outline follows the new element.
  relight = window.setInterval(() => {
    if (me !== shown || lit?.isConnected) return;
    const again = document.querySelector(s.target);
    if (again) light(again, s.id);
  }, 300);
}

export function leave(): void {
  const s = saved();
  close();
  if (s) { save({ step: s.step, active: false }); showPill(s.step); }
}

function finish(): void {
  close();
  save(null);
}

// `#/tour`: the step named by `?tour=`, else the one left, else the first.
export async function startTour(): Promise<void> {
  const q = new URLSearchParams(location.search).get("tour");
  let i = saved()?.step ?? 0;
  if (q !== null) {
    const all = await load();
    const byId = all.findIndex((s) => s.id === q);
    i = byId >= 0 ? byId : Math.max(0, (parseInt(q, 10) || 1) - 1);
    // Drop the parameter: a reload then resumes where the learner is, not at the link's step.
    history.replaceState(null, "", location.pathname + location.hash);
  }
  await go(i);
}

// At page load: a `?tour=` link starts the tour; a tour in progress comes back; a left one
// offers to resume.
export function initTour(): void {
  const s = saved();
  if (location.hash.startsWith("#/tour")) return; // main.ts routes it
  if (new URLSearchParams(location.search).has("tour")) startTour();
  else if (s?.active) go(s.step);
  else if (s) showPill(s.step);
}

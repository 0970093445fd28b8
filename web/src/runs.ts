// The training lab's shared run panel: start a run (a worker process running the CLI), follow
// its records over SSE, stop and resume it, and pick any past run of the same kind. A page
// supplies the options and draws the records; a reload re-attaches to a live run.
import { getJSON, postJSON } from "./api";
import { el, showError } from "./ui";

export interface Run {
  id: string; kind: string; label: string; status: string; step: number; max_steps: number | null;
  loss: number | null; error: string | null; model: string | null; checkpoints: number[];
  adapter: boolean; base: string | null; options: Record<string, unknown>; created: number; final: boolean;
}
export type Rec = Record<string, number> & { step: number };
export interface Sample { step: number; text?: string; prompt?: string; answer?: string; [k: string]: unknown }

export interface RunHandlers {
  clear(run: Run): void;          // a run was attached (or reset by a resume): forget what is drawn
  metrics(r: Rec): void;          // one metrics.jsonl record
  sample(s: Sample): void;        // one samples.jsonl record
  status?(run: Run): void;
}

const ACTIVE = ["running", "stopping"];

export function runPanel(kind: string, getOptions: () => Record<string, unknown>, h: RunHandlers, testid = "run"): { root: HTMLElement; current: () => Run | null } {
  const start = el("button", { "data-testid": `${testid}-start` }, "▶ train") as HTMLButtonElement;
  const stop = el("button", { "data-testid": `${testid}-stop`, disabled: true }, "■ stop") as HTMLButtonElement;
  const resume = el("button", { "data-testid": `${testid}-resume`, disabled: true }, "⟳ resume") as HTMLButtonElement;
  const pick = el("select", { "data-testid": `${testid}-list`, "aria-label": "runs" }) as HTMLSelectElement;
  const state = el("span", { class: "runstate", "data-testid": `${testid}-status` });
  const err = el("div", { class: "error", hidden: true, "data-testid": `${testid}-error` });
  let run: Run | null = null;
  let source: EventSource | null = null;

  function show(r: Run): void {
    run = r;
    const live = ACTIVE.includes(r.status);
    const of = r.max_steps ? ` / ${r.max_steps}` : "";
    state.textContent = `${r.label || r.id}: ${r.status}${live ? " …" : ""} · step ${r.step}${of}` + (r.model && !live ? ` · model ${r.model}` : "");
    state.dataset.status = r.status;
    stop.disabled = !live || r.status === "stopping";
    resume.disabled = live || r.status === "finished" || !r.checkpoints.length;
    if (r.status === "failed" && r.error) showError(err, `run failed: ${r.error}`);
    else err.hidden = true;
    h.status?.(r);
  }

  function attach(r: Run): void {
    source?.close();
    h.clear(r);
    show(r);
    if (pick.value !== r.id) pick.value = r.id;
    // EventSource reconnects by itself; each connection replays the run from its start.
    const es = new EventSource(`/api/runs/${encodeURIComponent(r.id)}/events`);
    source = es;
    es.addEventListener("status", (e) => { const s = JSON.parse((e as MessageEvent).data) as Run; show(s); refresh(); });
    es.addEventListener("metrics", (e) => h.metrics(JSON.parse((e as MessageEvent).data)));
    es.addEventListener("sample", (e) => h.sample(JSON.parse((e as MessageEvent).data)));
    // A resume rewrote one file shorter and the stream re-sends only that one: start over.
    es.addEventListener("reset", () => { if (source === es && run) attach(run); });
    es.addEventListener("open", () => { if (source === es) h.clear(run!); });
    es.addEventListener("end", (e) => { show(JSON.parse((e as MessageEvent).data)); es.close(); refresh(); });
    es.onerror = () => {
      // The server went away: say so instead of leaving a spinner; EventSource keeps retrying.
      if (es.readyState !== EventSource.CLOSED) state.textContent = `${r.label || r.id}: connection lost, retrying…`;
    };
  }

  async function refresh(): Promise<Run[]> {
    const { runs } = await getJSON<{ runs: Run[] }>("/api/runs");
    const mine = runs.filter((r) => r.kind === kind);
    const keep = pick.value;
    pick.replaceChildren(el("option", { value: "" }, mine.length ? "past runs…" : "no runs yet"),
      ...mine.map((r) => el("option", { value: r.id }, `${r.label || r.id} · ${r.status} · step ${r.step}`)));
    pick.value = run?.id ?? keep;
    return mine;
  }

  start.addEventListener("click", async () => {
    err.hidden = true;
    try {
      const r = await postJSON<Run>("/api/runs", { kind, options: getOptions() });
      await refresh();
      attach(r);
    } catch (e) { showError(err, e); }
  });
  stop.addEventListener("click", async () => {
    if (!run) return;
    try { show(await postJSON<Run>(`/api/runs/${encodeURIComponent(run.id)}/stop`, {})); } catch (e) { showError(err, e); }
  });
  resume.addEventListener("click", async () => {
    if (!run) return;
    try { attach(await postJSON<Run>(`/api/runs/${encodeURIComponent(run.id)}/resume`, {})); } catch (e) { showError(err, e); }
  });
  pick.addEventListener("change", async () => {
    if (!pick.value) return;
    try { attach(await getJSON<Run>(`/api/runs/${encodeURIComponent(pick.value)}`)); } catch (e) { showError(err, e); }
  });
  // Re-attach after a reload: the live run of this kind, else the newest one.
  refresh().then((mine) => {
    const live = mine.find((r) => ACTIVE.includes(r.status));
    if (live) attach(live);
  }).catch((e) => showError(err, e));
  // Leaving the page (another hash route) closes the stream.
  window.addEventListener("hashchange", () => source?.close(), { once: true });

  const root = el("section", { class: "runpanel" }, el("div", { class: "row" }, start, stop, resume, pick, state), err);
  return { root, current: () => run };
}

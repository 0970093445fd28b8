// A model picker filled from GET /api/models: the bundled models, --model-dir checkpoints,
// and the user's playground runs, with one option per saved checkpoint (run:ID@STEP).
import { getJSON } from "./api";
import { el } from "./ui";

export interface ModelEntry { id: string; label: string; kind?: string; causal?: boolean; checkpoints?: number[] }

export interface ModelSelect { el: HTMLSelectElement; ready: Promise<void>; refresh(): Promise<void> }

// MiniLM is an encoder: it sees the token it would predict, so causal pages leave it out.
const isCausal = (m: ModelEntry) => m.causal ?? m.id !== "minilm";

// `none` adds a first option with value "" (e.g. "none" for an optional comparison).
export function modelSelect(testid: string, opts: { causalOnly?: boolean; initial?: string; none?: string } = {}): ModelSelect {
  const initial = opts.initial ?? (opts.none !== undefined ? "" : "smollm2");
  const sel = el("select", { "data-testid": testid }) as HTMLSelectElement;
  const head = () => (opts.none !== undefined ? [el("option", { value: "" }, opts.none)] : []);
  // Usable before the list arrives: the page can query with the initial choice at once.
  sel.replaceChildren(...head(), ...(initial ? [el("option", { value: initial }, initial)] : []));
  sel.value = initial;
  let shown = "";

  async function refresh(): Promise<void> {
    const keep = sel.value;
    const list = (await getJSON<{ attention: ModelEntry[] }>("/api/models")).attention;
    const options = head();
    for (const m of list) {
      if (opts.causalOnly && !isCausal(m)) continue;
      options.push(el("option", { value: m.id }, m.label));
      for (const step of m.checkpoints ?? []) options.push(el("option", { value: `${m.id}@${step}` }, `${m.label} step ${step}`));
    }
    // Unchanged list: leave the DOM alone (replacing options would close an open menu).
    const sig = JSON.stringify(options.map((o) => [o.value, o.textContent]));
    if (sig === shown) return;
    shown = sig;
    sel.replaceChildren(...options);
    // Keep the user's choice when it still exists (a refresh after a run saved a checkpoint).
    if ([...sel.options].some((o) => o.value === keep)) sel.value = keep;
    else if (sel.value !== keep) sel.dispatchEvent(new Event("change"));
  }
  return { el: sel, ready: refresh(), refresh };
}

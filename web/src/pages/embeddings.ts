import { postJSON } from "../api";
import { el, labeled, pageHeader, showError } from "../ui";

interface NN { neighbours: { word: string; cos: number }[]; vocab: number; sources: string[] }
interface An { expression: string; results: { word: string; cos: number }[]; sources: string[] }

export function embeddingsPage(root: HTMLElement): void {
  const { root: head, setSources } = pageHeader("embeddings", "Embeddings");
  const space = el("select", {}, el("option", { value: "minilm" }, "MiniLM sentence embeddings"), el("option", { value: "smollm2" }, "SmolLM2 input embedding table")) as HTMLSelectElement;
  const word = el("input", { type: "text", value: "paris", "data-testid": "emb-word" }) as HTMLInputElement;
  const [a, b, c] = ["man", "king", "woman"].map((v) => el("input", { type: "text", value: v, size: 8 }) as HTMLInputElement);
  const nnOut = el("ol", { class: "list", "data-testid": "emb-nn" }), anOut = el("ol", { class: "list", "data-testid": "emb-analogy" });
  const err = el("div", { class: "error", hidden: true });
  const item = (w: string, cos: number) => el("li", {}, el("b", {}, w), ` cos ${cos.toFixed(3)}`);
  async function nn(): Promise<void> {
    err.hidden = true;
    try {
      const r = await postJSON<NN>("/api/embeddings/neighbours", { word: word.value, space: space.value, k: 8 });
      nnOut.replaceChildren(...r.neighbours.map((n) => item(n.word, n.cos)));
      setSources(r.sources);
    } catch (e) { showError(err, e); }
  }
  async function analogy(): Promise<void> {
    err.hidden = true;
    try {
      const r = await postJSON<An>("/api/embeddings/analogy", { a: a.value, b: b.value, c: c.value, space: space.value, k: 5 });
      anOut.replaceChildren(...r.results.map((n) => item(n.word, n.cos)));
      setSources(r.sources);
    } catch (e) { showError(err, e); }
  }
  space.addEventListener("change", () => { nn(); analogy(); });
  word.addEventListener("change", nn);
  root.replaceChildren(head, el("section", { class: "controls" }, labeled("space", space)), err,
    el("div", { class: "split" },
      el("div", {}, el("h2", {}, "Nearest neighbours"), el("div", { class: "row" }, labeled("word", word), el("button", { onclick: nn }, "find")), nnOut),
      el("div", {}, el("h2", {}, "Analogy: b − a + c"), el("div", { class: "row" }, b, " − ", a, " + ", c, el("button", { onclick: analogy, "data-testid": "emb-go" }, "=")), anOut)),
    el("p", { class: "muted small" }, "Candidates come from a fixed list of ~140 words; the query words themselves are excluded."));
  nn(); analogy();
}

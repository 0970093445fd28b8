import * as d3 from "d3";
import { getJSON, postSSE } from "../api";
import { el, labeled, pageHeader, showError } from "../ui";

interface Hit { rank: number; score: number; source: string; text: string; index: number }
interface Info { available: boolean; examples: string[] }
interface Proj { points: number[][]; query: number[]; retrieved: number[]; labels?: string[] }

const STAGES = ["query", "embed", "search", "retrieve", "llm"];

function scatter(p: Proj): SVGSVGElement {
  const w = 360, h = 300, m = 20;
  const all = [...p.points, p.query];
  const x = d3.scaleLinear().domain(d3.extent(all, (d) => d[0]) as [number, number]).nice().range([m, w - m]);
  const y = d3.scaleLinear().domain(d3.extent(all, (d) => d[1]) as [number, number]).nice().range([h - m, m]);
  const svg = d3.create("svg").attr("width", w).attr("height", h).attr("data-testid", "rag-projection");
  const hit = new Set(p.retrieved);
  svg.selectAll("circle.pt").data(p.points).join("circle").attr("class", (_, i) => (hit.has(i) ? "pt hit" : "pt"))
    .attr("cx", (d) => x(d[0])).attr("cy", (d) => y(d[1])).attr("r", (_, i) => (hit.has(i) ? 5 : 3))
    .append("title").text((_, i) => p.labels?.[i] ?? `chunk ${i}`);
  svg.append("path").attr("class", "qpt").attr("d", d3.symbol(d3.symbolStar, 120)()!).attr("transform", `translate(${x(p.query[0])},${y(p.query[1])})`);
  return svg.node()!;
}

export function ragPage(root: HTMLElement): void {
  const { root: head, setSources } = pageHeader("rag", "RAG pipeline");
  setSources(["rag.projection"]);
  const q = el("input", { type: "text", size: 50, "data-testid": "rag-query" }) as HTMLInputElement;
  const examples = el("div", { class: "row" });
  const k = el("input", { type: "number", min: 1, max: 10, value: 4, style: "width:4em" }) as HTMLInputElement;
  const method = el("select", {}, ...["hybrid", "dense", "bm25"].map((m) => el("option", { value: m }, m))) as HTMLSelectElement;
  const rerank = el("input", { type: "checkbox" }) as HTMLInputElement;
  const chunk = el("input", { type: "number", min: 50, max: 1000, step: 50, value: 200, style: "width:5em" }) as HTMLInputElement;
  const file = el("input", { type: "file", accept: ".txt,.md,.rst,.html" }) as HTMLInputElement;
  const go = el("button", { "data-testid": "rag-go" }, "ask");
  const stages = el("div", { class: "stages", "data-testid": "rag-stages" }, ...STAGES.map((s) => el("span", { class: "stage", "data-stage": s }, s)));
  const hits = el("ol", { class: "hits", "data-testid": "rag-hits" }), proj = el("div", {});
  const answer = el("div", { class: "answer", "data-testid": "rag-answer" }), stats = el("div", { class: "stats", "data-testid": "rag-stats" });
  const err = el("div", { class: "error", hidden: true }), note = el("div", { class: "muted small" });
  let session: string | null = null;

  const light = (s: string) => stages.querySelector(`[data-stage="${s}"]`)?.classList.add("done");
  const stat = (kk: string, v: string) => el("div", { class: "stat" }, el("span", { class: "k" }, kk), el("span", { class: "v" }, v));

  async function ask(): Promise<void> {
    if (!q.value.trim()) return;
    err.hidden = true;
    stages.querySelectorAll(".stage").forEach((s) => s.classList.remove("done"));
    hits.replaceChildren(); answer.textContent = ""; stats.replaceChildren(); proj.replaceChildren();
    let text = "";
    try {
      for await (const ev of postSSE("/api/rag/query", { query: q.value, k: Number(k.value), method: method.value, rerank: rerank.checked, chunk_size: Number(chunk.value), session })) {
        const d = JSON.parse(ev.data || "{}");
        if (ev.event === "error") throw new Error(d.error?.message ?? "server error");
        if (ev.event === "token") { light("llm"); text += d.text; answer.textContent = text; continue; }
        if (ev.event === "done") {
          if (d.answer) answer.textContent = d.answer;
          stats.append(stat("citations", d.citations?.length ? d.citations.map((n: number) => `[${n}]`).join(" ") : (d.reason || "none")));
          continue;
        }
        light(ev.event);
        if (ev.event === "search") {
          stats.replaceChildren(stat("docs in KB", String(d.docs)), stat("chunks in KB", String(d.chunks)), stat("method", d.method + (d.rerank ? " + rerank" : "")));
          if (d.projection) proj.replaceChildren(scatter(d.projection));
        }
        if (ev.event === "retrieve") {
          const hs = d.hits as Hit[];
          hits.replaceChildren(...hs.map((h) => el("li", {}, el("div", { class: "hitmeta" }, `[${h.rank}] ${h.source} — score ${h.score.toFixed(4)}`), el("div", { class: "hittext" }, h.text))));
          stats.append(stat("chunks retrieved", String(hs.length)), stat("top score", hs.length ? hs[0].score.toFixed(4) : "–"));
        }
      }
    } catch (e) { showError(err, e); }
  }
  go.addEventListener("click", ask);
  q.addEventListener("keydown", (e) => { if (e.key === "Enter") ask(); });
  file.addEventListener("change", async () => {
    const f = file.files?.[0];
    if (!f) return;
    const fd = new FormData();
    fd.append("file", f);
    if (session) fd.append("session", session);
    try {
      const r = await fetch("/api/rag/upload", { method: "POST", body: fd });
      const j = await r.json();
      if (!r.ok) throw new Error(j?.error?.message ?? r.statusText);
      session = j.session;
      note.textContent = `added ${j.name} (${j.bytes} bytes) to this session's knowledge base: ${j.docs} uploaded doc(s)`;
    } catch (e) { showError(err, e); }
  });
  getJSON<Info>("/api/rag/info").then((i) => {
    q.value = i.examples[0] ?? "";
    examples.replaceChildren(...i.examples.map((x) => el("button", { class: "chip", onclick: () => { q.value = x; ask(); } }, x)));
    if (!i.available) showError(err, "RAG engine not installed (llmlab.rag is missing on this server)");
  }).catch((e) => showError(err, e));
  root.replaceChildren(head,
    el("section", { class: "controls" }, labeled("question", q), go, labeled("top-k", k), labeled("method", method), labeled("+ rerank", rerank), labeled("chunk size (tokens)", chunk), labeled("upload doc", file)),
    examples, note, err, stages,
    el("div", { class: "split" }, el("div", {}, el("h2", {}, "Ranked chunks"), hits), el("div", {}, el("h2", {}, "Chunk embeddings (PCA)"), proj, stats)),
    el("h2", {}, "Grounded answer"), answer);
}

import * as d3 from "d3";
import { getJSON, postJSON, postSSE } from "../api";
import { el, labeled, pageHeader, showError } from "../ui";
import { lineChart, stat } from "./fcharts";

interface Status { ready: boolean; progress: number; loss: number | null; error: string | null; config: Record<string, number | string>; vocab?: number; tokens?: number; losses?: number[] }
interface NN { token: string | null; vocab: number; neighbours: { word: string; cos: number }[]; sources: string[] }
interface An { expression: string; tokens: (string | null)[]; results: { word: string; cos: number }[]; sources: string[] }
interface Proj { words: string[]; points: number[][]; explained: number[]; sources: string[] }

const WORDS = "king, queen, man, woman, prince, father, mother, son, daughter, brother, sister, husband, wife, gold, silver, brass, iron, bread, wine, water, oil, sheep, goat, horse, camel";

function scatter(p: Proj): SVGSVGElement {
  const w = 560, h = 420, m = 40;
  const x = d3.scaleLinear().domain(d3.extent(p.points, (d) => d[0]) as [number, number]).nice().range([m, w - m]);
  const y = d3.scaleLinear().domain(d3.extent(p.points, (d) => d[1]) as [number, number]).nice().range([h - m, m]);
  const svg = d3.create("svg").attr("width", w).attr("height", h).attr("data-testid", "w2v-proj");
  svg.append("g").attr("transform", `translate(0,${h - m})`).call(d3.axisBottom(x).ticks(5));
  svg.append("g").attr("transform", `translate(${m},0)`).call(d3.axisLeft(y).ticks(5));
  const g = svg.append("g").selectAll("g").data(p.points).join("g").attr("transform", (d) => `translate(${x(d[0])},${y(d[1])})`);
  g.append("circle").attr("r", 3.5).attr("class", "pt");
  g.append("text").attr("x", 5).attr("y", -4).text((_, i) => p.words[i]);
  svg.append("text").attr("x", w - m).attr("y", 14).attr("text-anchor", "end").attr("class", "small")
    .text(`PC1 ${(100 * p.explained[0]).toFixed(0)}% · PC2 ${(100 * p.explained[1]).toFixed(0)}% of the variance`);
  return svg.node()!;
}

export function word2vecPage(root: HTMLElement): void {
  const { root: head, setSources } = pageHeader("word2vec", "Word vectors: word2vec and SmolLM2 tokens");
  const space = el("select", { "data-testid": "w2v-space" }, el("option", { value: "word2vec" }, "word2vec trained here on the King James Bible"), el("option", { value: "smollm2" }, "SmolLM2's input embedding table (49,152 tokens)")) as HTMLSelectElement;
  const word = el("input", { type: "text", value: "gold", size: 12, "data-testid": "w2v-word" }) as HTMLInputElement;
  const [a, b, c] = ["man", "king", "woman"].map((v, i) => el("input", { type: "text", value: v, size: 9, "data-testid": `w2v-${"abc"[i]}` }) as HTMLInputElement);
  const words = el("textarea", { rows: 2, cols: 70, "data-testid": "w2v-words" }) as HTMLTextAreaElement;
  words.value = WORDS;
  const nnOut = el("ol", { class: "list", "data-testid": "w2v-nn" }), anOut = el("ol", { class: "list", "data-testid": "w2v-analogy" });
  const tokInfo = el("div", { class: "muted small" }), proj = el("div", {});
  const train = el("div", { class: "stats", "data-testid": "w2v-status" }), lossBox = el("div", {});
  const bar = el("progress", { max: 1, value: 0, "data-testid": "w2v-progress" }) as HTMLProgressElement;
  const err = el("div", { class: "error", hidden: true, "data-testid": "w2v-error" });
  let ready = false;
  const item = (w: string, cos: number) => el("li", {}, el("b", {}, w), ` cos ${cos.toFixed(3)}`);
  const usable = () => space.value === "smollm2" || ready;

  async function nn(): Promise<void> {
    if (!usable()) return;
    err.hidden = true;
    try {
      const r = await postJSON<NN>("/api/foundations/vectors/neighbours", { space: space.value, word: word.value, k: 10 });
      nnOut.replaceChildren(...r.neighbours.map((n) => item(n.word, n.cos)));
      tokInfo.textContent = r.token ? `"${word.value.trim()}" is the single token ${r.token} (Ġ = a leading space); candidates are the ${r.vocab.toLocaleString()} tokens that are a space plus letters.` : `${r.vocab.toLocaleString()} words in the vocabulary (seen at least 5 times).`;
      setSources(r.sources);
    } catch (e) { showError(err, e); }
  }
  async function analogy(): Promise<void> {
    if (!usable()) return;
    err.hidden = true;
    try {
      const r = await postJSON<An>("/api/foundations/vectors/analogy", { space: space.value, a: a.value, b: b.value, c: c.value, k: 8 });
      anOut.replaceChildren(...r.results.map((n) => item(n.word, n.cos)));
      setSources(r.sources);
    } catch (e) { showError(err, e); }
  }
  async function project(): Promise<void> {
    if (!usable()) return;
    err.hidden = true;
    try {
      const list = words.value.split(",").map((s) => s.trim()).filter(Boolean);
      const r = await postJSON<Proj>("/api/foundations/vectors/projection", { space: space.value, words: list });
      proj.replaceChildren(scatter(r));
    } catch (e) { showError(err, e); }
  }
  const all = () => { nn(); analogy(); project(); };

  function showStatus(s: Status): void {
    bar.value = s.progress;
    const cfg = s.config;
    train.replaceChildren(
      stat("state", s.ready ? "trained (cached)" : s.error ? "failed" : `training… ${(100 * s.progress).toFixed(0)}%`, "state"),
      stat("corpus", `${cfg.corpus}${s.tokens ? `, ${s.tokens.toLocaleString()} words` : ""}`),
      stat("vocabulary", s.vocab ? s.vocab.toLocaleString() : "–"),
      stat("dim · window · negatives", `${cfg.dim} · ${cfg.window} · ${cfg.negative}`),
      stat("epochs · subsample", `${cfg.epochs} · ${cfg.sample}`),
      stat("loss per pair", s.loss == null ? "–" : s.loss.toFixed(3)),
    );
    if (s.losses?.length) lossBox.replaceChildren(lineChart([{ name: "SGNS loss per pair", values: s.losses.map((v, i) => [i * 50, v]), cls: "val" }], { xLabel: "step", w: 360, h: 180 }));
    if (s.error) showError(err, new Error(s.error));
  }

  async function ensureTrained(): Promise<void> {
    const st = await getJSON<Status>("/api/foundations/word2vec/status");
    showStatus(st);
    if (!st.ready) {
      for await (const ev of postSSE("/api/foundations/word2vec/train", {})) {
        const d = JSON.parse(ev.data);
        if (ev.event === "progress") showStatus({ ...st, progress: d.progress, loss: d.loss });
        else showStatus(d);
      }
    }
    ready = (await getJSON<Status>("/api/foundations/word2vec/status")).ready;
    if (ready && space.value === "word2vec") all();
  }

  space.addEventListener("change", () => {
    tokInfo.textContent = "";
    if (space.value === "word2vec") { a.value = "man"; b.value = "king"; c.value = "woman"; }
    all();
  });
  word.addEventListener("change", nn);

  root.replaceChildren(head,
    el("section", { class: "controls" }, labeled("space", space), labeled("training", bar)),
    err,
    el("div", { class: "split" },
      el("div", {}, el("h2", {}, "Nearest neighbours"), el("div", { class: "row" }, labeled("word", word), el("button", { onclick: nn, "data-testid": "w2v-find" }, "find")), tokInfo, nnOut),
      el("div", {}, el("h2", {}, "Analogy: b − a + c"), el("div", { class: "row" }, b, " − ", a, " + ", c, el("button", { onclick: analogy, "data-testid": "w2v-go" }, "=")), anOut),
      el("div", {}, el("h2", {}, "word2vec training"), train, lossBox)),
    el("h2", {}, "2-D projection (PCA of the unit vectors)"),
    el("div", { class: "row" }, words, el("button", { onclick: project, "data-testid": "w2v-project" }, "project")),
    proj,
    el("p", { class: "muted small" }, "Our word2vec: skip-gram with negative sampling in PyTorch (subsampling, unigram^0.75 noise), checked against gensim on the same corpus. SmolLM2 rows are byte-level BPE tokens: a word needs a leading-space token of its own (\"Ġking\"). The ",
      el("a", { href: "#/embeddings" }, "Embeddings page"), " compares MiniLM sentence embeddings with SmolLM2 on a fixed word list."));
  ensureTrained().catch((e) => showError(err, e));
}

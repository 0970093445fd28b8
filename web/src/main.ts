import "./style.css";
import { attentionPage } from "./pages/attention";
import { chatPage } from "./pages/chat";
import { decodingPage } from "./pages/decoding";
import { descentPage } from "./pages/descent";
import { dpoPage } from "./pages/dpopage";
import { embeddingsPage } from "./pages/embeddings";
import { evalPage } from "./pages/eval";
import { insidePage } from "./pages/inside";
import { kvcachePage } from "./pages/kvcache";
import { loraPage } from "./pages/lora";
import { neuralnetPage } from "./pages/neuralnet";
import { nexttokenPage } from "./pages/nexttoken";
import { overfitPage } from "./pages/overfit";
import { pretrainPage } from "./pages/pretrain";
import { pipelinePage } from "./pages/pipeline";
import { prefsPage } from "./pages/prefs";
import { ragPage } from "./pages/rag";
import { rlPage } from "./pages/rl";
import { sftmaskPage } from "./pages/sftmask";
import { tokenizerPage } from "./pages/tokenizer";
import { word2vecPage } from "./pages/word2vec";
import { initTour, startTour } from "./tour";
import { el } from "./ui";

const PAGES: [string, string, (root: HTMLElement) => void][] = [
  ["pipeline", "Pipeline", pipelinePage],  // the landing page: the map of the others
  ["attention", "Self-attention", attentionPage],
  ["inside", "Inside the model", insidePage],
  ["pretrain", "Pretraining", pretrainPage],
  ["lora", "LoRA", loraPage],
  ["rag", "RAG", ragPage],
  ["tokenizer", "Tokenizer", tokenizerPage],
  ["decoding", "Decoding", decodingPage],
  ["kvcache", "The KV cache", kvcachePage],
  ["embeddings", "Embeddings", embeddingsPage],
  ["chat", "Chat", chatPage],
  ["descent", "Descent", descentPage],
  ["neuralnet", "Neural net", neuralnetPage],
  ["overfit", "Overfitting", overfitPage],
  ["word2vec", "Word2vec", word2vecPage],
  ["nexttoken", "Next token", nexttokenPage],
  ["sftmask", "SFT masking", sftmaskPage],
  ["eval", "Evaluation", evalPage],
  ["prefs", "Preferences", prefsPage],
  ["rl", "RL", rlPage],
  ["dpo", "DPO", dpoPage],
];

const nav = document.getElementById("nav")!;
const app = document.getElementById("app")!;

function route(): void {
  // "#/eval?model=run:ID": the page reads its own query; the route is the part before "?".
  const name = location.hash.replace(/^#\/?/, "").split("?")[0] || "pipeline";
  if (name === "tour") { startTour(); return; } // it moves on to its step's page
  const page = PAGES.find((p) => p[0] === name) ?? PAGES[0];
  nav.replaceChildren(...PAGES.map(([id, title]) => el("a", { href: `#/${id}`, class: id === page[0] ? "active" : "" }, title)),
    el("a", { href: "#/tour", class: "tour-link", "data-testid": "tour-link" }, "▶ Guided tour"));
  page[2](app);
}
window.addEventListener("hashchange", route);
route();
initTour();

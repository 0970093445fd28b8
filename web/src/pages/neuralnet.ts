import { ApiError, postSSE } from "../api";
import { el, labeled, pageHeader, showError } from "../ui";
import { lineChart, logSlider, paintBoundary, slider, stat } from "./fcharts";

interface Pts { train: number[][]; test: number[][]; params: number; sources: string[] }
interface Step { step: number; loss: number; train_acc: number; test_acc: number; grid: number[][] }

export function neuralnetPage(root: HTMLElement): void {
  const { root: head, setSources } = pageHeader("neuralnet", "A neural network in NumPy");
  const dataset = el("select", { "data-testid": "nn-dataset" }, ...["moons", "spirals", "circles", "xor"].map((d) => el("option", { value: d }, d))) as HTMLSelectElement;
  const noise = slider(0, 0.5, 0.01, 0.1, "nn-noise");
  const npts = slider(40, 600, 20, 200, "nn-n");
  const hidden = el("input", { type: "text", value: "16, 16", size: 10, "data-testid": "nn-hidden", title: "neurons per hidden layer, comma separated" }) as HTMLInputElement;
  const act = el("select", { "data-testid": "nn-act" }, ...["tanh", "relu", "sigmoid"].map((a) => el("option", { value: a }, a))) as HTMLSelectElement;
  const opt = el("select", {}, el("option", { value: "adam" }, "Adam"), el("option", { value: "momentum" }, "momentum"), el("option", { value: "gd" }, "plain GD")) as HTMLSelectElement;
  const lr = logSlider(1e-4, 1, 0.03, "nn-lr");
  const drop = slider(0, 0.8, 0.05, 0, "nn-dropout");
  const steps = slider(100, 5000, 100, 1000, "nn-steps");
  const showTest = el("input", { type: "checkbox", checked: true }) as HTMLInputElement;
  const train = el("button", { "data-testid": "nn-train", class: "narrate" }, "▶ train");
  const stop = el("button", { disabled: true }, "■ stop");
  const canvas = el("canvas", { width: 360, height: 360, class: "boundary", "data-testid": "nn-boundary" }) as HTMLCanvasElement;
  const curve = el("div", {}), stats = el("div", { class: "stats", "data-testid": "nn-stats" });
  const err = el("div", { class: "error", hidden: true });
  let pts: Pts | null = null, last: Step | null = null, abort: AbortController | null = null;
  const hist: Step[] = [];

  function draw(): void {
    if (!pts) return;
    paintBoundary(canvas, last?.grid ?? null, pts, showTest.checked);
    canvas.dataset.step = String(last?.step ?? -1);
    const s = last;
    stats.replaceChildren(
      stat("step", s ? String(s.step) : "–", "step"), stat("parameters", String(pts.params)),
      stat("training loss", s ? (s.loss < 1e-3 ? s.loss.toExponential(2) : s.loss.toFixed(4)) : "–", "loss"),
      stat("train accuracy", s ? `${(100 * s.train_acc).toFixed(1)}%` : "–", "train_acc"),
      stat("test accuracy", s ? `${(100 * s.test_acc).toFixed(1)}%` : "–", "test_acc"),
    );
    curve.replaceChildren(lineChart([
      { name: "loss", values: hist.map((h) => [h.step, h.loss]), cls: "val" },
      { name: "test error", values: hist.map((h) => [h.step, Math.max(1e-3, 1 - h.test_acc)]), cls: "train" },
    ], { logY: true, xLabel: "step", w: 380, h: 200, testid: "nn-curve" }));
  }

  function parseHidden(): number[] {
    const parts = hidden.value.split(",").map((s) => s.trim()).filter(Boolean);
    const sizes = parts.map(Number);
    if (sizes.some((n) => !Number.isInteger(n))) throw new ApiError("hidden: whole numbers, comma separated (e.g. 16, 16)", 400, "hidden");
    return sizes;
  }

  async function run(): Promise<void> {
    err.hidden = true;
    abort?.abort();
    const ctl = new AbortController();
    abort = ctl;
    hist.length = 0;
    last = null;
    train.disabled = true;
    stop.disabled = false;
    // Frames are queued and shown at most every 40 ms, so a fast run still plays visibly.
    const queue: Step[] = [];
    let done = false;
    const tick = window.setInterval(() => {
      const s = queue.shift();
      if (s) { last = s; hist.push(s); draw(); }
      else if (done) window.clearInterval(tick);
    }, 40);
    try {
      const body = { dataset: dataset.value, noise: Number(noise.input.value), n: Number(npts.input.value), hidden: parseHidden(), activation: act.value, optimizer: opt.value, lr: lr.get(), dropout: Number(drop.input.value), steps: Number(steps.input.value), grid: 40 };
      for await (const ev of postSSE("/api/foundations/nn/train", body, ctl.signal)) {
        const d = JSON.parse(ev.data);
        if (ev.event === "data") { pts = d; setSources(d.sources); draw(); }
        else if (ev.event === "step") queue.push(d);
      }
    } catch (e) {
      if (!(e instanceof DOMException && e.name === "AbortError")) showError(err, e);
    } finally {
      done = true;
      if (abort === ctl) { train.disabled = false; stop.disabled = true; }
    }
  }
  train.addEventListener("click", run);
  stop.addEventListener("click", () => { abort?.abort(); train.disabled = false; stop.disabled = true; });
  showTest.addEventListener("change", draw);

  root.replaceChildren(head,
    el("section", { class: "controls" }, labeled("data", dataset), labeled("noise", el("span", {}, noise.input, noise.out)),
      labeled("points", el("span", {}, npts.input, npts.out)), labeled("hidden layers", hidden), labeled("activation", act),
      labeled("optimizer", opt), labeled("learning rate", el("span", {}, lr.input, lr.out)),
      labeled("dropout", el("span", {}, drop.input, drop.out)), labeled("steps", el("span", {}, steps.input, steps.out)),
      labeled("test points", showTest), train, stop),
    err,
    el("div", { class: "split" }, el("div", {}, canvas, el("p", { class: "muted small" }, "Colour: the network's P(blue) on a 40×40 grid. Filled dots train, rings are held-out test points.")), el("div", {}, stats, curve)),
    el("p", { class: "muted small" }, "Everything is NumPy: x @ W + b, the activation, a softmax cross-entropy, and backward() applying the chain rule layer by layer (checked against finite differences and torch autograd in the tests). Half the points are held out."));
  run();
}

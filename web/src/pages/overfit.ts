import * as d3 from "d3";
import { postJSON } from "../api";
import { debounce, el, labeled, pageHeader, showError } from "../ui";
import { lineChart, logSlider, paintBoundary, slider, stat } from "./fcharts";

interface Fit {
  degree: number; lam: number; train: number[][]; val: number[][]; curve: number[][]; truth: number[][];
  train_mse: number; val_mse: number; weight_norm: number;
  by_degree: { degree: number[]; train: number[]; val: number[] }; by_lam: { lam: number[]; train: number[]; val: number[] };
  sources: string[];
}
interface Drop { train: number[][]; test: number[][]; runs: { dropout: number; train_acc: number; test_acc: number; loss: number; grid: number[][] }[]; sources: string[] }

function fitPlot(f: Fit): SVGSVGElement {
  const w = 460, h = 300, m = 36;
  const x = d3.scaleLinear().domain([0, 1]).range([m, w - 10]);
  const y = d3.scaleLinear().domain([-2, 2]).range([h - m, 10]).clamp(true);
  const svg = d3.create("svg").attr("width", w).attr("height", h).attr("data-testid", "of-plot");
  svg.append("g").attr("transform", `translate(0,${h - m})`).call(d3.axisBottom(x));
  svg.append("g").attr("transform", `translate(${m},0)`).call(d3.axisLeft(y).ticks(5));
  const line = d3.line<number[]>().x((p) => x(p[0])).y((p) => y(p[1]));
  svg.append("g").selectAll("circle").data(f.val).join("circle").attr("class", "valpt").attr("r", 2).attr("cx", (p) => x(p[0])).attr("cy", (p) => y(p[1]));
  svg.append("path").attr("class", "fline truth").attr("d", line(f.truth));
  svg.append("path").attr("class", "fline fit").attr("d", line(f.curve)).attr("data-testid", "of-curve");
  svg.append("g").selectAll("circle").data(f.train).join("circle").attr("class", "trainpt").attr("r", 4).attr("cx", (p) => x(p[0])).attr("cy", (p) => y(p[1]));
  return svg.node()!;
}

export function overfitPage(root: HTMLElement): void {
  const { root: head, setSources } = pageHeader("overfit", "Overfitting and regularisation");
  const degree = slider(0, 20, 1, 4, "of-degree");
  const lam = logSlider(1e-8, 1000, 0, "of-lam", true);
  const ntrain = slider(5, 100, 1, 20, "of-n");
  const noise = slider(0, 1, 0.05, 0.25, "of-noise");
  let seed = 0;
  const resample = el("button", { onclick: () => { seed += 1; load(); } }, "new sample");
  const presets = el("span", { class: "row" }, ...[1, 4, 20].map((d) => el("button", { class: "chip", onclick: () => { degree.input.value = String(d); degree.out.textContent = String(d); load(); } }, `degree ${d}`)));
  const plot = el("div", {}), byDeg = el("div", {}), byLam = el("div", {});
  const stats = el("div", { class: "stats", "data-testid": "of-stats" });
  const err = el("div", { class: "error", hidden: true });
  const fmtE = (v: number | null) => (v == null ? "∞" : v < 1e-3 || v > 1e4 ? v.toExponential(2) : v.toFixed(4));

  let seq = 0;
  async function load(): Promise<void> {
    err.hidden = true;
    const my = ++seq;
    try {
      const f = await postJSON<Fit>("/api/foundations/overfit", { degree: Number(degree.input.value), lam: lam.get(), n_train: Number(ntrain.input.value), noise: Number(noise.input.value), seed });
      if (my !== seq) return;  // only the latest slider position is drawn
      setSources(f.sources);
      plot.replaceChildren(fitPlot(f));
      stats.replaceChildren(
        stat("degree (coefficients)", `${f.degree} (${f.degree + 1})`), stat("ridge λ", f.lam === 0 ? "0" : f.lam.toExponential(1)),
        stat("train MSE", fmtE(f.train_mse), "train"), stat("validation MSE", fmtE(f.val_mse), "val"),
        stat("‖w‖ (without the constant)", fmtE(f.weight_norm), "norm"),
      );
      byDeg.replaceChildren(lineChart([
        { name: "train", values: f.by_degree.degree.map((d, i) => [d, f.by_degree.train[i]]), cls: "train" },
        { name: "validation", values: f.by_degree.degree.map((d, i) => [d, f.by_degree.val[i]]), cls: "val" },
      ], { logY: true, xLabel: "degree", yLabel: "MSE", marker: f.degree, testid: "of-bydegree" }));
      const lx = (l: number) => (l === 0 ? -9 : Math.log10(l));
      byLam.replaceChildren(lineChart([
        { name: "train", values: f.by_lam.lam.map((l, i) => [lx(l), f.by_lam.train[i]]), cls: "train" },
        { name: "validation", values: f.by_lam.lam.map((l, i) => [lx(l), f.by_lam.val[i]]), cls: "val" },
      ], { logY: true, xLabel: "log10 λ (−9 = no penalty)", yLabel: "MSE", marker: lx(f.lam) }));
    } catch (e) { showError(err, e); }
  }
  const reload = debounce(load, 80);
  [degree.input, lam.input, ntrain.input, noise.input].forEach((i) => i.addEventListener("input", reload));

  // Dropout on the NumPy network: the same big net with and without it, side by side.
  const dset = el("select", {}, ...["moons", "circles", "spirals"].map((d) => el("option", { value: d }, d))) as HTMLSelectElement;
  const p = slider(0.05, 0.8, 0.05, 0.3, "of-dropout-p");
  const dnoise = slider(0, 0.5, 0.05, 0.25, "of-dropout-noise");
  const go = el("button", { "data-testid": "of-dropout-go" }, "train both");
  const out = el("div", { class: "split", "data-testid": "of-dropout-result" });
  const derr = el("div", { class: "error", hidden: true });
  go.addEventListener("click", async () => {
    derr.hidden = true;
    go.disabled = true;
    go.textContent = "training…";
    try {
      const d = await postJSON<Drop>("/api/foundations/nn/dropout", { dataset: dset.value, p: Number(p.input.value), noise: Number(dnoise.input.value), n: 100, steps: 2000 });
      setSources(d.sources);
      out.replaceChildren(...d.runs.map((r) => {
        const c = el("canvas", { width: 260, height: 260, class: "boundary" }) as HTMLCanvasElement;
        paintBoundary(c, r.grid, d, true);
        return el("div", { "data-dropout": r.dropout }, el("h3", {}, r.dropout === 0 ? "no dropout" : `dropout p = ${r.dropout}`), c,
          el("div", { class: "stats" }, stat("train accuracy", `${(100 * r.train_acc).toFixed(1)}%`, `train-${r.dropout}`), stat("test accuracy", `${(100 * r.test_acc).toFixed(1)}%`, `test-${r.dropout}`), stat("training loss", fmtE(r.loss))));
      }));
    } catch (e) { showError(derr, e); } finally { go.disabled = false; go.textContent = "train both"; }
  });

  root.replaceChildren(head,
    el("section", { class: "controls" }, labeled("degree", el("span", {}, degree.input, degree.out)), presets,
      labeled("ridge penalty", el("span", {}, lam.input, lam.out)), labeled("training points", el("span", {}, ntrain.input, ntrain.out)),
      labeled("noise (std)", el("span", {}, noise.input, noise.out)), resample),
    err,
    el("div", { class: "split" }, el("div", {}, plot, el("p", { class: "muted small" }, "Big dots: training points. Small: 200 validation points. Dashed: sin(2πx). Orange: the fit.")), stats),
    el("div", { class: "split" }, el("div", {}, el("h2", {}, "Error against degree, at this penalty"), byDeg), el("div", {}, el("h2", {}, "Error against the penalty λ, at this degree"), byLam)),
    el("p", { class: "muted small" }, "Least squares on Legendre polynomials (orthogonal on the interval, so degree 20 stays numerically sane), minimising ‖y − Φw‖² + λ‖w‖² without penalising the constant."),
    el("h2", {}, "Dropout on the NumPy network"),
    el("section", { class: "controls" }, labeled("data", dset), labeled("dropout p", el("span", {}, p.input, p.out)), labeled("noise", el("span", {}, dnoise.input, dnoise.out)), go),
    el("p", { class: "muted small" }, "A 2-64-64-2 ReLU network, 2000 Adam steps on 50 noisy points, trained twice from the same weights: once plainly and once dropping each hidden unit with probability p (inverted dropout)."),
    derr, out);
  load();
}

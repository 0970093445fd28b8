// Small shared pieces of the foundations pages: line charts, log sliders, stat rows.
import * as d3 from "d3";
import { el } from "../ui";

export interface Series { name: string; values: [number, number][]; cls: string }

// A line chart; log y when asked (non-positive and null values are skipped there).
export function lineChart(series: Series[], o: { w?: number; h?: number; logY?: boolean; xLabel?: string; yLabel?: string; marker?: number; yDomain?: [number, number]; testid?: string }): SVGSVGElement {
  const w = o.w ?? 420, h = o.h ?? 220, m = { l: 54, r: 12, t: 10, b: 34 };
  const ok = (v: number | null) => v != null && Number.isFinite(v) && (!o.logY || v > 0);
  const pts = series.flatMap((s) => s.values.filter((p) => ok(p[1])));
  const xs = d3.extent(pts, (p) => p[0]) as [number, number];
  let ys = o.yDomain ?? (d3.extent(pts, (p) => p[1]) as [number, number]);
  if (ys[0] === undefined) ys = o.logY ? [1e-3, 1] : [0, 1];
  if (ys[0] === ys[1]) ys = o.logY ? [ys[0] / 2, ys[1] * 2] : [ys[0] - 1, ys[1] + 1];
  const x = d3.scaleLinear().domain(xs[0] === undefined ? [0, 1] : xs).range([m.l, w - m.r]);
  const y = (o.logY ? d3.scaleLog() : d3.scaleLinear()).domain(ys).range([h - m.b, m.t]).clamp(true);
  const svg = d3.create("svg").attr("width", w).attr("height", h);
  if (o.testid) svg.attr("data-testid", o.testid);
  svg.append("g").attr("transform", `translate(0,${h - m.b})`).call(d3.axisBottom(x).ticks(6));
  svg.append("g").attr("transform", `translate(${m.l},0)`).call(d3.axisLeft(y).ticks(5, o.logY ? "~e" : "~g"));
  if (o.xLabel) svg.append("text").attr("x", (m.l + w - m.r) / 2).attr("y", h - 4).attr("text-anchor", "middle").attr("class", "small").text(o.xLabel);
  if (o.yLabel) svg.append("text").attr("transform", `translate(12,${(h - m.b + m.t) / 2}) rotate(-90)`).attr("text-anchor", "middle").attr("class", "small").text(o.yLabel);
  const line = d3.line<[number, number]>().defined((p) => ok(p[1])).x((p) => x(p[0])).y((p) => y(p[1]));
  series.forEach((s, i) => {
    svg.append("path").attr("class", `fline ${s.cls}`).attr("d", line(s.values));
    svg.append("text").attr("x", w - m.r - 4).attr("y", m.t + 12 + 14 * i).attr("text-anchor", "end").attr("class", `flabel ${s.cls}`).text(s.name);
  });
  if (o.marker !== undefined) svg.append("line").attr("class", "rmark").attr("x1", x(o.marker)).attr("x2", x(o.marker)).attr("y1", m.t).attr("y2", h - m.b);
  return svg.node()!;
}

// A range input over [lo, hi] on a log scale (1000 steps); `zero` adds λ = 0 at the far left.
export function logSlider(lo: number, hi: number, value: number, testid: string, zero = false): { input: HTMLInputElement; get: () => number; out: HTMLElement } {
  const a = Math.log10(lo), b = Math.log10(hi);
  const toPos = (v: number) => (zero && v <= 0 ? 0 : Math.round(((Math.log10(v) - a) / (b - a)) * 1000) + (zero ? 1 : 0));
  const input = el("input", { type: "range", min: 0, max: zero ? 1001 : 1000, value: toPos(value), "data-testid": testid }) as HTMLInputElement;
  const get = () => {
    const p = Number(input.value);
    if (zero && p === 0) return 0;
    return Math.pow(10, a + ((p - (zero ? 1 : 0)) / 1000) * (b - a));
  };
  const out = el("span", { class: "val" });
  const show = () => { const v = get(); out.textContent = v === 0 ? "0" : v.toPrecision(2); };
  input.addEventListener("input", show);
  show();
  return { input, get, out };
}

export function stat(k: string, v: string, key?: string): HTMLElement {
  return el("div", { class: "stat" }, el("span", { class: "k" }, k), el("span", { class: "v", "data-stat": key ?? k }, v));
}

export function slider(min: number, max: number, step: number, value: number, testid: string): { input: HTMLInputElement; out: HTMLElement } {
  const input = el("input", { type: "range", min, max, step, value, "data-testid": testid }) as HTMLInputElement;
  const out = el("span", { class: "val" }, String(value));
  input.addEventListener("input", () => { out.textContent = input.value; });
  return { input, out };
}

// Paint P(class 1) on a canvas, TensorFlow-Playground colours (orange 0, blue 1), with points.
export function paintBoundary(canvas: HTMLCanvasElement, grid: number[][] | null, pts: { train: number[][]; test: number[][] }, showTest: boolean, lim = 1.5): void {
  const ctx = canvas.getContext("2d")!;
  const W = canvas.width, H = canvas.height;
  const col = (p: number) => d3.interpolateRgb("#f59e0b", "#2563eb")(p);
  ctx.clearRect(0, 0, W, H);
  if (grid) {
    // One pixel per grid cell on a small canvas, then scaled up smoothly.
    const n = grid.length, small = document.createElement("canvas");
    small.width = small.height = n;
    const img = small.getContext("2d")!.createImageData(n, n);
    for (let r = 0; r < n; r++) for (let c = 0; c < n; c++) {
      const p = grid[r][c] ?? 0.5, rgb = d3.rgb(col(p)), i = 4 * ((n - 1 - r) * n + c);  // rows run bottom-up
      img.data.set([rgb.r, rgb.g, rgb.b, 255 * (0.15 + 0.6 * Math.abs(p - 0.5) * 2)], i);
    }
    small.getContext("2d")!.putImageData(img, 0, 0);
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(small, 0, 0, W, H);
  }
  const px = (v: number) => ((v + lim) / (2 * lim)) * W, py = (v: number) => H - ((v + lim) / (2 * lim)) * H;
  const dot = (p: number[], hollow: boolean) => {
    ctx.beginPath();
    ctx.arc(px(p[0]), py(p[1]), 3.2, 0, 2 * Math.PI);
    ctx.fillStyle = p[2] === 1 ? "#1d4ed8" : "#d97706";
    ctx.strokeStyle = hollow ? ctx.fillStyle : "#fff";
    if (hollow) { ctx.lineWidth = 1.5; ctx.stroke(); } else { ctx.fill(); ctx.lineWidth = 0.8; ctx.stroke(); }
  };
  pts.train.forEach((p) => dot(p, false));
  if (showTest) pts.test.forEach((p) => dot(p, true));
}

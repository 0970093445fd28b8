import * as d3 from "d3";
import { getJSON, postJSON } from "../api";
import { debounce, el, labeled, pageHeader, showError } from "../ui";
import { lineChart, logSlider, slider, stat } from "./fcharts";

interface Surf { name: string; formula: string; dim: number; bounds: number[][]; start: number[]; minimum: number[]; grid: { x: number[]; y?: number[]; z: (number | null)[] | (number | null)[][] } }
interface Run { path: (number | null)[][]; losses: (number | null)[]; steps: number; diverged: boolean; diverged_at: number | null; reason: string; final_loss: number | null; sources: string[] }

const W = 460, H = 360, M = 36;

export function descentPage(root: HTMLElement): void {
  const { root: head, setSources } = pageHeader("descent", "Gradient descent");
  const surface = el("select", { "data-testid": "gd-surface" },
    ...[["quadratic", "1-D: (x − 3)²"], ["bowl", "2-D: elongated bowl"], ["rosenbrock", "2-D: Rosenbrock valley"], ["himmelblau", "2-D: Himmelblau (4 minima)"]]
      .map(([v, t]) => el("option", { value: v }, t))) as HTMLSelectElement;
  surface.value = "bowl";
  const opt = el("select", { "data-testid": "gd-opt" }, el("option", { value: "gd" }, "plain GD"), el("option", { value: "momentum" }, "momentum"), el("option", { value: "adam" }, "Adam")) as HTMLSelectElement;
  const lr = logSlider(1e-4, 5, 0.05, "gd-lr");
  const mom = slider(0, 0.99, 0.01, 0.9, "gd-momentum");
  const steps = slider(10, 500, 10, 100, "gd-steps");
  const plot = el("div", { "data-testid": "gd-plot" }), loss = el("div", {});
  const stats = el("div", { class: "stats", "data-testid": "gd-stats" });
  const banner = el("div", { class: "error", hidden: true, "data-testid": "gd-diverged" });
  const err = el("div", { class: "error", hidden: true });
  let surf: Surf | null = null, start: number[] | null = null, timer = 0, seq = 0;

  // The surface: a curve in 1-D, log-spaced filled contours in 2-D.
  function drawSurface(s: Surf): { svg: d3.Selection<SVGSVGElement, undefined, null, undefined>; px: (p: number[], loss: number) => [number, number] } {
    const svg = d3.create("svg").attr("width", W).attr("height", H).attr("class", "surface");
    svg.append("clipPath").attr("id", "gd-clip").append("rect").attr("x", M).attr("y", 10).attr("width", W - 10 - M).attr("height", H - M - 10);
    const [bx, by] = [s.bounds[0], s.bounds[1] ?? [0, 1]];
    const x = d3.scaleLinear().domain(bx).range([M, W - 10]);
    if (s.dim === 1) {
      const z = s.grid.z as number[];
      const y = d3.scaleLinear().domain([0, d3.max(z)!]).range([H - M, 10]);
      svg.append("g").attr("transform", `translate(0,${H - M})`).call(d3.axisBottom(x));
      svg.append("g").attr("transform", `translate(${M},0)`).call(d3.axisLeft(y).ticks(5));
      svg.append("path").attr("class", "fline truth").attr("d", d3.line<number>().x((_, i) => x(s.grid.x[i])).y((v) => y(v))(z));
      svg.on("click", (ev: MouseEvent) => { start = [x.invert(d3.pointer(ev)[0])]; run(); });
      return { svg, px: (p, l) => [x(p[0]), y(l)] };
    }
    const y = d3.scaleLinear().domain(by).range([H - M, 10]);
    const z = s.grid.z as number[][], n = s.grid.x.length, ny = s.grid.y!.length;
    const flat = z.flat().map((v) => Math.log10((v ?? 0) + 1e-3));
    const [lo, hi] = d3.extent(flat) as [number, number];
    const th = d3.range(lo, hi, (hi - lo) / 18);
    const color = d3.scaleSequential(d3.interpolateViridis).domain([hi, lo]);
    const gx = (i: number) => x(bx[0] + ((i - 0.5) * (bx[1] - bx[0])) / (n - 1));
    const gy = (j: number) => y(by[0] + ((j - 0.5) * (by[1] - by[0])) / (ny - 1));
    const proj = d3.geoTransform({ point(px, py) { this.stream.point(gx(px), gy(py)); } });
    svg.append("g").selectAll("path").data(d3.contours().size([n, ny]).thresholds(th)(flat)).join("path")
      .attr("d", d3.geoPath(proj)).attr("fill", (c) => color(c.value)).attr("stroke", "#0002").attr("stroke-width", 0.5);
    svg.append("g").attr("transform", `translate(0,${H - M})`).call(d3.axisBottom(x));
    svg.append("g").attr("transform", `translate(${M},0)`).call(d3.axisLeft(y));
    svg.append("path").attr("d", d3.symbol(d3.symbolStar, 90)()).attr("class", "minmark").attr("transform", `translate(${x(s.minimum[0])},${y(s.minimum[1])})`);
    // A click on the surface moves the start there.
    svg.on("click", (ev: MouseEvent) => {
      const [mx, my] = d3.pointer(ev);
      start = [x.invert(mx), y.invert(my)];
      run();
    });
    return { svg, px: (p) => [x(p[0]), y(p[1])] };
  }

  function show(r: Run): void {
    if (!surf) return;
    const { svg, px } = drawSurface(surf);
    const finite = r.path.map((p, i) => [...p, r.losses[i]])
      .filter((p) => p.every((v) => v != null && Math.abs(v) < 1e9)) as number[][];
    const clip = svg.append("g").attr("clip-path", "url(#gd-clip)");
    const pathEl = clip.append("path").attr("class", "gdpath").attr("data-testid", "gd-path")
      .attr("data-final", JSON.stringify(r.path[r.path.length - 1])).attr("data-lr", lr.get().toPrecision(2));
    const dots = clip.append("g");
    const ball = clip.append("circle").attr("r", 6).attr("class", "gdball");
    const lossSeries = r.losses.map((v, i) => [i, v] as [number, number]);
    const drawLoss = (upto: number) => loss.replaceChildren(lineChart([{ name: "loss", values: lossSeries.slice(0, upto + 1), cls: "val" }],
      { logY: true, xLabel: "step", yLabel: "loss (log)", w: 420, h: 240, testid: "gd-loss", marker: upto }));
    plot.replaceChildren(svg.node()!);
    // Animate: reveal the path a few steps per frame (the whole run is already computed).
    window.clearInterval(timer);
    let k = 0;
    const per = Math.max(1, Math.ceil(finite.length / 60));
    const frame = () => {
      k = Math.min(finite.length, k + per);
      const seg = finite.slice(0, k).map((p) => px(p.slice(0, surf!.dim), p[surf!.dim]));
      pathEl.attr("d", d3.line()(seg));
      dots.selectAll("circle").data(seg).join("circle").attr("r", 1.8).attr("cx", (d) => d[0]).attr("cy", (d) => d[1]).attr("class", "gddot");
      if (seg.length) ball.attr("cx", seg[seg.length - 1][0]).attr("cy", seg[seg.length - 1][1]);
      drawLoss(Math.round((k / finite.length) * (r.losses.length - 1)));
      if (k >= finite.length) { window.clearInterval(timer); pathEl.attr("data-done", "1"); }
    };
    frame();
    timer = window.setInterval(frame, 30);
    const last = r.path[r.path.length - 1];
    stats.replaceChildren(
      stat("surface", surf.formula), stat("steps taken", String(r.steps), "steps"),
      stat("start", r.path[0].map((v) => (v ?? NaN).toFixed(2)).join(", ")),
      stat("end", last.map((v) => (v == null ? "∞" : Math.abs(v) > 1e4 ? v.toExponential(1) : v.toFixed(3))).join(", "), "end"),
      stat("final loss", r.final_loss == null ? "∞" : r.final_loss.toExponential(3), "loss"),
      stat("minimum", `${surf.minimum.join(", ")} (★)`),
    );
    banner.hidden = !r.diverged;
    banner.textContent = r.diverged ? `Diverged: ${r.reason}. Lower the learning rate.` : "";
  }

  async function run(): Promise<void> {
    err.hidden = true;
    lr.out.textContent = lr.get().toPrecision(2);
    try {
      if (!surf || surf.name !== surface.value) {
        surf = await getJSON<Surf>(`/api/foundations/surface/${surface.value}`);
        start = null;
      }
      const body: Record<string, unknown> = { surface: surface.value, optimizer: opt.value, lr: lr.get(), momentum: Number(mom.input.value), steps: Number(steps.input.value) };
      if (start) { body.x0 = start[0]; if (surf.dim === 2) body.y0 = start[1]; }
      const my = ++seq;
      const r = await postJSON<Run>("/api/foundations/descent", body);
      if (my !== seq) return;  // a newer request is on its way: show only the latest
      setSources(r.sources);
      show(r);
    } catch (e) { showError(err, e); }
  }
  const rerun = debounce(run, 100);
  [lr.input, mom.input, steps.input].forEach((i) => i.addEventListener("input", rerun));
  [surface, opt].forEach((s) => s.addEventListener("change", run));
  opt.addEventListener("change", () => { mom.input.disabled = opt.value !== "momentum"; });
  mom.input.disabled = true;

  root.replaceChildren(head,
    el("section", { class: "controls" }, labeled("surface", surface), labeled("optimizer", opt),
      labeled("learning rate", el("span", {}, lr.input, lr.out)), labeled("momentum", el("span", {}, mom.input, mom.out)),
      labeled("steps", el("span", {}, steps.input, steps.out)),
      el("button", { onclick: () => run(), "data-testid": "gd-replay" }, "▶ replay")),
    err, banner,
    el("div", { class: "split" }, el("div", {}, plot, el("p", { class: "muted small" }, "Click the surface to start from there. ★ is the minimum; contours are log-spaced.")), el("div", {}, loss, stats)),
    el("p", { class: "muted small" }, "Plain GD on the bowl is stable only for lr < 2/20 = 0.1 (its steepest curvature is 20); heavy-ball momentum β stretches that to 2(1+β)/20. Adam's step is about lr in every coordinate, whatever the curvature."));
  run();
}

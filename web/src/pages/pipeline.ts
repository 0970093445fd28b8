// The pipeline: the course's stages as the playground's map (pretrain → SFT → reward model →
// PPO/DPO/GRPO → evaluation, prompting, RAG and the foundations beside them). Each box links
// to its pages and shows the runs made there; arrows between run chips show which run each
// one started from. Stages, parents and the next step all come from llmlab.lab.lineage.
import * as d3 from "d3";
import { getJSON } from "../api";
import { el, pageHeader, showError } from "../ui";

interface Parent { role: string; run: string | null; name: string }
interface PRun {
  id: string; label: string; kind: string; status: string; step: number; max_steps: number | null;
  model: string | null; stage: string; page: string | null; parents: Parent[];
}
interface PStage {
  id: string; title: string; what: string; main: boolean; near: string; optional: boolean;
  pages: { id: string; title: string }[]; runs: PRun[]; state: string;
}
interface Pipeline {
  stages: PStage[]; edges: { from: string; to: string; role: string }[];
  flows: { from: string; to: string; label: string }[]; current: string | null; next: string | null; n_runs: number; sources: string[];
}

const BW = 204, GAP = 52, PAD = 8, LINE = 14, MAX_RUNS = 5, TOP = 44;
const ROLE_CLS: Record<string, string> = { model: "lin-model", adapter: "lin-adapter", reward_model: "lin-reward" };
const ACTIVE = ["running", "stopping"];

const cut = (s: string, n: number) => (s.length > n ? s.slice(0, n - 1) + "…" : s);
const cutLeft = (s: string, n: number) => (s.length > n ? "…" + s.slice(s.length - n + 1) : s);
// Run ids are KIND-DATE-TIME-HEX: the date is dropped on the chips (the tooltip has it all).
const short = (id: string) => id.replace(/^([a-z]+)-\d{8}-(\d{6}-[0-9a-f]+)$/, "$1-$2");
const ROLE_NAME: Record<string, string> = { model: "model", adapter: "adapter", reward_model: "reward" };
const parentText = (p: Parent) => `← ${ROLE_NAME[p.role] ?? p.role}: ` + (p.run ? cut(short(p.run), 20) : p.name.includes("/") ? cutLeft(p.name, 20) : cut(p.name, 21));
const wrap = (s: string, n: number) => s.split(" ").reduce<string[]>((ls, w) => {
  if (ls.length && (ls[ls.length - 1] + " " + w).length <= n) ls[ls.length - 1] += " " + w; else ls.push(w);
  return ls;
}, []);
const chipLines = (r: PRun) => 2 + Math.max(1, r.parents.length);
const chipH = (r: PRun) => chipLines(r) * LINE + 6;

interface Box { s: PStage; x: number; y: number; w: number; h: number }

function headH(s: PStage): number { return 40 + s.pages.length * 16 + 6; }
function runsH(s: PStage): number {
  const shown = s.runs.slice(0, MAX_RUNS);
  return shown.reduce((a, r) => a + chipH(r) + 4, 0) + (s.runs.length > MAX_RUNS ? LINE : 0) + (s.main && !s.runs.length ? LINE : 0);
}

function draw(p: Pipeline): SVGSVGElement {
  const main = p.stages.filter((s) => s.main), side = p.stages.filter((s) => !s.main);
  const mainH = Math.max(...main.map((s) => headH(s) + runsH(s) + PAD));
  const sideH = Math.max(...side.map((s) => headH(s) + PAD));
  const boxes = new Map<string, Box>();
  main.forEach((s, i) => boxes.set(s.id, { s, x: i * (BW + GAP), y: TOP, w: BW, h: mainH }));
  const sideY = TOP + mainH + 56;
  side.forEach((s, i) => {
    const near = boxes.get(s.near);
    boxes.set(s.id, { s, x: near ? near.x : i * (BW + GAP), y: sideY, w: BW, h: sideH });
  });
  const W = main.length * (BW + GAP) - GAP + 2, H = sideY + sideH + 40;
  const svg = d3.create("svg").attr("width", W).attr("height", H).attr("class", "pipeline").attr("data-testid", "pipeline");
  const defs = svg.append("defs");
  for (const cls of ["flow", ...Object.values(ROLE_CLS)]) {
    defs.append("marker").attr("id", `arrow-${cls}`).attr("viewBox", "0 0 10 10").attr("refX", 9).attr("refY", 5)
      .attr("markerWidth", 7).attr("markerHeight", 7).attr("orient", "auto-start-reverse")
      .append("path").attr("d", "M0,0L10,5L0,10z").attr("class", `head ${cls}`);
  }

  // The pipeline's own arrows, labelled with what each stage hands on.
  const flows = svg.append("g");
  for (const f of p.flows) {
    const a = boxes.get(f.from), b = boxes.get(f.to);
    if (!a || !b) continue;
    const adjacent = Math.abs(b.x - a.x - BW - GAP) < 1;
    const g = flows.append("g").attr("data-testid", `flow-${f.from}-${f.to}`);
    if (adjacent) {
      const y = a.y + 18;
      g.append("path").attr("class", "flow").attr("d", `M${a.x + a.w},${y}H${b.x - 2}`).attr("marker-end", "url(#arrow-flow)");
    } else {  // past a stage it may skip: over the top of the row
      const x1 = a.x + a.w * 0.35, x2 = b.x + b.w * 0.4, y = a.y;  // clear of the badges on the right
      g.append("path").attr("class", "flow skip").attr("d", `M${x1},${y}C${x1},${y - 30} ${x2},${y - 30} ${x2},${y - 2}`).attr("marker-end", "url(#arrow-flow)");
      g.append("text").attr("class", "flowlbl").attr("x", (x1 + x2) / 2).attr("y", y - 27).attr("text-anchor", "middle").text(f.label);
      continue;
    }
    // Under the arrow, in the gap between the boxes, a few words a line.
    wrap(f.label, 9).forEach((t, i) => g.append("text").attr("class", "flowlbl").attr("x", a.x + a.w + GAP / 2)
      .attr("y", a.y + 34 + i * 11).attr("text-anchor", "middle").text(t));
  }
  // Side stages hang beside the stage they belong to.
  for (const s of side) {
    const a = boxes.get(s.id)!, b = boxes.get(s.near);
    if (b) svg.append("path").attr("class", "beside").attr("d", `M${a.x + a.w / 2},${a.y}V${b.y + b.h}`);
  }

  const chips = new Map<string, { x: number; y: number; w: number; h: number }>();
  const gBoxes = svg.append("g");
  for (const { s, x, y, w, h } of boxes.values()) {
    const isNext = p.next === s.id, isHere = p.current === s.id;
    const g = gBoxes.append("g").attr("data-testid", `stage-${s.id}`).attr("data-state", s.state)
      .attr("data-next", isNext ? "1" : null).attr("data-current", isHere ? "1" : null)
      .attr("class", `stagebox ${s.main ? "main" : "side"} ${s.state ? "st-" + s.state : ""} ${isNext ? "next" : ""}`);
    g.append("rect").attr("class", "box").attr("x", x).attr("y", y).attr("width", w).attr("height", h).attr("rx", 8);
    const first = s.pages[0];
    g.append("a").attr("href", `#/${first.id}`).attr("data-testid", `stage-title-${s.id}`)
      .append("text").attr("class", "stitle").attr("x", x + PAD).attr("y", y + 18).text(s.title);
    const badge = isNext ? "next" : isHere ? "you are here" : s.state === "done" ? "✓ done" : s.state === "running" ? "running" : s.optional ? "optional" : "";
    if (badge) g.append("text").attr("class", `badge ${isNext ? "next" : ""}`).attr("data-testid", `stage-badge-${s.id}`)
      .attr("x", x + w - 4).attr("y", y - 5).attr("text-anchor", "end").text(badge);
    g.append("text").attr("class", "swhat").attr("x", x + PAD).attr("y", y + 33).text(cut(s.what, 32));
    s.pages.forEach((pg, i) => {
      g.append("a").attr("href", `#/${pg.id}`).attr("data-testid", `stage-link-${s.id}-${pg.id}`)
        .append("text").attr("class", "plink").attr("x", x + PAD + 4).attr("y", y + 52 + i * 16).text(`▸ ${pg.title}`);
    });
    let cy = y + headH(s);
    if (s.main && !s.runs.length) g.append("text").attr("class", "norun").attr("x", x + PAD).attr("y", cy + 10).text("no runs yet");
    for (const r of s.runs.slice(0, MAX_RUNS)) {
      const ch = chipH(r);
      chips.set(r.id, { x: x + PAD, y: cy, w: w - 2 * PAD, h: ch });
      const c = g.append("a").attr("href", `#/${r.page ?? first.id}`).append("g").attr("data-testid", `run-${r.id}`)
        .attr("data-status", r.status).attr("data-parents", r.parents.map((q) => q.run ?? q.name).join(","))
        .attr("class", `runchip rs-${r.status}`);
      c.append("title").text(`${r.id} (${r.kind}): ${r.status}` + r.parents.map((q) => `\n${q.role}: ${q.name}`).join(""));
      c.append("rect").attr("x", x + PAD).attr("y", cy).attr("width", w - 2 * PAD).attr("height", ch).attr("rx", 5);
      const tx = x + PAD + 5;
      c.append("text").attr("class", "rname").attr("x", tx).attr("y", cy + LINE).text(cut(r.label || short(r.id), 27));
      const of = r.max_steps ? `/${r.max_steps}` : "";
      c.append("text").attr("class", "rstat").attr("x", tx).attr("y", cy + 2 * LINE).text(`${r.kind} · ${r.status} · step ${r.step}${of}`);
      const lines = r.parents.length ? r.parents.map(parentText) : [r.kind === "pretrain" ? "← from scratch" : "← default model"];
      lines.forEach((t, i) => c.append("text").attr("class", "rparent").attr("data-testid", `run-parent-${r.id}-${i}`)
        .attr("x", tx).attr("y", cy + (3 + i) * LINE).text(t));
      cy += ch + 4;
    }
    if (s.runs.length > MAX_RUNS) g.append("text").attr("class", "norun").attr("x", x + PAD).attr("y", cy + 10).text(`+ ${s.runs.length - MAX_RUNS} older runs`);
  }

  // Lineage: an arrow from each parent run's chip to its child's, coloured by role.
  const gEdges = svg.append("g").attr("class", "edges");
  for (const e of p.edges) {
    const a = chips.get(e.from), b = chips.get(e.to);
    if (!a || !b) continue;
    const cls = ROLE_CLS[e.role] ?? "lin-model";
    const y1 = a.y + a.h / 2, y2 = b.y + b.h / 2;
    const d = b.x > a.x + a.w
      ? `M${a.x + a.w},${y1}C${a.x + a.w + 30},${y1} ${b.x - 30},${y2} ${b.x - 1},${y2}`
      : `M${a.x},${y1}C${a.x - 28},${y1} ${b.x - 28},${y2} ${b.x - 1},${y2}`;  // same stage: a loop on the left
    gEdges.append("path").attr("class", `lineage ${cls}`).attr("data-testid", `edge-${e.from}-${e.to}`)
      .attr("d", d).attr("marker-end", `url(#arrow-${cls})`);
  }
  // Legend.
  const lg = svg.append("g").attr("transform", `translate(0,${H - 14})`);
  [["lin-model", "started from its model"], ["lin-adapter", "its adapter"], ["lin-reward", "its reward model"]].forEach(([cls, t], i) => {
    lg.append("path").attr("class", `lineage ${cls}`).attr("d", `M${i * 200},0h28`).attr("marker-end", `url(#arrow-${cls})`);
    lg.append("text").attr("x", i * 200 + 34).attr("y", 4).text(t);
  });
  lg.append("text").attr("x", 620).attr("y", 4).attr("class", "muted").text("boxes: green = has a model, dashed blue = next step");
  return svg.node()!;
}

export function pipelinePage(root: HTMLElement): void {
  const head = pageHeader("pipeline", "The pipeline: how a chat model is made");
  const err = el("div", { class: "error", hidden: true, "data-testid": "pl-error" });
  const where = el("p", { class: "muted", "data-testid": "pl-where" });
  const map = el("div", { class: "plmap" });
  root.replaceChildren(head.root, where, err, map);
  let timer: number | undefined;
  const load = () => getJSON<Pipeline>("/api/pipeline").then((p) => {
    if (!root.contains(map)) return;  // the learner went to another page
    err.hidden = true;
    head.setSources(p.sources);
    const n = p.n_runs;
    const title = (id: string | null) => p.stages.find((s) => s.id === id)?.title ?? "";
    where.textContent = (n ? `${n} run${n > 1 ? "s" : ""} so far; the newest at ${title(p.current)}. ` : "No runs yet. ")
      + (p.next ? `Next step: ${title(p.next)}.` : "You have been through the whole pipeline.");
    map.replaceChildren(draw(p));
    // While a run trains, follow its status and step.
    if (p.stages.some((s) => s.runs.some((r) => ACTIVE.includes(r.status)))) timer = window.setTimeout(load, 3000);
  }).catch((e) => showError(err, e));
  clearTimeout(timer);
  load();
}

// A D3 heatmap: rows = queries, columns = keys. Labels use .text(), so tokens are escaped.
import * as d3 from "d3";

export interface HeatOpts {
  rowLabels?: string[];
  colLabels?: string[];
  cell?: number;
  selectedRow?: number | null;
  marked?: Set<number>; // columns to mark in the selected row (its top keys)
  onRow?: (i: number) => void;
  onCell?: (i: number, j: number) => void; // a click on one cell (row i, column j)
  color?: (v: number) => string;
  title?: string;
  testid?: string;
}

export function heatmap(values: (number | null)[][], o: HeatOpts = {}): SVGSVGElement {
  const rows = values.length, cols = rows ? values[0].length : 0;
  const cell = o.cell ?? Math.max(6, Math.min(28, Math.floor(460 / Math.max(rows, cols, 1))));
  const left = o.rowLabels ? 90 : 4, top = o.colLabels ? 70 : (o.title ? 16 : 4);
  const w = left + cols * cell + 4, h = top + rows * cell + 4;
  const color = o.color ?? ((v: number) => d3.interpolateBlues(Math.sqrt(v)));
  const svg = d3.create("svg").attr("width", w).attr("height", h).attr("class", "heatmap");
  if (o.testid) svg.attr("data-testid", o.testid);
  if (o.title) svg.append("text").attr("x", left).attr("y", 11).attr("class", "htitle").text(o.title);
  const g = svg.append("g").attr("transform", `translate(${left},${top})`);
  const flat = values.flatMap((row, i) => row.map((v, j) => ({ i, j, v })));
  g.selectAll("rect.c").data(flat).join("rect")
    .attr("class", "c")
    .attr("x", (d) => d.j * cell).attr("y", (d) => d.i * cell)
    .attr("width", cell - 1).attr("height", cell - 1)
    .attr("fill", (d) => (d.v == null ? "#f3f3f3" : color(d.v)))
    .attr("data-w", (d) => (d.v == null ? "" : d.v.toFixed(4)))
    .attr("data-i", (d) => d.i).attr("data-j", (d) => d.j)
    .on("click", (_, d) => { o.onRow?.(d.i); o.onCell?.(d.i, d.j); })
    .append("title").text((d) => `${o.rowLabels?.[d.i] ?? d.i} → ${o.colLabels?.[d.j] ?? d.j}: ${d.v == null ? "masked" : d.v.toFixed(4)}`);
  if (o.rowLabels) {
    svg.append("g").selectAll("text").data(o.rowLabels).join("text")
      .attr("x", left - 4).attr("y", (_, i) => top + i * cell + cell / 2 + 4)
      .attr("text-anchor", "end").attr("class", (_, i) => (i === o.selectedRow ? "lbl sel" : "lbl"))
      .style("cursor", "pointer").on("click", (_, d) => o.onRow?.(o.rowLabels!.indexOf(d)))
      .text((d) => d);
  }
  if (o.colLabels) {
    svg.append("g").selectAll("text").data(o.colLabels).join("text")
      .attr("transform", (_, j) => `translate(${left + j * cell + cell / 2 + 4},${top - 4}) rotate(-60)`)
      .attr("class", (_, j) => (o.marked?.has(j) ? "lbl key" : "lbl"))
      .text((d) => d);
  }
  if (o.selectedRow != null && o.selectedRow < rows) {
    g.append("rect").attr("class", "rowsel").attr("data-testid", "row-highlight")
      .attr("data-row", o.selectedRow)
      .attr("x", -1).attr("y", o.selectedRow * cell - 1)
      .attr("width", cols * cell + 1).attr("height", cell + 1);
    for (const j of o.marked ?? []) {
      g.append("rect").attr("class", "keysel").attr("x", j * cell).attr("y", o.selectedRow * cell)
        .attr("width", cell - 1).attr("height", cell - 1);
    }
  }
  return svg.node()!;
}

export const diverging = (v: number) => d3.interpolateRdBu(0.5 - v / 2);

// Small SVG charts for the operator page: lines over time, stacked bars over time, and bars by name.
// Each chart also says what it shows in words (its aria-label and <title>), for screen readers and
// for people who would rather read a number.

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 600;
const HEIGHT = 140;
const PAD = 24;
const RIGHT = WIDTH - 8; // room for the last point's dot

export interface Series {
  name: string;
  className: string;
  values: (number | null)[]; // null: no figure for that point
}

function svgNode<K extends keyof SVGElementTagNameMap>(tag: K, attributes: Record<string, string | number>): SVGElementTagNameMap[K] {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  return node;
}

function frame(svg: SVGSVGElement, summary: string, top: number): void {
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${WIDTH} ${HEIGHT}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", summary);
  const title = svgNode("title", {});
  title.textContent = summary;
  svg.append(title, svgNode("line", { x1: PAD, y1: HEIGHT - PAD, x2: RIGHT, y2: HEIGHT - PAD, class: "axis" }));
  const label = svgNode("text", { x: 0, y: PAD - 8, class: "tick" });
  label.textContent = String(top);
  svg.append(label);
}

function scale(top: number): (value: number) => number {
  return (value) => HEIGHT - PAD - (value / top) * (HEIGHT - 2 * PAD);
}

/** One line per series over the same points (e.g. the last 60 minutes). */
export function lineChart(svg: SVGSVGElement, series: Series[], summary: string): void {
  const top = Math.max(1, ...series.flatMap((s) => s.values.filter((v): v is number => v !== null)));
  frame(svg, summary, top);
  const y = scale(top);
  for (const s of series) {
    const step = (RIGHT - PAD) / Math.max(1, s.values.length - 1);
    const points = s.values.flatMap((value, i) => (value === null ? [] : [[PAD + i * step, y(value)]]));
    svg.append(svgNode("polyline", { points: points.join(" "), class: `series ${s.className}`, "data-series": s.name }));
    // Each figure as a dot too: minutes nobody sampled leave gaps, and a lone figure has no line.
    for (const [x, at] of points) svg.append(svgNode("circle", { cx: x, cy: at, r: 3, class: `series ${s.className}` }));
  }
}

/** Bars stacked per point (e.g. jobs ended each minute, by how). */
export function stackedBars(svg: SVGSVGElement, series: Series[], summary: string): void {
  const points = series[0]?.values.length ?? 0;
  const totals = Array.from({ length: points }, (_, i) => series.reduce((sum, s) => sum + (s.values[i] ?? 0), 0));
  const top = Math.max(1, ...totals);
  frame(svg, summary, top);
  const y = scale(top);
  const width = (RIGHT - PAD) / Math.max(1, points);
  for (let i = 0; i < points; i++) {
    let base = 0;
    for (const s of series) {
      const value = s.values[i] ?? 0;
      if (!value) continue;
      svg.append(svgNode("rect", {
        x: PAD + i * width + 1, y: y(base + value), width: Math.max(1, width - 2), height: y(base) - y(base + value),
        class: `series ${s.className}`, "data-series": s.name,
      }));
      base += value;
    }
  }
}

/** One bar per name (e.g. failures by error code), longest first, as an HTML list of labelled bars. */
export function barsByName(list: HTMLElement, counts: Map<string, number>, empty: string): void {
  list.replaceChildren();
  const top = Math.max(1, ...counts.values());
  const sorted = [...counts.entries()].sort((a, b) => b[1] - a[1]);
  if (sorted.length === 0) {
    const item = document.createElement("li");
    item.className = "hint";
    item.textContent = empty;
    list.append(item);
  }
  for (const [name, count] of sorted) {
    const item = document.createElement("li");
    const label = document.createElement("span");
    label.textContent = `${name}: ${count}`;
    const bar = document.createElement("span");
    bar.className = "hbar";
    bar.style.width = `${(count / top) * 100}%`;
    item.append(label, bar);
    list.append(item);
  }
}

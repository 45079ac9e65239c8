// Charts on uPlot (vendored: static/vendor/uPlot.iife.min.js sets window.uPlot).
// Every chart's container carries what it shows, for people and tests alike:
//   data-points = the number of plotted (non-null) points, data-series = {"name": points, ...} as JSON.

import {h, clear} from "./dom.js";

export const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#be185d",
                        "#4d7c0f", "#7c3aed", "#b45309", "#0f766e", "#64748b"];

// Tick spacings of an integer x axis (steps, epochs): 1, 2, 5, 10, 20, 50, ...
const INTEGER_STEPS = Array.from({length: 30}, (_, i) => [1, 2, 5][i % 3] * 10 ** Math.floor(i / 3));

const uPlotLib = () => {
  if (!window.uPlot) throw new Error("the chart library (static/vendor/uPlot.iife.min.js) did not load");
  return window.uPlot;
};

function axisValue(v) {
  if (v === null || v === undefined) return "";
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential(1);
  return String(Number(v.toPrecision(4)));
}

/** Points by series name, each a Map x -> y (a point sent twice, by history and live, counts once). */
export class SeriesStore {
  constructor() {
    this.series = new Map();
  }

  add(name, x, y) {
    let points = this.series.get(name);
    if (!points) this.series.set(name, (points = new Map()));
    points.set(x, typeof y === "number" && Number.isFinite(y) ? y : null);
  }

  names() {
    return [...this.series.keys()];
  }

  get(name) {
    return this.series.get(name) || new Map();
  }
}

/** [xs, ys1, ys2, ...] over the sorted union of the series' x values (null where one has no point). */
export function align(seriesMaps) {
  const xs = new Set();
  for (const points of seriesMaps) for (const x of points.keys()) xs.add(x);
  const sorted = [...xs].sort((a, b) => a - b);
  return [sorted, ...seriesMaps.map((points) => sorted.map((x) => (points.has(x) ? points.get(x) : null)))];
}

function countPoints(ys) {
  let n = 0;
  for (const y of ys) if (y !== null && y !== undefined) n++;
  return n;
}

/**
 * A line chart of named series sharing one x axis. update(Map name -> Map x -> y) redraws it
 * (recreated when the set of series changes, else new data only).
 */
export class LineChart {
  constructor(container, {title, xLabel = "step", yLabel = "", height = 240, labels = {}, markers = false,
                          bold = [], emptyText = "No points yet."} = {}) {
    this.container = container;
    this.options = {title, xLabel, yLabel, height, labels, markers, bold, emptyText};
    this.plot = null;
    this.names = [];
    container.classList.add("chart");
    this.body = h("div", {class: "chart-body"});
    container.replaceChildren(h("h3", {class: "chart-title"}, title), this.body);
    container.dataset.points = "0";
    container.dataset.series = "{}";
    this.showEmpty();
    this.resizer = new ResizeObserver(() => this.resize());
    this.resizer.observe(container);
  }

  showEmpty() {
    clear(this.body).append(h("p", {class: "chart-empty"}, this.options.emptyText));
  }

  width() {
    return Math.max(240, Math.floor(this.body.clientWidth || this.container.clientWidth || 600));
  }

  resize() {
    if (this.plot && Math.abs(this.plot.width - this.width()) > 2) {
      this.plot.setSize({width: this.width(), height: this.options.height});
    }
  }

  makeOptions(names) {
    const {xLabel, yLabel, height, labels, markers, bold} = this.options;
    return {
      width: this.width(),
      height,
      scales: {x: {time: false}},
      legend: {live: true},
      cursor: {drag: {x: true, y: false}},
      series: [
        {label: xLabel, value: (u, v) => (v === null || v === undefined ? "–" : String(v))},
        ...names.map((name, i) => ({
          label: labels[name] || name,
          stroke: PALETTE[i % PALETTE.length],
          width: bold.includes(name) ? 2.25 : 1.5,
          spanGaps: true,
          points: {show: markers ? true : undefined, size: 6},
          value: (u, v) => (v === null || v === undefined ? "–" : axisValue(v)),
        })),
      ],
      axes: [
        {label: xLabel, size: 40, incrs: INTEGER_STEPS},
        {label: yLabel, size: 64, values: (u, splits) => splits.map(axisValue)},
      ],
    };
  }

  update(seriesByName) {
    const names = [...seriesByName.keys()];
    const data = align(names.map((n) => seriesByName.get(n)));
    const counts = {};
    names.forEach((n, i) => { counts[n] = countPoints(data[i + 1]); });
    const total = Object.values(counts).reduce((a, b) => a + b, 0);
    this.container.dataset.points = String(total);
    this.container.dataset.series = JSON.stringify(counts);
    if (total === 0) {
      this.destroyPlot();
      this.showEmpty();
      return;
    }
    const sameSeries = this.plot && names.length === this.names.length && names.every((n, i) => n === this.names[i]);
    if (sameSeries) {
      this.plot.setData(data);
      return;
    }
    this.destroyPlot();
    this.names = names;
    clear(this.body);
    const UPlot = uPlotLib();
    this.plot = new UPlot(this.makeOptions(names), data, this.body);
  }

  destroyPlot() {
    if (this.plot) {
      this.plot.destroy();
      this.plot = null;
      this.names = [];
    }
  }

  destroy() {
    this.resizer.disconnect();
    this.destroyPlot();
  }
}

/**
 * Points with error bars, one x position per category (a sweep's cells): series [{name, means,
 * stds}], categories = x labels. Drawn on uPlot's canvas in its draw hook, the series side by side.
 */
export class ErrorBarChart {
  constructor(container, {title, yLabel = "", height = 280} = {}) {
    this.container = container;
    this.options = {title, yLabel, height};
    this.plot = null;
    container.classList.add("chart");
    this.body = h("div", {class: "chart-body"});
    container.replaceChildren(h("h3", {class: "chart-title"}, title), this.body);
    container.dataset.points = "0";
    this.resizer = new ResizeObserver(() => {
      if (this.plot) this.plot.setSize({width: this.width(), height: this.options.height});
    });
    this.resizer.observe(container);
  }

  width() {
    return Math.max(240, Math.floor(this.body.clientWidth || this.container.clientWidth || 600));
  }

  update(categories, series) {
    const counts = {};
    for (const s of series) counts[s.name] = countPoints(s.means);
    const total = Object.values(counts).reduce((a, b) => a + b, 0);
    this.container.dataset.points = String(total);
    this.container.dataset.series = JSON.stringify(counts);
    if (this.plot) { this.plot.destroy(); this.plot = null; }
    if (total === 0) {
      clear(this.body).append(h("p", {class: "chart-empty"}, "No finished runs yet."));
      return;
    }
    clear(this.body);
    const xs = categories.map((_, i) => i);
    let lo = Infinity, hi = -Infinity;
    for (const s of series) {
      s.means.forEach((m, i) => {
        if (m === null || m === undefined) return;
        const sd = s.stds[i] || 0;
        lo = Math.min(lo, m - sd);
        hi = Math.max(hi, m + sd);
      });
    }
    const pad = Math.max((hi - lo) * 0.15, 0.5);
    const n = series.length;
    const drawBars = (u) => {
      const {ctx} = u;
      ctx.save();
      ctx.lineWidth = 1.5 * devicePixelRatio;
      series.forEach((s, k) => {
        const dx = (k - (n - 1) / 2) * 14 * devicePixelRatio;
        ctx.strokeStyle = ctx.fillStyle = PALETTE[k % PALETTE.length];
        s.means.forEach((m, i) => {
          if (m === null || m === undefined) return;
          const sd = s.stds[i] || 0;
          const x = u.valToPos(i, "x", true) + dx;
          const y = u.valToPos(m, "y", true);
          const y0 = u.valToPos(m - sd, "y", true);
          const y1 = u.valToPos(m + sd, "y", true);
          const cap = 4 * devicePixelRatio;
          ctx.beginPath();
          ctx.moveTo(x, y0); ctx.lineTo(x, y1);
          ctx.moveTo(x - cap, y0); ctx.lineTo(x + cap, y0);
          ctx.moveTo(x - cap, y1); ctx.lineTo(x + cap, y1);
          ctx.stroke();
          ctx.beginPath();
          ctx.arc(x, y, 4 * devicePixelRatio, 0, 2 * Math.PI);
          ctx.fill();
        });
      });
      ctx.restore();
    };
    const opts = {
      width: this.width(),
      height: this.options.height,
      scales: {
        x: {time: false, range: () => [-0.5, Math.max(0.5, categories.length - 0.5)]},
        y: {range: () => [lo - pad, hi + pad]},
      },
      legend: {live: true},
      cursor: {drag: {x: false, y: false}, points: {show: false}},
      series: [
        {label: "cell", value: (u, v) => (v === null || v === undefined ? "–" : categories[v] ?? String(v))},
        ...series.map((s, k) => ({
          label: s.name,
          stroke: PALETTE[k % PALETTE.length],
          paths: () => null,
          points: {show: false},
          value: (u, v, si, i) => {
            if (i === null || i === undefined || s.means[i] === null || s.means[i] === undefined) return "–";
            return `${s.means[i].toFixed(2)} ± ${(s.stds[i] || 0).toFixed(2)}`;
          },
        })),
      ],
      axes: [
        {splits: () => xs, values: (u, splits) => splits.map((i) => categories[i] ?? ""), size: 50,
         label: "cell"},
        {label: this.options.yLabel, size: 60, values: (u, splits) => splits.map(axisValue)},
      ],
      hooks: {draw: [drawBars]},
    };
    const UPlot = uPlotLib();
    this.plot = new UPlot(opts, [xs, ...series.map((s) => s.means.map((m) => m ?? null))], this.body);
  }

  destroy() {
    this.resizer.disconnect();
    if (this.plot) this.plot.destroy();
  }
}

// Compare jobs: val_top1 curves overlaid (x = epoch), final and best metrics, and the spec paths
// in which the jobs differ.

import {fetchAll, request} from "../api.js";
import {LineChart} from "../charts.js";
import {ACTIVE, archLine, datasetLine, errorBox, fmtNumber, fmtPercent, h, shortId, statusBadge} from "../dom.js";
import {leafText, specDiff} from "../spec.js";

const MAX_JOBS = 12;
const REFRESH_MS = 10000;

export function renderCompare(view, {params}) {
  const ids = [...new Set((params.get("ids") || "").split(",").map((s) => s.trim()).filter(Boolean))]
    .slice(0, MAX_JOBS);
  const controller = new AbortController();
  const {signal} = controller;
  const chartEl = h("div", {class: "chart-card", id: "compare-chart"});
  const chart = new LineChart(chartEl, {title: "Validation top-1 (%) by epoch", xLabel: "epoch", yLabel: "%",
                                        markers: true, emptyText: "No evaluation yet."});
  const metrics = h("div", {class: "table-wrap"});
  const diff = h("div", {class: "table-wrap"});
  const problems = h("div", {});
  let timer = null;

  view.append(
    h("div", {class: "page-head"}, h("h1", {}, `Compare ${ids.length} jobs`),
      h("div", {class: "toolbar"}, h("a", {href: "#/jobs", class: "button"}, "Back to the list"))),
    problems,
    h("div", {}, ids.length < 2 ? h("p", {class: "notice"}, "Select two jobs or more in the list to compare them.") : null),
    h("section", {}, chartEl),
    h("section", {class: "card"}, h("h2", {}, "Metrics"), metrics),
    h("section", {class: "card"}, h("h2", {}, "Spec differences"), diff));

  const label = (job) => `${shortId(job.id)} ${job.spec?.method?.name ?? ""}`.trim();

  function renderMetrics(jobs) {
    const rows = jobs.map((job) => {
      const final = job.result?.final_metrics || {};
      const best = job.result?.best_metrics || {};
      const latest = job.latest_metrics || {};
      return h("tr", {dataset: {jobId: job.id}},
        h("td", {}, h("a", {href: `#/jobs/${job.id}`, class: "mono"}, shortId(job.id))),
        h("td", {}, statusBadge(job.status, job.phase)),
        h("td", {}, job.spec?.method?.name ?? "–"),
        h("td", {}, archLine(job.spec)),
        h("td", {}, datasetLine(job.spec)),
        h("td", {class: "num final-top1"}, fmtPercent(final.val_top1 ?? latest.val_top1)),
        h("td", {class: "num best-top1"}, fmtPercent(best.val_top1),
          typeof best.epoch === "number" ? h("span", {class: "muted"}, ` (epoch ${best.epoch + 1})`) : null),
        h("td", {class: "num"}, fmtPercent(final.val_top5 ?? latest.val_top5)),
        h("td", {class: "num"}, fmtNumber(final.val_loss ?? latest.val_loss)),
        h("td", {class: "num"}, fmtNumber(final.train_loss ?? latest.train_loss)));
    });
    metrics.replaceChildren(h("table", {class: "data-table", id: "compare-metrics"},
      h("thead", {}, h("tr", {}, ["Job", "Status", "Method", "Student ← teacher", "Dataset"].map((t) => h("th", {}, t)),
        ["Final top-1", "Best top-1", "Final top-5", "Final val loss", "Final train loss"]
          .map((t) => h("th", {class: "num"}, t)))),
      h("tbody", {}, rows)));
  }

  function renderDiff(jobs) {
    const rows = specDiff(jobs.map((j) => j.spec));
    if (!rows.length) {
      diff.replaceChildren(h("p", {class: "muted", id: "spec-diff-empty"}, "The resolved specs are identical."));
      return;
    }
    diff.replaceChildren(h("table", {class: "data-table", id: "spec-diff"},
      h("thead", {}, h("tr", {}, h("th", {}, "Spec field"),
        jobs.map((j) => h("th", {}, h("a", {href: `#/jobs/${j.id}`, class: "mono"}, shortId(j.id)))))),
      h("tbody", {}, rows.map(({path, values}) => h("tr", {dataset: {path}},
        h("td", {class: "mono path"}, path),
        values.map((v) => h("td", {class: `mono${v === undefined ? " muted" : ""}`}, leafText(v))))))));
  }

  async function load() {
    const jobs = [];
    const missing = [];
    await Promise.all(ids.map(async (id, i) => {
      try {
        jobs[i] = await request(`jobs/${id}`, {signal});
      } catch (err) {
        if (signal.aborted) throw err;
        missing.push(`${shortId(id)} (${err.message})`);
      }
    }));
    const found = jobs.filter(Boolean);
    problems.replaceChildren(missing.length ? errorBox({message: `Not shown: ${missing.join(", ")}`}) : "");
    const curves = await Promise.all(found.map((job) =>
      fetchAll(`jobs/${job.id}/metrics`, {name: "val_top1"}, {signal, pageSize: 1000})));
    const series = new Map();
    const labels = {};
    found.forEach((job, i) => {
      const points = new Map(curves[i].map((p) => [p.epoch + 1, p.value]));
      series.set(job.id, points);
      labels[job.id] = label(job);
    });
    chart.options.labels = labels;
    chart.update(series);
    renderMetrics(found);
    renderDiff(found);
    view.dataset.loaded = "true";
    return found;
  }

  (async function refresh() {
    try {
      const jobs = await load();
      // Jobs still running: look again in a while.
      if (jobs.some((j) => ACTIVE.has(j.status))) {
        timer = setTimeout(refresh, REFRESH_MS);
      }
    } catch (err) {
      if (!signal.aborted) problems.replaceChildren(errorBox(err));
    }
  })();

  return () => {
    controller.abort();
    clearTimeout(timer);
    chart.destroy();
  };
}

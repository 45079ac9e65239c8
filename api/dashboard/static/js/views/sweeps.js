// Sweeps: the list, and one sweep's cells (mean ± std of val_top1 over their runs) as a table and a chart.

import {request} from "../api.js";
import {ErrorBarChart} from "../charts.js";
import {ACTIVE, ageCell, archLine, datasetLine, errorBox, h, refreshAges, shortId, statusBadge} from "../dom.js";

const REFRESH_MS = 5000;

const meanStd = (m) => (m && typeof m.mean === "number"
  ? `${m.mean.toFixed(2)} ± ${(m.std ?? 0).toFixed(2)}` : "–");

function countsLine(counts) {
  return Object.entries(counts || {}).filter(([, n]) => n > 0).map(([s, n]) => `${n} ${s}`).join(", ") || "–";
}

function gridLine(grid) {
  const entries = Object.entries(grid || {});
  if (!entries.length) return "seeds only";
  return entries.map(([k, values]) => `${k} ∈ {${values.map((v) => JSON.stringify(v)).join(", ")}}`).join(" × ");
}

const valueText = (v) => (typeof v === "string" ? v : JSON.stringify(v));

export function renderSweeps(view) {
  const controller = new AbortController();
  const tbody = h("tbody", {});
  const message = h("div", {});
  const more = h("button", {id: "load-more", hidden: true, onclick: () => load(true)}, "Load more");
  let sweeps = [];
  let cursor = null;

  async function load(append = false) {
    try {
      const page = await request("sweeps", {params: {limit: 20, after: append ? cursor : null},
                                            signal: controller.signal});
      sweeps = append ? sweeps.concat(page.data) : page.data;
      cursor = page.next_cursor;
      more.hidden = !cursor;
      tbody.replaceChildren(...sweeps.map((s) => h("tr", {dataset: {sweepId: s.id, status: s.status}},
        h("td", {}, h("a", {href: `#/sweeps/${s.id}`, class: "mono"}, shortId(s.id))),
        h("td", {}, statusBadge(s.status)),
        h("td", {}, s.base?.method?.name ?? "–"),
        h("td", {}, archLine(s.base)),
        h("td", {class: "grid-line"}, gridLine(s.grid)),
        h("td", {}, (s.seeds || []).join(", ")),
        h("td", {class: "num"}, String(s.runs)),
        h("td", {}, countsLine(s.counts)),
        h("td", {}, ageCell(s.created_at)))));
      message.replaceChildren(sweeps.length ? "" : h("p", {class: "empty"}, "No sweeps yet. Submit one with ",
        h("code", {}, "hcd sweep submit"), " or ", h("code", {}, "POST /sweeps"), "."));
    } catch (err) {
      if (!controller.signal.aborted) message.replaceChildren(errorBox(err));
    }
  }

  view.append(h("div", {class: "page-head"}, h("h1", {}, "Sweeps")),
    h("div", {class: "table-wrap"}, h("table", {class: "data-table", id: "sweeps-table"},
      h("thead", {}, h("tr", {}, ["Sweep", "Status", "Method", "Student ← teacher", "Grid", "Seeds"]
        .map((t) => h("th", {}, t)), h("th", {class: "num"}, "Runs"), h("th", {}, "Jobs"), h("th", {}, "Created"))),
      tbody)),
    message, more);
  load();
  const timer = setInterval(() => {
    if (document.hidden) return;
    if (sweeps.some((s) => ACTIVE.has(s.status))) load(); else refreshAges(view);
  }, REFRESH_MS);
  return () => {
    clearInterval(timer);
    controller.abort();
  };
}

export function renderSweep(view, {id}) {
  const controller = new AbortController();
  const {signal} = controller;
  const head = h("div", {class: "page-head"});
  const summary = h("dl", {class: "summary", id: "sweep-summary"});
  const chartEl = h("div", {class: "chart-card", id: "sweep-chart"});
  const chart = new ErrorBarChart(chartEl, {title: "Validation top-1 (%) per cell: mean ± std over the runs",
                                            yLabel: "%"});
  const cells = h("div", {class: "table-wrap"});
  const problems = h("div", {});
  let timer = null;
  view.append(head, problems, summary, h("section", {}, chartEl),
    h("section", {class: "card"}, h("h2", {}, "Cells"), cells));

  function render(sweep) {
    const keys = Object.keys(sweep.grid || {});
    const jobIds = (sweep.cells || []).flatMap((c) => c.job_ids);
    head.replaceChildren(
      h("div", {class: "title-line"}, h("h1", {}, "Sweep ", h("span", {class: "mono"}, shortId(sweep.id))),
        statusBadge(sweep.status)),
      h("div", {class: "toolbar"},
        h("a", {class: "button", href: `#/jobs?sweep=${sweep.id}`}, "Its jobs"),
        jobIds.length >= 2 ? h("a", {class: "button", id: "compare-sweep",
                                     href: `#/compare?ids=${jobIds.slice(0, 12).join(",")}`}, "Compare its runs") : null));
    view.dataset.status = sweep.status;
    const rows = [
      ["Method", sweep.base?.method?.name ?? "–"],
      ["Student ← teacher", archLine(sweep.base)],
      ["Dataset", datasetLine(sweep.base)],
      ["Grid", gridLine(sweep.grid)],
      ["Seeds", (sweep.seeds || []).join(", ")],
      ["Runs", `${sweep.runs} (${countsLine(sweep.counts)})`],
      ["Created", ageCell(sweep.created_at)],
    ];
    const meta = Object.entries(sweep.metadata || {});
    if (meta.length) rows.push(["Metadata", meta.map(([k, v]) => h("span", {class: "tag"}, `${k}: ${v}`))]);
    summary.replaceChildren(...rows.map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", {}, v))));

    const list = sweep.cells || [];
    const labels = list.map((c) => (keys.length ? keys.map((k) => valueText(c.values?.[k])).join(" / ")
                                                : `cell ${c.index}`));
    cells.replaceChildren(h("table", {class: "data-table", id: "cells-table"},
      h("thead", {}, h("tr", {}, h("th", {class: "num"}, "#"), keys.map((k) => h("th", {class: "mono"}, k)),
        h("th", {class: "num"}, "Runs"), h("th", {class: "num"}, "Succeeded"),
        h("th", {class: "num"}, "Final top-1 (%)"), h("th", {class: "num"}, "Best top-1 (%)"), h("th", {}, "Jobs"))),
      h("tbody", {}, list.map((c) => h("tr", {dataset: {cell: c.index}},
        h("td", {class: "num"}, String(c.index)),
        keys.map((k) => h("td", {class: "mono"}, valueText(c.values?.[k]))),
        h("td", {class: "num"}, String(c.n)),
        h("td", {class: "num"}, String(c.succeeded)),
        h("td", {class: "num final"}, meanStd(c.val_top1),
          c.val_top1?.runs ? h("span", {class: "muted"}, ` (${c.val_top1.runs})`) : null),
        h("td", {class: "num best"}, meanStd(c.best_val_top1)),
        h("td", {class: "job-links"}, c.job_ids.map((j) => h("a", {href: `#/jobs/${j}`, class: "mono"}, shortId(j)))))))));
    chart.update(labels, [
      {name: "final top-1", means: list.map((c) => c.val_top1?.mean ?? null), stds: list.map((c) => c.val_top1?.std ?? 0)},
      {name: "best top-1", means: list.map((c) => c.best_val_top1?.mean ?? null),
       stds: list.map((c) => c.best_val_top1?.std ?? 0)},
    ]);
    view.dataset.loaded = "true";
  }

  (async function refresh() {
    try {
      const sweep = await request(`sweeps/${id}`, {signal});
      render(sweep);
      if (ACTIVE.has(sweep.status)) timer = setTimeout(refresh, REFRESH_MS);
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

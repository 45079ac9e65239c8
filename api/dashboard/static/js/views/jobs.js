// The jobs list: filters (status, sweep), cursor pagination, a selection to compare, auto-refresh.

import {request} from "../api.js";
import {
  STATUSES, ageCell, archLine, bestTop1, datasetLine, errorBox, fmtPercent, h, progressBar,
  refreshAges, shortId, statusBadge,
} from "../dom.js";

const REFRESH_MS = 5000;
const PAGE = 20;
const SELECTION_KEY = "hcd.selection";

function loadSelection() {
  try { return new Set(JSON.parse(sessionStorage.getItem(SELECTION_KEY) || "[]")); } catch { return new Set(); }
}

export const selection = loadSelection();

function saveSelection() {
  sessionStorage.setItem(SELECTION_KEY, JSON.stringify([...selection]));
}

function filterHash(status, sweep) {
  const q = new URLSearchParams();
  if (status) q.set("status", status);
  if (sweep) q.set("sweep", sweep);
  const s = q.toString();
  return s ? `#/jobs?${s}` : "#/jobs";
}

export function renderJobs(view, {params}) {
  const status = params.get("status") || "";
  const sweep = params.get("sweep") || "";
  const controller = new AbortController();
  let jobs = [];
  let nextCursor = null;

  const statusSelect = h("select", {id: "filter-status", "aria-label": "Status",
                                    onchange: () => { location.hash = filterHash(statusSelect.value, sweepSelect.value); }},
    h("option", {value: ""}, "any status"),
    STATUSES.map((s) => h("option", {value: s, selected: s === status}, s)));
  const sweepSelect = h("select", {id: "filter-sweep", "aria-label": "Sweep",
                                   onchange: () => { location.hash = filterHash(statusSelect.value, sweepSelect.value); }},
    h("option", {value: ""}, "any sweep"),
    sweep ? h("option", {value: sweep, selected: true}, `sweep ${shortId(sweep)}`) : null);
  const compareButton = h("button", {id: "compare-selected", class: "primary", onclick: () => {
    location.hash = `#/compare?ids=${[...selection].join(",")}`;
  }});
  const clearButton = h("button", {id: "clear-selection", onclick: () => {
    selection.clear();
    saveSelection();
    renderRows();
  }}, "Clear selection");
  const tbody = h("tbody", {});
  const more = h("button", {id: "load-more", hidden: true, onclick: () => load(true)}, "Load more");
  const message = h("div", {class: "list-message"});

  function updateToolbar() {
    compareButton.textContent = `Compare selected (${selection.size})`;
    compareButton.disabled = selection.size < 2;
    clearButton.disabled = selection.size === 0;
  }

  function row(job) {
    const checkbox = h("input", {type: "checkbox", class: "select-job", "aria-label": `select job ${shortId(job.id)}`,
                                 checked: selection.has(job.id), onchange: () => {
      if (checkbox.checked) selection.add(job.id); else selection.delete(job.id);
      saveSelection();
      updateToolbar();
    }});
    const top1 = bestTop1(job);
    return h("tr", {dataset: {jobId: job.id, status: job.status}},
      h("td", {class: "select"}, checkbox),
      h("td", {class: "job-id"}, h("a", {href: `#/jobs/${job.id}`, class: "mono"}, shortId(job.id)),
        job.sweep_id ? h("a", {href: `#/sweeps/${job.sweep_id}`, class: "tag", title: "a run of this sweep"},
                         `sweep ${shortId(job.sweep_id)}`) : null),
      h("td", {class: "status", title: job.error ? `${job.error.code}: ${job.error.message ?? ""}` : null},
        statusBadge(job.status, job.phase)),
      h("td", {class: "method"}, job.spec?.method?.name ?? "–"),
      h("td", {class: "arch"}, archLine(job.spec)),
      h("td", {class: "dataset"}, datasetLine(job.spec)),
      h("td", {class: "progress-cell"}, progressBar(job.progress, job.status)),
      h("td", {class: "top1 num", dataset: {value: top1 ?? ""}}, fmtPercent(top1)),
      h("td", {class: "age"}, ageCell(job.created_at)));
  }

  function renderRows() {
    tbody.replaceChildren(...jobs.map(row));
    more.hidden = !nextCursor;
    message.replaceChildren();
    if (jobs.length === 0) {
      message.append(h("p", {class: "empty"}, status || sweep
        ? "No jobs match these filters."
        : ["No jobs yet. Submit one with ", h("code", {}, "hcd submit spec.yaml"), " or ",
           h("code", {}, "POST /jobs"), "."]));
    }
    updateToolbar();
  }

  async function load(append = false) {
    const limit = append ? PAGE : Math.min(100, Math.max(PAGE, jobs.length));
    try {
      const page = await request("jobs", {
        params: {status, sweep_id: sweep, limit, after: append ? nextCursor : null}, signal: controller.signal});
      jobs = append ? jobs.concat(page.data) : page.data;
      nextCursor = page.next_cursor;
      renderRows();
      view.querySelector(".jobs-table")?.setAttribute("data-loaded", "true");
    } catch (err) {
      if (controller.signal.aborted) return;
      message.replaceChildren(errorBox(err));
    }
  }

  async function loadSweeps() {
    try {
      const page = await request("sweeps", {params: {limit: 100}, signal: controller.signal});
      for (const s of page.data) {
        if (s.id === sweep) continue;
        const keys = Object.keys(s.grid || {}).join(", ") || "seeds";
        sweepSelect.append(h("option", {value: s.id}, `sweep ${shortId(s.id)} (${keys}; ${s.runs} runs)`));
      }
    } catch { /* the list still works without the sweep names */ }
  }

  view.append(
    h("div", {class: "page-head"},
      h("h1", {}, "Jobs"),
      h("div", {class: "toolbar"}, statusSelect, sweepSelect, compareButton, clearButton)),
    h("div", {class: "table-wrap"},
      h("table", {class: "jobs-table data-table"},
        h("thead", {}, h("tr", {},
          h("th", {class: "select"}, ""), h("th", {}, "Job"), h("th", {}, "Status"), h("th", {}, "Method"),
          h("th", {}, "Student ← teacher"), h("th", {}, "Dataset"), h("th", {}, "Progress"),
          h("th", {class: "num"}, "Best top-1"), h("th", {}, "Created"))),
        tbody)),
    message, more);
  updateToolbar();
  load();
  loadSweeps();

  // Refresh what is shown (up to 100 rows) while the page is visible: statuses, progress, new jobs.
  const timer = setInterval(() => {
    if (document.hidden || jobs.length > 100) refreshAges(view);
    else load();
  }, REFRESH_MS);
  return () => {
    clearInterval(timer);
    controller.abort();
  };
}

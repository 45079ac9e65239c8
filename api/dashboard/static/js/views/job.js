// One job: summary, live plots (history from Postgres, then the SSE stream), events, artifacts, spec.

import {ApiError, download, fetchAll, request} from "../api.js";
import {LineChart, SeriesStore} from "../charts.js";
import {
  ACTIVE, TERMINAL, archLine, bestTop1, datasetLine, errorBox, flash, fmtBytes, fmtDuration,
  fmtPercent, fmtTime, h, progressBar, shortId, statusBadge,
} from "../dom.js";
import {followStream} from "../sse.js";

const EPOCH_METRIC = (name) => /^(val_|best_)/.test(name) || name === "train_loss";
const NOT_LOSSES = new Set(["lr", "images_per_s", "grad_norm"]);

/** The plots of a job page: which metric names each one shows (x = global step). */
export const CHART_GROUPS = [
  {id: "losses", title: "Loss terms", yLabel: "loss", always: true, bold: ["loss"],
   match: (n) => !EPOCH_METRIC(n) && !NOT_LOSSES.has(n)},
  {id: "accuracy", title: "Validation accuracy (%)", yLabel: "%", always: true, markers: true,
   match: (n) => n === "val_top1" || n === "val_top5"},
  {id: "lr", title: "Learning rate", yLabel: "lr", always: true, match: (n) => n === "lr"},
  {id: "throughput", title: "Throughput", yLabel: "images / s", always: true, match: (n) => n === "images_per_s"},
  {id: "epoch-losses", title: "Epoch losses (train mean, validation)", yLabel: "loss", markers: true,
   match: (n) => n === "train_loss" || n === "val_loss"},
  {id: "grad-norm", title: "Gradient norm (before clipping)", yLabel: "norm", match: (n) => n === "grad_norm"},
];

function eventSummary(event) {
  const data = {...(event.data || {})};
  const parts = [];
  if (event.type === "status" && data.status) {
    parts.push(h("strong", {}, `→ ${data.status}`));
    delete data.status;
  } else if (event.type === "phase" && "phase" in data) {
    parts.push(h("strong", {}, String(data.phase ?? "–").replaceAll("_", " ")));
    delete data.phase;
  }
  for (const [key, value] of Object.entries(data)) {
    if (value === null || value === undefined) continue;
    parts.push(" ", h("span", {class: "kv"}, `${key}=${typeof value === "string" ? value : JSON.stringify(value)}`));
  }
  return parts;
}

export function renderJob(view, {id}) {
  const controller = new AbortController();
  const {signal} = controller;
  const store = new SeriesStore();
  const charts = new Map();
  let job = null;
  let liveStep = null;
  let drawTimer = null;
  let refreshTimer = null;

  const title = h("h1", {}, "Job ", h("span", {class: "mono"}, shortId(id)));
  const badge = h("span", {class: "job-badge"});
  const streamState = h("span", {class: "stream-state", id: "stream-state", dataset: {state: "idle", connects: "0"}});
  const cancelButton = h("button", {id: "cancel-job", onclick: cancel, disabled: true}, "Cancel");
  const deleteButton = h("button", {id: "delete-job", class: "danger", onclick: remove, disabled: true}, "Delete");
  const summary = h("dl", {class: "summary", id: "job-summary"});
  const chartGrid = h("div", {class: "chart-grid", id: "charts"});
  const events = h("ol", {class: "timeline", id: "events"});
  const artifacts = h("tbody", {});
  const artifactMessage = h("p", {class: "muted"});
  const spec = h("pre", {class: "spec", id: "spec"});
  const problems = h("div", {});

  for (const group of CHART_GROUPS) {
    const el = h("div", {class: "chart-card", id: `chart-${group.id}`, dataset: {chart: group.id},
                         hidden: !group.always});
    chartGrid.append(el);
    charts.set(group.id, {group, el, chart: new LineChart(el, {title: group.title, yLabel: group.yLabel,
                                                               markers: group.markers, bold: group.bold})});
  }

  view.append(
    h("div", {class: "page-head"},
      h("div", {class: "title-line"}, title, badge, streamState),
      h("div", {class: "toolbar"}, cancelButton, deleteButton)),
    problems,
    summary,
    h("section", {}, h("h2", {}, "Metrics"), chartGrid),
    h("div", {class: "columns"},
      h("section", {class: "card"}, h("h2", {}, "Events"), events),
      h("section", {class: "card"}, h("h2", {}, "Artifacts"),
        h("table", {class: "data-table artifacts", id: "artifacts"},
          h("thead", {}, h("tr", {}, h("th", {}, "File"), h("th", {class: "num"}, "Size"), h("th", {}, "sha256"),
                                     h("th", {}, ""))),
          artifacts),
        artifactMessage)),
    h("section", {class: "card"}, h("h2", {}, "Resolved spec"), spec));

  function renderSummary() {
    if (!job) return;
    badge.replaceChildren(statusBadge(job.status, job.phase));
    view.dataset.status = job.status;
    cancelButton.disabled = !ACTIVE.has(job.status) || job.status === "cancelling";
    deleteButton.disabled = !TERMINAL.has(job.status);
    const progress = {...job.progress};
    if (liveStep !== null && ACTIVE.has(job.status)) progress.step = Math.max(progress.step ?? 0, liveStep);
    const started = job.started_at ? new Date(job.started_at).getTime() : null;
    const ended = job.finished_at ? new Date(job.finished_at).getTime() : Date.now();
    const final = job.result?.final_metrics || {};
    const rows = [
      ["Method", job.spec?.method?.name ?? "–"],
      ["Student ← teacher", archLine(job.spec)],
      ["Dataset", datasetLine(job.spec)],
      ["Progress", h("div", {class: "progress-line"}, progressBar(progress, job.status),
                     h("span", {class: "muted"}, progress.epochs ? ` epoch ${Math.min(progress.epoch ?? 0,
                       progress.epochs)} / ${progress.epochs}` : ""))],
      ["Best top-1", fmtPercent(bestTop1(job))],
      ["Final top-1", fmtPercent(final.val_top1)],
      ["Attempt", `${job.attempt} of ${job.max_attempts}`],
      ["Created", fmtTime(job.created_at)],
      ["Started", fmtTime(job.started_at)],
      ["Finished", fmtTime(job.finished_at)],
      ["Duration", started ? fmtDuration((ended - started) / 1000) : "–"],
    ];
    if (job.sweep_id) rows.push(["Sweep", h("a", {href: `#/sweeps/${job.sweep_id}`, class: "mono"}, shortId(job.sweep_id))]);
    if (job.spec?.teacher?.weights?.job_id) {
      const teacher = job.spec.teacher.weights.job_id;
      rows.push(["Teacher job", h("a", {href: `#/jobs/${teacher}`, class: "mono"}, shortId(teacher))]);
    }
    const meta = Object.entries(job.metadata || {});
    if (meta.length) rows.push(["Metadata", meta.map(([k, v]) => h("span", {class: "tag"}, `${k}: ${v}`))]);
    if (job.error) rows.push(["Error", h("span", {class: "error-text"}, h("strong", {}, job.error.code),
                                         job.error.message ? `: ${job.error.message}` : "")]);
    summary.replaceChildren(...rows.map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", {}, v))));
    spec.textContent = JSON.stringify(job.spec, null, 2);
  }

  function draw() {
    clearTimeout(drawTimer);
    drawTimer = null;
    if (signal.aborted) return;
    const names = store.names();
    for (const {group, el, chart} of charts.values()) {
      // The total loss first, then its terms by name.
      const ordered = names.filter(group.match).sort((a, b) => (b === "loss") - (a === "loss") || a.localeCompare(b));
      const mine = new Map(ordered.map((n) => [n, store.get(n)]));
      if (mine.size) el.hidden = false;
      if (!el.hidden) chart.update(mine);
    }
    const total = [...charts.values()].reduce((a, c) => a + Number(c.el.dataset.points || 0), 0);
    chartGrid.dataset.points = String(total);
  }

  function scheduleDraw() {
    if (drawTimer === null) drawTimer = setTimeout(draw, 250);
  }

  async function loadJob() {
    job = await request(`jobs/${id}`, {signal});
    renderSummary();
  }

  async function loadEvents() {
    const rows = await fetchAll(`jobs/${id}/events`, {}, {signal});
    events.replaceChildren(...rows.map((e) => h("li", {dataset: {type: e.type}},
      h("time", {datetime: e.ts, title: fmtTime(e.ts)}, new Date(e.ts).toLocaleTimeString()),
      h("span", {class: `event-type type-${e.type}`}, e.type),
      e.attempt ? h("span", {class: "muted"}, ` attempt ${e.attempt}`) : null,
      h("span", {class: "event-data"}, eventSummary(e)))));
    if (!rows.length) events.append(h("li", {class: "muted"}, "No events yet."));
  }

  async function loadArtifacts() {
    const {data} = await request(`jobs/${id}/artifacts`, {signal});
    artifacts.replaceChildren(...data.map((a) => h("tr", {dataset: {name: a.name}},
      h("td", {class: "mono"}, a.name),
      h("td", {class: "num"}, fmtBytes(a.size)),
      h("td", {class: "mono sha", title: a.sha256}, `${a.sha256.slice(0, 12)}…`),
      h("td", {}, h("button", {class: "download link-button", dataset: {name: a.name}, onclick: async (ev) => {
        ev.target.disabled = true;
        try {
          await download(`jobs/${id}/artifacts/${encodeURIComponent(a.name)}`, a.name);
        } catch (err) {
          flash(`Download failed: ${err.message}`, "error");
        } finally {
          ev.target.disabled = false;
        }
      }}, "Download")))));
    artifactMessage.textContent = data.length ? "" : (job && TERMINAL.has(job.status)
      ? "This job exported no files." : "Files appear here when the job has succeeded.");
  }

  async function loadHistory() {
    // One paginated read per metric name, a few at a time, drawn as pages arrive (a long job has
    // hundreds of thousands of points). The names are those of latest_metrics; none yet: all at once.
    const onPage = (points) => {
      for (const p of points) store.add(p.name, p.step, p.value);
      scheduleDraw();
    };
    const names = Object.keys(job.latest_metrics || {});
    const queue = names.length ? names.map((name) => ({name})) : [{}];
    const worker = async () => {
      for (let params = queue.shift(); params; params = queue.shift()) {
        await fetchAll(`jobs/${id}/metrics`, params, {signal, pageSize: 1000, onPage, max: Infinity});
      }
    };
    await Promise.all([worker(), worker(), worker()]);
    draw();
  }

  function refreshSoon() {
    // A status change: the job row and its events, once, shortly (several changes come together).
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(async () => {
      try {
        await Promise.all([loadJob(), loadEvents()]);
        if (job && TERMINAL.has(job.status)) await loadArtifacts();
      } catch (err) {
        if (!signal.aborted) problems.replaceChildren(errorBox(err));
      }
    }, 300);
  }

  function onEvent({event, data}) {
    if (event === "metrics" && data && data.values) {
      for (const [name, value] of Object.entries(data.values)) store.add(name, data.step, value);
      liveStep = Math.max(liveStep ?? 0, data.step ?? 0);
      if (job?.progress) job.progress.epoch = Math.max(job.progress.epoch ?? 0, data.epoch ?? 0);
      scheduleDraw();
      renderSummary();
    } else if (event === "status") {
      // The stream replays old transitions too: the job row says where it is now.
      refreshSoon();
    } else if (event === "end") {
      refreshSoon();
    }
  }

  function onState(state, {connects}) {
    streamState.dataset.state = state;
    streamState.dataset.connects = String(connects);
    streamState.textContent = {open: "● live", reconnecting: "○ reconnecting…", ended: ""}[state] ?? "";
  }

  async function follow() {
    try {
      await followStream(`jobs/${id}/metrics/stream`, {onEvent, onState, signal});
    } catch (err) {
      if (!signal.aborted && !(err instanceof ApiError && err.status === 401)) {
        onState("ended", {connects: 0});
        if (err instanceof ApiError && err.status === 404) return; // deleted meanwhile
        problems.replaceChildren(errorBox(err));
      }
    } finally {
      if (!signal.aborted) draw();
    }
  }

  async function cancel() {
    if (!confirm(`Cancel job ${shortId(id)}? A running job checkpoints and stops within seconds.`)) return;
    cancelButton.disabled = true;
    try {
      job = await request(`jobs/${id}/cancel`, {method: "POST"});
      renderSummary();
      flash(job.status === "cancelled" ? "Job cancelled." : "Cancel requested: the job stops within seconds.");
      refreshSoon();
    } catch (err) {
      flash(`Cancel failed: ${err.message}`, "error");
      renderSummary();
    }
  }

  async function remove() {
    if (!confirm(`Delete job ${shortId(id)} with its metrics and files? This cannot be undone.`)) return;
    deleteButton.disabled = true;
    try {
      await request(`jobs/${id}`, {method: "DELETE"});
      flash(`Job ${shortId(id)} deleted.`);
      location.hash = "#/jobs";
    } catch (err) {
      flash(`Delete failed: ${err.message}`, "error");
      renderSummary();
    }
  }

  (async () => {
    try {
      await loadJob();
    } catch (err) {
      if (signal.aborted) return;
      view.replaceChildren(h("h1", {}, "Job ", h("span", {class: "mono"}, shortId(id))), errorBox(err));
      return;
    }
    const showError = (err) => { if (!signal.aborted) problems.replaceChildren(errorBox(err)); };
    const rest = Promise.all([loadEvents(), loadArtifacts()]).catch(showError);
    await loadHistory().catch(showError);
    // A job still running: follow its live stream (replayed from its start; a point already in the
    // history counts once, since points are kept by step).
    if (ACTIVE.has(job.status)) follow();
    else onState("ended", {connects: 0});
    await rest;
    if (!signal.aborted) view.dataset.loaded = "true";
  })();

  const ticker = setInterval(() => { if (job && ACTIVE.has(job.status)) renderSummary(); }, 5000);
  return () => {
    controller.abort();
    clearInterval(ticker);
    clearTimeout(drawTimer);
    clearTimeout(refreshTimer);
    for (const {chart} of charts.values()) chart.destroy();
  };
}

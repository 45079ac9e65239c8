// DOM building and formatting helpers. Text always goes in as text nodes: no HTML from data, ever.

/**
 * h("a", {href: "#/jobs", class: "x", onclick: fn, dataset: {id: 1}}, "text", child, [more])
 * Attributes whose value is null, undefined or false are left out; `true` sets an empty attribute.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") el.className = value;
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (name.startsWith("on") && typeof value === "function") el.addEventListener(name.slice(2), value);
    else if (name === "value" || name === "checked" || name === "disabled" || name === "selected") el[name] = value;
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function clear(el) {
  el.replaceChildren();
  return el;
}

export const shortId = (id) => String(id).slice(0, 8);

export const ACTIVE = new Set(["queued", "running", "cancelling"]);
export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
export const STATUSES = ["queued", "running", "cancelling", "succeeded", "failed", "cancelled"];

export function statusBadge(status, phase) {
  return h("span", {class: `badge status-${status}`, dataset: {status}},
    status, phase ? h("span", {class: "phase"}, ` · ${phase.replaceAll("_", " ")}`) : null);
}

/** A progress bar of step / total_steps (the job's `progress`). */
export function progressBar(progress, status) {
  const step = Number(progress?.step ?? 0);
  const total = Number(progress?.total_steps ?? 0);
  let fraction = total > 0 ? Math.min(1, step / total) : 0;
  if (status === "succeeded") fraction = 1;
  const pct = Math.round(fraction * 100);
  const label = total > 0 ? `${step} / ${total}` : (status === "succeeded" ? "done" : "–");
  return h("div", {class: `progress status-${status}`, role: "progressbar", "aria-valuemin": 0,
                   "aria-valuemax": 100, "aria-valuenow": pct, title: `${pct}% (steps ${label})`,
                   dataset: {step, total}},
    h("div", {class: "progress-fill", style: `width: ${pct}%`}),
    h("span", {class: "progress-label"}, label));
}

export function fmtPercent(value, digits = 2) {
  return typeof value === "number" && Number.isFinite(value) ? `${value.toFixed(digits)} %` : "–";
}

export function fmtNumber(value, digits = 4) {
  if (typeof value !== "number" || !Number.isFinite(value)) return "–";
  if (value !== 0 && (Math.abs(value) >= 1e5 || Math.abs(value) < 1e-3)) return value.toExponential(2);
  return String(Number(value.toPrecision(digits)));
}

export function fmtBytes(n) {
  if (typeof n !== "number") return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`;
}

export function fmtAge(iso, now = Date.now()) {
  if (!iso) return "–";
  const seconds = Math.max(0, (now - new Date(iso).getTime()) / 1000);
  if (seconds < 60) return `${Math.floor(seconds)} s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return `${Math.floor(seconds / 86400)} d ago`;
}

export function fmtDuration(seconds) {
  if (typeof seconds !== "number" || !Number.isFinite(seconds)) return "–";
  seconds = Math.max(0, Math.round(seconds));
  const h_ = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
  return h_ ? `${h_} h ${m} min` : m ? `${m} min ${s} s` : `${s} s`;
}

export function fmtTime(iso) {
  return iso ? new Date(iso).toLocaleString() : "–";
}

/** A <time> element showing the age, with the full date on hover. */
export function ageCell(iso) {
  return h("time", {datetime: iso, title: fmtTime(iso), dataset: {age: "1"}}, fmtAge(iso));
}

/** Keep every `time[data-age]` inside `root` current. */
export function refreshAges(root) {
  for (const el of root.querySelectorAll("time[data-age]")) el.textContent = fmtAge(el.getAttribute("datetime"));
}

export function archLine(spec) {
  const student = spec?.student?.arch ?? "?";
  const teacher = spec?.teacher?.arch;
  return teacher ? `${student} ← ${teacher}` : student;
}

export function datasetLine(spec) {
  const ds = spec?.dataset;
  if (!ds) return "–";
  return ds.image_size ? `${ds.name} (${ds.image_size} px)` : String(ds.name);
}

/** val_top1 of a job: the best evaluation when it has a result, else the latest point. */
export function bestTop1(job) {
  const best = job?.result?.best_metrics?.val_top1;
  if (typeof best === "number") return best;
  const latest = job?.latest_metrics?.best_val_top1 ?? job?.latest_metrics?.val_top1;
  return typeof latest === "number" ? latest : null;
}

export function errorBox(err) {
  const detail = err?.problem?.detail || err?.message || String(err);
  const code = err?.problem?.code;
  return h("div", {class: "error", role: "alert"}, code ? h("strong", {}, `${code}: `) : null, detail);
}

/** A transient message at the top of the page. */
export function flash(message, kind = "info") {
  const area = document.getElementById("flash");
  if (!area) return;
  const el = h("div", {class: `flash flash-${kind}`, role: kind === "error" ? "alert" : "status"}, message);
  area.append(el);
  setTimeout(() => el.remove(), 6000);
}

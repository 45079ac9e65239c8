// The dashboard's router: hash routes, so the server serves only `/` and `/static/...`.
//   #/signin  #/jobs?status=&sweep=  #/jobs/<id>  #/compare?ids=a,b  #/sweeps  #/sweeps/<id>

import {clearKey, getKey, signinHash} from "./api.js";
import {h} from "./dom.js";
import {renderCompare} from "./views/compare.js";
import {renderJob} from "./views/job.js";
import {renderJobs, selection} from "./views/jobs.js";
import {renderSignin} from "./views/signin.js";
import {renderSweep, renderSweeps} from "./views/sweeps.js";

const ROUTES = [
  {pattern: /^\/signin$/, render: renderSignin, public: true, nav: null},
  {pattern: /^\/jobs$/, render: renderJobs, nav: "jobs"},
  {pattern: /^\/jobs\/([^/]+)$/, render: renderJob, nav: "jobs"},
  {pattern: /^\/compare$/, render: renderCompare, nav: "jobs"},
  {pattern: /^\/sweeps$/, render: renderSweeps, nav: "sweeps"},
  {pattern: /^\/sweeps\/([^/]+)$/, render: renderSweep, nav: "sweeps"},
];

const view = document.getElementById("view");
const account = document.getElementById("account");
let cleanup = null;

function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/jobs";
  const [path, query = ""] = raw.split("?", 2);
  return {path: path || "/jobs", params: new URLSearchParams(query)};
}

function signOut() {
  clearKey();
  selection.clear();
  sessionStorage.clear();
  location.hash = "#/signin";
}

function renderAccount() {
  const key = getKey();
  account.replaceChildren(...(key
    ? [h("span", {class: "muted key-prefix", title: "the API key in use"}, `${key.slice(0, 12)}…`),
       h("button", {id: "sign-out", class: "link-button", onclick: signOut}, "Sign out")]
    : []));
}

function route() {
  if (cleanup) {
    try { cleanup(); } catch (err) { console.error(err); }
    cleanup = null;
  }
  const {path, params} = parseHash();
  const match = ROUTES.map((r) => ({r, m: r.pattern.exec(path)})).find(({m}) => m);
  if (!match) {
    location.replace("#/jobs");
    return;
  }
  const {r, m} = match;
  if (!r.public && !getKey()) {
    location.replace(signinHash(location.hash));
    return;
  }
  if (r.public && r.render === renderSignin && getKey()) {
    location.replace("#/jobs");
    return;
  }
  for (const link of document.querySelectorAll("nav a[data-nav]")) {
    link.classList.toggle("active", link.dataset.nav === r.nav);
  }
  document.body.dataset.route = path.split("/")[1] || "jobs";
  renderAccount();
  const el = h("div", {class: "view", dataset: {view: r.nav || "signin"}});
  view.replaceChildren(el);
  document.title = `${path.split("/")[1] || "jobs"} · HCD`;
  try {
    cleanup = r.render(el, {id: m[1] ? decodeURIComponent(m[1]) : null, params}) || null;
  } catch (err) {
    console.error(err);
    el.append(h("div", {class: "error", role: "alert"}, `This page failed: ${err.message}`));
  }
}

// Another tab signed out (or in): follow it.
window.addEventListener("storage", (event) => {
  if (event.key === null || event.key === "hcd.apiKey") route();
});
window.addEventListener("hashchange", route);
route();

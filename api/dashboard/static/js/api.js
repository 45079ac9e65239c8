// The API client: the key in localStorage, `Authorization: Bearer` on every call, problem+json errors.
// Every URL is relative to the page, so the dashboard also works behind a proxy under a sub-path.

const STORAGE_KEY = "hcd.apiKey";
const SIGNIN_NOTICE = "hcd.signinNotice";

export function getKey() {
  try { return localStorage.getItem(STORAGE_KEY); } catch { return null; }
}

export function setKey(key) {
  localStorage.setItem(STORAGE_KEY, key);
}

export function clearKey() {
  try { localStorage.removeItem(STORAGE_KEY); } catch { /* storage disabled: nothing kept */ }
}

/** A message for the sign-in page (why the user was sent there), read once. */
export function takeSigninNotice() {
  const notice = sessionStorage.getItem(SIGNIN_NOTICE);
  sessionStorage.removeItem(SIGNIN_NOTICE);
  return notice;
}

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem?.detail || problem?.title || `HTTP ${status}`);
    this.name = "ApiError";
    this.status = status;
    this.problem = problem || {};
  }
}

/** The key was refused: forget it and go to the sign-in page (which then returns to `returnTo`). */
export function signedOut(notice) {
  clearKey();
  const here = location.hash;
  if (here.startsWith("#/signin")) return; // already there (several requests were refused at once)
  if (notice) sessionStorage.setItem(SIGNIN_NOTICE, notice);
  location.hash = signinHash(here);
}

/** The sign-in route, remembering `here` to come back to after signing in. */
export function signinHash(here) {
  return here && here !== "#" && here !== "#/" && !here.startsWith("#/signin")
    ? `#/signin?next=${encodeURIComponent(here)}` : "#/signin";
}

export function apiUrl(path, params) {
  const url = new URL(path.replace(/^\/+/, ""), document.baseURI);
  for (const [name, value] of Object.entries(params || {})) {
    if (value === null || value === undefined || value === "") continue;
    for (const v of Array.isArray(value) ? value : [value]) url.searchParams.append(name, String(v));
  }
  return url;
}

async function problemOf(response) {
  try {
    const type = response.headers.get("content-type") || "";
    if (type.includes("json")) return await response.json();
  } catch { /* not JSON after all */ }
  return {status: response.status, detail: `${response.status} ${response.statusText}`.trim()};
}

/**
 * fetch() with the bearer key. Returns the parsed JSON (null for 204), or the Response with `raw`.
 * A 401 signs the user out (unless `key` was given: the sign-in form checks a candidate key).
 */
export async function request(path, {method = "GET", params, headers = {}, body, signal, raw = false, key} = {}) {
  const token = key ?? getKey();
  const init = {method, signal, cache: "no-store", headers: {Accept: "application/json", ...headers}};
  if (token) init.headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(apiUrl(path, params), init);
  if (!response.ok) {
    const problem = await problemOf(response);
    if (response.status === 401 && key === undefined) signedOut("Your API key was refused: sign in again.");
    throw new ApiError(response.status, problem);
  }
  if (raw) return response;
  if (response.status === 204) return null;
  return response.json();
}

/**
 * Every item of a paginated list (`data`, `has_more`, `next_cursor` -> `after`), at most `max`;
 * onPage(items) sees each page as it arrives.
 */
export async function fetchAll(path, params = {}, {signal, max = Infinity, pageSize = 100, onPage} = {}) {
  const items = [];
  let after = null;
  for (;;) {
    const page = await request(path, {params: {...params, limit: pageSize, after}, signal});
    items.push(...page.data);
    if (onPage) onPage(page.data);
    if (!page.has_more || !page.next_cursor || items.length >= max) return items;
    after = page.next_cursor;
  }
}

/** Download a file that needs the bearer header: fetch, then save the blob under `filename`. */
export async function download(path, filename) {
  const response = await request(path, {raw: true, headers: {Accept: "*/*"}});
  const blob = await response.blob();
  const url = URL.createObjectURL(blob);
  const link = Object.assign(document.createElement("a"), {href: url, download: filename, hidden: true});
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
  return blob.size;
}

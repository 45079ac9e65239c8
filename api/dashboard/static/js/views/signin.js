// Sign in with an API key: checked against the API (GET /jobs?limit=1) before it is kept.

import {ApiError, request, setKey, takeSigninNotice} from "../api.js";
import {h} from "../dom.js";

export function renderSignin(view, {params}) {
  const next = params.get("next");
  const notice = takeSigninNotice();
  const error = h("p", {class: "error", id: "signin-error", role: "alert", hidden: true});
  const input = h("input", {id: "api-key", name: "api-key", type: "password", autocomplete: "current-password",
                            placeholder: "hcd_…", required: true, spellcheck: "false", "aria-label": "API key"});
  const button = h("button", {type: "submit", class: "primary", id: "signin-submit"}, "Sign in");

  async function submit(event) {
    event.preventDefault();
    const key = input.value.trim();
    error.hidden = true;
    if (!key) return;
    button.disabled = true;
    try {
      await request("jobs", {params: {limit: 1}, key});
      setKey(key);
      location.hash = next && next.startsWith("#/") && !next.startsWith("#/signin") ? next : "#/jobs";
    } catch (err) {
      error.textContent = err instanceof ApiError && err.status === 401
        ? "This API key was refused: it is unknown or revoked."
        : `Could not sign in: ${err.message || err}`;
      error.hidden = false;
      input.select();
    } finally {
      button.disabled = false;
    }
  }

  view.append(h("section", {class: "signin card"},
    h("h1", {}, "Sign in"),
    h("p", {class: "muted"},
      "Paste an API key of this server. It is kept in this browser (localStorage) and sent only to this ",
      "server, as ", h("code", {}, "Authorization: Bearer"), ". ",
      "Keys come from ", h("code", {}, "hcd up"), " (printed on its first start) or ",
      h("code", {}, "hcd keys create --owner NAME"), "."),
    notice ? h("p", {class: "notice", role: "status"}, notice) : null,
    h("form", {onsubmit: submit, id: "signin-form"},
      h("label", {for: "api-key"}, "API key"), input, button),
    error));
  input.focus();
}

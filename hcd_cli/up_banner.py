"""What `hcd up` prints once everything is up: one banner with where to go, the key and where things are."""

from __future__ import annotations

from pathlib import Path


def banner(*, url: str, data_dir: Path, log_dir: Path | None, new_key: str | None, bootstrap_key: bool,
           database: str | None, redis: str | None, api_workers: int) -> str:
    """`database` / `redis`: the URL of an embedded server (None when the environment named one)."""
    rows: list[tuple[str, str]] = [
        ("dashboard", f"{url}/"),
        ("API docs", f"{url}/docs  ({api_workers} API process{'es' if api_workers != 1 else ''})"),
    ]
    if new_key:
        rows.append(("API key", f"{new_key}  (owner admin; shown only this once: store it)"))
    elif bootstrap_key:
        rows.append(("API key", "the one in HCD_BOOTSTRAP_API_KEY (owner admin)"))
    else:
        rows.append(("API key", "created on the first start; another: hcd keys create --owner NAME"))
    rows.append(("data", f"{data_dir}  (artifacts, checkpoints, uploads, datasets)"))
    rows.append(("logs", f"{log_dir / 'api.log'}, {log_dir / 'worker.log'}" if log_dir else "here (--verbose)"))
    if database:
        rows.append(("database", f"{database}  (embedded; HCD_DATABASE_URL for `hcd keys`)"))
    if redis:
        rows.append(("redis", f"{redis}  (embedded)"))
    width = max(len(label) for label, _ in rows)
    key = new_key or "<your key>"
    lines = ["", "  HCD is up", ""]
    lines += [f"    {label.ljust(width)}  {text}" for label, text in rows]
    lines += ["", "  Try it:",
              f"    export HCD_SERVER_URL={url} HCD_API_KEY={key}",
              "    hcd submit examples/digits-teacher.yaml --watch", ""]
    return "\n".join(lines)

"""Exit codes of the `hcd` command, shown by `hcd --help` and documented in docs/cli.md.

Light on purpose: `hcd --help` imports it.
"""

from __future__ import annotations

OK = 0
FAILED = 1  # the job (or a local run) failed or was cancelled; also any error not listed below
USAGE = 2  # bad arguments or input: unknown option, missing or unreadable file, bad YAML/JSON, bad --set
REFUSED = 3  # the server refused the request (HTTP 4xx: invalid spec, conflict, bad key, ...)
NOT_FOUND = 4  # no such job, model or sweep (HTTP 404; another owner's is a 404 too)
UNAVAILABLE = 5  # cannot reach the server, it timed out, failed (5xx) or stayed busy (429): try again later
INTERRUPTED = 130  # Ctrl-C
BROKEN_PIPE = 141  # the output was closed early (`hcd list | head`); nothing is printed

HELP = """\
exit codes:
  0    success (watch, submit --watch: the job succeeded)
  1    the job failed or was cancelled (watch, submit --watch, train, sweep); other errors
  2    bad arguments or input: unknown option, missing or unreadable file, bad YAML/JSON, bad --set
  3    the server refused the request (4xx: invalid spec, conflict, bad API key, ...)
  4    not found (404): no such job, model or sweep for this API key
  5    the server is unreachable, timed out, failed (5xx) or stayed busy (429): try again later
  130  interrupted (Ctrl-C); `hcd watch` says how to re-attach
  141  the output was closed early (e.g. `hcd list | head`)

client commands use HCD_SERVER_URL (default http://127.0.0.1:8000) and HCD_API_KEY; see docs/cli.md."""

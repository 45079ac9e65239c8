"""`hcd migrate` and `hcd keys create|list|revoke`: administration of a service deployment."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

EXIT_BAD_INPUT = 2


def _database_url(args: argparse.Namespace) -> str:
    from hcd_cli.server_cmds import load_settings

    url = args.database_url or load_settings().database_url
    if not url:
        print("hcd: set HCD_DATABASE_URL or pass --database-url", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)
    return str(url)


def _session(args: argparse.Namespace) -> Any:
    from hcd_cli.server_cmds import load_settings
    from jobs.db import database

    # Through load_settings: an invalid HCD_* variable is a one-line message here too, not a traceback.
    return database(load_settings(database_url=_database_url(args))).session()


def cmd_migrate(args: argparse.Namespace) -> int:
    from jobs.migrate import upgrade

    upgrade(_database_url(args), args.revision)
    print(f"database at revision {args.revision}")
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    from jobs.keys import create_key

    try:
        with _session(args) as session:
            key = create_key(session, args.owner)
    except ValueError as err:  # an empty or overlong owner
        print(f"hcd: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    # Printed once: only its hash is stored.
    print(key)
    print(f"API key for owner {args.owner!r} created; store it now, it cannot be shown again.", file=sys.stderr)
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    from jobs.keys import list_keys

    with _session(args) as session:
        keys = list_keys(session, args.owner, include_revoked=args.all)
    rows = [("ID", "OWNER", "PREFIX", "CREATED", "STATE")]
    for k in keys:
        state = "revoked " + k.revoked_at.strftime("%Y-%m-%d %H:%M") if k.revoked_at else "active"
        if k.bootstrap:
            state += " (bootstrap)"
        rows.append((str(k.id), k.owner, k.prefix + "...", k.created_at.strftime("%Y-%m-%d %H:%M"), state))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from jobs.keys import revoke_keys

    try:
        with _session(args) as session:
            count = revoke_keys(session, args.key)
    except ValueError as err:
        print(f"hcd: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if count == 0:
        print(f"hcd: no active key matches {args.key!r}", file=sys.stderr)
        return 1
    print(f"revoked {count} key{'s' if count > 1 else ''} (API servers stop accepting it within 10 s)")
    return 0


def _reachable(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """An unreachable database is one line on stderr (exit 1), not a traceback."""

    def run(args: argparse.Namespace) -> int:
        from jobs.db import database_unavailable

        try:
            return func(args)
        except Exception as err:
            if not database_unavailable(err):
                raise
            reason = str(getattr(err, "orig", None) or err).strip().splitlines()[0]
            print(f"hcd: cannot reach the database: {reason}", file=sys.stderr)
            return 1

    return run


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    migrate = subparsers.add_parser("migrate", help="apply database migrations (HCD_DATABASE_URL)")
    migrate.add_argument("--database-url", help="default: HCD_DATABASE_URL")
    migrate.add_argument("--revision", default="head", help="target revision (default: head)")
    migrate.set_defaults(func=_reachable(cmd_migrate))

    keys = subparsers.add_parser("keys", help="manage API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = keys_sub.add_parser("create", help="create an API key and print it once")
    create.add_argument("--owner", required=True, help="owner name (jobs are scoped to it)")
    create.add_argument("--database-url", help="default: HCD_DATABASE_URL")
    create.set_defaults(func=_reachable(cmd_keys_create))

    listing = keys_sub.add_parser("list", help="list API keys (their prefixes; keys themselves are not stored)")
    listing.add_argument("--owner", help="only this owner's keys")
    listing.add_argument("--all", action="store_true", help="include revoked keys")
    listing.add_argument("--database-url", help="default: HCD_DATABASE_URL")
    listing.set_defaults(func=_reachable(cmd_keys_list))

    revoke = keys_sub.add_parser("revoke", help="revoke a key, given as its id, the key itself or its prefix")
    revoke.add_argument("key", metavar="KEY")
    revoke.add_argument("--database-url", help="default: HCD_DATABASE_URL")
    revoke.set_defaults(func=_reachable(cmd_keys_revoke))

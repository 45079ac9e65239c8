"""`hcd migrate` and `hcd keys create`: administration of a service deployment."""

from __future__ import annotations

import argparse
import sys


def _database_url(args: argparse.Namespace) -> str:
    from api.settings import Settings

    url = args.database_url or Settings().database_url
    if not url:
        print("error: set HCD_DATABASE_URL or pass --database-url", file=sys.stderr)
        raise SystemExit(2)
    return url


def cmd_migrate(args: argparse.Namespace) -> int:
    from api.migrate import upgrade

    upgrade(_database_url(args), args.revision)
    print(f"database at revision {args.revision}")
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    from api.auth import create_api_key
    from api.db import session_scope

    with session_scope(_database_url(args)) as session:
        key = create_api_key(session, args.owner)
    # Printed once: only its hash is stored.
    print(key)
    print(f"API key for owner {args.owner!r} created; store it now, it cannot be shown again.", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    migrate = subparsers.add_parser("migrate", help="apply database migrations (HCD_DATABASE_URL)")
    migrate.add_argument("--database-url", help="default: HCD_DATABASE_URL")
    migrate.add_argument("--revision", default="head", help="target revision (default: head)")
    migrate.set_defaults(func=cmd_migrate)

    keys = subparsers.add_parser("keys", help="manage API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = keys_sub.add_parser("create", help="create an API key and print it once")
    create.add_argument("--owner", required=True, help="owner name (jobs are scoped to it)")
    create.add_argument("--database-url", help="default: HCD_DATABASE_URL")
    create.set_defaults(func=cmd_keys_create)

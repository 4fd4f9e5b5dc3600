"""``allyoucantoken admin`` subcommands (operator tasks on accounts), added to the
command line by the dashboard plugin through the ``register_commands`` hook."""
from __future__ import annotations

import sys

from dashboard.config import DashboardConfig
from dashboard.first_admin import create_admin
from dashboard.passwords import policy_error
from gateway.cli import StoreSession


def add_admin_commands(sub) -> None:
    """Add ``admin set-status``, ``admin set-tier`` and ``admin create`` to ``sub`` (the
    top-level subparsers of the ``allyoucantoken`` command)."""
    parser = sub.add_parser("admin", help="account administration")
    parser.set_defaults(func=run_admin)
    admin = parser.add_subparsers(dest="admin_cmd", required=True)
    st = admin.add_parser("set-status", help="set an account's status")
    st.add_argument("account", help="account email")
    st.add_argument("status", choices=("pending", "active", "suspended", "rejected", "closed"))
    tr = admin.add_parser("set-tier", help="set an account's tier")
    tr.add_argument("account")
    tr.add_argument("tier")
    cr = admin.add_parser("create", help="create an admin account (or make an account admin)")
    cr.add_argument("--email", required=True)
    cr.add_argument("--password-stdin", action="store_true",
                    help="read the password from stdin (default: print a random one)")


async def _create(ns, cfg, store) -> None:
    dash = DashboardConfig.from_config(cfg)
    password = sys.stdin.readline().rstrip("\n") if ns.password_stdin else None
    if password is not None:
        problem = policy_error(password, ns.email, dash.password_min_length)
        if problem:
            sys.exit(problem)
    account, generated = await create_admin(store, dash.passwords(), ns.email.strip().lower(),
                                            password, cfg.limits.default_tier)
    print(f"admin {account['email']} ready", file=sys.stderr)
    if generated:
        print(generated)
        print("# one-time password: sign in at /dashboard/login and change it",
              file=sys.stderr)


async def run_admin(ns, cfg) -> None:
    """Run one ``admin`` subcommand against the configured database."""
    async with StoreSession(cfg) as store:
        if ns.admin_cmd == "create":
            return await _create(ns, cfg, store)
        account = await store.accounts.by_email(ns.account)
        if not account:
            sys.exit(f"no account {ns.account}")
        if ns.admin_cmd == "set-status":
            await store.accounts.set_status(account["_id"], ns.status)
            print(f"{ns.account}: status {ns.status}")
        elif ns.admin_cmd == "set-tier":
            if ns.tier not in cfg.tiers:
                sys.exit(f"unknown tier {ns.tier}; defined: {', '.join(cfg.tiers)}")
            await store.accounts.update(account["_id"], tier=ns.tier)
            print(f"{ns.account}: tier {ns.tier}")

"""``allyoucantoken admin`` subcommands (operator tasks on accounts)."""
from __future__ import annotations

import sys


def add_admin_commands(sub) -> None:
    admin = sub.add_parser("admin", help="account administration").add_subparsers(
        dest="admin_cmd", required=True)
    st = admin.add_parser("set-status", help="set an account's status")
    st.add_argument("account", help="account email")
    st.add_argument("status", choices=("pending", "active", "suspended", "rejected", "closed"))
    tr = admin.add_parser("set-tier", help="set an account's tier")
    tr.add_argument("account")
    tr.add_argument("tier")


async def run_admin(ns, cfg, store_session) -> None:
    async with store_session(cfg) as store:
        account = await store.accounts.by_email(ns.account)
        if not account:
            sys.exit(f"no account {ns.account}")
        if ns.admin_cmd == "set-status":
            await store.accounts.update(account["_id"], status=ns.status)
            print(f"{ns.account}: status {ns.status}")
        elif ns.admin_cmd == "set-tier":
            if ns.tier not in cfg.tiers:
                sys.exit(f"unknown tier {ns.tier}; defined: {', '.join(cfg.tiers)}")
            await store.accounts.update(account["_id"], tier=ns.tier)
            print(f"{ns.account}: tier {ns.tier}")

"""The ``allyoucantoken`` command: serve, keys, db, and the commands plugins add (the
dashboard adds ``admin``)."""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys

from gateway import config as config_mod
from gateway.store import embedded_db
from gateway import model_workers
from gateway.obs import logredact

KEY_CACHE_TTL = 2.0   # the api_key plugin's default [auth] key_cache_ttl (tests/test_sdk.py)


def _config(ns) -> config_mod.Config:
    try:
        return config_mod.load(ns.config or os.environ.get("ALLYOUCANTOKEN_CONFIG"))
    except config_mod.ConfigError as exc:
        sys.exit(f"configuration error: {exc}")


def _setup_logging(level: str, log_format: str = "text") -> None:
    from gateway.obs import logformat
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format=logformat.TEXT_FORMAT)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(logformat.formatter(log_format))
    logredact.install()   # no API key, session token, password or code in any log line


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class StoreSession:
    """Open the store for a CLI command: the configured URI, the running gateway's
    embedded database, or a short-lived embedded server of our own.

    ``async with StoreSession(config) as store:`` (plugins' commands use it too)."""

    def __init__(self, cfg: config_mod.Config) -> None:
        self.cfg = cfg
        self.embedded = None

    async def __aenter__(self):
        from gateway.app import embedded_port_file
        from gateway.store import Store

        uri = self.cfg.database.uri
        if not uri:
            port_file = embedded_port_file(self.cfg)
            port = None
            if os.path.exists(port_file):
                port = int(open(port_file).read().strip() or 0)
            auth_file = os.path.join(self.cfg.server.data_dir, embedded_db.AUTH_FILE)
            if port and _port_open(port):
                uri = embedded_db.local_uri(port, auth_file)
            else:
                path = os.path.join(self.cfg.server.data_dir, "db.sqlite")
                self.embedded = embedded_db.start(self.cfg.database.embedded_engine, path,
                                                  auth_file=auth_file)
                uri = self.embedded.uri
        self.store = Store(uri, self.cfg.database.name)
        await self.store.init()
        return self.store

    async def __aexit__(self, *exc) -> None:
        await self.store.close()
        if self.embedded:
            self.embedded.stop()


async def _keys(ns, cfg) -> None:
    async with StoreSession(cfg) as store:
        if ns.keys_cmd == "create":
            account = await store.accounts.ensure(ns.account, tier=ns.tier or
                                                  cfg.limits.default_tier)
            if account["status"] != "active":
                sys.exit(f"account {ns.account} is {account['status']}; keys work only for "
                         "active accounts")
            key, doc = await store.keys.create(account["_id"], ns.name)
            print(key)
            print(f"# key {doc['prefix']}… for {account['email']} (tier {account['tier']}); "
                  "this is the only time it is shown", file=sys.stderr)
        elif ns.keys_cmd == "list":
            account = await store.accounts.by_email(ns.account) if ns.account else None
            if ns.account and not account:
                sys.exit(f"no account {ns.account}")
            docs = await (store.keys.for_account(account["_id"]) if account else store.keys.all())
            for d in docs:
                state = "revoked" if d.get("revoked_at") else "active"
                used = d["last_used_at"].isoformat() if d.get("last_used_at") else "never"
                print(f"{d['prefix']}…\t{state}\t{d.get('name') or '-'}\t{d['account_id']}"
                      f"\tlast used {used}")
        elif ns.keys_cmd == "revoke":
            n = await store.keys.revoke(ns.key.rstrip("…"))
            if not n:
                sys.exit(f"no active key matches {ns.key}")
            print(f"revoked {n} key(s); every gateway process refuses it within "
                  f"{_key_cache_ttl(cfg):g} s")


def _key_cache_ttl(cfg: config_mod.Config) -> float:
    """``[auth] key_cache_ttl``, the bound on a revocation taking effect. The section
    belongs to the ``api_key`` plugin (which validates it at start); the core reads this
    one value for the message above, with the plugin's default (2 s)."""
    value = cfg.extra.get("auth", {}).get("key_cache_ttl", KEY_CACHE_TTL)
    try:
        return float(value)
    except (TypeError, ValueError):
        return KEY_CACHE_TTL


def _add_plugin_commands(sub, argv: list[str] | None) -> None:
    """Let plugins add subcommands (the ``register_commands`` hook). The plugins (those
    of the config's ``[plugins]`` too) are loaded only when the command line names no
    built-in command, so built-in commands behave and start exactly as before."""
    args = list(sys.argv[1:] if argv is None else argv)
    config_path, i = None, 0
    while i < len(args):
        arg = args[i]
        if arg in ("-c", "--config"):
            config_path = args[i + 1] if i + 1 < len(args) else None
            i += 2
            continue
        if arg.startswith("--config="):
            config_path = arg.split("=", 1)[1]
        elif arg.startswith("-c") and len(arg) > 2:
            config_path = arg[2:]
        elif not arg.startswith("-"):
            if arg in sub.choices:
                return
            break
        i += 1
    from gateway.plugin_manager import get_plugin_manager
    try:
        cfg = config_mod.load(config_path or os.environ.get("ALLYOUCANTOKEN_CONFIG"))
        modules, disabled = cfg.plugins.modules, cfg.plugins.disabled
    except (config_mod.ConfigError, OSError):
        modules, disabled = [], []   # reported below, when the config is loaded for real
    get_plugin_manager(modules, disabled).hook.register_commands(subparsers=sub)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="allyoucantoken",
                                     description="AllYouCanToken LLM API gateway")
    parser.add_argument("--config", "-c", help="TOML config file (or ALLYOUCANTOKEN_CONFIG)")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("serve", help="run the gateway")
    sp.add_argument("--port", type=int)
    sp.add_argument("--host")
    sp.add_argument("--workers", type=int, default=1,
                    help="gateway processes on the one port (SO_REUSEPORT); default 1")
    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(dest="keys_cmd",
                                                                         required=True)
    kc = keys.add_parser("create", help="create a key (and the account if needed)")
    kc.add_argument("--account", required=True, help="account email or handle")
    kc.add_argument("--name", default="", help="a label for the key")
    kc.add_argument("--tier", default=None, help="tier for a newly created account")
    kl = keys.add_parser("list", help="list keys (prefix, state, name, last use)")
    kl.add_argument("--account", default=None)
    kr = keys.add_parser("revoke", help="revoke a key by id or prefix")
    kr.add_argument("key")
    db = sub.add_parser("db", help="the embedded database").add_subparsers(dest="db_cmd",
                                                                           required=True)
    ds = db.add_parser("serve", help="run the embedded MongoDB-wire server on its own, "
                                     "for several gateway processes to share")
    ds.add_argument("--port", type=int, default=27017)
    ds.add_argument("--path", default=None, help="SQLite file (default data_dir/db.sqlite)")
    _add_plugin_commands(sub, argv)
    ns = parser.parse_args(argv)
    cfg = _config(ns)
    _setup_logging(cfg.server.log_level, cfg.server.log_format)
    if ns.cmd == "serve":
        from gateway.app import serve
        if ns.port is not None:
            cfg.server.port = ns.port
        if ns.host:
            cfg.server.host = ns.host
        if ns.workers < 1:
            sys.exit("--workers must be at least 1")
        try:
            if ns.workers > 1:
                from gateway.app import serve_workers
                sys.exit(serve_workers(cfg, ns.workers))
            asyncio.run(serve(cfg))
        except config_mod.ConfigError as exc:  # plugin sections are validated at start
            sys.exit(f"configuration error: {exc}")
        except model_workers.WorkerStartError as exc:
            sys.exit(f"cannot start: {exc}")
    elif ns.cmd == "keys":
        asyncio.run(_keys(ns, cfg))
    elif ns.cmd == "db":
        path = ns.path or os.path.join(cfg.server.data_dir, "db.sqlite")
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
        auth_file = os.path.join(os.path.dirname(os.path.abspath(path)), embedded_db.AUTH_FILE)
        user, _ = embedded_db.credentials(auth_file)
        print(f"# connect with mongodb://{user}:<password in {auth_file}>@127.0.0.1:{ns.port}"
              "/?directConnection=true&authSource=admin&authMechanism=SCRAM-SHA-256", file=sys.stderr)
        sys.argv = ["embedded_db", "--engine", "sqlite", "--path", path, "--port", str(ns.port),
                    "--auth-file", auth_file]
        embedded_db.main()
    elif getattr(ns, "func", None) is not None:   # a plugin's command (register_commands)
        result = ns.func(ns, cfg)
        if asyncio.iscoroutine(result):
            asyncio.run(result)


if __name__ == "__main__":
    main()

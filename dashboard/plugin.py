"""The dashboard plugin: server-rendered pages (routes), its background services
(the outbox mailer, the retention job, the first-admin check) and the ``admin``
subcommands of the command line."""
from __future__ import annotations

from dashboard import (admin_api, pages_admin, pages_auth, pages_overview, pages_user,
                       playground)
from dashboard.config import DashboardConfig
from dashboard.deferred import DeferredWork
from dashboard.first_admin import FirstAdmin
from dashboard.retention import RetentionConfig, RetentionService
from dashboard.web import STATIC, Dashboard, NotFoundPage, StaticHandler
from gateway.hookspecs import hookimpl
from plugins.mail.mailer import Mailer, SmtpConfig

ACCOUNT_ID = r"(acc_[0-9a-f]{1,64})"

PAGES = [
    (r"/", pages_auth.RootHandler),
    (r"/dashboard/?", pages_user.OverviewHandler),
    (r"/dashboard/register", pages_auth.RegisterHandler),
    (r"/dashboard/login", pages_auth.LoginHandler),
    (r"/dashboard/logout", pages_auth.LogoutHandler),
    (r"/dashboard/forgot", pages_auth.ForgotHandler),
    (r"/dashboard/reset", pages_auth.ResetHandler),
    (r"/dashboard/email/undo", pages_auth.EmailUndoHandler),
    (r"/dashboard/keys", pages_user.KeysHandler),
    (r"/dashboard/playground", playground.PlaygroundHandler),
    (r"/dashboard/keys/revoke", pages_user.KeyRevokeHandler),
    (r"/dashboard/keys/controls", pages_user.KeyControlsHandler),
    (r"/dashboard/account", pages_user.AccountHandler),
    (r"/dashboard/account/password", pages_user.PasswordHandler),
    (r"/dashboard/account/export", pages_user.ExportHandler),
    (r"/dashboard/account/close", pages_user.CloseHandler),
    (r"/dashboard/admin", pages_admin.AdminAccountsHandler),
    (r"/dashboard/admin/audit", pages_admin.AdminAuditHandler),
    (r"/dashboard/admin/overview", pages_overview.AdminOverviewHandler),
    (rf"/dashboard/admin/accounts/{ACCOUNT_ID}/status", pages_admin.AdminStatusHandler),
    (rf"/dashboard/admin/accounts/{ACCOUNT_ID}/tier", pages_admin.AdminTierHandler),
    (rf"/dashboard/admin/accounts/{ACCOUNT_ID}", pages_admin.AdminAccountHandler),
    (rf"/dashboard/admin/accounts/{ACCOUNT_ID}/email", pages_admin.AdminEmailHandler),
    (r"/dashboard/admin/keys/controls", pages_admin.AdminKeyControlsHandler),
]


@hookimpl
def config_sections():
    """The dashboard reads [dashboard], [smtp] and [retention]."""
    return ["dashboard", "smtp", "retention"]


@hookimpl
def register_routes(register, config):
    """The dashboard pages under /dashboard (and / redirecting there), GET /v1/me and
    the admin API under /admin/api."""
    cfg = DashboardConfig.from_config(config)
    dash = Dashboard(cfg=cfg, passwords=cfg.passwords())
    SmtpConfig.from_config(config)          # fail at start on a bad [smtp] section
    RetentionConfig.from_config(config)

    for pattern, handler in PAGES:
        register(pattern, handler, {"dashboard": dash})
    for pattern, handler in admin_api.ROUTES:       # GET /v1/me and /admin/api/...
        register(pattern, handler, {"dashboard": dash})
    register(r"/dashboard/static/(.*)", StaticHandler, {"path": STATIC})
    register(r"/dashboard/.*", NotFoundPage, {"dashboard": dash})


@hookimpl
def register_services(register, config, store):
    """Mailer (outbox sender), retention job, first-admin check, and the work pages
    do after answering (stopped first, so its mail is queued before the mailer stops)."""
    cfg = DashboardConfig.from_config(config)
    register(Mailer(SmtpConfig.from_config(config)))
    register(RetentionService(RetentionConfig.from_config(config)))
    register(FirstAdmin(cfg, cfg.passwords()))
    register(DeferredWork())


@hookimpl
def register_commands(subparsers):
    """``allyoucantoken admin set-status|set-tier|create``."""
    from dashboard.commands import add_admin_commands   # only the CLI needs it
    add_admin_commands(subparsers)

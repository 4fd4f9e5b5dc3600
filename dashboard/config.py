"""The ``[dashboard]`` config section, validated with messages that name the key."""
from __future__ import annotations

from dataclasses import dataclass

from gateway.config import ConfigError, build_section


@dataclass
class DashboardConfig:
    """``[dashboard]``: sessions, passwords, throttling and the first admin."""

    admin_email: str = ""           # first admin (created at first start if no admin exists)
    admin_password: str = ""        # or ALLYOUCANTOKEN_DASHBOARD__ADMIN_PASSWORD; empty: random
    session_idle: float = 3600.0    # seconds without a request before a session ends
    session_absolute: float = 43200.0   # seconds after sign-in when a session ends anyway
    login_max_failures: int = 5     # failed sign-ins per account (email) per window
    login_max_failures_ip: int = 20  # failed sign-ins per client IP per window
    login_window: float = 900.0     # seconds
    register_max_per_ip: int = 10   # registrations (and reset requests) per IP per hour
    reset_ttl: float = 3600.0       # seconds a password-reset code works
    email_undo_ttl: float = 604800.0  # seconds the old address can undo an email change
    password_min_length: int = 10
    argon2_time_cost: int = 3
    argon2_memory_cost: int = 65536  # KiB
    argon2_parallelism: int = 4
    max_keys: int = 20              # active API keys per account
    public_url: str = ""            # base URL used in emails, e.g. https://llm.example.com
    site_name: str = "AllYouCanToken"

    @classmethod
    def from_config(cls, config) -> "DashboardConfig":
        cfg = build_section(cls, dict(config.extra.get("dashboard", {})), "dashboard")
        if cfg.session_idle <= 0 or cfg.session_absolute < cfg.session_idle:
            raise ConfigError("dashboard: session_idle must be > 0 and session_absolute "
                              ">= session_idle")
        if cfg.password_min_length < 8:
            raise ConfigError("dashboard.password_min_length: must be at least 8")
        if min(cfg.login_max_failures, cfg.login_max_failures_ip) < 1 or cfg.login_window <= 0:
            raise ConfigError("dashboard: login_max_failures(_ip) must be >= 1 and "
                              "login_window > 0")
        if cfg.email_undo_ttl <= 0:
            raise ConfigError("dashboard.email_undo_ttl: must be > 0 (seconds)")
        if cfg.admin_email and "@" not in cfg.admin_email:
            raise ConfigError(f"dashboard.admin_email: {cfg.admin_email!r} is not an email")
        return cfg

    def passwords(self):
        from dashboard.passwords import Passwords
        return Passwords(self.argon2_time_cost, self.argon2_memory_cost,
                         self.argon2_parallelism)

"""One typed configuration: a TOML file plus environment overrides, validated at start.

Every section is a dataclass. Unknown keys and wrong types fail at start with a
message naming the key. Environment variables override single values:
``ALLYOUCANTOKEN_<SECTION>__<KEY>`` (e.g. ``ALLYOUCANTOKEN_SERVER__PORT=9000``,
``ALLYOUCANTOKEN_DATABASE__URI=mongodb://...``).
"""
from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field
from typing import Any

ENV_PREFIX = "ALLYOUCANTOKEN_"


class ConfigError(ValueError):
    """The configuration is invalid; the message names the offending key."""


@dataclass
class ServerConfig:
    """``[server]``: where and how the gateway listens."""

    host: str = "127.0.0.1"
    port: int = 8888
    max_body_bytes: int = 1_048_576
    data_dir: str = "var"
    tls_cert: str = ""
    tls_key: str = ""
    trusted_proxies: list[str] = field(default_factory=list)
    log_level: str = "INFO"
    metrics_public: bool = False
    metrics_token: str = ""         # bearer token that may scrape /metrics from anywhere
    request_timeout: float = 600.0
    header_timeout: float = 30.0    # seconds to send a request's headers (and keep-alive idle time)
    body_timeout: float = 60.0      # seconds to send a request body; then the connection is closed
    max_header_bytes: int = 65_536  # larger request headers get 431


@dataclass
class DatabaseConfig:
    """``[database]``: MongoDB, or the embedded MongoDB-wire server when ``uri`` is empty."""

    uri: str = ""            # empty: start the embedded MongoDB-wire server
    name: str = "allyoucantoken"
    embedded_engine: str = "sqlite"   # sqlite (file under data_dir) or memory
    timeout: float = 5.0              # seconds to wait for the database before failing (503)


@dataclass
class AuthConfig:
    """``[auth]``: the API-key cache (its TTL bounds how fast revocation takes effect)."""

    key_cache_ttl: float = 2.0       # revocation/suspension bound, seconds
    key_cache_size: int = 10_000
    key_cache_max_stale: float = 600.0  # while the database is down, cached keys work this long


@dataclass
class UsageConfig:
    """``[usage]``: how usage rollups are written and kept."""

    flush_interval: float = 1.0       # seconds between rollup writes
    hourly_days: float = 14.0         # hourly detail is kept this long (daily sums stay)
    shutdown_timeout: float = 5.0     # at exit, unwritten usage goes to the spool after this
    events_file: str = ""             # opt-in per-request metadata log (JSON lines) in data_dir


@dataclass
class ModelConfig:
    """``[[models]]``: a model name clients use, the backend serving it, its options."""

    name: str
    backend: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TierConfig:
    """``[tiers.NAME]``: one subscription tier's limits (0 means unlimited)."""

    requests_per_minute: int = 0      # 0 means unlimited
    tokens_per_minute: int = 0
    tokens_per_day: int = 0
    concurrent_streams: int = 0
    max_tokens: int = 0
    max_prompt_chars: int = 0
    models: list[str] = field(default_factory=lambda: ["*"])
    max_tokens_policy: str = "reject"  # reject | clamp


@dataclass
class LimitsConfig:
    """``[limits]``: the tier limiter's settings."""

    default_tier: str = "free"
    lease_ttl: float = 15.0           # stream slots of a crashed process free after this
    lease_idle: float = 2.0           # an idle account's unused quota goes back after this
    lease_horizon: float = 2.0        # a quota block covers this many seconds of demand
    lease_max_share: float = 0.25     # ...and at most this share of a limit
    enabled: bool = True


@dataclass
class FairUseConfig:
    """``[fair_use]``: thresholds that raise an abuse flag (and optionally suspend)."""

    enabled: bool = False
    check_interval: float = 60.0        # seconds between checks of today's usage
    min_requests: int = 50              # judge the error rate only after this many requests
    max_error_rate: float = 0.0         # e.g. 0.5: flag when over half the requests fail; 0 off
    max_daily_tokens: int = 0           # flag above this many tokens in a UTC day; 0 off
    auto_suspend: bool = False          # also suspend the account (and email its owner)


@dataclass
class PluginsConfig:
    """``[plugins]``: extra plugin modules to load and plugins to block."""

    modules: list[str] = field(default_factory=list)   # extra plugin modules to import
    disabled: list[str] = field(default_factory=list)  # plugin names to block


@dataclass
class WebSocketConfig:
    """``[websocket]``: caps and timers of the WebSocket chat endpoint (/v1/chat/ws)."""

    max_message_bytes: int = 1_048_576  # larger client messages get an error (socket stays open)
    max_in_flight: int = 4              # concurrent requests per socket
    idle_timeout: float = 300.0         # close after this long with no message and nothing running
    auth_timeout: float = 10.0          # an unauthenticated socket must send `auth` within this
    ping_interval: float = 20.0         # protocol-level ping; 0 disables
    send_timeout: float = 60.0          # a client that reads nothing for this long is dropped
    allowed_origins: list[str] = field(default_factory=list)  # besides the gateway's own origin

    def __post_init__(self) -> None:
        for name in ("max_message_bytes", "max_in_flight", "idle_timeout", "auth_timeout",
                     "send_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"websocket.{name}: must be greater than 0")
        if self.ping_interval < 0:
            raise ConfigError("websocket.ping_interval: must be 0 (off) or positive")


@dataclass
class Config:
    """The whole configuration; plugin-owned sections are kept in ``extra``."""

    server: ServerConfig = field(default_factory=ServerConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    usage: UsageConfig = field(default_factory=UsageConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    plugins: PluginsConfig = field(default_factory=PluginsConfig)
    fair_use: FairUseConfig = field(default_factory=FairUseConfig)
    websocket: WebSocketConfig = field(default_factory=WebSocketConfig)
    models: list[ModelConfig] = field(default_factory=list)
    tiers: dict[str, TierConfig] = field(default_factory=dict)
    # Sections owned by plugins (e.g. [smtp], [dashboard]); validated by them.
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)

    def model(self, name: str) -> ModelConfig | None:
        return next((m for m in self.models if m.name == name), None)


DEFAULT_MODELS = [ModelConfig(name="smollm2-135m", backend="llamacpp", options={})]
DEFAULT_TIERS = {"free": TierConfig()}


def _coerce(value: Any, typ: Any, where: str) -> Any:
    origin = typing.get_origin(typ)
    if typ is Any:
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (inner,) = typing.get_args(typ)
        return [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        _, inner = typing.get_args(typ)
        return {k: _coerce(v, inner, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(typ):
        return _build(typ, value, where)
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ in (int, float, str, bool) and (not isinstance(value, typ) or
                                           (typ is int and isinstance(value, bool))):
        raise ConfigError(f"{where}: expected {typ.__name__}, got {value!r}")
    return value


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def load(path: str | None = None, env: dict[str, str] | None = None) -> Config:
    """Read the TOML file (if any), apply environment overrides, validate."""
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    for key, raw in env.items():
        if not key.startswith(ENV_PREFIX) or "__" not in key:
            continue
        section, _, name = key[len(ENV_PREFIX):].lower().partition("__")
        data.setdefault(section, {})[name] = _env_value(raw)
    return from_dict(data)


def from_dict(data: dict[str, Any]) -> Config:
    """Validate a plain dict (as parsed from TOML) into a Config."""
    data = dict(data)
    core = {f.name for f in dataclasses.fields(Config)} - {"extra"}
    extra = {k: data.pop(k) for k in list(data) if k not in core}
    for k, v in extra.items():
        if not isinstance(v, dict):
            raise ConfigError(f"{k}: expected a table, got {v!r}")
    cfg = _build(Config, data, "")
    cfg.extra = extra
    if not cfg.models:
        cfg.models = [dataclasses.replace(m) for m in DEFAULT_MODELS]
    if not cfg.tiers:
        cfg.tiers = dict(DEFAULT_TIERS)
    seen = set()
    for m in cfg.models:
        if m.name in seen:
            raise ConfigError(f"models: duplicate model name {m.name!r}")
        seen.add(m.name)
    if cfg.limits.default_tier not in cfg.tiers:
        raise ConfigError(f"limits.default_tier: {cfg.limits.default_tier!r} is not a defined tier")
    for name, tier in cfg.tiers.items():
        if tier.max_tokens_policy not in ("reject", "clamp"):
            raise ConfigError(f"tiers.{name}.max_tokens_policy: must be 'reject' or 'clamp'")
    if bool(cfg.server.tls_cert) != bool(cfg.server.tls_key):
        raise ConfigError("server: tls_cert and tls_key must be set together")
    if cfg.database.embedded_engine not in ("sqlite", "memory"):
        raise ConfigError("database.embedded_engine: must be 'sqlite' or 'memory'")
    return cfg

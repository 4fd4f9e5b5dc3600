"""One typed configuration: a TOML file plus environment overrides, validated at start.

Every section is a dataclass. Unknown keys and wrong types fail at start with a
message naming the key; the value of a secret field (password, token, key, secret) is
never printed, and credentials in a URI are masked.

Environment variables override single values: ``ALLYOUCANTOKEN_<SECTION>__<KEY>``, with
more ``__`` for nested tables (``ALLYOUCANTOKEN_TIERS__FREE__REQUESTS_PER_MINUTE=30``) and
an index for ``[[models]]`` (``ALLYOUCANTOKEN_MODELS__0__OPTIONS__API_KEY``). An override
is converted to the type the schema expects (see :func:`env_override`): a ``str`` field
takes the text verbatim (``ALLYOUCANTOKEN_SMTP__PASSWORD=20240611`` stays a string).
Plugin sections are untyped at load time: their overrides stay :class:`EnvValue`
strings, converted when the plugin validates its section with :func:`build_section`, or to the
type of the value the file gives for the same key.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
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
    body_timeout: float = 60.0      # seconds to send a request body; then 408 and close
    max_header_bytes: int = 65_536  # larger request headers get 431
    drain_timeout: float = 30.0     # SIGTERM: running streams may finish for this long
    log_format: str = "text"        # text | json (one JSON object per line)


@dataclass
class DatabaseConfig:
    """``[database]``: MongoDB, or the embedded MongoDB-wire server when ``uri`` is empty."""

    uri: str = ""            # empty: start the embedded MongoDB-wire server
    name: str = "allyoucantoken"
    embedded_engine: str = "sqlite"   # sqlite (file under data_dir) or memory
    timeout: float = 5.0              # seconds to wait for the database before failing (503)


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
    # Request fields the gateway does not know: "pass" them to the backend, "drop" them,
    # or "refuse" them (400). Empty: the backend's default ("pass" for openai_compatible,
    # "refuse" for the in-process backends).
    unknown_params: str = ""
    # Sequences each replica (or model worker) runs at once: the gateway sends it no more
    # and queues the rest fairly (gateway.relay.fair_queue). 0: what the model worker
    # reports, else unbounded (no queue in the gateway).
    max_concurrency: int = 0

    def __post_init__(self) -> None:
        if self.max_concurrency < 0:
            raise ConfigError(f"models.{self.name}.max_concurrency: must be 0 or more")
        if self.unknown_params not in ("", "pass", "drop", "refuse"):
            raise ConfigError(f"models.{self.name}.unknown_params: expected \"pass\", "
                              f"\"drop\" or \"refuse\", got {self.unknown_params!r}")


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
    weight: float = 1.0               # share of the GPUs under backlog (2.0: twice the tokens)
    priority: int = 0                 # strict band: waiting requests of a higher one go first

    def __post_init__(self) -> None:
        if not self.weight > 0:
            raise ConfigError(f"tiers: weight must be greater than 0, got {self.weight!r}")


@dataclass
class QueueConfig:
    """``[queue]``: requests waiting for a model's capacity (models with
    ``max_concurrency``, or model workers that report it), served token-fairly."""

    keepalive: float = 5.0             # seconds between ": queued" SSE comments / WS messages
    max_wait: float = 60.0             # then 503 backend_busy with Retry-After
    max_waiting_per_account: int = 32  # more: 429 with Retry-After (0: no cap)
    input_weight: float = 0.5          # a prompt token's cost against a generated token's

    def __post_init__(self) -> None:
        for name in ("keepalive", "max_wait"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"queue.{name}: must be greater than 0")
        if self.max_waiting_per_account < 0 or self.input_weight < 0:
            raise ConfigError("queue.max_waiting_per_account and queue.input_weight: "
                              "must be 0 or more")


@dataclass
class LimitsConfig:
    """``[limits]``: the tier limiter's settings."""

    default_tier: str = "free"
    lease_ttl: float = 15.0           # stream slots of a crashed process free after this
    lease_idle: float = 2.0           # an idle account's unused quota goes back after this
    lease_horizon: float = 2.0        # a quota block covers this many seconds of demand
    lease_max_share: float = 0.25     # ...and at most this share of a limit
    enabled: bool = True
    outage_policy: str = "available"  # database unreachable: "available" (bounded) or "exact"

    def __post_init__(self) -> None:
        if self.outage_policy not in ("exact", "available"):
            raise ConfigError("limits.outage_policy: expected \"exact\" or \"available\", "
                              f"got {self.outage_policy!r}")


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
class EmbeddingsConfig:
    """``[embeddings]``: caps of ``POST /v1/embeddings``."""

    # Inputs (strings or token arrays) per request; more is a 400 before admission.
    # OpenAI allows 2,048; see the README for why the default is lower.
    max_inputs: int = 256

    def __post_init__(self) -> None:
        if not 1 <= self.max_inputs <= 2048:
            raise ConfigError("embeddings.max_inputs: must be from 1 to 2048 (the API's "
                              "own limit)")


@dataclass
class Config:
    """The whole configuration; plugin-owned sections are kept in ``extra``."""

    server: ServerConfig = field(default_factory=ServerConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    usage: UsageConfig = field(default_factory=UsageConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    plugins: PluginsConfig = field(default_factory=PluginsConfig)
    websocket: WebSocketConfig = field(default_factory=WebSocketConfig)
    embeddings: EmbeddingsConfig = field(default_factory=EmbeddingsConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    models: list[ModelConfig] = field(default_factory=list)
    tiers: dict[str, TierConfig] = field(default_factory=dict)
    # Sections owned by plugins (e.g. [auth], [fair_use], [smtp], [dashboard]); validated
    # by them (``sdk.section_options``).
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)

    def model(self, name: str) -> ModelConfig | None:
        return next((m for m in self.models if m.name == name), None)


DEFAULT_MODELS = [ModelConfig(name="smollm2-135m", backend="llamacpp", options={})]
DEFAULT_TIERS = {"free": TierConfig()}


class EnvValue(str):
    """An override's text, as it came from the environment (``source`` names the
    variable). :func:`_coerce` converts it to the type a schema expects; code that reads
    an untyped plugin section directly sees a plain string."""

    source: str = ""

    def __new__(cls, raw: str, source: str = "") -> "EnvValue":
        obj = super().__new__(cls, raw)
        obj.source = source
        return obj


_SECRET_PARTS = {"password", "passwd", "secret", "token", "key", "apikey", "credentials",
                 "credential"}
_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^/@\s:'\"]*:)[^/@\s'\"]+@")
_INT = re.compile(r"[+-]?[0-9](?:_?[0-9])*")
_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def is_secret(where: str) -> bool:
    """A key whose value must never be printed: its last word is password, token, key,
    secret... (``smtp.password``, ``server.metrics_token``, ``options.api_key``)."""
    name = where.rsplit(".", 1)[-1].split("[", 1)[0].lower()
    return name in _SECRET_PARTS or name.rsplit("_", 1)[-1] in _SECRET_PARTS


def shown(value: Any, where: str) -> str:
    """How a value appears in an error message: hidden for a secret field, credentials
    in URIs masked, long values cut short."""
    if is_secret(where):
        return "a value that is not shown (secret)"
    text = _URL_CREDENTIALS.sub(r"\1****@", repr(str(value) if isinstance(value, EnvValue)
                                                 else value))
    return text if len(text) <= 80 else text[:77] + "..."


def _where(where: str, value: Any) -> str:
    source = getattr(value, "source", "")
    return f"{where} (from {source})" if source else where


def _from_env(value: EnvValue, typ: Any, where: str) -> Any:
    """Convert an environment override to ``typ`` (see the module docstring)."""
    raw = str(value)
    text = raw.strip()
    origin = typing.get_origin(typ)

    def fail(expected: str) -> typing.NoReturn:
        raise ConfigError(f"{_where(where, value)}: expected {expected}, got "
                          f"{shown(value, where)}")
    if typ is str or typ is Any:
        return raw
    if typ is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        fail("a boolean (true/false, 1/0, yes/no, on/off)")
    if typ is int:
        if not _INT.fullmatch(text):
            fail("an integer")
        return int(text)
    if typ is float:
        try:
            number = float(text)
        except ValueError:
            fail("a number")
        if math.isnan(number):
            fail("a number")
        return number
    if origin is list:
        if text.startswith("["):
            parsed = _toml_value(text, value, where, "a list")
        else:
            parsed = [EnvValue(part.strip(), value.source) for part in raw.split(",")
                      if part.strip()]
        return _coerce(parsed, typ, where)
    if origin is dict or dataclasses.is_dataclass(typ):
        if not text.startswith("{"):
            fail("a table (a TOML inline table such as {a = 1})")
        return _coerce(_toml_value(text, value, where, "a table"), typ, where)
    return raw


def _is_number(text: str) -> bool:
    try:
        return not math.isnan(float(text))
    except ValueError:
        return False


def _toml_value(text: str, value: EnvValue, where: str, expected: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        raise ConfigError(f"{_where(where, value)}: expected {expected} in TOML syntax, got "
                          f"{shown(value, where)}") from None


def _coerce(value: Any, typ: Any, where: str) -> Any:
    if isinstance(value, EnvValue):
        return _from_env(value, typ, where)
    origin = typing.get_origin(typ)
    if typ is Any:
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {shown(value, where)}")
        (inner,) = typing.get_args(typ)
        return [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {shown(value, where)}")
        _, inner = typing.get_args(typ)
        return {k: _coerce(v, inner, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(typ):
        return build_section(typ, value, where)
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ in (int, float, str, bool) and (not isinstance(value, typ) or
                                           (typ is int and isinstance(value, bool))):
        raise ConfigError(f"{where}: expected {typ.__name__}, got {shown(value, where)}")
    return value


def build_section(cls: type, data: Any, where: str) -> Any:
    """Build the dataclass ``cls`` from the table ``data`` (a config section, or part of
    one at ``where``), with the config's checks and messages: unknown keys and wrong
    types raise :class:`ConfigError` naming the key; environment overrides
    (:class:`EnvValue`) are converted to the field's type. Plugins validate their own
    sections with it (``build_section(MyConfig, config.extra.get("mine", {}), "mine")``).
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table, got {shown(data, where)}")
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




def _schema_step(typ: Any, part: str) -> Any:
    """The type expected one level down (``None``: not known at load time)."""
    if typ is None or typ is Any:
        return None
    origin = typing.get_origin(typ)
    if dataclasses.is_dataclass(typ):
        hints = typing.get_type_hints(typ)
        if typ is Config and part == "extra":
            return None
        return hints.get(part)
    if origin is dict:
        inner = typing.get_args(typ)[1]
    elif origin is list and part.isdigit():
        inner = typing.get_args(typ)[0]
    else:
        return None
    return None if inner is Any else inner


def env_override(data: dict[str, Any], var: str, raw: str) -> None:
    """Apply ``ALLYOUCANTOKEN_A__B__C=raw`` to the parsed file ``data`` in place.

    The path is matched case-insensitively against keys the file already has (else it
    is lower-cased); a number selects an entry of ``[[models]]``. The value becomes:
    - the schema's type for core sections (``int``, ``float``, ``bool``: true/false,
      1/0, yes/no, on/off; lists: ``a,b`` or a TOML array; tables: a TOML inline table;
      ``str``: the text verbatim, never parsed);
    - for untyped places (plugin sections, model ``options``): the type of the value the
      file has for that key when it is a number, boolean or list, else an
      :class:`EnvValue` string that a plugin's typed section converts on validation."""
    parts = var[len(ENV_PREFIX):].split("__")
    if any(not p for p in parts):
        raise ConfigError(f"{var}: empty name between '__' separators")
    node: Any = data
    typ: Any = Config
    where = ""
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"{var}: {where} has no entry {part} (it has {len(node)})")
            key: Any = int(part)
            label = f"{where}[{part}]"
        elif isinstance(node, dict):
            key = next((k for k in node if isinstance(k, str) and k.lower() == part.lower()),
                       part.lower())
            label = f"{where}.{key}" if where else key
        else:
            raise ConfigError(f"{var}: {where} is not a table")
        typ = _schema_step(typ, part.lower())
        if last:
            value = EnvValue(raw, var)
            if typ is not None:
                node[key] = _from_env(value, typ, label)
            else:
                current = node[key] if (isinstance(node, list) or key in node) else None
                example = type(current) if isinstance(current, (bool, int, float, list)) \
                    else None
                if example is int and not _INT.fullmatch(raw.strip()) and _is_number(raw):
                    example = float   # `ttl = 2` in the file, 0.5 in the override: a number
                if example is list:
                    example = list[Any]
                node[key] = _from_env(value, example, label) if example else value
            return
        if typ is not None and not (dataclasses.is_dataclass(typ) or
                                    typing.get_origin(typ) in (dict, list)):
            raise ConfigError(f"{var}: {label} is a single value, not a table")
        if isinstance(node, dict) and key not in node:
            if typing.get_origin(typ) is list:
                raise ConfigError(f"{var}: {label} has no entry {parts[i + 1]} (it has 0); "
                                  "list the entries in the file")
            node[key] = {}
        node = node[key]
        where = label


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
    for var in sorted(env):
        if var.upper().startswith(ENV_PREFIX) and "__" in var:
            env_override(data, var.upper(), env[var])
    return from_dict(data)


def from_dict(data: dict[str, Any]) -> Config:
    """Validate a plain dict (as parsed from TOML) into a Config."""
    data = dict(data)
    core = {f.name for f in dataclasses.fields(Config)} - {"extra"}
    extra = {k: data.pop(k) for k in list(data) if k not in core}
    for k, v in extra.items():
        if not isinstance(v, dict):
            raise ConfigError(f"{k}: expected a table, got {shown(v, k)}")
    cfg = build_section(Config, data, "")
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
    if cfg.server.log_format not in ("text", "json"):
        raise ConfigError("server.log_format: must be 'text' or 'json'")
    if cfg.server.drain_timeout < 0:
        raise ConfigError("server.drain_timeout: must be 0 or more seconds")
    if cfg.database.embedded_engine not in ("sqlite", "memory"):
        raise ConfigError("database.embedded_engine: must be 'sqlite' or 'memory'")
    return cfg

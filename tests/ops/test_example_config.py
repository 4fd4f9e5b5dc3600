"""The example configuration in the repository root: complete, valid, and accepted by
``allyoucantoken serve -c`` (with typed overrides from the environment)."""
from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import tomllib
import uuid

import httpx

from dashboard.config import DashboardConfig
from dashboard.retention import RetentionConfig
from gateway import config as config_mod
from gateway.plugin_manager import get_plugin_manager
from plugins.auth.api_key import AuthConfig
from plugins.limits.fair_use import FairUseConfig
from plugins.mail.mailer import SmtpConfig
from tests.helpers import ROOT, env, free_port, wait_http

EXAMPLE = ROOT / "allyoucantoken.example.toml"
SECTIONS = {"server": config_mod.ServerConfig, "database": config_mod.DatabaseConfig,
            "auth": AuthConfig, "usage": config_mod.UsageConfig,
            "limits": config_mod.LimitsConfig, "fair_use": FairUseConfig,
            "plugins": config_mod.PluginsConfig, "websocket": config_mod.WebSocketConfig,
            "dashboard": DashboardConfig, "smtp": SmtpConfig, "retention": RetentionConfig,
            "queue": config_mod.QueueConfig, "embeddings": config_mod.EmbeddingsConfig}


def test_the_example_is_complete_and_valid():
    raw = tomllib.loads(EXAMPLE.read_text())
    for section, cls in SECTIONS.items():     # every key of every section is shown
        missing = {f.name for f in dataclasses.fields(cls)} - set(raw[section])
        assert not missing, f"[{section}] lacks {sorted(missing)}"
    tier_keys = {f.name for f in dataclasses.fields(config_mod.TierConfig)}
    assert all(set(t) == tier_keys for t in raw["tiers"].values())
    cfg = config_mod.load(str(EXAMPLE), env={})
    assert cfg.server.drain_timeout == 30.0 and cfg.server.log_format == "text"
    assert set(cfg.tiers) == {"free", "pro"} and cfg.models[0].backend == "llamacpp"
    claimed = {s for names in get_plugin_manager().hook.config_sections() for s in names}
    assert set(cfg.extra) <= claimed                # no section the gateway would refuse
    SmtpConfig.from_config(cfg)
    RetentionConfig.from_config(cfg)
    DashboardConfig.from_config(cfg)


def test_serve_accepts_the_example_with_overrides_from_the_environment(mongo, tmp_path):
    port = free_port()
    overrides = {
        "ALLYOUCANTOKEN_SERVER__PORT": str(port),
        "ALLYOUCANTOKEN_SERVER__DATA_DIR": str(tmp_path / "var"),
        "ALLYOUCANTOKEN_SERVER__LOG_FORMAT": "json",
        "ALLYOUCANTOKEN_DATABASE__URI": mongo.uri,
        "ALLYOUCANTOKEN_DATABASE__NAME": "example_" + uuid.uuid4().hex[:8],
        "ALLYOUCANTOKEN_PLUGINS__MODULES": "tests.plugins.echo_backend",
        "ALLYOUCANTOKEN_MODELS__0__BACKEND": "echo",      # no model weights needed here
        "ALLYOUCANTOKEN_TIERS__FREE__REQUESTS_PER_MINUTE": "7",
        "ALLYOUCANTOKEN_SMTP__USERNAME": "relay-user",
        "ALLYOUCANTOKEN_SMTP__PASSWORD": "20240611",       # numeric, and stays a string
        "ALLYOUCANTOKEN_DASHBOARD__ADMIN_EMAIL": "root@example.com",
        "ALLYOUCANTOKEN_DASHBOARD__ADMIN_PASSWORD": "31415926535",
    }
    process_env = {**env(), **overrides}
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "-c", str(EXAMPLE),
                                 "serve"], stdout=log, stderr=subprocess.STDOUT,
                                env=process_env, cwd=str(tmp_path))
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/livez", 60, proc, log_path)
        assert httpx.get(url + "/readyz").json()["models"] == {"smollm2-135m": True}
        key = subprocess.run([sys.executable, "-m", "gateway.cli", "-c", str(EXAMPLE), "keys",
                              "create", "--account", "example@example.com"], env=process_env,
                             capture_output=True, text=True, check=True, timeout=60,
                             cwd=str(tmp_path)).stdout.strip()
        r = httpx.post(url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                       json={"model": "smollm2-135m", "messages": [{"role": "user",
                                                                   "content": "hi there"}]})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == \
            "hi there "
        assert r.headers["x-ratelimit-limit-requests"] == "7"   # the nested override
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    assert any(x.get("status") == 200 and x.get("path") == "/v1/chat/completions"
               for x in lines)
    text = log_path.read_text()
    assert "20240611" not in text and "31415926535" not in text and key not in text

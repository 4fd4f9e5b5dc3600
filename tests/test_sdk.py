"""The plugin SDK (gateway.sdk): the ten-line backend of docs/plugins.md runs in a real gateway,
base-class defaults, typed options with the config's error style, explicit denials
through the real admission path, and plugin CLI commands (register_commands)."""
import asyncio
import os
import subprocess
import sys
from pathlib import Path

import openai
import pytest

from gateway import sdk

from gateway.relay import streaming
from gateway.config import ModelConfig
from tests.docs import code_blocks
from tests.helpers import env, write_config


def _readme_plugin_code() -> str:
    return code_blocks("plugins", "python")[0].code


def _install_readme_plugin(tmp_path, monkeypatch) -> None:
    """Write the code block of docs/plugins.md as the module ``readme_echo``, importable by the
    gateway processes started afterwards (their PYTHONPATH comes from ours)."""
    plugins = tmp_path / "readme_plugins"
    plugins.mkdir()
    (plugins / "readme_echo.py").write_text(_readme_plugin_code())
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (str(plugins), os.environ.get("PYTHONPATH", "")) if p))


def test_the_readme_backend_is_about_ten_lines_of_code():
    code = [line for line in _readme_plugin_code().splitlines()
            if line.strip() and not line.strip().startswith("#")]
    assert len(code) <= 14, "\n".join(code)
    assert "gateway.sdk" in _readme_plugin_code() or "from gateway import sdk" in code[1]


def test_readme_backend_streams_through_a_real_gateway(inprocess_gw, tmp_path, monkeypatch):
    _install_readme_plugin(tmp_path, monkeypatch)
    monkeypatch.syspath_prepend(str(tmp_path / "readme_plugins"))   # in-process gateway
    gw = inprocess_gw({"plugins": {"modules": ["readme_echo"]},
                   "models": [{"name": "echo", "backend": "echo", "options": {"delay": 0.01}}]})
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.create_key("sdk@example.com"),
                           max_retries=0)
    stream = client.chat.completions.create(
        model="echo", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "a backend in ten lines"}])
    chunks = list(stream)
    deltas = [c.choices[0].delta.content for c in chunks
              if c.choices and c.choices[0].delta.content]
    assert deltas == ["a ", "backend ", "in ", "ten ", "lines "]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens > 0   # estimated by the gateway
    # completions come from chat (the SDK default): the prompt is the user message.
    text = client.completions.create(model="echo", prompt="derived from chat", stream=True)
    assert "".join(c.choices[0].text for c in text if c.choices) == "derived from chat "
    # health() and /v1/models come from the base class too.
    assert client.models.retrieve("echo").id == "echo"


def test_readme_backend_refuses_a_misspelt_option_at_start(start_gw, tmp_path, monkeypatch):
    _install_readme_plugin(tmp_path, monkeypatch)
    with pytest.raises(RuntimeError) as exc:
        start_gw({"plugins": {"modules": ["readme_echo"]},
                  "models": [{"name": "echo", "backend": "echo", "options": {"dealy": 1}}]})
    assert "models.echo.options: unknown key(s) dealy" in str(exc.value)


class _Opts(sdk.Options):
    delay: float = 0.0
    url: str = ""
    retries: int = 2


def test_options_are_typed_and_validated_like_the_config():
    opts = _Opts.parse({"delay": 1, "url": "http://x"}, "models.m.options")
    assert (opts.delay, opts.url, opts.retries) == (1.0, "http://x", 2)
    assert isinstance(opts.delay, float)
    with pytest.raises(sdk.ConfigError, match=r"^models\.m\.options\.delay: expected float"):
        _Opts.parse({"delay": "fast"}, "models.m.options")
    with pytest.raises(sdk.ConfigError, match=r"^models\.m\.options: unknown key\(s\) x, y$"):
        _Opts.parse({"x": 1, "y": 2}, "models.m.options")
    with pytest.raises(sdk.ConfigError, match=r"^models\.m\.options\.retries: expected int"):
        _Opts.parse({"retries": True}, "models.m.options")

    class Lenient(sdk.Options):
        ignore_unknown = True
        delay: float = 0.5
    assert Lenient.parse({"n_ctx": 2048}).delay == 0.5

    class Section(sdk.Options):
        every: int = 60

    class Cfg:
        extra = {"mine": {"every": 5}}
    assert sdk.section_options(Cfg, "mine", Section).every == 5
    with pytest.raises(sdk.ConfigError, match=r"^mine\.every: expected int"):
        Cfg.extra = {"mine": {"every": "soon"}}
        sdk.section_options(Cfg, "mine", Section)


def test_backend_defaults():
    class Words(sdk.Backend):
        async def chat(self, request):
            for w in request.messages[-1]["content"].split()[: request.max_tokens]:
                yield sdk.Chunk(w)

    backend = Words(ModelConfig("w", "words"), None)
    assert backend.name == "w" and backend.options == sdk.Options.parse({})

    async def go():
        assert await backend.start() is None and await backend.close() is None
        assert await backend.health() == {"ok": True}
        req = sdk.GenerationRequest("completion", "w", {"prompt": "x y z", "temperature": 0,
                                                         "echo": False}, 2, "req-1")
        return [c.text async for c in backend.completions(req)]
    assert asyncio.run(go()) == ["x", "y"]
    with pytest.raises(sdk.ConfigError, match=r"^models\.w\.options: unknown key\(s\) a$"):
        Words(ModelConfig("w", "words", {"a": 1}), None)


def test_completions_from_chat_see_one_user_message_and_closing_stops_chat():
    seen, closed = [], []

    class Slow(sdk.Backend):
        async def chat(self, request):
            seen.append(request)
            try:
                while True:
                    yield sdk.Chunk("t")
                    await asyncio.sleep(0)
            finally:
                closed.append(True)

    async def go():
        req = sdk.GenerationRequest("completion", "s", {"prompt": ["a", "b"], "stop": ["."],
                                                         "logprobs": 2}, 5, "rid")
        stream = Slow(ModelConfig("s", "slow"), None).completions(req)
        assert (await anext(stream)).text == "t"
        await stream.aclose()
    asyncio.run(go())
    (chat_req,) = seen
    assert chat_req.kind == "chat" and chat_req.request_id == "rid"
    assert chat_req.messages == [{"role": "user", "content": "ab"}]
    assert chat_req.body["stop"] == ["."] and "logprobs" not in chat_req.body
    assert chat_req.max_tokens == 5 and closed == [True]


def test_limiter_denial_reaches_the_client_error_with_its_param():
    settled = []

    class Reserves(sdk.Limiter):
        name = "reserves"

        async def admit(self, principal, request):
            return self.allow(reservation={"n": 1})

        async def settle(self, admission, usage, outcome):
            settled.append((admission.reservation, outcome))

    class TooLong(sdk.Limiter):
        name = "too_long"

        async def admit(self, principal, request):
            return self.deny("max_tokens_too_large", "max_tokens is too large.", 400,
                             param="max_tokens")

    class Gw:
        limiters = [Reserves(), TooLong()]

    principal = sdk.Principal("acct", "free")
    req = sdk.GenerationRequest("chat", "m", {"messages": []}, 10)
    with pytest.raises(sdk.APIError) as exc:
        asyncio.run(streaming.admit(Gw, principal, req))
    err = exc.value
    assert err.status == 400 and err.param == "max_tokens" and err.code == "max_tokens_too_large"
    assert settled == [({"n": 1}, "denied")]   # the other limiter's reservation released

    adm = sdk.deny("model_paused", "Paused.", retry_after=30)
    assert (adm.allowed, adm.status, adm.limit, adm.retry_after) == (False, 429, "model_paused", 30)
    assert adm.reservation == {}

    class Quiet(sdk.Limiter):
        name = "quiet"

        async def admit(self, principal, request):
            return self.allow()
    Gw.limiters = [Quiet()]
    (adm,) = asyncio.run(streaming.admit(Gw, principal, req))
    assert adm.allowed and adm.limiter == "quiet"
    assert asyncio.run(Quiet().settle(adm, sdk.Usage(), "ok")) is None   # no-op default


def test_authenticator_and_service_defaults():
    async def go():
        assert await sdk.Authenticator().authenticate(object()) is None
        service = sdk.Service()
        assert await service.start(object()) is None and await service.stop() is None
    asyncio.run(go())


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway.cli", "-c", str(config), *args],
                          capture_output=True, text=True, env=env(), timeout=60)


def test_a_plugin_adds_a_cli_command(tmp_path):
    config = write_config(tmp_path / "gw.toml", {
        "plugins": {"modules": ["tests.plugins.hello_command"]},
        "models": [{"name": "m1", "backend": "echo"}]})
    done = _cli(config, "hello", "--name", "plugins")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "hello plugins (models: m1)"
    helped = _cli(config, "--help")
    assert helped.returncode == 0 and "hello" in helped.stdout
    # Without the plugin the command does not exist; built-in commands are unchanged.
    bare = write_config(tmp_path / "bare.toml", {"models": [{"name": "m1", "backend": "echo"}]})
    missing = _cli(bare, "hello")
    assert missing.returncode == 2 and "invalid choice: 'hello'" in missing.stderr
    assert _cli(config, "keys", "--help").returncode == 0


# -- the SDK as the plugins' boundary (issue 21) ------------------------------------------

def _names_plugins_take_from_the_sdk() -> set[str]:
    from tests.test_layers import SDK, imports, modules
    return {name for module, path in modules() if module.startswith("plugins.")
            for _, target, name in imports(module, path) if target == SDK and name}


def test_every_name_the_builtins_use_is_public_sdk_surface():
    """What the built-ins take from the SDK is in ``__all__`` (documented, stable) and
    resolves, the lazily loaded names included."""
    used = _names_plugins_take_from_the_sdk()
    assert {"APIError", "hookimpl", "metrics", "workers", "StoreError"} <= used
    assert used <= set(sdk.__all__), used - set(sdk.__all__)
    for name in sdk.__all__:
        assert getattr(sdk, name) is not None, name
    assert sdk.workers.WorkerSpec and sdk.metrics.REPLICA_UP
    with pytest.raises(AttributeError):
        sdk.no_such_name    # noqa: B018


def test_the_sdk_loads_no_database_driver_until_asked():
    """A model worker imports the SDK; the store's names load on first use only."""
    code = ("import sys; from gateway import sdk; import plugins.backends.worker_server;"
            "assert 'pymongo' not in sys.modules and 'prometheus_client' not in sys.modules;"
            "sdk.StoreError; assert 'pymongo' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, env=env(), timeout=60)


def test_builtins_are_built_on_the_base_classes_and_match_the_protocols():
    from plugins.auth.api_key import ApiKeyAuthenticator
    from plugins.auth.session import SessionAuthenticator
    from plugins.backends.llamacpp import LlamaCppBackend
    from plugins.backends.mlc import MLCBackend
    from plugins.backends.openai_compatible import OpenAICompatibleBackend
    from plugins.limits.fair_use import FairUseMonitor
    from plugins.limits.tiers import TierLimiter
    from plugins.mail.mailer import Mailer
    from plugins.usage.events_file import EventsFile
    for cls in (OpenAICompatibleBackend, LlamaCppBackend, MLCBackend):
        assert issubclass(cls, sdk.Backend)
    assert issubclass(TierLimiter, sdk.Limiter)
    assert issubclass(ApiKeyAuthenticator, sdk.Authenticator)
    assert issubclass(SessionAuthenticator, sdk.Authenticator)
    for cls in (FairUseMonitor, Mailer, EventsFile):
        assert issubclass(cls, sdk.Service)

    class Words(sdk.Backend):
        async def chat(self, request):
            yield sdk.Chunk("w")

    class Quiet(sdk.Limiter):
        name = "quiet"

    assert isinstance(Words(ModelConfig("w", "words"), None), sdk.BackendProtocol)
    assert isinstance(Quiet(), sdk.LimiterProtocol)
    assert isinstance(sdk.Authenticator(), sdk.AuthenticatorProtocol)
    assert isinstance(sdk.Service(), sdk.ServiceProtocol)
    assert isinstance(ApiKeyAuthenticator(None, 2.0, 10), sdk.AuthenticatorProtocol)
    assert not isinstance(object(), sdk.LimiterProtocol)


def test_auth_and_fair_use_are_plugin_sections_with_the_same_keys(tmp_path):
    """``[auth]`` and ``[fair_use]`` belong to their plugins now: claimed through
    ``config_sections``, typed there, the same keys and defaults, the same environment
    overrides, and a misspelt key still stops the gateway at start."""
    from gateway import cli
    from gateway import config as config_mod
    from gateway.plugin_manager import get_plugin_manager
    from plugins.auth.api_key import AuthConfig
    from plugins.limits.fair_use import FairUseConfig

    pm = get_plugin_manager(load_entry_points=False)
    claimed = {s for names in pm.hook.config_sections() for s in names}
    assert {"auth", "fair_use"} <= claimed
    assert not hasattr(config_mod.Config(), "auth")

    default = config_mod.from_dict({})
    assert AuthConfig.from_config(default) == AuthConfig(2.0, 10_000, 600.0)
    assert FairUseConfig.from_config(default).enabled is False
    assert cli.KEY_CACHE_TTL == AuthConfig().key_cache_ttl == cli._key_cache_ttl(default)

    path = tmp_path / "gw.toml"
    path.write_text("[auth]\nkey_cache_ttl = 2\n[fair_use]\nmax_daily_tokens = 10\n")
    cfg = config_mod.load(str(path), env={
        "ALLYOUCANTOKEN_AUTH__KEY_CACHE_TTL": "0.5",          # the file has an int
        "ALLYOUCANTOKEN_AUTH__KEY_CACHE_SIZE": "50",
        "ALLYOUCANTOKEN_FAIR_USE__ENABLED": "yes",
        "ALLYOUCANTOKEN_FAIR_USE__MAX_ERROR_RATE": "0.25"})
    auth, fair = AuthConfig.from_config(cfg), FairUseConfig.from_config(cfg)
    assert (auth.key_cache_ttl, auth.key_cache_size, auth.key_cache_max_stale) == \
        (0.5, 50, 600.0)
    assert (fair.enabled, fair.max_error_rate, fair.max_daily_tokens) == (True, 0.25, 10)
    assert cli._key_cache_ttl(cfg) == 0.5

    services, authenticators = [], []
    pm.hook.register_services(register=services.append, config=cfg, store=None)
    assert "fair_use" in [s.name for s in services]
    bad = config_mod.from_dict({"auth": {"key_cache_tll": 1}, "fair_use": {"enabled": 1}})
    with pytest.raises(sdk.ConfigError, match=r"^auth: unknown key\(s\) key_cache_tll$"):
        pm.hook.register_authenticators(register=authenticators.append, config=bad,
                                        store=None)
    with pytest.raises(sdk.ConfigError, match=r"^fair_use\.enabled: expected bool"):
        pm.hook.register_services(register=services.append, config=bad, store=None)
    with pytest.raises(sdk.ConfigError, match=r"AUTH__KEY_CACHE_TTL\): expected a number"):
        AuthConfig.from_config(config_mod.load(
            None, env={"ALLYOUCANTOKEN_AUTH__KEY_CACHE_TTL": "soon"}))

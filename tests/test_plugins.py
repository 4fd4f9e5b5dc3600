"""Plugins: a backend registered from a test module streams through the gateway, and
every hook has a docstring (tests/test_plugin_hooks.py checks that docs/plugins.md
documents each one, tests/test_sdk.py runs its example backend)."""
import openai

from gateway import hookspecs
from gateway.plugin_manager import DEFAULT_PLUGINS, get_plugin_manager


def test_plugin_backend_from_a_test_module_streams(inprocess_gw):
    gw = inprocess_gw({"plugins": {"modules": ["tests.plugins.echo_backend"]},
                   "models": [{"name": "echo", "backend": "echo"}]})
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.create_key("plugin@example.com"))
    stream = client.chat.completions.create(
        model="echo", stream=True,
        messages=[{"role": "user", "content": "plugins are registered like built-ins"}])
    deltas = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert "".join(deltas) == "plugins are registered like built-ins "
    assert len(deltas) == 5


def test_builtins_are_registered_like_external_plugins():
    pm = get_plugin_manager(["tests.plugins.echo_backend"], load_entry_points=False)
    names = {pm.get_name(p) for p in pm.get_plugins()}
    assert "tests.plugins.echo_backend" in names
    assert {n for n in DEFAULT_PLUGINS} <= names
    registered = {}
    pm.hook.register_backends(register=registered.__setitem__, config=None)
    assert {"llamacpp", "openai_compatible", "echo"} <= set(registered)


def test_every_hook_has_a_docstring():
    hooks = [n for n in dir(hookspecs) if n.startswith(("register_", "on_"))]
    assert hooks
    for hook in hooks:
        assert getattr(hookspecs, hook).__doc__, f"{hook} has no docstring"


def test_a_disabled_builtin_is_not_loaded():
    pm = get_plugin_manager(disabled=["plugins.limits.tiers", "dashboard.plugin"],
                            load_entry_points=False)
    names = {pm.get_name(p) for p in pm.get_plugins()}
    assert "plugins.limits.tiers" not in names and "dashboard.plugin" not in names
    assert "plugins.auth.api_key" in names

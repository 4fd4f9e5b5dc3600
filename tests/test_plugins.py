"""Plugins: a backend registered from a test module streams through the gateway, and
every hook is documented in the README's plugin section."""
import re
from pathlib import Path

import openai

from gateway import hookspecs
from gateway.plugins import DEFAULT_PLUGINS, get_plugin_manager

ROOT = Path(__file__).resolve().parent.parent


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


def test_every_hook_is_documented_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Writing plugins", 1)[1].split("\n## ", 1)[0]
    hooks = [n for n in dir(hookspecs) if n.startswith(("register_", "on_"))]
    assert hooks
    for hook in hooks:
        assert getattr(hookspecs, hook).__doc__, f"{hook} has no docstring"
        assert f"`{hook}" in section, f"hook {hook} is not documented in the README"


def test_readme_example_plugin_is_short_and_valid():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Writing plugins", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) < 50
    namespace = {}
    exec(compile(code, "readme_plugin", "exec"), namespace)
    registered = {}
    namespace["register_backends"](register=registered.__setitem__, config=None)
    assert registered


def test_a_disabled_builtin_is_not_loaded():
    pm = get_plugin_manager(disabled=["plugins.limits.tiers", "dashboard.plugin"],
                            load_entry_points=False)
    names = {pm.get_name(p) for p in pm.get_plugins()}
    assert "plugins.limits.tiers" not in names and "dashboard.plugin" not in names
    assert "plugins.auth.api_key" in names

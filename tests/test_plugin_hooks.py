"""Hook coverage (datasette's rule): every hook of the plugin manager is documented in
docs/plugins.md and implemented by a test plugin under
tests/plugins/, and the hooks no other test exercises are shown to be called by a real
gateway (``tests/plugins/witness.py``, in-process: tests.inprocess)."""
from __future__ import annotations

import pkgutil

import httpx

from gateway.plugin_manager import get_plugin_manager
from tests import plugins as test_plugins
from tests.plugins import witness as witness_plugin
from tests.docs import read_doc
from tests.helpers import wait_until

TEST_PLUGINS = [f"tests.plugins.{m.name}" for m in pkgutil.iter_modules(test_plugins.__path__)]


def hook_names(pm) -> list[str]:
    return sorted(name for name in vars(pm.hook) if not name.startswith("_"))


def plugin_chapter() -> str:
    return read_doc("plugins")


def test_the_hook_walk_sees_every_hook():
    names = hook_names(get_plugin_manager(load_entry_points=False))
    assert {"register_backends", "register_limiters", "register_authenticators",
            "register_routes", "register_services", "config_sections", "on_usage"} <= set(names)


def test_every_hook_is_documented_in_the_plugin_chapter():
    section = plugin_chapter()
    undocumented = [h for h in hook_names(get_plugin_manager(load_entry_points=False))
                    if f"`{h}(" not in section]
    assert not undocumented, f"hooks missing from docs/plugins.md: {undocumented}"


def test_every_hook_has_a_test_plugin_implementing_it():
    pm = get_plugin_manager(TEST_PLUGINS, load_entry_points=False)
    untested = [name for name in hook_names(pm)
                if not any(impl.plugin_name.startswith("tests.plugins.")
                           for impl in getattr(pm.hook, name).get_hookimpls())]
    assert not untested, f"hooks no plugin under tests/plugins/ implements: {untested}"


WITNESS = {"plugins": {"modules": ["tests.plugins.echo_backend", "tests.plugins.witness"]},
           "models": [{"name": "echo", "backend": "echo"}],
           "witness": {"account": "acc_witness01", "token": "witness-token"}}


def witness(gw) -> dict:
    r = httpx.get(gw.url + "/witness", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def test_a_plugins_section_route_and_service_are_live(inprocess_gw):
    """config_sections: the [witness] section is accepted (an unclaimed one stops the
    gateway) and read; register_routes serves /witness; register_services started."""
    witness_plugin.SERVICE.started = False   # in-process: not started by an earlier gateway
    gw = inprocess_gw(WITNESS)
    seen = witness(gw)
    assert seen["section"] == "acc_witness01"
    assert seen["service_started"] is True


def test_a_plugins_authenticator_and_usage_observer_are_called(inprocess_gw):
    """register_authenticators: the plugin's header admits a request with no API key;
    on_usage: the plugin sees that request's usage event (metadata only)."""
    gw = inprocess_gw(WITNESS)
    body = {"model": "echo", "messages": [{"role": "user", "content": "seen by a witness"}]}
    refused = httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=30,
                         headers={"X-Witness-Token": "wrong"})
    assert refused.status_code == 401
    r = httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=30,
                   headers={"X-Witness-Token": "witness-token"})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "seen by a witness "

    def observed():
        events = [e for e in witness(gw)["usage_events"] if e.get("account_id") == "acc_witness01"]
        return events or None
    events = wait_until(observed, timeout=10, what="the witness's on_usage event")
    assert events[0]["model"] == "echo"
    assert "seen by a witness" not in str(events)       # metadata, never content
    assert witness(gw)["authenticator_calls"] >= 2

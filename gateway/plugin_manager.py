"""The plugin manager: built-in plugins and external ones, registered the same way."""
from __future__ import annotations

import importlib

import pluggy

from gateway import hookspecs

# Built-in plugins: importable modules with @hookimpl functions, exactly like
# third-party plugins (which are found through the "allyoucantoken" entry-point group).
DEFAULT_PLUGINS: tuple[str, ...] = (
    "plugins.backends.llamacpp",
    "plugins.backends.openai_compatible",
    "plugins.backends.mlc",
    "plugins.auth.api_key",
    "plugins.auth.session",
    "plugins.limits.tiers",
    "plugins.limits.fair_use",
    "plugins.usage.events_file",
    "dashboard.plugin",
)


def get_plugin_manager(extra_modules: tuple[str, ...] | list[str] = (),
                       disabled: tuple[str, ...] | list[str] = (),
                       load_entry_points: bool = True) -> pluggy.PluginManager:
    """Build a plugin manager with the built-ins, entry-point plugins and ``extra_modules``."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for name in disabled:
        pm.set_blocked(name)
    for name in (*DEFAULT_PLUGINS, *extra_modules):
        if pm.is_blocked(name):
            continue
        pm.register(importlib.import_module(name), name=name)
    if load_entry_points:
        pm.load_setuptools_entrypoints(hookspecs.PROJECT)
    return pm

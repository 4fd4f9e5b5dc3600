"""Layers import one way: ``gateway`` (core) <- ``plugins`` <- ``dashboard``.

Every module under gateway/, plugins/ and dashboard/ is parsed with ``ast`` (imports
inside functions included, so a lazy import is no way around the rule) and the test
fails on

- an import running the wrong way: the core importing ``plugins`` or ``dashboard``,
  a plugin importing ``dashboard``;
- a private name (``_x``) taken from a module of another package, by
  ``from pkg.mod import _x`` or as ``mod._x`` on an imported module: what several
  packages need is public API;
- a module that left the core (mail, retention, passwords, the ``admin`` commands: only
  the dashboard and a plugin need them) coming back, or the core importing a library
  only they use (argon2, aiosmtplib, cryptography);
- ``pymongo`` imported outside ``gateway/store/`` (storage access lives in one place);
- a plugin importing any core module but the SDK, ``gateway.sdk`` (issue 21): the
  built-ins use the boundary third-party plugins get, so what they do, any plugin can.

Dynamic imports by name (``DEFAULT_PLUGINS`` in ``gateway/plugin_manager.py``) are not import
statements: the plugin manager loads plugins that way, which is the point of it.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("gateway", "plugins", "dashboard")      # lower first: each may import those before it

# Imports the rule allows anyway, each with its reason. Keep this list short.
ALLOWED_UPWARD: set[tuple[str, str]] = set()

# What only the dashboard (or a plugin package) needs left the core (issue 12): old name
# -> where it lives now. Neither the module nor an import of it may come back to the core.
MOVED_OUT_OF_THE_CORE = {
    "gateway.mailer": "plugins.mail.mailer",        # dashboard mail, fair-use notices
    "gateway.retention": "dashboard.retention",
    "gateway.passwords": "dashboard.passwords",
    "gateway.admin_cli": "dashboard.commands",      # `admin`, through register_commands
}
# Third-party libraries only those modules need, so the core never loads them.
NOT_IN_THE_CORE = ("argon2", "aiosmtplib", "cryptography")
# Storage access lives in one place: only gateway/store/ talks to the driver.
DRIVER = ("pymongo", "bson", "motor")
# The one core module plugins may import; everything they need is re-exported there.
SDK = "gateway.sdk"


def modules() -> list[tuple[str, Path]]:
    found = []
    for top in LAYERS:
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found.append((".".join(parts), path))
    return found


def package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module name of a ``from ... import`` (relative ones resolved)."""
    if not node.level:
        return node.module or ""
    base = package_of(module, path).split(".")
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(module: str, path: Path):
    """``(line, imported module, name or None)`` for every import in the module, and
    ``(line, module, attribute)`` for attribute access on an imported module."""
    tree = ast.parse(path.read_text(), str(path))
    known = {m for m, _ in modules()}
    aliases: dict[str, str] = {}          # local name -> module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, None
                if alias.asname:
                    aliases[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom):
            source = resolve(module, path, node)
            for alias in node.names:
                full = f"{source}.{alias.name}"
                if full in known:        # `from pkg import module`
                    yield node.lineno, full, None
                    aliases[alias.asname or alias.name] = full
                else:
                    yield node.lineno, source, alias.name
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in aliases):
            yield node.lineno, aliases[node.value.id], node.attr


def layer(name: str) -> int | None:
    top = name.split(".")[0]
    return LAYERS.index(top) if top in LAYERS else None


def test_the_walk_sees_every_layer():
    names = {m for m, _ in modules()}
    assert {"gateway.config", "gateway.handlers.base", "plugins.auth.session",
            "dashboard.web"} <= names
    assert len(names) > 60


def test_imports_run_one_way():
    wrong = []
    for module, path in modules():
        own = layer(module)
        for line, target, _ in imports(module, path):
            other = layer(target)
            if other is not None and other > own and (module, target) not in ALLOWED_UPWARD:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {module} imports {target}")
    assert not wrong, "imports against the layers (gateway <- plugins <- dashboard):\n" + \
        "\n".join(wrong)


def test_no_private_name_is_imported_from_another_package():
    wrong = []
    for module, path in modules():
        mine = package_of(module, path)
        for line, target, name in imports(module, path):
            if (name and name.startswith("_") and not name.startswith("__")
                    and layer(target) is not None and target.rpartition(".")[0] != mine
                    and target != mine):
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {module} uses {target}.{name}")
    assert not wrong, "private names used across packages (make them public API):\n" + \
        "\n".join(wrong)


def test_the_allowed_exceptions_are_still_needed():
    """An exception that no longer matches an import is stale: remove it."""
    seen = {(module, target) for module, path in modules()
            for _, target, _ in imports(module, path)}
    assert ALLOWED_UPWARD <= seen, ALLOWED_UPWARD - seen


def test_what_left_the_core_stays_out():
    """The dashboard's mail, retention, passwords and admin commands (and the libraries
    only they use) are neither back in the core nor imported by it."""
    names = {m for m, _ in modules()}
    back = sorted(set(MOVED_OUT_OF_THE_CORE) & names)
    assert not back, f"moved out of the core, now back in it: {back}"
    assert set(MOVED_OUT_OF_THE_CORE.values()) <= names
    wrong = []
    for module, path in modules():
        if layer(module) != 0:
            continue
        for line, target, _ in imports(module, path):
            if target in MOVED_OUT_OF_THE_CORE.values() or \
                    target.split(".")[0] in NOT_IN_THE_CORE:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {module} imports {target}")
    assert not wrong, "the core imports what only the dashboard needs:\n" + "\n".join(wrong)


def test_only_the_store_imports_the_database_driver():
    wrong = [f"{path.relative_to(ROOT)}:{line}: {module} imports {target}"
             for module, path in modules()
             if not (module == "gateway.store" or module.startswith("gateway.store."))
             for line, target, _ in imports(module, path)
             if target.split(".")[0] in DRIVER]
    assert not wrong, "pymongo outside gateway/store/:\n" + "\n".join(wrong)


def core_imports_besides_the_sdk(module: str, path: Path) -> list[str]:
    """``path:line: module imports target`` for each core import of ``module`` other
    than the SDK (``from gateway import sdk``, ``from gateway.sdk import X`` and
    ``import gateway.sdk`` are the allowed spellings)."""
    return [f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{line}: "
            f"{module} imports {target}" + (f".{name}" if name else "")
            for line, target, name in imports(module, path)
            if layer(target) == 0 and target != SDK]


def test_plugins_import_only_the_sdk_from_the_core():
    wrong = [found for module, path in modules() if layer(module) == 1
             for found in core_imports_besides_the_sdk(module, path)]
    assert not wrong, ("plugins import the core only through gateway.sdk (re-export what "
                       "they need there):\n" + "\n".join(wrong))


def test_the_sdk_rule_flags_any_other_core_import(tmp_path):
    """The rule can fail: direct, lazy, whole-package and attribute imports of the core
    are all caught in a plugin module; the SDK's own spellings are not."""
    sample = tmp_path / "sample.py"
    sample.write_text("from gateway import sdk\n"                      # 1 allowed
                      "from gateway.sdk import APIError, metrics\n"    # 2 allowed
                      "import gateway.sdk\n"                           # 3 allowed
                      "from gateway.store.keys import hash_key\n"      # 4
                      "from gateway import metrics\n"                  # 5
                      "import gateway\n"                               # 6
                      "def f():\n"
                      "    import gateway.relay.streaming as streaming\n"    # 8
                      "    return sdk.workers, streaming.Generation\n"  # 9: 8's module
                      "from dashboard import web\n")                   # 10: another rule
    found = core_imports_besides_the_sdk("plugins.sample", sample)
    assert sorted(int(line.split(":")[1]) for line in found) == [4, 5, 6, 8, 9], found


def test_the_checker_catches_what_it_should(tmp_path):
    """The walk itself: a wrong-way import, a lazy one and a private name are all seen."""
    sample = tmp_path / "sample.py"
    sample.write_text("import dashboard.web\nfrom gateway.handlers import base\n"
                      "def f():\n    from plugins.auth import session\n"
                      "    return base._in_networks, session\n"
                      "from gateway.config import _build\n")
    found = list(imports("gateway.sample", sample))
    assert (1, "dashboard.web", None) in found
    assert (4, "plugins.auth.session", None) in found
    assert (5, "gateway.handlers.base", "_in_networks") in found
    assert (6, "gateway.config", "_build") in found

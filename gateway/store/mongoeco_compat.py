"""Every use of mongoeco's private internals, in one place, for one tested minor version.

The embedded database launcher (:mod:`gateway.store.embedded_db`) patches mongoeco's insert
path: the unique-id check of both engines, ``SQLiteEngine._validate_document_against_
unique_indexes`` and ``MemoryEngine._ensure_unique_indexes``, with their keyword
``scan_payload_id``. ``setup.cfg`` caps mongoeco below the next minor version, and
``tests/test_compat.py`` fails, naming the method and :data:`TESTED`, when one is missing,
lost its keyword, or no longer behaves as described here. To move to a new mongoeco:
raise the cap, run that test, and adapt what it names here.
"""
from __future__ import annotations

import importlib
import inspect

TESTED = (4, 11)   # the minor version these internals were read from (setup.cfg: <4.12)
KEYWORD = "scan_payload_id"
# (module, class, method) whose unconditional id scan is dropped
PAYLOAD_ID_CHECKS = (
    ("mongoeco.engines.sqlite", "SQLiteEngine", "_validate_document_against_unique_indexes"),
    ("mongoeco.engines.memory", "MemoryEngine", "_ensure_unique_indexes"),
)


def tested_version() -> str:
    return "%d.%d" % TESTED


def running_version() -> str:
    from mongoeco import __version__
    return __version__


def payload_id_check_problems() -> list[str]:
    """What keeps :func:`skip_payload_id_scan` from applying (empty when it applies):
    a class or method that is gone, or a method without the ``scan_payload_id`` keyword."""
    problems = []
    for module, cls_name, name in PAYLOAD_ID_CHECKS:
        where = f"{module}.{cls_name}.{name}"
        try:
            cls = getattr(importlib.import_module(module), cls_name)
        except (ImportError, AttributeError) as exc:
            problems.append(f"{module}.{cls_name} is gone ({exc})")
            continue
        method = getattr(cls, name, None)
        if method is None:
            problems.append(f"{where} is gone")
            continue
        method = getattr(method, "__wrapped__", method)
        parameter = inspect.signature(method).parameters.get(KEYWORD)
        if parameter is None or parameter.kind is not inspect.Parameter.KEYWORD_ONLY:
            problems.append(f"{where} has no keyword-only `{KEYWORD}`")
    return problems


def skip_payload_id_scan() -> list[str]:
    """Make inserts O(log n) instead of O(n) (a mongoeco cost, measured: 3 ms into an
    empty collection, 14 ms at 1,000 documents, 155 ms at 1,800 in a batch).

    Before inserting, mongoeco looks the new ``_id`` up by its storage key (indexed) and
    then, with ``scan_payload_id=True``, also decodes every document of the collection to
    compare ids by value. Its own rule for when that scan is needed is "the id contains
    a number" (1 and 1.0 are equal ids with different storage keys); that rule still
    applies here, only the unconditional scan is dropped. String and ObjectId ids (all
    the gateway uses) are then checked through the index alone.

    Idempotent. Returns :func:`payload_id_check_problems` (the methods left unpatched)."""
    problems = payload_id_check_problems()
    for module, cls_name, name in PAYLOAD_ID_CHECKS:
        if any(p.startswith(f"{module}.{cls_name}") for p in problems):
            continue
        cls = getattr(importlib.import_module(module), cls_name)
        original = getattr(cls, name)
        if getattr(original, "_ayct_patched", False):
            continue

        def patched(self, *args, _original=original, **kwargs):
            kwargs[KEYWORD] = False
            return _original(self, *args, **kwargs)
        patched._ayct_patched = True
        patched.__wrapped__ = original
        setattr(cls, name, patched)
    return problems

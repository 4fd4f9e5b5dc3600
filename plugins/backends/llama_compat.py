"""The one place that reaches into llama-cpp-python's files from the gateway process.

The gateway checks a request's JSON schemas (``response_format``, tool parameters) before
admitting it, so that a schema llama.cpp cannot turn into a grammar is a 400 that spends
no quota. The converter, ``llama_cpp/llama_grammar.py``, is plain Python, but importing
it as ``llama_cpp.llama_grammar`` runs the package's ``__init__``, which loads the native
library: the gateway process never loads native model code. So the file is loaded on
its own, from where the installed package keeps it.

Pinned: llama-cpp-python 0.3.36 (``setup.cfg``). ``tests/llamacpp/test_llama_compat.py``
fails loudly when the file or the function moves.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from types import ModuleType

GRAMMAR_FILE = "llama_grammar.py"


@functools.cache
def _grammar_module() -> ModuleType:
    spec = importlib.util.find_spec("llama_cpp")   # locates the package, imports nothing
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("llama-cpp-python is not installed (the llamacpp backend needs it)")
    path = os.path.join(list(spec.submodule_search_locations)[0], GRAMMAR_FILE)
    file_spec = importlib.util.spec_from_file_location("_allyoucantoken_llama_grammar", path)
    module = importlib.util.module_from_spec(file_spec)
    file_spec.loader.exec_module(module)
    return module


def json_schema_to_gbnf(schema_json: str) -> str:
    """llama.cpp's GBNF grammar for a JSON schema (raises on keywords it cannot convert)."""
    return _grammar_module().json_schema_to_gbnf(schema_json)

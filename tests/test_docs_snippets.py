"""Every command and config snippet of docs/configuration.md and docs/deploying.md runs
as written. A block that cannot run here carries ``<!-- not run: why -->`` right before
it (tests/docs.py reads the marker); exactly those are skipped, and any other block that
does not run fails.

- TOML blocks load with the real loader (``gateway.config.load`` on a file), then build
  the gateway's plugins as ``serve`` does (``Gateway(config, pm, store)``), which is where
  plugin sections and backend options are validated. Only ``data_dir`` is moved to a
  temporary folder.
- Shell blocks run in doc order with bash, in one temporary folder, with the venv's
  ``allyoucantoken`` first on PATH and its ports swapped for free ones. A block whose
  server runs in the foreground (``db serve``) keeps running while the next ones run;
  servers started with ``&`` must answer ``/readyz`` before the walk goes on."""
from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from gateway import config as config_mod
from gateway.plugin_manager import get_plugin_manager
from gateway.runtime import Gateway
from gateway.store import Store
from tests.docs import ROOT, code_blocks
from tests.helpers import free_port, wait_until

RUN_DOCS = ("configuration", "deploying")
SHELL = {"sh", "bash", "shell"}
BLOCKS = [b for doc in RUN_DOCS for b in code_blocks(doc)]
ECHO = ('[plugins]\nmodules = ["tests.plugins.echo_backend"]\n\n'
        '[[models]]\nname = "echo"\nbackend = "echo"\n')
PORT = re.compile(r"(?:--port |127\.0\.0\.1:)(\d{4,5})\b")
SERVER = re.compile(r"\bserve\b.*--port (\d+)")   # a command that runs a server
BODY = {"model": "echo", "messages": [{"role": "user", "content": "from the docs"}]}


def test_every_block_runs_or_says_why_not():
    """A block is TOML or shell (both run below), or it is marked as not run."""
    assert BLOCKS
    for block in BLOCKS:
        if block.not_run is None:
            assert block.lang == "toml" or block.lang in SHELL, (
                f"{block.id}: a {block.lang or 'plain'} block that no test runs; run it in "
                "tests/test_docs_snippets.py or mark it <!-- not run: why -->")


# -- TOML --------------------------------------------------------------------------------

@pytest.mark.parametrize("block", [b for b in BLOCKS if b.lang == "toml"],
                         ids=lambda b: b.id)
def test_toml_block_loads_with_the_gateways_loader(block, tmp_path):
    if block.not_run:
        pytest.skip(f"not run: {block.not_run}")
    path = tmp_path / "gateway.toml"
    path.write_text(block.code)
    cfg = config_mod.load(str(path), env={})
    cfg.server.data_dir = str(tmp_path / "var")
    pm = get_plugin_manager(cfg.plugins.modules, cfg.plugins.disabled)
    # serve's next step after the database: plugins claim and validate their sections,
    # backends validate their options. Nothing connects (connect=False).
    gateway = Gateway(cfg, pm, Store("mongodb://127.0.0.1:9/?directConnection=true", "docs"))
    assert set(gateway.backends) == {m.name for m in cfg.models}


# -- shell -------------------------------------------------------------------------------

class Walk:
    """Runs shell blocks one after another in one folder, and ends what they started."""

    def __init__(self, tmp: Path, ports: dict[str, str]) -> None:
        self.tmp, self.ports = tmp, ports
        self.sessions: list[subprocess.Popen] = []
        (tmp / "gateway.toml").write_text(ECHO)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ALLYOUCANTOKEN_")}
        self.env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{self.env['PATH']}"
        self.env["PYTHONPATH"] = str(ROOT)
        self.env["ALLYOUCANTOKEN_CONFIG"] = str(tmp / "gateway.toml")   # the echo model

    def code(self, block) -> str:
        return PORT.sub(lambda m: m[0].replace(m[1], self.ports[m[1]]), block.code)

    def run(self, block) -> subprocess.CompletedProcess | subprocess.Popen:
        code = self.code(block)
        commands = [ln for ln in code.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        foreground = [ln for ln in commands if SERVER.search(ln) and not ln.rstrip().endswith("&")]
        out = open(self.tmp / f"block-{block.line}.out", "w")    # files, not pipes: what
        log = open(self.tmp / f"block-{block.line}.log", "w")    # it leaves running keeps them
        proc = subprocess.Popen(["bash", "-e", "-c", code], cwd=self.tmp, env=self.env,
                                stdout=out, stderr=log, start_new_session=True)
        self.sessions.append(proc)
        if foreground:   # a server: the walk goes on once it listens
            port = int(SERVER.search(foreground[-1])[1])
            wait_until(lambda: proc.poll() is not None or _listening(port), 60,
                       what=f"{block.id} listening")
            assert proc.poll() is None, f"{block.id} exited:\n{self.log(block)}"
            return proc
        proc.wait(timeout=120)
        assert proc.returncode == 0, f"{block.id} failed:\n{code}\n{self.log(block)}"
        for line in commands:
            if line.rstrip().endswith("&") and SERVER.search(line):
                port = SERVER.search(line)[1]
                wait_until(lambda: _ready(port), 60, what=f"{block.id}: :{port}/readyz")
        stdout = (self.tmp / f"block-{block.line}.out").read_text()
        return subprocess.CompletedProcess(proc.args, 0, stdout, self.log(block))

    def log(self, block) -> str:
        return (self.tmp / f"block-{block.line}.log").read_text()

    def close(self) -> None:
        """SIGTERM to each block's process group (its backgrounded servers included)."""
        for proc in reversed(self.sessions):
            _end_group(proc)


def _listening(port: int) -> bool:
    import socket
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _ready(port: str) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _end_group(proc: subprocess.Popen) -> None:
    """End the process group a block's bash leads (it and what it left running)."""
    for sig, wait in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            proc.poll()      # reap the leader: a zombie would keep the group alive
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


def test_shell_blocks_run_in_order(tmp_path):
    """configuration.md then deploying.md: db serve, two gateways sharing it with the
    credentials it keeps, a key made with the CLI working on both, an online backup."""
    blocks = [b for b in BLOCKS if b.lang in SHELL]
    skipped = [b.id for b in blocks if b.not_run]
    blocks = [b for b in blocks if not b.not_run]
    ports = {p: str(free_port()) for b in blocks for p in PORT.findall(b.code)}
    walk = Walk(tmp_path, ports)
    results = {}
    try:
        for block in blocks:
            results[block.line] = walk.run(block)
        _check_what_the_docs_promise(walk, blocks, results)
    finally:
        walk.close()
    assert skipped == [b.id for b in BLOCKS if b.lang in SHELL and b.not_run]


def _check_what_the_docs_promise(walk: Walk, blocks, results) -> None:
    by_first = {b.code.split()[1] if b.code.startswith("allyoucantoken") else b.code.split()[0]: b
                for b in blocks}
    # db serve prints the URI as its block shows it (the password left out).
    serve_db = by_first["db"]
    shown = next(ln for ln in walk.code(serve_db).splitlines() if ln.startswith("# connect"))
    wait_until(lambda: "# connect" in walk.log(serve_db), 10, what="db serve's URI line")
    printed = next(ln for ln in walk.log(serve_db).splitlines() if ln.startswith("# connect"))
    path = re.compile(r"<password in [^>]+>")
    assert path.sub("<password>", printed) == path.sub("<password>", shown)
    assert f"<password in {walk.tmp / 'var' / 'embedded-db.auth'}>" in printed
    # the gateways' block ends with keys create: the key works on both gateways.
    gateways = next(b for b in blocks if "serve --port" in b.code and "db serve" not in b.code)
    key = results[gateways.line].stdout.strip().splitlines()[-1]
    assert key.startswith("ayct_")
    gateway_ports = [PORT.search(ln)[1] for ln in walk.code(gateways).splitlines()
                     if "serve --port" in ln]
    assert len(gateway_ports) == 2
    for port in gateway_ports:
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=BODY,
                       headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert r.status_code == 200, r.text
    # the backup lines made a copy of the running database.
    assert any("backup.sqlite" in b.code for b in blocks)
    with sqlite3.connect(walk.tmp / "backup.sqlite") as copy:
        assert copy.execute("select count(*) from sqlite_master").fetchone()[0] > 0
    # the old recipe's URI, without credentials: one line saying where they are.
    db_port = PORT.search(walk.code(serve_db))[1]
    env = dict(walk.env, ALLYOUCANTOKEN_DATABASE__URI=f"mongodb://127.0.0.1:{db_port}/"
                                                      "?directConnection=true")
    bare = subprocess.run(["allyoucantoken", "serve", "--port", str(free_port())],
                          cwd=walk.tmp, env=env, capture_output=True, text=True, timeout=60)
    assert bare.returncode == 1, bare
    assert "Traceback" not in bare.stderr, bare.stderr
    lines = bare.stderr.strip().splitlines()
    assert len(lines) == 1 and "embedded-db.auth" in lines[0], bare.stderr

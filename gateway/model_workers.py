"""Model workers: local model runtimes (native code) in supervised child processes.

A backend whose runtime is native code (llama.cpp, MLC) never runs it in the gateway
process. Its class offers ``worker_specs(model_cfg, config)``: the command lines of its
workers (one per model, or one per GPU). This module runs them:

- **Started once, shared.** ``serve --workers N`` starts them in the parent, before it
  forks the gateway processes, which inherit the registry (:func:`workers_for`). A single
  gateway process starts them on its backend's ``start()``.
- **A socket of its own, kept across restarts.** The supervisor binds each worker's
  loopback port and hands the listening socket to every incarnation of the worker
  (``--fd``), so the address never changes and no other process can take the port.
- **Supervised.** A thread per worker starts it, waits for its ``READY`` line, and on its
  exit logs how it ended (signal or exit code) and starts it again with backoff (0.5 s
  doubling to 30 s; back to 0.5 s after a minute up), logging how long the restart took.
- **State shared with the gateway processes** through an anonymous shared memory page
  (made before the fork): a request for a model whose worker is not up is refused at
  once (503 ``model_restarting``), it does not wait on a dead socket.
- **Private.** Each worker requires a bearer token made at start (environment, never
  the command line), and dies with the process that started it (``PR_SET_PDEATHSIG``;
  it also polls its parent).
"""
from __future__ import annotations

import logging
import mmap
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from gateway import children
from gateway.children import until_stopped_or_orphaned  # noqa: F401 - sdk.workers' too

log = logging.getLogger("allyoucantoken.workers")

STARTING, UP, RESTARTING, STOPPED = 0, 1, 2, 3
STATE_NAMES = {STARTING: "starting", UP: "up", RESTARTING: "restarting", STOPPED: "stopped"}
BACKOFF_FIRST, BACKOFF_MAX, STABLE_AFTER = 0.5, 30.0, 60.0
TOKEN_ENV = "AYCT_WORKER_TOKEN"

_PAGE = mmap.mmap(-1, mmap.PAGESIZE)     # shared with forked gateway processes
_cells = 0
_REGISTRY: dict[str, list["ModelWorker"]] = {}


class WorkerStartError(RuntimeError):
    """A model worker could not start (the message says which and how it ended)."""


@dataclass
class WorkerSpec:
    """How to run one model worker: a name for the logs, its command line (the
    supervisor appends ``--fd N``), extra environment (e.g. ``CUDA_VISIBLE_DEVICES``)
    and how long its model may take to load."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    start_timeout: float = 300.0


def _describe(code: int) -> str:
    """How a process ended, from its return code (negative: the signal)."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class ModelWorker:
    """One supervised worker process (see the module docstring)."""

    def __init__(self, spec: WorkerSpec) -> None:
        global _cells
        self.spec = spec
        self.token = secrets.token_urlsafe(24)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.sock.set_inheritable(True)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.cell = _cells
        _cells += 1
        _PAGE[self.cell] = STARTING
        self.owner = os.getpid()
        self.pid: int | None = None
        self.restarts = 0
        self._proc: subprocess.Popen | None = None
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._failed: str | None = None
        self._thread: threading.Thread | None = None
        self._down_since = 0.0
        self._reason = ""               # what a worker that failed to start said

    @property
    def state(self) -> int:
        """STARTING, UP, RESTARTING or STOPPED: as the supervisor last saw it (shared
        with the forked gateway processes)."""
        return _PAGE[self.cell]

    def start(self) -> None:
        """Start the supervisor thread and wait until the worker's model is loaded
        (:class:`WorkerStartError` with the reason if its first start fails)."""
        self._thread = threading.Thread(target=self._supervise, daemon=True,
                                        name=f"model-worker-{self.spec.name}")
        self._thread.start()
        if not self._ready.wait(self.spec.start_timeout + 5):
            self.stop()
            raise WorkerStartError(f"model worker {self.spec.name} did not start within "
                               f"{self.spec.start_timeout:g} s")
        if self._failed:
            self.stop()
            raise WorkerStartError(self._failed)

    def _spawn(self) -> subprocess.Popen:
        env = dict(os.environ, **self.spec.env)
        env[TOKEN_ENV] = self.token
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        fd = self.sock.fileno()
        return subprocess.Popen([*self.spec.argv, "--fd", str(fd)], stdout=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, env=env, pass_fds=(fd,),
                                preexec_fn=children.die_with_parent_by_sigkill)

    def _wait_ready(self, proc: subprocess.Popen) -> bool:
        """True once the worker printed READY; False if it exited first."""
        timer = threading.Timer(self.spec.start_timeout, proc.kill)
        timer.daemon = True
        timer.start()
        try:
            for line in proc.stdout:
                if line.strip() == b"READY":
                    return True
                if line.startswith(b"FAILED "):
                    self._reason = line[7:].decode("utf-8", "replace").strip()
            return False
        finally:
            timer.cancel()
            proc.stdout.close()

    def _supervise(self) -> None:
        backoff, first = BACKOFF_FIRST, True
        while not self._stopping.is_set():
            began = time.monotonic()
            proc = self._proc = self._spawn()
            self.pid = proc.pid
            if self._wait_ready(proc):
                _PAGE[self.cell] = UP
                if first:
                    log.info("model worker %s ready (pid %d, %s)", self.spec.name, proc.pid,
                             self.url)
                else:
                    log.warning("model worker %s back after %.1f s (pid %d)", self.spec.name,
                                time.monotonic() - self._down_since, proc.pid)
                self._ready.set()
            status = proc.wait()
            up_for = time.monotonic() - began
            if self._stopping.is_set():
                break
            if first and not self._ready.is_set():
                self._failed = (f"model worker {self.spec.name} {_describe(status)} before "
                                "it was ready: " + (self._reason or "its log lines above "
                                                    "say why"))
                _PAGE[self.cell] = STOPPED
                self._ready.set()
                return
            first = False
            _PAGE[self.cell] = RESTARTING
            self._down_since = time.monotonic()
            self.restarts += 1
            if up_for >= STABLE_AFTER:
                backoff = BACKOFF_FIRST
            log.error("model worker %s (pid %d) %s; its in-flight requests failed; "
                      "starting it again in %.1f s", self.spec.name, proc.pid,
                      _describe(status), backoff)
            if self._stopping.wait(backoff):
                break
            backoff = min(backoff * 2, BACKOFF_MAX)
        _PAGE[self.cell] = STOPPED

    def stop(self, timeout: float = 5.0) -> None:
        """Stop supervising, ask the worker to stop (SIGTERM), kill it after
        ``timeout``, and close the socket."""
        if os.getpid() != self.owner:   # a forked gateway process: the parent owns it
            return
        self._stopping.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        _PAGE[self.cell] = STOPPED
        self.sock.close()


def start_workers(model: str, specs: list[WorkerSpec]) -> list[ModelWorker]:
    """Start (and register) the workers of ``model``, all at once; raises
    :class:`WorkerStartError` if one cannot start (the others are stopped)."""
    workers = [ModelWorker(spec) for spec in specs]
    errors: list[BaseException] = []

    def start(worker: ModelWorker) -> None:
        try:
            worker.start()
        except BaseException as exc:  # noqa: BLE001 - collected and raised below
            errors.append(exc)
    threads = [threading.Thread(target=start, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        for w in workers:
            w.stop()
        raise WorkerStartError(str(errors[0]))
    _REGISTRY[model] = workers
    return workers


def workers_for(model: str) -> list[ModelWorker] | None:
    """The workers already running for ``model`` (started by this process or, with
    ``serve --workers``, by the parent before the fork), else None."""
    return _REGISTRY.get(model)


def stop_workers(model: str | None = None) -> None:
    """Stop the workers this process started (of one model, or all)."""
    names = [model] if model is not None else list(_REGISTRY)
    for name in names:
        workers = _REGISTRY.get(name) or []
        if workers and workers[0].owner != os.getpid():
            continue
        for worker in _REGISTRY.pop(name, []):
            worker.stop()


def start_for_config(config, backend_types: dict) -> None:
    """In ``serve --workers``' parent: start the workers of every configured model whose
    backend runs them (``worker_specs``), before the gateway processes are forked."""
    for model in config.models:
        factory = backend_types.get(model.backend)
        specs_of = getattr(factory, "worker_specs", None)
        if specs_of is not None and workers_for(model.name) is None:
            start_workers(model.name, specs_of(model, config))


def python_module(module: str, *args: str) -> list[str]:
    """The command line that runs ``module`` with this Python."""
    return [sys.executable, "-m", module, *args]

"""Built-in plugin: an opt-in per-request usage log, one JSON line per request.

Off by default. With ``[usage] events_file = "usage-events.jsonl"`` every finished
request appends its usage metadata (ids, model, status, token counts, timings; never
prompt or completion text) to that file in ``data_dir`` (mode 0600). It is an
``on_usage`` observer like any third-party one: the database keeps rollups only.
The file is the operator's to rotate (it is reopened when moved away).

A file that cannot be written (its disk is full, it went read-only) costs only its own
lines: they are dropped (a line the write cut short is removed from the file), one
warning every 30 s says so, no traceback, and the file is
tried again every second; once it takes a write, one line says how many events were not
written. Requests and the usage rollups in the database are not affected.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os

from gateway import sdk
from gateway.sdk import WarnOnce, hookimpl, stop_task

log = logging.getLogger("allyoucantoken.usage")


class EventsFile(sdk.Service):
    """Appends usage events to a JSON-lines file (buffered; flushed every second)."""

    name = "usage_events_file"
    MAX_BUFFERED = 100_000      # lines held between two flushes, at most (then dropped)

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None
        self._lines: list[str] = []
        self._pm = None
        self._task: asyncio.Task | None = None
        self._inode = 0
        self._dropped = 0       # events not written since the file last failed
        self._warn = WarnOnce(log)

    async def start(self, gateway) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._open()
        self._pm = gateway.pm
        self._pm.register(self, name=self.name)     # from now on it observes usage
        self._task = asyncio.ensure_future(self._flush_every_second())

    def _open(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._inode = os.fstat(self._fd).st_ino

    def _close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    async def _flush_every_second(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.flush()

    def flush(self) -> None:
        """Write the buffered lines; reopen the file when it was moved away (rotated), or
        after it failed. A write that fails drops the lines (see the module)."""
        lines, self._lines = self._lines, []
        data, done = b"", 0
        try:
            try:
                moved = self._fd is not None and os.stat(self.path).st_ino != self._inode
            except FileNotFoundError:
                moved = True
            if moved:
                self._close()
            if self._fd is None:
                self._open()
            data = "".join(lines).encode()
            while done < len(data):
                done += os.write(self._fd, data[done:])
        except OSError as exc:
            self._dropped += len(lines) - self._keep_whole_lines(data, done)
            self._close()
            self._warn.warning("usage events file %s cannot be written (%s); its lines are "
                               "dropped until it can", self.path,
                               exc.strerror or type(exc).__name__)
            return
        if self._dropped and lines:
            log.warning("usage events file %s is written again; %d events were not "
                        "written to it", self.path, self._dropped)
            self._dropped = 0

    def _keep_whole_lines(self, data: bytes, done: int) -> int:
        """After a write that stopped ``done`` bytes into ``data``: cut the torn line it
        left at the end of the file; returns how many whole lines were written."""
        whole = data.rfind(b"\n", 0, done) + 1
        if done > whole and self._fd is not None:
            try:
                os.ftruncate(self._fd, os.fstat(self._fd).st_size - (done - whole))
            except OSError:
                pass
        return data.count(b"\n", 0, whole)

    @hookimpl
    def on_usage(self, event):
        """Append one usage event (metadata only) as a JSON line."""
        if len(self._lines) >= self.MAX_BUFFERED:
            self._dropped += 1
            return
        self._lines.append(json.dumps(event, default=str, separators=(",", ":")) + "\n")

    async def stop(self) -> None:
        await stop_task(self._task)
        if self._pm is not None:
            self._pm.unregister(self)
            self._pm = None
        self.flush()
        self._close()


@hookimpl
def register_services(register, config, store):
    """Register the per-request usage log when ``[usage] events_file`` is set."""
    if config.usage.events_file:
        register(EventsFile(os.path.join(config.server.data_dir, config.usage.events_file)))

"""Built-in plugin: an opt-in per-request usage log, one JSON line per request.

Off by default. With ``[usage] events_file = "usage-events.jsonl"`` every finished
request appends its usage metadata (ids, model, status, token counts, timings; never
prompt or completion text) to that file in ``data_dir`` (mode 0600). It is an
``on_usage`` observer like any third-party one: the database keeps rollups only.
The file is the operator's to rotate (it is reopened when moved away).
"""
from __future__ import annotations

import asyncio
import json
import os

from gateway import sdk
from gateway.sdk import hookimpl, stop_task


class EventsFile(sdk.Service):
    """Appends usage events to a JSON-lines file (buffered; flushed every second)."""

    name = "usage_events_file"

    def __init__(self, path: str) -> None:
        self.path = path
        self._fh = None
        self._pm = None
        self._task: asyncio.Task | None = None
        self._inode = 0

    async def start(self, gateway) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._open()
        self._pm = gateway.pm
        self._pm.register(self, name=self.name)     # from now on it observes usage
        self._task = asyncio.ensure_future(self._flush_every_second())

    def _open(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._fh = os.fdopen(fd, "a", encoding="utf-8")
        self._inode = os.fstat(fd).st_ino

    async def _flush_every_second(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.flush()

    def flush(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            try:
                moved = os.stat(self.path).st_ino != self._inode
            except FileNotFoundError:
                moved = True
            if moved:       # rotated away: start a new file
                self._fh.close()
                self._open()

    @hookimpl
    def on_usage(self, event):
        """Append one usage event (metadata only) as a JSON line."""
        if self._fh is not None:
            self._fh.write(json.dumps(event, default=str, separators=(",", ":")) + "\n")

    async def stop(self) -> None:
        await stop_task(self._task)
        if self._pm is not None:
            self._pm.unregister(self)
            self._pm = None
        if self._fh is not None:
            self._fh.close()
            self._fh = None


@hookimpl
def register_services(register, config, store):
    """Register the per-request usage log when ``[usage] events_file`` is set."""
    if config.usage.events_file:
        register(EventsFile(os.path.join(config.server.data_dir, config.usage.events_file)))

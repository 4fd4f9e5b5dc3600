"""A real TCP proxy between the gateway and its database that can delay every packet
(a slow database), freeze the connections (a database that stops answering) or cut them
(a database that is down: open connections are reset and new ones refused), without
touching the database or the driver."""
from __future__ import annotations

import asyncio
import socket
import struct
import threading

from tests.helpers import free_port


class DelayProxy:
    """Forwards 127.0.0.1:port to the target port; ``delay`` seconds are added to every
    chunk read in either direction (order is kept). ``cut``/``restore`` and
    ``freeze``/``thaw`` cause outages for real. Runs its own loop in a thread."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.delay = 0.0
        self.down = False
        self.loop = asyncio.new_event_loop()
        self._flowing: asyncio.Event | None = None
        self._conns: set = set()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._client, "127.0.0.1", self.port))
        self._ready.set()
        self.loop.run_forever()

    def _call(self, fn) -> None:
        async def go():
            fn()
        asyncio.run_coroutine_threadsafe(go(), self.loop).result(5)

    # -- outages ---------------------------------------------------------------------
    def cut(self) -> None:
        """The database goes down: every open connection is reset, new ones are refused
        (accepted and reset at once) until ``restore``."""
        def go():
            self.down = True
            for writer in list(self._conns):
                _reset(writer)
            self._conns.clear()
        self._call(go)

    def restore(self) -> None:
        """The database is back (after ``cut``)."""
        def go():
            self.down = False
        self._call(go)

    def freeze(self) -> None:
        """The database stops answering: connections stay open, nothing moves."""
        self._call(lambda: self._flowing.clear())

    def thaw(self) -> None:
        self._call(lambda: self._flowing.set())

    # -- plumbing ----------------------------------------------------------------------
    async def _client(self, reader, writer) -> None:
        if self.down:
            _reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._conns.update((writer, up_writer))
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer),
                                 return_exceptions=True)
        finally:
            self._conns.discard(writer)
            self._conns.discard(up_writer)

    async def _pipe(self, reader, writer) -> None:
        try:
            while data := await reader.read(65536):
                if self.delay:
                    await asyncio.sleep(self.delay)
                await self._flowing.wait()
                if self.down or writer.is_closing():
                    break
                writer.write(data)
                await writer.drain()
        finally:
            if not writer.is_closing():
                writer.close()

    def close(self) -> None:
        """Stop serving and end every pipe inside the proxy's own loop (so no coroutine
        is left to be collected after the loop is closed)."""
        async def shut() -> None:
            self.server.close()
            self._flowing.set()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        asyncio.run_coroutine_threadsafe(shut(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


def _reset(writer) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a dead server's host answers."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.close()

"""A small TCP load balancer for the tests: each new connection goes to the next
upstream in turn, and to the one after when that refuses the connection (what nginx's
``proxy_next_upstream error`` or HAProxy does when a gateway stopped listening).

Run: ``python -m tests.ops.balancer --port P UPSTREAM_PORT...``
"""
from __future__ import annotations

import argparse
import asyncio
import itertools


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            writer.write_eof()
        except (OSError, RuntimeError):
            writer.close()


async def main(port: int, upstreams: list[int]) -> None:
    turn = itertools.cycle(range(len(upstreams)))

    async def handle(client_r, client_w) -> None:
        first = next(turn)
        for i in range(len(upstreams)):
            upstream = upstreams[(first + i) % len(upstreams)]
            try:
                up_r, up_w = await asyncio.open_connection("127.0.0.1", upstream)
                break
            except OSError:
                continue
        else:
            client_w.close()
            return
        await asyncio.gather(_pipe(client_r, up_w), _pipe(up_r, client_w))
        up_w.close()
        client_w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("upstreams", type=int, nargs="+")
    ns = parser.parse_args()
    asyncio.run(main(ns.port, ns.upstreams))

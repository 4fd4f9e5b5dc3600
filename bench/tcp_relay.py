"""A bare asyncio TCP relay (bytes in, bytes out; no HTTP parsing): the floor for what
any extra Python hop costs on this machine, measured beside the gateway.

    python -m bench.tcp_relay --port 9200 --upstream-port 9100
"""
from __future__ import annotations

import argparse
import asyncio


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def serve(port: int, upstream_port: int) -> None:
    async def handle(reader, writer):
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer),
                             return_exceptions=True)

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=2048)
    print(f"READY {port}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream-port", type=int, required=True)
    ns = p.parse_args()
    asyncio.run(serve(ns.port, ns.upstream_port))


if __name__ == "__main__":
    main()

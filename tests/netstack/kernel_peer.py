"""Kernel-side test programs, run inside the test namespace with `python -m tests.netstack.kernel_peer`.

Each prints "ready" once listening (servers) and reports results on stdout, so tests can drive the
kernel's own TCP against our stack:
  echo-server HOST PORT                  echo every connection until EOF
  digest-server HOST PORT                read to EOF, answer with the SHA-256 of what came, close
  digest-client HOST PORT SIZE           send SIZE random bytes, half-close, print sent and received digests
  echo-clients HOST PORT COUNT SIZE      COUNT concurrent connections echoing SIZE bytes each; print "ok N"
  connect HOST PORT                      print the outcome of one connection attempt
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import sys


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def _digest(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    digest = hashlib.sha256()
    while data := await reader.read(65536):
        digest.update(data)
    writer.write(digest.hexdigest().encode())
    await writer.drain()
    writer.close()


async def serve(handler, host: str, port: int) -> None:
    server = await asyncio.start_server(handler, host, port, backlog=1024)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


def digest_client(host: str, port: int, size: int) -> None:
    payload = os.urandom(size)
    with socket.create_connection((host, port), timeout=60) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while data := sock.recv(65536):
            reply += data
    print(hashlib.sha256(payload).hexdigest(), reply.decode(), flush=True)


async def echo_clients(host: str, port: int, count: int, size: int) -> None:
    async def one() -> bool:
        payload = os.urandom(size)
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
        echoed = await reader.read(-1)
        writer.close()
        return echoed == payload

    results = await asyncio.wait_for(asyncio.gather(*(one() for _ in range(count))), 120)
    print("ok", sum(results), flush=True)


def connect(host: str, port: int) -> None:
    try:
        socket.create_connection((host, port), timeout=10).close()
        print("connected", flush=True)
    except OSError as exc:
        print(type(exc).__name__, flush=True)


def main(argv: list[str]) -> None:
    command, host, port, *rest = argv
    port = int(port)
    if command == "echo-server":
        asyncio.run(serve(_echo, host, port))
    elif command == "digest-server":
        asyncio.run(serve(_digest, host, port))
    elif command == "digest-client":
        digest_client(host, port, int(rest[0]))
    elif command == "echo-clients":
        asyncio.run(echo_clients(host, port, int(rest[0]), int(rest[1])))
    elif command == "connect":
        connect(host, port)
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main(sys.argv[1:])

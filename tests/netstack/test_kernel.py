"""Our stack against the Linux kernel's TCP/IP, through a TUN device in a namespace the test creates.

Needs root, iproute2 and /dev/net/tun (skipped otherwise); curl and ping are used where installed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(ROOT))
BULK = 50 * 1024 * 1024
CHUNK = 256 * 1024
CONNECTIONS = 200


def peer(*args: str) -> list[str]:
    return [sys.executable, "-m", "tests.netstack.kernel_peer", *args]


@asynccontextmanager
async def kernel_process(tun, argv: list[str], ready: bytes = b"ready"):
    """A program in the kernel's namespace, once it has printed `ready`."""
    process = await trio.lowlevel.open_process(tun.command(*argv), stdout=subprocess.PIPE, env=ENV, cwd=ROOT)
    try:
        seen = b""
        with trio.fail_after(20):
            while ready not in seen:
                chunk = await process.stdout.receive_some()
                assert chunk, f"{argv} exited before it was ready"
                seen += chunk
        yield process
    finally:
        process.kill()
        await process.wait()


async def run_in_namespace(tun, argv: list[str]) -> str:
    result = await trio.run_process(tun.command(*argv), capture_stdout=True, capture_stderr=True, env=ENV,
                                    cwd=ROOT, check=False)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


async def read_all(stream, digest=None) -> bytes:
    data = bytearray()
    while chunk := await stream.receive_some():
        if digest is None:
            data += chunk
        else:
            digest.update(chunk)
    return bytes(data)


async def test_kernel_pings_our_address(tun, kernel_stack):
    if shutil.which("ping") is None:
        pytest.skip("needs ping (apt-get install iputils-ping)")
    out = await run_in_namespace(tun, ["ping", "-c", "3", "-i", "0.2", "-W", "2", tun.our_address])
    assert "3 received" in out


async def test_download_50_mb_from_a_kernel_http_server(tun, kernel_stack, tmp_path):
    blob = os.urandom(BULK)
    (tmp_path / "blob").write_bytes(blob)
    argv = [sys.executable, "-u", "-m", "http.server", "--bind", tun.kernel_address, "--directory",
            str(tmp_path), "8080"]
    async with kernel_process(tun, argv, ready=b"Serving HTTP"):
        stream = await kernel_stack.open_tcp_stream(tun.kernel_address, 8080)
        started = trio.current_time()
        await stream.send_all(b"GET /blob HTTP/1.0\r\nHost: kernel\r\n\r\n")
        response = await read_all(stream)
        elapsed = trio.current_time() - started
        await stream.aclose()
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200")
    assert hashlib.sha256(body).digest() == hashlib.sha256(blob).digest()
    print(f"\nkernel -> ours: {BULK / elapsed / 1e6:.1f} MB/s")


async def test_kernel_curl_downloads_50_mb_from_us(tun, kernel_stack, nursery):
    if shutil.which("curl") is None:
        pytest.skip("needs curl (apt-get install curl)")
    blob = os.urandom(BULK)

    async def serve_blob(stream):
        request = b""
        while b"\r\n\r\n" not in request:
            request += await stream.receive_some()
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % BULK)
        for offset in range(0, BULK, CHUNK):
            await stream.send_all(blob[offset:offset + CHUNK])
        await stream.aclose()

    await nursery.start(kernel_stack.serve_tcp, serve_blob, 8080)
    started = trio.current_time()
    out = await run_in_namespace(tun, ["sh", "-c", f"curl -sS --max-time 120 http://{tun.our_address}:8080/blob"
                                                   " | sha256sum"])
    elapsed = trio.current_time() - started
    assert out.split()[0] == hashlib.sha256(blob).hexdigest()
    print(f"\nours -> kernel curl: {BULK / elapsed / 1e6:.1f} MB/s")


async def test_200_concurrent_connections_to_a_kernel_server(tun, kernel_stack):
    open_now = 0
    all_open = trio.Event()
    echoed = []

    async def client():
        nonlocal open_now
        stream = await kernel_stack.open_tcp_stream(tun.kernel_address, 7000)
        open_now += 1
        if open_now == CONNECTIONS:
            all_open.set()
        await all_open.wait()  # every connection is established at the same time
        payload = os.urandom(20_000)
        await stream.send_all(payload)
        await stream.send_eof()
        echoed.append(await read_all(stream) == payload)
        await stream.aclose()

    async with kernel_process(tun, peer("echo-server", tun.kernel_address, "7000")):
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for _ in range(CONNECTIONS):
                    nursery.start_soon(client)
    assert echoed == [True] * CONNECTIONS


async def test_200_concurrent_kernel_clients_to_our_server(tun, kernel_stack, nursery):
    async def echo(stream):
        while data := await stream.receive_some():
            await stream.send_all(data)
        await stream.aclose()

    await nursery.start(kernel_stack.serve_tcp, echo, 7000)
    out = await run_in_namespace(tun, peer("echo-clients", tun.our_address, "7000", str(CONNECTIONS), "20000"))
    assert out.split() == ["ok", str(CONNECTIONS)]


async def test_half_close_towards_a_kernel_server(tun, kernel_stack):
    payload = os.urandom(1 << 20)
    async with kernel_process(tun, peer("digest-server", tun.kernel_address, "7001")):
        stream = await kernel_stack.open_tcp_stream(tun.kernel_address, 7001)
        await stream.send_all(payload)
        await stream.send_eof()  # the server answers only after our FIN
        reply = await read_all(stream)
        await stream.aclose()
    assert reply.decode() == hashlib.sha256(payload).hexdigest()


async def test_half_close_from_a_kernel_client(tun, kernel_stack, nursery):
    async def digest(stream):
        hasher = hashlib.sha256()
        await read_all(stream, hasher)
        await stream.send_all(hasher.hexdigest().encode())  # still allowed after the peer's FIN
        await stream.aclose()

    await nursery.start(kernel_stack.serve_tcp, digest, 7001)
    sent, received = (await run_in_namespace(tun, peer("digest-client", tun.our_address, "7001", "1000000"))).split()
    assert sent == received


async def test_closed_ports_are_refused_both_ways(tun, kernel_stack):
    with pytest.raises(ConnectionRefusedError):
        await kernel_stack.open_tcp_stream(tun.kernel_address, 9)
    out = await run_in_namespace(tun, peer("connect", tun.our_address, "9"))
    assert out.strip() == "ConnectionRefusedError"
    assert kernel_stack.core.drops["tcp-no-connection"] == 1

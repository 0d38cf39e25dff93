"""Our stack against the Linux kernel's TCP/IP, through a TUN device in a namespace the test creates.

Needs root, iproute2 and /dev/net/tun (skipped otherwise); curl and ping are used where installed.
"""

from __future__ import annotations

import hashlib
import os

import pytest
import trio

from tests.netns import needs
from tests.netstack.kernel_side import (download_from_kernel, kernel_curl_from_us, kernel_process, peer, read_all,
                                        run_in_namespace)

pytestmark = pytest.mark.netns

CONNECTIONS = 200
BULK = 50 * 1024 * 1024


@needs("ping", "iputils-ping")
async def test_kernel_pings_our_address(tun, kernel_stack):
    out = await run_in_namespace(tun.namespace, ["ping", "-c", "3", "-i", "0.2", "-W", "2", tun.our_address])
    assert "3 received" in out


async def test_download_50_mb_from_a_kernel_http_server(tun, kernel_stack, tmp_path):
    rate = await download_from_kernel(kernel_stack, tun.namespace, tun.kernel_address, tmp_path, BULK)
    print(f"\nkernel -> ours: {rate:.1f} MB/s")


@needs("curl", "curl")
async def test_kernel_curl_downloads_50_mb_from_us(tun, kernel_stack, nursery):
    rate = await kernel_curl_from_us(kernel_stack, nursery, tun.namespace, tun.our_address, BULK)
    print(f"\nours -> kernel curl: {rate:.1f} MB/s")


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

    async with kernel_process(tun.namespace, peer("echo-server", tun.kernel_address, "7000")):
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
    out = await run_in_namespace(tun.namespace, peer("echo-clients", tun.our_address, "7000", str(CONNECTIONS), "20000"))
    assert out.split() == ["ok", str(CONNECTIONS)]


async def test_half_close_towards_a_kernel_server(tun, kernel_stack):
    payload = os.urandom(1 << 20)
    async with kernel_process(tun.namespace, peer("digest-server", tun.kernel_address, "7001")):
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
    sent, received = (await run_in_namespace(tun.namespace, peer("digest-client", tun.our_address, "7001", "1000000"))).split()
    assert sent == received


async def test_closed_ports_are_refused_both_ways(tun, kernel_stack):
    with pytest.raises(ConnectionRefusedError):
        await kernel_stack.open_tcp_stream(tun.kernel_address, 9)
    out = await run_in_namespace(tun.namespace, peer("connect", tun.our_address, "9"))
    assert out.strip() == "ConnectionRefusedError"
    assert kernel_stack.core.drops["tcp-no-connection"] == 1

"""Driving programs inside a test namespace from Trio: the kernel's TCP as the peer of our stack."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from contextlib import asynccontextmanager
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(ROOT))


def in_namespace(namespace: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", namespace, *argv]


def peer(*args: str) -> list[str]:
    """argv of a kernel_peer.py program (see its docstring)."""
    return [sys.executable, "-m", "tests.netstack.kernel_peer", *args]


def http_server(address: str, directory: Path, port: int = 8080) -> list[str]:
    return [sys.executable, "-u", "-m", "http.server", "--bind", address, "--directory", str(directory), str(port)]


@asynccontextmanager
async def kernel_process(namespace: str, argv: list[str], ready: bytes = b"ready"):
    """A program in the namespace, once it has printed `ready`; killed on exit."""
    process = await trio.lowlevel.open_process(in_namespace(namespace, *argv), stdout=subprocess.PIPE, env=ENV,
                                               cwd=ROOT)
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


async def run_in_namespace(namespace: str, argv: list[str]) -> str:
    """Run a program in the namespace to completion; its stdout."""
    result = await trio.run_process(in_namespace(namespace, *argv), capture_stdout=True, capture_stderr=True,
                                    env=ENV, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


async def read_all(stream, digest=None) -> bytes:
    """Everything until EOF (or only fed to `digest`, to spare memory)."""
    data = bytearray()
    while chunk := await stream.receive_some():
        if digest is None:
            data += chunk
        else:
            digest.update(chunk)
    return bytes(data)


async def http_get(stream, path: str) -> bytes:
    """A minimal HTTP/1.0 GET on an open stream: the response body (asserting a 200)."""
    await stream.send_all(b"GET %s HTTP/1.0\r\nHost: kernel\r\n\r\n" % path.encode())
    head, _, body = (await read_all(stream)).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200"), head
    return body


def blob_server(blob: bytes, chunk: int = 256 * 1024):
    """A TCP handler answering any HTTP request with `blob`."""

    async def serve(stream) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            request += await stream.receive_some()
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(blob))
        for offset in range(0, len(blob), chunk):
            await stream.send_all(blob[offset:offset + chunk])
        await stream.aclose()

    return serve


def curl_sha256(url: str) -> list[str]:
    """argv that downloads `url` with curl and prints the SHA-256 of the body."""
    return ["sh", "-c", f"curl -sS --max-time 120 {url} | sha256sum"]


async def download_from_kernel(stack, namespace: str, server: str, directory: Path, size: int) -> float:
    """Our stack fetches `size` random bytes from a kernel-side http.server; checks SHA-256; MB/s."""
    blob = os.urandom(size)
    (directory / "blob").write_bytes(blob)
    async with kernel_process(namespace, http_server(server, directory), ready=b"Serving HTTP"):
        stream = await stack.open_tcp_stream(server, 8080)
        started = trio.current_time()
        body = await http_get(stream, "/blob")
        elapsed = trio.current_time() - started
        await stream.aclose()
    assert hashlib.sha256(body).digest() == hashlib.sha256(blob).digest()
    return size / elapsed / 1e6


async def kernel_curl_from_us(stack, nursery, namespace: str, ours: str, size: int) -> float:
    """A kernel-side curl fetches `size` random bytes our stack serves; checks SHA-256; MB/s."""
    blob = os.urandom(size)
    await nursery.start(stack.serve_tcp, blob_server(blob), 8080)
    started = trio.current_time()
    out = await run_in_namespace(namespace, curl_sha256(f"http://{ours}:8080/blob"))
    elapsed = trio.current_time() - started
    assert out.split()[0] == hashlib.sha256(blob).hexdigest()
    return size / elapsed / 1e6

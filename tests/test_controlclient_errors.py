"""A gateway or agent that cannot reach control logs what happened, where, and what to check, not
trio-websocket's bare `HandshakeError` or `ConnectionTimeout`. Real sockets on 127.0.0.1."""

from __future__ import annotations

import contextlib
import logging
import ssl
from functools import partial

import trio

from kakuremichi import controlclient
from kakuremichi.controlclient import ControlClient
from tests.deployment import free_port
from tests.gateway.testca import TestCA

KEY = "agt_" + "k" * 43
PUBLIC_KEY = "A" * 43 + "="


async def first_failure(url: str, caplog) -> str:
    """The reason of the first "cannot connect to control" line the client logs for `url`."""
    client = ControlClient(url, KEY, "agent", PUBLIC_KEY)
    with caplog.at_level(logging.WARNING, "kakuremichi.controlclient"):
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            while not (lines := [r for r in caplog.records if r.getMessage() == "cannot connect to control"]):
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    fields = lines[0].fields
    assert fields["url"] == controlclient.websocket_url(url)
    return fields["reason"]


async def serve_plain_http(status: bytes, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """A plain-HTTP server answering every connection with `status` and closing it."""
    async def answer(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.receive_some()
            await stream.send_all(b"HTTP/1.1 " + status + b"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")

    await trio.serve_tcp(answer, 0, host="127.0.0.1", task_status=task_status)


async def test_connection_refused_says_nothing_listens_there(caplog):
    port = free_port()
    assert await first_failure(f"http://127.0.0.1:{port}", caplog) == (
        f"connection refused by 127.0.0.1:{port}: nothing listens there; check that control is running and the "
        f"host and port of the control URL")


async def test_an_unresolvable_host_says_so(caplog):
    reason = await first_failure("https://nonexistent.invalid", caplog)
    assert reason.startswith("cannot resolve the host name 'nonexistent.invalid' (")
    assert reason.endswith("): check the host in the control URL and this machine's DNS")


async def test_https_to_a_plain_http_control_suggests_http(caplog, monkeypatch):
    monkeypatch.setattr(controlclient, "AUTH_TIMEOUT", 1.0)
    async with trio.open_nursery() as nursery:
        port = (await nursery.start(partial(serve_plain_http, b"400 Bad Request")))[0].socket.getsockname()[1]
        reason = await first_failure(f"https://127.0.0.1:{port}", caplog)
        nursery.cancel_scope.cancel()
    assert reason.startswith(f"TLS with 127.0.0.1:{port} failed (")
    assert reason.endswith("): if control serves plain HTTP there, use an http:// control URL")


async def test_a_server_that_is_not_control_is_named(caplog):
    async with trio.open_nursery() as nursery:
        port = (await nursery.start(partial(serve_plain_http, b"404 Not Found")))[0].socket.getsockname()[1]
        reason = await first_failure(f"http://127.0.0.1:{port}/api", caplog)
        nursery.cancel_scope.cancel()
    assert reason == (f"127.0.0.1:{port} answered HTTP 404 instead of opening a WebSocket: check that the control "
                      f"URL leads to control (its WebSocket is at /ws)")


async def handshake(stream: trio.SSLStream) -> None:
    with contextlib.suppress(trio.BrokenResourceError):
        await stream.do_handshake()


async def test_an_untrusted_certificate_is_named(caplog, tmp_path, monkeypatch):
    monkeypatch.setattr(controlclient, "AUTH_TIMEOUT", 1.0)
    cert, key = TestCA().issue("127.0.0.1")
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "key.pem").write_bytes(key)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_ssl_over_tcp, handshake, 0, context, host="127.0.0.1"))
        port = listeners[0].transport_listener.socket.getsockname()[1]
        reason = await first_failure(f"https://127.0.0.1:{port}", caplog)
        nursery.cancel_scope.cancel()
    assert reason.startswith(f"control's TLS certificate at 127.0.0.1:{port} is not trusted (")

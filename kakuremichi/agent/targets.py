"""Connecting to the local target an agent forwards a tunnel's connections to (kakuremichi.values.Target:
for an https:// target the agent speaks TLS to it; the tunnel carries plain HTTP)."""

from __future__ import annotations

import ssl

import trio

from kakuremichi.values import Target

CONNECT_TIMEOUT = 10.0


async def connect(target: Target, timeout: float = CONNECT_TIMEOUT) -> trio.abc.Stream:
    """Open a stream to the target (TLS-wrapped for https targets); raises OSError if it is down."""
    with trio.move_on_after(timeout):
        stream: trio.abc.Stream = await trio.open_tcp_stream(target.host, target.port)
        if target.tls:
            context = ssl.create_default_context()
            if target.host in ("localhost", "127.0.0.1", "::1"):
                # a local service's certificate is rarely issued for "localhost": encryption still
                # protects the hop, and the hop never leaves this machine
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            tls = trio.SSLStream(stream, context, server_hostname=target.host, https_compatible=True)
            try:
                await tls.do_handshake()
            except (trio.BrokenResourceError, ssl.SSLError) as exc:
                await trio.aclose_forcefully(stream)
                raise OSError(f"TLS handshake with {target} failed: {exc}") from exc
            stream = tls
        return stream
    raise OSError(f"connecting to {target} timed out after {timeout:g} s")

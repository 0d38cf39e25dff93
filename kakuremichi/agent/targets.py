"""Local targets an agent forwards tunnel connections to: `host:port`, `http://host[:port]` or
`https://host[:port]` (the agent speaks TLS to the target; the tunnel carries plain HTTP)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

import trio

CONNECT_TIMEOUT = 10.0


class TargetError(ValueError):
    pass


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    tls: bool = False

    @classmethod
    def parse(cls, text: str) -> "Target":
        text = text.strip()
        if "://" in text:
            parts = urlsplit(text)
            if parts.scheme not in ("http", "https"):
                raise TargetError(f"target {text!r}: scheme must be http or https")
            if not parts.hostname:
                raise TargetError(f"target {text!r} has no host")
            try:
                port = parts.port or (443 if parts.scheme == "https" else 80)
            except ValueError:
                raise TargetError(f"target {text!r} has an invalid port") from None
            return cls(parts.hostname, port, parts.scheme == "https")
        host, sep, port_text = text.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise TargetError(f"target {text!r} must be host:port, http://host:port or https://host:port")
        return cls(host, int(port_text))

    def __str__(self) -> str:
        return f"{'https://' if self.tls else ''}{self.host}:{self.port}"


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

"""The gateway's and agent's link to control: authenticate, receive configs, stay connected forever.

The data plane never depends on this link: while control is away the daemon keeps serving `last_config`,
and this client reconnects with exponential backoff and jitter. One task does everything (receive, ping,
silence detection), so there is no nursery whose failure could take the daemon down.
"""

from __future__ import annotations

import errno
import logging
import random
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

import msgspec
import trio
from trio_websocket import (ConnectionClosed, ConnectionRejected, ConnectionTimeout, HandshakeError, WebSocketConnection,
                            open_websocket_url)

from kakuremichi import protocol
from kakuremichi.logs import log

logger = logging.getLogger("kakuremichi.controlclient")

AUTH_TIMEOUT = 10.0
STOPPING_TIMEOUT = 1.0  # the most a clean stop waits to tell control
BACKOFF_INITIAL = 0.5
BACKOFF_MAX = 30.0


class _SessionEnded(Exception):
    """Why one connection ended: becomes a log line, then a retry."""


class _Refused(_SessionEnded):
    """Control answered auth_error: an operator has to fix the key or role, so it is logged as an error."""


class NotConnected(_SessionEnded):
    """`send` while there is no authenticated session; what it carried must be sent again after reconnecting."""


def _in_clear(url: str) -> bool:
    """A ws:// URL to anything but this host."""
    parts = urlsplit(url)
    return parts.scheme == "ws" and not (parts.hostname in ("localhost", "::1")
                                         or (parts.hostname or "").startswith("127."))


def websocket_url(url: str) -> str:
    """Accept control's address as users know it (http(s)://host:port) as well as its ws(s)://…/ws URL."""
    parts = urlsplit(url.strip())
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss") or not parts.netloc:
        raise ValueError(f"control URL {url!r} must look like https://control.example.com or ws://host:8000/ws")
    path = parts.path if parts.path not in ("", "/") else "/ws"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


class ControlClient:
    """Keeps one authenticated WebSocket session to control and hands every newer config to `on_config`.

    `on_config` is awaited with each config whose version is newer than the last applied one (and with the
    first config after every reconnect when it differs from `last_config`); returning acks it to control.
    `stats`, if given, is called every heartbeat and its dict sent as a status_update. Other messages from
    control go to the `on_message` attribute, `on_connected` is awaited after each authentication (to
    resend state), and `send` lets other tasks talk to control in between. `worker` is a gateway's worker
    process index (--workers), 0 for the gateway itself.
    """

    def __init__(self, url: str, api_key: str, role: str, public_key: str, public_endpoint: str | None = None,
                 on_config: Callable[[protocol.Config], Awaitable[None]] | None = None, heartbeat: float = 30.0,
                 *, stats: Callable[[], dict] | None = None, ssl_context: ssl.SSLContext | None = None,
                 worker: int = 0) -> None:
        if role not in protocol.ROLES:
            raise ValueError(f"role must be 'gateway' or 'agent', not {role!r}")
        self.url = websocket_url(url)
        self.role = role
        self._auth = protocol.Auth(api_key, role, protocol.check_public_key(public_key),
                                   None if public_endpoint is None else protocol.check_endpoint(public_endpoint),
                                   worker=worker or msgspec.UNSET)
        self._on_config = on_config
        self._stats = stats
        self.on_message: Callable[[protocol.Message], Awaitable[None]] | None = None
        self.on_connected: Callable[[], Awaitable[None]] | None = None
        self._ws: WebSocketConnection | None = None
        self._ssl_context = ssl_context
        self.heartbeat = heartbeat
        self.connected = False
        self.last_config: protocol.Config | None = None
        self.last_error: tuple[float, str] | None = None  # when and why the link last failed (wall clock)
        self._config_changed = trio.Condition()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, serve and reconnect until cancelled; `started` at once, so callers never wait for control."""
        task_status.started()
        if _in_clear(self.url):
            log(logger, logging.WARNING, "control is reached over plain ws://: the API key (and, for gateways, "
                "shared TLS certificate keys) cross the network unencrypted; use an https:// control URL",
                url=self.url)
        delay = BACKOFF_INITIAL
        while True:
            level = logging.WARNING
            try:
                async with open_websocket_url(self.url, ssl_context=self._ssl_context,
                                              connect_timeout=AUTH_TIMEOUT) as ws:
                    await self._session(ws)
            except HandshakeError as exc:
                tls_error = await _tls_error(self.url, self._ssl_context) if isinstance(exc, ConnectionTimeout) else None
                reason = _not_opened(exc, self.url, tls_error)
            except (OSError, ConnectionClosed, trio.BrokenResourceError) as exc:
                reason = _describe(exc)
            except (_SessionEnded, protocol.ProtocolError) as exc:
                reason = str(exc)
                level = logging.ERROR if isinstance(exc, _Refused) else level
            self._ws = None
            self.last_error = (time.time(), reason)
            if self.connected:
                self.connected = False
                delay = BACKOFF_INITIAL
                log(logger, level, "control connection lost", url=self.url, reason=reason)
            else:
                log(logger, level, "cannot connect to control", url=self.url, reason=reason,
                    retry_in=f"{delay:.1f}s")
            await trio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, BACKOFF_MAX)

    async def wait_for_config(self, newer_than: int = -1) -> protocol.Config:
        """Wait until a config with a version above `newer_than` has been applied."""
        async with self._config_changed:
            while self.last_config is None or self.last_config.version <= newer_than:
                await self._config_changed.wait()
            return self.last_config

    async def send(self, message: protocol.Message) -> None:
        """Send one message in the current session (raises NotConnected when there is none)."""
        if self._ws is None:
            raise NotConnected("not connected to control")
        try:
            await self._ws.send_message(message.to_json())
        except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise NotConnected(f"control connection lost: {_describe(exc)}") from None

    async def _session(self, ws: WebSocketConnection) -> None:
        await ws.send_message(self._auth.to_json())
        reply = None
        with trio.move_on_after(AUTH_TIMEOUT):  # only the answer is timed, not the session that follows
            reply = protocol.decode(await ws.get_message())
        if reply is None:
            raise _SessionEnded(f"no answer to auth within {AUTH_TIMEOUT:.0f}s")
        if isinstance(reply, protocol.AuthError):
            raise _Refused(f"control refused authentication: {reply.code}: {reply.message}")
        if not isinstance(reply, protocol.AuthSuccess):
            raise _SessionEnded(f"expected auth_success, got {reply.type}")
        try:
            await self._authenticated(ws, reply)
        except trio.Cancelled:  # the daemon is stopping: say so, so that control need not wait out our silence
            with trio.CancelScope(shield=True), trio.move_on_after(STOPPING_TIMEOUT):
                try:
                    await ws.send_message(protocol.Stopping().to_json())
                except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            raise

    async def _authenticated(self, ws: WebSocketConnection, welcome: protocol.AuthSuccess) -> None:
        self.connected = True
        interval = min(self.heartbeat, welcome.heartbeat_interval)  # never quieter than control expects
        log(logger, logging.INFO, "connected to control", url=self.url, client_id=welcome.client_id,
            name=welcome.name, heartbeat=interval)
        self._ws = ws
        if self.on_connected is not None:
            await self.on_connected()
        session_version: int | None = None  # versions only grow within one session
        last_heard = next_ping = trio.current_time()
        while True:
            now = trio.current_time()
            if now >= last_heard + 2 * interval:
                raise _SessionEnded(f"control silent for {2 * interval:g}s")
            if now >= next_ping:
                await ws.send_message(protocol.Ping().to_json())
                if self._stats is not None:
                    await ws.send_message(protocol.StatusUpdate(self._stats()).to_json())
                next_ping = now + interval
            frame = None
            with trio.move_on_at(min(next_ping, last_heard + 2 * interval)):
                frame = await ws.get_message()
            if frame is None:
                continue
            last_heard = trio.current_time()
            try:
                message = protocol.decode(frame)
            except protocol.ProtocolError as exc:
                log(logger, logging.WARNING, "ignoring a malformed frame from control", error=str(exc))
                continue
            if isinstance(message, protocol.Ping):
                await ws.send_message(protocol.Pong().to_json())
            elif isinstance(message, protocol.ConfigUpdate):
                session_version = await self._config(ws, message.config, session_version)
            elif self.on_message is not None:
                await self.on_message(message)

    async def _config(self, ws: WebSocketConnection, config: protocol.Config,
                      session_version: int | None) -> int | None:
        if config.role != self.role:
            log(logger, logging.WARNING, "ignoring a config for the wrong role", role=config.role)
            return session_version
        if session_version is not None and config.version <= session_version:
            log(logger, logging.DEBUG, "ignoring a stale config", version=config.version, current=session_version)
            return session_version
        if session_version is None and config == self.last_config:
            log(logger, logging.DEBUG, "config unchanged after reconnect", version=config.version)
        else:
            try:
                if self._on_config is not None:
                    await self._on_config(config)
            except Exception:  # a daemon's failure to apply must not drop the link; control sees no ack
                logger.exception("applying config %s failed", config.version)
                return config.version
            log(logger, logging.INFO, "config applied", version=config.version)
        async with self._config_changed:
            self.last_config = config
            self._config_changed.notify_all()
        await ws.send_message(protocol.ConfigAck(config.version).to_json())
        return config.version


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionClosed):
        reason = exc.reason
        return f"closed by control: {reason.code} {reason.reason or reason.name}" if reason else "connection closed"
    return str(exc) or type(exc).__name__


async def _tls_error(url: str, context: ssl.SSLContext | None) -> ssl.SSLError | None:
    """Why TLS with a wss:// `url` fails, if it does: trio-websocket reports a failed TLS handshake (an untrusted
    certificate, a plain-HTTP server) only as a timeout, so the handshake is tried again alone."""
    parts = urlsplit(url)
    if parts.scheme != "wss":
        return None
    with trio.move_on_after(AUTH_TIMEOUT):
        try:
            stream = await trio.open_ssl_over_tcp_stream(parts.hostname, parts.port or 443,
                                                         ssl_context=context or ssl.create_default_context())
        except OSError:
            return None
        try:
            await stream.do_handshake()
        except trio.BrokenResourceError as exc:
            return exc.__cause__ if isinstance(exc.__cause__, ssl.SSLError) else None
        finally:
            await trio.aclose_forcefully(stream)
    return None


def _not_opened(exc: HandshakeError, url: str, tls_error: ssl.SSLError | None = None) -> str:
    """Why the WebSocket to control at `url` did not open, in words (trio-websocket's own are bare class names),
    and what to check."""
    parts = urlsplit(url)
    where = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'wss' else 80)}"
    cause = tls_error or _root_cause(exc)
    if isinstance(exc, ConnectionRejected):
        return (f"{where} answered HTTP {exc.status_code} instead of opening a WebSocket: check that the control URL "
                f"leads to control (its WebSocket is at /ws)")
    if isinstance(cause, socket.gaierror):
        return (f"cannot resolve the host name {parts.hostname!r} ({cause.strerror}): check the host in the control "
                f"URL and this machine's DNS")
    if isinstance(cause, ssl.SSLCertVerificationError):
        return (f"control's TLS certificate at {where} is not trusted ({cause.verify_message}): give control a "
                f"certificate from a public CA, or check the host in the control URL")
    if isinstance(cause, ssl.SSLError):
        return (f"TLS with {where} failed ({cause.reason or cause}): if control serves plain HTTP there, use an "
                f"http:// control URL")
    if isinstance(cause, OSError) and cause.errno == errno.ECONNREFUSED:
        return (f"connection refused by {where}: nothing listens there; check that control is running and the host "
                f"and port of the control URL")
    if isinstance(cause, OSError):
        return (f"cannot connect to {where} ({cause.strerror or cause}): check that control is running there and "
                f"that no firewall blocks the port")
    if isinstance(exc, ConnectionTimeout):
        return (f"no WebSocket handshake from {where} within {AUTH_TIMEOUT:g}s: check that control, not another "
                f"server, listens there")
    return f"WebSocket handshake with {where} failed: {cause or type(exc).__name__}"


def _root_cause(exc: BaseException) -> BaseException | None:
    """The innermost error behind `exc` (through `raise … from` and the groups of trio's connect attempts)."""
    cause = exc.__cause__
    while True:
        if isinstance(cause, BaseExceptionGroup):
            cause = cause.exceptions[-1]
        elif cause is not None and cause.__cause__ is not None:
            cause = cause.__cause__
        else:
            return cause

"""A gateway's or agent's endpoints for watching it: Prometheus metrics (and its status document) over HTTP on
`--metrics-listen`, behind `--metrics-token` when one is set, and the status document on a Unix socket in its
data directory that only its owner may open, which `kakuremichi status` reads.

A gateway's workers are processes with counters of their own. prometheus_client's multiprocess mode would
merge only its own metric objects, written to shared files at every sample, not the gauges a worker computes at
scrape time from its own peers, drops and requests in flight; so worker i listens on the `--metrics-listen` port
+ i, as it does for WireGuard, and each worker is a scrape target of its own (its status socket:
`status-worker<i>.sock`).
"""

from __future__ import annotations

import argparse
import hmac
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import h11
import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from kakuremichi import command, logs
from kakuremichi.controlclient import ControlClient
from kakuremichi.faults import Contained
from kakuremichi.metrics import NodeCollector
from kakuremichi.options import EnvArgumentParser
from kakuremichi.tunnel import TunnelNode
from kakuremichi.values import Endpoint
from kakuremichi.wg import keys

logger = logging.getLogger("kakuremichi.monitoring")

REQUEST_TIMEOUT = 10.0  # seconds a scraper has to send its request
MAX_REQUEST = 16384  # bytes of request head
STATUS_SOCKET = "status.sock"  # in the data directory
STATUS_SOCKETS = hasattr(socket, "AF_UNIX")  # not on Windows' CPython: --metrics-listen serves /status there


def add_arguments(parser: EnvArgumentParser) -> None:
    """`--metrics-listen` and the `--metrics-token` secret of a gateway or agent."""
    parser.add_argument("--metrics-listen", type=host_port, default=None, metavar="HOST:PORT",
                        help="serve Prometheus metrics at http://HOST:PORT/metrics and the status document at /status "
                             "(default: off; a gateway's worker i listens on PORT + i)")
    parser.add_secret("metrics-token", "a token scrapers must send as Authorization: Bearer to --metrics-listen "
                                       "(default: none needed)")


def host_port(text: str) -> tuple[str, int]:
    """host:port (an argparse type)."""
    try:
        return Endpoint.parse(text).address
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class Monitor:
    """The metrics and status of one gateway worker or agent: its node, its control link, and `describe()`, what
    its role adds to the status document (configVersion, tunnels); `collector` adds the role's own metrics,
    `faults()` its Contained boundaries."""

    def __init__(self, role: str, node: TunnelNode, client: ControlClient, collector,
                 describe: Callable[[], dict], worker: int = 0, faults: Callable[[], list[Contained]] = list) -> None:
        self.role, self.node, self.client, self.describe, self.worker = role, node, client, describe, worker
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(NodeCollector(node, client, role, faults))
        self.registry.register(collector)

    def status(self) -> dict:
        """What this process sees now: the control link, peers, tunnels and its last warnings."""
        client, now = self.client, time.time()
        peers = []
        for key, peer in list(self.node.device.peers.items()):
            handshake = peer.stats.last_handshake
            endpoint = peer.endpoint
            peers.append({"publicKey": keys.encode(key),
                          "endpoint": str(Endpoint(*endpoint[:2])) if endpoint else None,
                          "session": peer.current is not None, "lastHandshake": handshake,
                          "handshakeAge": None if handshake is None else round(now - handshake, 1),
                          "rxBytes": peer.stats.rx_bytes, "txBytes": peer.stats.tx_bytes})
        error = client.last_error
        return {"role": self.role, "worker": self.worker, "pid": os.getpid(), "time": now,
                "publicKey": keys.encode(self.node.public_key), "wireguardPort": self.node.listen_port,
                "control": {"url": client.url, "connected": client.connected,
                            "lastError": None if error is None else {"time": error[0], "reason": error[1]}},
                **self.describe(), "peers": peers, "problems": logs.recent_problems()}

    async def run(self, listen: tuple[str, int] | None, token: str | None, data_dir: Path, *,
                  task_status=trio.TASK_STATUS_IGNORED) -> None:
        """The metrics listener (when `listen`) and the status socket in `data_dir`, until cancelled."""
        async with trio.open_nursery() as nursery:
            if listen is not None:
                await nursery.start(self.serve_metrics, listen, token)
            if STATUS_SOCKETS:
                await nursery.start(self.serve_status, status_socket(data_dir, self.worker))
            task_status.started()

    async def serve_metrics(self, listen: tuple[str, int], token: str | None, *,
                            task_status=trio.TASK_STATUS_IGNORED) -> None:
        host, port = listen
        with command.listening("metrics", port, "--metrics-listen"):
            listeners = await trio.open_tcp_listeners(port, host=host)
        logs.log(logger, logging.INFO, "metrics listening", address=host,
                 port=listeners[0].socket.getsockname()[1], token="required" if token else "none")
        expected = f"Bearer {token}".encode() if token else None
        await trio.serve_listeners(lambda stream: self._answer(stream, expected), listeners,
                                   task_status=task_status)

    async def _answer(self, stream: trio.abc.Stream, expected: bytes | None) -> None:
        """One request, one response, then close; a malformed or slow request just closes the connection."""
        http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST)
        try:
            with trio.move_on_after(REQUEST_TIMEOUT):
                event = http.next_event()
                while event is h11.NEED_DATA:
                    http.receive_data(await stream.receive_some(MAX_REQUEST))
                    event = http.next_event()
                if isinstance(event, h11.Request):
                    status, headers, body = self._response(event, expected)
                    headers = [*headers, ("content-length", str(len(body))), ("connection", "close")]
                    await stream.send_all(http.send(h11.Response(status_code=status, headers=headers))
                                          + http.send(h11.Data(data=body)) + http.send(h11.EndOfMessage()))
        except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    def _response(self, request: h11.Request, expected: bytes | None) -> tuple[int, list, bytes]:
        if expected is not None:
            given = next((v for n, v in request.headers if n == b"authorization"), b"")
            if not hmac.compare_digest(given, expected):
                return 401, [("www-authenticate", "Bearer"), ("content-type", "text/plain")], \
                    b"a bearer token is required (--metrics-token)\n"
        path = request.target.split(b"?", 1)[0]
        if request.method != b"GET":
            return 405, [("allow", "GET"), ("content-type", "text/plain")], b"method not allowed\n"
        if path == b"/metrics":
            return 200, [("content-type", CONTENT_TYPE_LATEST)], generate_latest(self.registry)
        if path == b"/status":
            return 200, [("content-type", "application/json")], status_bytes(self.status())
        return 404, [("content-type", "text/plain")], b"not found: try /metrics or /status\n"

    async def serve_status(self, path: Path, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """The status document to whoever connects to the Unix socket `path` (0600: only this user)."""
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            path.unlink(missing_ok=True)  # left by a process that was killed
            mask = os.umask(0o177)  # the socket is made 0600, never readable by others for a moment
            try:
                await sock.bind(str(path))
            finally:
                os.umask(mask)
            sock.listen(16)
        except OSError as exc:
            sock.close()
            logs.log(logger, logging.WARNING, "no status socket: `kakuremichi status` cannot reach this process",
                     path=str(path), error=exc.strerror or str(exc))
            task_status.started()
            return
        try:
            await trio.serve_listeners(self._send_status, [trio.SocketListener(sock)], task_status=task_status)
        finally:
            path.unlink(missing_ok=True)

    async def _send_status(self, stream: trio.abc.Stream) -> None:
        try:
            await stream.send_all(status_bytes(self.status()))
        except (trio.BrokenResourceError, OSError):
            pass
        finally:
            await trio.aclose_forcefully(stream)


def status_socket(data_dir: Path, worker: int) -> Path:
    """Where worker `worker` of a gateway (0: the gateway itself, or an agent) serves its status."""
    return data_dir / (STATUS_SOCKET if worker == 0 else f"status-worker{worker}.sock")


def status_bytes(document: dict) -> bytes:
    return json.dumps(document, default=str).encode() + b"\n"

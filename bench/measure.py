"""Measuring instruments shared by the full-path and scale benchmarks: process memory and CPU from /proc,
a raw-socket download, wrk runs, and HTTP connections held open by an Upgrade."""

from __future__ import annotations

import os
import re
import selectors
import shutil
import socket
import subprocess
import ssl
import time
from pathlib import Path

KB = 1024
MB = 1024 * KB
_UNVERIFIED = ssl.create_default_context()
_UNVERIFIED.check_hostname = False
_UNVERIFIED.verify_mode = ssl.CERT_NONE  # the gateway's self-signed certificate: TLS cost, not trust, is measured


def serves_http_app(d, gateway: str, domain: str, client=None) -> bool:
    """Whether `gateway` of Deployment `d` reaches http_app.py for `domain` (its 1 KB answer)."""
    response = d.get(gateway, domain, client=client)
    return response is not None and response.status_code == 200 and len(response.content) == 1024


def fresh_directory(name: str) -> Path:
    """bench/out/runs/NAME, emptied: the processes' logs stay there for a look after the run."""
    path = Path(__file__).parent / "out" / "runs" / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def memory_kb(pid: int) -> dict[str, int]:
    """Resident set now (VmRSS) and its high-water mark (VmHWM), in KiB, from /proc/PID/status."""
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0])
    return {"rss": fields["VmRSS"], "hwm": fields["VmHWM"]}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants now (nginx's workers, sshd's session process), from /proc."""
    tree = [pid]
    for parent in tree:
        for task in Path(f"/proc/{parent}/task").iterdir():
            tree.extend(int(child) for child in (task / "children").read_text().split())
    return tree


def download_mbps(port: int, host: str, size: int, tls: bool = False, address: str = "127.0.0.1") -> float:
    """Mbit/s of one `GET /bytes/size` to address:port over a fresh connection (TLS, unverified, if `tls`),
    from sending the request to the last byte (the TLS handshake included)."""
    buffer = bytearray(1 << 20)
    start = time.perf_counter()
    sock = socket.create_connection((address, port), timeout=60)
    if tls:
        sock = _UNVERIFIED.wrap_socket(sock, server_hostname=host)
    with sock:
        sock.sendall(f"GET /bytes/{size} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed before the response head: {head!r}"
            head += chunk
        head, _, body = head.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        received = len(body)
        while received < size:
            n = sock.recv_into(buffer)
            assert n, f"connection closed after {received} of {size} bytes"
            received += n
        elapsed = time.perf_counter() - start
    assert received == size
    return size * 8 / elapsed / 1e6


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk(url: str, host: str, connections: int, seconds: float, headers: tuple[str, ...] = ()) -> dict[str, float]:
    """Requests/s, requests, p50/p99 latency in ms, and errors of one wrk run (keep-alive, `connections` in
    parallel; `headers` as "Name: value" besides Host)."""
    threads = min(2, connections)
    extra = [argument for header in headers for argument in ("-H", header)]
    out = subprocess.run(["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds:g}s", "--latency",
                          "-H", f"Host: {host}", *extra, url], capture_output=True, text=True, check=True,
                         timeout=seconds + 60).stdout
    latency = {p: float(v) * _UNITS[u] for p, v, u in re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)}
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "requests": int(re.search(r"(\d+) requests in", out).group(1)), "p50_ms": latency["50"],
            "p99_ms": latency["99"], "errors": errors + (int(non_2xx.group(1)) if non_2xx else 0)}


class HeldConnections:
    """Many client connections through the gateway, each upgraded (101) to a byte pipe and left open."""

    def __init__(self) -> None:
        self.socks: list[socket.socket] = []

    def open(self, port: int, host: str, count: int, timeout: float = 60) -> list[bytes]:
        """Open `count` connections; keeps those upgraded and returns the response heads of the others."""
        request = (f"GET /hold HTTP/1.1\r\nHost: {host}\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n").encode()
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
            sock.sendall(request)
            self.socks.append(sock)
        heads = self._gather(lambda received: b"\r\n\r\n" in received, timeout)
        upgraded = [h.startswith(b"HTTP/1.1 101") for h in heads]
        for sock in [sock for sock, ok in zip(self.socks, upgraded) if not ok]:
            sock.close()
        self.socks = [sock for sock, ok in zip(self.socks, upgraded) if ok]
        return [h.split(b"\r\n", 1)[0] for h, ok in zip(heads, upgraded) if not ok]

    def echo(self, payload: bytes = b"ping", timeout: float = 60) -> None:
        """Every held connection still carries bytes both ways."""
        for sock in self.socks:
            sock.sendall(payload)
        echoed = self._gather(lambda received: len(received) >= len(payload), timeout)
        broken = sum(e != payload for e in echoed)
        assert not broken, f"{broken} of {len(self.socks)} held connections did not echo"

    def _gather(self, complete, timeout: float) -> list[bytes]:
        """Read every socket until `complete(received)`; one selector, so slow ones don't serialise."""
        received = {sock: b"" for sock in self.socks}
        with selectors.DefaultSelector() as selector:
            for sock in self.socks:
                selector.register(sock, selectors.EVENT_READ)
            deadline = time.monotonic() + timeout
            waiting = len(self.socks)
            while waiting:
                ready = selector.select(max(0.0, deadline - time.monotonic()))
                assert ready, f"{waiting} of {len(self.socks)} connections silent for {timeout:g} s"
                for key, _ in ready:
                    try:
                        chunk = key.fileobj.recv(65536)
                    except OSError:  # reset: counted as what it received so far
                        chunk = b""
                    received[key.fileobj] += chunk
                    if not chunk or complete(received[key.fileobj]):
                        selector.unregister(key.fileobj)
                        waiting -= 1
        return [received[sock] for sock in self.socks]

    def close(self) -> None:
        for sock in self.socks:
            sock.close()
        self.socks.clear()

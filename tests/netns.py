"""Test hosts in network namespaces: a Linux kernel behind a standard wireguard-go, the reference peer.

Each `KernelWireGuardPeer` is a namespace joined to the test's namespace by a veth pair, running
`wireguard-go` with the kernel's own IP/TCP stack behind it. Needs root, iproute2, wireguard-go and
wireguard-tools; `require_netns()` skips the test cleanly where they are missing.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import tempfile
import time

import pytest

from kakuremichi.wg import keys

_counter = itertools.count()


def netns_available() -> str | None:
    """None if namespace tests can run here, else why not."""
    if os.geteuid() != 0:
        return "needs root for ip netns"
    for tool in ("ip", "wireguard-go", "wg"):
        if shutil.which(tool) is None:
            return f"needs {tool} (apt-get install iproute2 wireguard-go wireguard-tools)"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun for wireguard-go"
    return None


def require_netns() -> None:
    reason = netns_available()
    if reason:
        pytest.skip(reason)


def needs(program: str, package: str) -> pytest.MarkDecorator:
    """Skip the marked test where `program` is missing, naming the Debian package to install (a mark, not
    pytest.skip() in the test: pytest-trio loses the reason of a skip inside an async test)."""
    return pytest.mark.skipif(shutil.which(program) is None, reason=f"needs {program} (apt-get install {package})")


def run(*args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=check, capture_output=True, text=True, **kwargs)


class KernelWireGuardPeer:
    """A namespace with a veth link to us and a wireguard-go interface (uniquely named) configured by `wg set`."""

    def __init__(self, tunnel_address: str = "10.77.0.2/24", mtu: int = 1420,
                 link_to: "KernelWireGuardPeer | None" = None) -> None:
        """`link_to`: put the other veth end in that peer's namespace instead of ours (kernel to kernel)."""
        n = next(_counter)
        pid = os.getpid()
        self.name = f"kmwg{pid}-{n}"
        self.veth_host = f"kh{pid % 100000}x{n}"
        self.veth_ns = f"kn{pid % 100000}x{n}"
        self.wg = f"wg{pid % 100000}x{n}"  # wireguard-go's UAPI socket path is global: names must be unique
        subnet = (pid % 250) + 1
        self.host_ip = f"198.18.{subnet}.{4 * n + 1}"  # our side (benchmarking range, never routed)
        self.ns_ip = f"198.18.{subnet}.{4 * n + 2}"
        self.tunnel_address = tunnel_address
        self.tunnel_ip = tunnel_address.split("/")[0]
        self.mtu = mtu
        self.link_to = link_to
        self.private_key = keys.generate_private()
        self.public_key = keys.public_from_private(self.private_key)
        self.listen_port = 51820
        self.process: subprocess.Popen | None = None
        self._tmp = tempfile.mkdtemp(prefix="kmwg-")

    # -- lifecycle
    def __enter__(self) -> "KernelWireGuardPeer":
        run("ip", "netns", "add", self.name)
        try:
            run("ip", "link", "add", self.veth_host, "type", "veth", "peer", "name", self.veth_ns)
            run("ip", "link", "set", self.veth_ns, "netns", self.name)
            host_side = self.link_to.exec if self.link_to else run
            if self.link_to:
                run("ip", "link", "set", self.veth_host, "netns", self.link_to.name)
            host_side("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.veth_host)
            host_side("ip", "link", "set", self.veth_host, "up")
            self.exec("ip", "addr", "add", f"{self.ns_ip}/30", "dev", self.veth_ns)
            self.exec("ip", "link", "set", self.veth_ns, "up")
            self.exec("ip", "link", "set", "lo", "up")
            self.start_wireguard()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.stop_wireguard()
        run("ip", "link", "del", self.veth_host, check=False)
        run("ip", "netns", "del", self.name, check=False)
        shutil.rmtree(self._tmp, ignore_errors=True)

    def exec(self, *args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        return run("ip", "netns", "exec", self.name, *args, check=check, **kwargs)

    def popen(self, *args: str, **kwargs) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.name, *args], **kwargs)

    # -- wireguard-go
    def start_wireguard(self, private_key: bytes | None = None) -> None:
        if private_key is not None:
            self.private_key = private_key
            self.public_key = keys.public_from_private(private_key)
        env = dict(os.environ, WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD="1")
        self.process = self.popen("wireguard-go", "-f", self.wg, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while self.exec("ip", "link", "show", self.wg, check=False).returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"wireguard-go did not create {self.wg}")
            time.sleep(0.02)
        key_file = os.path.join(self._tmp, "private")
        with open(key_file, "w") as f:
            f.write(keys.encode(self.private_key))
        self.exec("wg", "set", self.wg, "private-key", key_file, "listen-port", str(self.listen_port))
        self.exec("ip", "addr", "add", self.tunnel_address, "dev", self.wg)
        self.exec("ip", "link", "set", self.wg, "mtu", str(self.mtu), "up")

    def stop_wireguard(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
            deadline = time.monotonic() + 5
            while self.exec("ip", "link", "show", self.wg, check=False).returncode == 0 \
                    and time.monotonic() < deadline:
                time.sleep(0.02)

    def set_peer(self, public_key: bytes, *, allowed_ips: str, endpoint: str | None = None,
                 preshared_key: bytes | None = None, persistent_keepalive: int | None = None) -> None:
        args = ["wg", "set", self.wg, "peer", keys.encode(public_key), "allowed-ips", allowed_ips]
        if endpoint:
            args += ["endpoint", endpoint]
        if preshared_key is not None:
            psk_file = os.path.join(self._tmp, "psk")
            with open(psk_file, "w") as f:
                f.write(keys.encode(preshared_key))
            args += ["preshared-key", psk_file]
        if persistent_keepalive is not None:
            args += ["persistent-keepalive", str(persistent_keepalive)]
        self.exec(*args)

    def show(self, what: str = "dump") -> str:
        return self.exec("wg", "show", self.wg, what).stdout

    def latest_handshake(self, public_key: bytes) -> int:
        for line in self.show("latest-handshakes").splitlines():
            key, _, stamp = line.partition("\t")
            if key == keys.encode(public_key):
                return int(stamp)
        return 0


@contextlib.contextmanager
def wireguard_go_pair(address_a: str, address_b: str):
    """Two wireguard-go peers in two namespaces: `a` has a veth to ours, `b` one to `a` only, so what `a`
    sends to b's tunnel address crosses both wireguard-go processes and the veth between them."""
    with KernelWireGuardPeer(address_a) as a, KernelWireGuardPeer(address_b, link_to=a) as b:
        a.set_peer(b.public_key, allowed_ips=f"{b.tunnel_ip}/32", endpoint=f"{b.ns_ip}:{b.listen_port}")
        b.set_peer(a.public_key, allowed_ips=f"{a.tunnel_ip}/32", endpoint=f"{b.host_ip}:{a.listen_port}")
        yield a, b

"""Test-only link to the Linux kernel: a TUN device in a network namespace the test creates.

The device is opened here (TUNSETIFF, IFF_TUN | IFF_NO_PI), moved into `knet-<pid>-<n>` and given the
kernel's address; our NetStack owns the other address and talks to the kernel's own TCP/IP through the
device's file descriptor. Kernel-side programs run with `exec`/`popen` (`ip netns exec`). Once WireGuard
carries the netstack, the same tests can point at a wireguard-go peer instead.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import shutil
import struct
import subprocess

import trio

from tests.netns import run

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
BATCH = 256

_counter = itertools.count()


def tun_unavailable() -> str | None:
    """None if the TUN harness can run here, else why not."""
    if os.geteuid() != 0:
        return "needs root for ip netns and TUN"
    if shutil.which("ip") is None:
        return "needs iproute2 (apt-get install iproute2)"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    return None


class TunLink:
    """A netstack link whose far end is the kernel in a private namespace (`kernel_address`)."""

    def __init__(self, kernel_address: str = "10.201.0.1", our_address: str = "10.201.0.2", prefix: int = 24,
                 mtu: int = 1420) -> None:
        n = next(_counter)
        pid = os.getpid()
        self.namespace = f"knet-{pid}-{n}"
        self.device = f"kt{pid % 100000}x{n}"
        self.kernel_address, self.our_address, self.prefix, self.mtu = kernel_address, our_address, prefix, mtu
        self.fd = -1
        self.dropped = 0

    def __enter__(self) -> TunLink:
        self.fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.ioctl(self.fd, TUNSETIFF, struct.pack("16sH", self.device.encode(), IFF_TUN | IFF_NO_PI))
            run("ip", "netns", "add", self.namespace)
            run("ip", "link", "set", self.device, "netns", self.namespace)
            self.exec("sysctl", "-qw", f"net.ipv6.conf.{self.device}.disable_ipv6=1")
            self.exec("ip", "addr", "add", f"{self.kernel_address}/{self.prefix}", "dev", self.device)
            self.exec("ip", "link", "set", self.device, "mtu", str(self.mtu), "up")
            self.exec("ip", "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        run("ip", "netns", "del", self.namespace, check=False)

    def exec(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run("ip", "netns", "exec", self.namespace, *args, check=check)

    def command(self, *args: str) -> list[str]:
        """argv that runs `args` inside the namespace (for trio.run_process / open_process)."""
        return ["ip", "netns", "exec", self.namespace, *args]

    # -- the link contract
    def send_packets(self, packets) -> None:
        write, fd = os.write, self.fd
        for packet in packets:
            try:
                write(fd, packet)
            except OSError:
                self.dropped += 1  # queue full or device going away: a drop, as on a NIC

    async def run(self, receive_packets, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Drain the device in batches (no await per packet) into `receive_packets`."""
        read, fd = os.read, self.fd
        task_status.started()
        while True:
            await trio.lowlevel.wait_readable(fd)
            batch = []
            try:
                while len(batch) < BATCH:
                    batch.append(read(fd, 65536))
            except BlockingIOError:
                pass
            if batch:
                receive_packets(batch)

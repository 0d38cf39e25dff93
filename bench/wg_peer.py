"""One benchmark endpoint in its own process: a WireGuard device that floods or counts packets.

Run as `python bench/wg_peer.py send|receive PRIVATE_HEX PEER_PUBLIC_HEX PEER_PORT LISTEN_PORT SECONDS`.
It prints one JSON line of figures when done.
"""

from __future__ import annotations

import json
import sys
import time

import trio

from kakuremichi.netstack import ipv4
from kakuremichi.wg.device import Device
from kakuremichi.wg.driver import WireGuardInterface

INNER = 1420


def _packet(src: str, dst: str) -> bytes:
    """A 1420-byte UDP-protocol IPv4 packet (payload contents do not matter to WireGuard)."""
    return ipv4.build(ipv4.address(src), ipv4.address(dst), 17, bytes(INNER - ipv4.HEADER_LEN))


async def main(role: str, private: str, peer_public: str, peer_port: int, listen_port: int, seconds: float):
    device = Device(bytes.fromhex(private))
    me, other = ("10.99.0.1", "10.99.0.2") if role == "send" else ("10.99.0.2", "10.99.0.1")
    device.add_peer(bytes.fromhex(peer_public), endpoint=("127.0.0.1", peer_port), allowed_ips=[f"{other}/32"])
    interface = WireGuardInterface(device, listen_host="127.0.0.1", listen_port=listen_port)
    counted = {"packets": 0, "bytes": 0}

    def count(packets):
        counted["packets"] += len(packets)
        counted["bytes"] += sum(map(len, packets))

    interface.attach(count)
    async with trio.open_nursery() as nursery:
        await nursery.start(interface.run)
        if role == "receive":
            print("ready", flush=True)
            await trio.sleep(seconds + 3)
        else:
            packet = _packet(me, other)
            interface.send_packets([packet])
            peer = device.peers[bytes.fromhex(peer_public)]
            with trio.fail_after(10):
                while peer.current is None:
                    await trio.sleep(0.01)
            batch = [packet] * 64
            start = time.perf_counter()
            sent = 0
            while time.perf_counter() - start < seconds:
                interface.send_packets(batch)
                sent += len(batch)
                await trio.lowlevel.checkpoint()
            counted = {"sent": sent, "elapsed": time.perf_counter() - start,
                       "dropped_backlog": device.dropped["udp_backlog_full"]}
        nursery.cancel_scope.cancel()
    print(json.dumps(counted), flush=True)


if __name__ == "__main__":
    role, private, peer_public, peer_port, listen_port, seconds = sys.argv[1:]
    trio.run(main, role, private, peer_public, int(peer_port), int(listen_port), float(seconds))

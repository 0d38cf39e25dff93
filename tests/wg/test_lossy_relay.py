"""Two of our devices over loopback through a relay that drops, reorders and duplicates datagrams."""

from __future__ import annotations

import trio
from scapy.layers.inet import IP, UDP

from kakuremichi.wg import keys
from kakuremichi.wg.device import Device
from kakuremichi.wg.driver import WireGuardInterface
from tests.udp_relay import ImpairedRelay

COUNT = 3000


def _packet(seq: int) -> bytes:
    return bytes(IP(src="10.9.0.1", dst="10.9.0.2") / UDP(sport=1000, dport=2000) / seq.to_bytes(4, "big"))


async def test_devices_talk_through_an_impaired_relay():
    a = WireGuardInterface(Device(keys.generate_private()), listen_host="127.0.0.1")
    b = WireGuardInterface(Device(keys.generate_private()), listen_host="127.0.0.1")
    relay = ImpairedRelay(a.sock.getsockname(), b.sock.getsockname(), loss=0.05, duplicate=0.05,
                          reorder=0.1, seed=7)
    received: list[int] = []

    def on_b(packets):
        for packet in packets:
            parsed = IP(bytes(packet))
            assert parsed.src == "10.9.0.1" and parsed[UDP].dport == 2000
            received.append(int.from_bytes(bytes(parsed[UDP].payload), "big"))

    b.attach(on_b)
    async with trio.open_nursery() as nursery:
        relay_address = await nursery.start(relay.run)
        for me, other, ip in ((a, b, "10.9.0.2/32"), (b, a, "10.9.0.1/32")):
            me.device.add_peer(other.device.public_key, endpoint=relay_address, allowed_ips=[ip])
        await nursery.start(a.run)
        await nursery.start(b.run)
        a.send_packets([_packet(-1 & 0xFFFFFFFF)])  # staged until the handshake, which must survive loss
        with trio.fail_after(20):
            while a.device.peers[b.device.public_key].current is None:
                await trio.sleep(0.05)
        for seq in range(COUNT):
            a.send_packets([_packet(seq)])
            if seq % 20 == 0:  # paced by what arrived (the relay loses ~5 %), not by the clock: on a loaded
                with trio.move_on_after(1):  # machine a fixed pace overflowed the socket buffers as well
                    while seq - len(received) > 100 + seq // 10:
                        await trio.sleep(0.002)
        await trio.sleep(0.5)
        nursery.cancel_scope.cancel()

    assert relay.dropped and relay.duplicated and relay.reordered
    received.remove(0xFFFFFFFF)
    assert len(received) == len(set(received)), "a duplicated datagram was delivered twice"
    assert b.device.dropped["replay"] > 0  # the relay's duplicates were caught by the replay window
    assert received != sorted(received), "reordered datagrams must still be accepted"
    assert len(received) > COUNT * 0.85  # only the relay's ~5 % loss is missing

"""`kakuremichi wg ping`: ICMP echo through a userspace WireGuard tunnel, printed like ping(8)."""

from __future__ import annotations

import ipaddress
import os
import statistics

import trio

from kakuremichi.netstack import icmp
from kakuremichi.wg import config as wg_config
from kakuremichi.wg.driver import interface_from_config

PAYLOAD_SIZE = 56


async def run(config_path: str, address: str, count: int, interval: float, timeout: float) -> int:
    config = wg_config.load(config_path)
    target = ipaddress.IPv4Address(address)
    sources = [a.ip for a in config.addresses if a.version == 4]
    if not sources:
        raise ValueError(f"{config_path}: [Interface] has no IPv4 Address to ping from")
    source = sources[0]
    interface = await interface_from_config(config)
    if interface.device.allowed_ips.lookup(target.packed) is None:
        interface.sock.close()
        raise ValueError(f"no [Peer] has {target} in its AllowedIPs")

    ident = int.from_bytes(os.urandom(2), "big")
    sent_at: dict[int, float] = {}
    rtts: list[float] = []

    def on_packets(packets) -> None:
        for packet in packets:
            reply = icmp.parse_echo_reply(packet)
            if reply is None or reply.identifier != ident or reply.source != target:
                continue
            started = sent_at.pop(reply.sequence, None)
            if started is None:
                continue  # duplicate or late
            rtt = (trio.current_time() - started) * 1000
            rtts.append(rtt)
            print(f"{reply.size} bytes from {target}: icmp_seq={reply.sequence} ttl={reply.ttl} "
                  f"time={rtt:.2f} ms", flush=True)

    interface.attach(on_packets)
    print(f"PING {target} from {source} through WireGuard: {PAYLOAD_SIZE} data bytes", flush=True)
    async with trio.open_nursery() as nursery:
        await nursery.start(interface.run)
        payload = bytes(range(PAYLOAD_SIZE))
        for seq in range(1, count + 1):
            sent_at[seq] = trio.current_time()
            interface.send_packets([icmp.echo_request(source, target, ident, seq, payload)])
            if seq < count:
                await trio.sleep(interval)
        with trio.move_on_after(timeout):
            while sent_at:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()

    received = len(rtts)
    loss = 100 * (count - received) / count if count else 0
    print(f"--- {target} ping statistics ---")
    print(f"{count} packets transmitted, {received} received, {loss:.0f}% packet loss")
    if rtts:
        print(f"rtt min/avg/max/mdev = {min(rtts):.3f}/{statistics.fmean(rtts):.3f}/{max(rtts):.3f}/"
              f"{statistics.pstdev(rtts):.3f} ms")
    return 0 if received else 1

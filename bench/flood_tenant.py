"""A hostile tenant for the fairness benchmark: the real Agent on its own TunnelNode (its own agent key and
WireGuard identity), which, once its tunnel to the gateway is up, floods the gateway on command.

Run as `python bench/flood_tenant.py CONTROL_URL API_KEY`; prints "ready" once it has a session with the
gateway, then reads lines `KIND SECONDS` from stdin and answers each with one JSON line of figures. KIND:

- transport: valid transport packets (small UDP packets to a closed port of the gateway's tunnel address);
- handshake: one authentic handshake initiation sent again and again (each costs the gateway its mac1 and
  Curve25519 work before the replay is seen; once the gateway is under load, a mac1 and the per-source
  rate limit, or a cookie reply);
- syn: TCP SYNs to closed ports of the gateway's tunnel address, from random ports.
"""

from __future__ import annotations

import json
import random
import sys
import time

import trio

from kakuremichi import command, logs
from kakuremichi.agent.agent import Agent
from kakuremichi.netstack import ipv4, tcp
from kakuremichi.tunnel import TunnelNode
from kakuremichi.wg import keys, messages

BURST = 64


async def _flood(node: TunnelNode, kind: str, seconds: float) -> dict:
    (gateway_key, spec), = node._applied.items()
    gateway = ipv4.address(spec.allowed_ips[0].split("/")[0])
    me = ipv4.address(sorted(node.stack.addresses)[0])
    peer = node.device.peers[gateway_key]
    rng = random.Random(1)
    if kind == "handshake":
        peer.last_initiation_sent = float("-inf")
        node.device._initiate_handshake(peer, retry=False)
        initiation = next(bytes(d) for d, _ in node.device.outgoing if d[0] == messages.MESSAGE_INITIATION)
    sent, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        if kind == "transport":
            node.interface.send_packets([ipv4.build(me, gateway, ipv4.PROTO_UDP, bytes(72))] * BURST)
        elif kind == "syn":
            node.interface.send_packets([
                tcp._raw_segment(me, gateway, rng.randrange(1024, 65536), rng.randrange(20000, 60000),
                                 rng.getrandbits(32), 0, tcp.SYN, window=65535) for _ in range(BURST)])
        else:
            for _ in range(BURST):
                try:
                    node.interface.sock.sendto(initiation, peer.endpoint)
                except BlockingIOError:
                    break
        sent += BURST
        await trio.lowlevel.checkpoint()
    return {"kind": kind, "sent": sent, "per_s": sent / (time.perf_counter() - start)}


async def main(control_url: str, api_key: str) -> None:
    node = TunnelNode(keys.generate_private(), listen_host="127.0.0.1")
    agent = Agent(node)
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.run)
        await nursery.start(agent.control_client(control_url, api_key).run)
        with trio.fail_after(60):  # control's config, then the session its persistent keepalive starts
            while not any(peer.current for peer in node.device.peers.values()) or not node.stack.addresses:
                await trio.sleep(0.05)
        print("ready", flush=True)
        stdin = trio.wrap_file(sys.stdin)
        async for line in stdin:
            kind, seconds = line.split()
            print(json.dumps(await _flood(node, kind, float(seconds))), flush=True)
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    logs.setup("warning")
    url, key = sys.argv[1:]
    sys.exit(command.run("flood_tenant", main, url, key))

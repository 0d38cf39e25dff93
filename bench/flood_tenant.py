"""A hostile tenant for the fairness benchmark: the real Agent on its own TunnelNode (its own agent key and
WireGuard identity), which, once its tunnel to the gateway is up, floods the gateway on command.

Run as `python bench/flood_tenant.py CONTROL_URL API_KEY`; prints "ready" once it has a session with the
gateway, then reads lines `KIND SECONDS` from stdin and answers each with one JSON line of figures. KIND:

- transport: valid transport packets (small UDP packets to a closed port of the gateway's tunnel address);
- sink: the same packets, encrypted and sent just as fast, but to a UDP socket of the flooder's own that
  nobody reads: the gateway sees none, so what it costs the legitimate tenant is the flooder's share of this
  machine (its CPU, the kernel's loopback work), which a remote attacker would not take;
- handshake: one authentic handshake initiation sent again and again (each costs the gateway its mac1 and
  Curve25519 work before the replay is seen; once the gateway is under load, a mac1 and the per-source
  rate limit, or a cookie reply);
- syn: TCP SYNs to closed ports of the gateway's tunnel address, from random ports;
- connect: whole TCP connections to the gateway's exit port, CONCURRENCY at a time, each closed at once;
- exit: connections out through the gateway's exit (SOCKS5) to a server of the flooder's own, each sending a
  line and reading its echo (its tunnel must have the exit on, and the gateway allow private destinations).
"""

from __future__ import annotations

import functools
import json
import random
import sys
import time

import trio

from kakuremichi import command, logs
from kakuremichi.agent.agent import Agent
from kakuremichi.egress.trio_socks5 import request_connect
from kakuremichi.netstack import ipv4, tcp
from kakuremichi.protocol import EXIT_PORT
from kakuremichi.tunnel import TunnelNode
from kakuremichi.wg import keys, messages

BURST = 64
CONCURRENCY = 32  # connections in flight at once for the connect and exit floods


async def _echo(stream) -> None:
    async with stream:
        async for data in stream:
            await stream.send_all(data)


async def _connections(node: TunnelNode, gateway_ip: str, seconds: float, echo_port: int | None) -> int:
    """Open connections to the gateway's exit port back to back from CONCURRENCY tasks; with `echo_port`,
    each asks the exit for the flooder's echo server and exchanges a line through it."""
    done = 0
    end = trio.current_time() + seconds

    async def worker():
        nonlocal done
        while trio.current_time() < end:
            try:
                with trio.fail_after(5):
                    stream = await node.stack.open_tcp_stream(gateway_ip, EXIT_PORT)
                    async with stream:
                        if echo_port is not None:
                            reply, _ = await request_connect(stream, "127.0.0.1", echo_port)
                            await stream.send_all(b"ping\n")
                            await stream.receive_some(64)
            except (OSError, trio.BrokenResourceError, trio.TooSlowError):
                await trio.sleep(0.01)  # refused or reset: the gateway's budget, try again shortly
            done += 1

    async with trio.open_nursery() as nursery:
        for _ in range(CONCURRENCY):
            nursery.start_soon(worker)
    return done


async def _flood(node: TunnelNode, kind: str, seconds: float, echo_port: int, sink) -> dict:
    (gateway_key, spec), = node._applied.items()
    gateway_ip = spec.allowed_ips[0].split("/")[0]
    if kind in ("connect", "exit"):
        start = time.perf_counter()
        sent = await _connections(node, gateway_ip, seconds, echo_port if kind == "exit" else None)
        return {"kind": kind, "sent": sent, "per_s": sent / (time.perf_counter() - start)}
    gateway = ipv4.address(gateway_ip)
    me = ipv4.address(sorted(node.stack.addresses)[0])
    peer = node.device.peers[gateway_key]
    rng = random.Random(1)
    if kind == "handshake":
        peer.last_initiation_sent = float("-inf")
        node.device._initiate_handshake(peer, retry=False)
        initiation = next(bytes(d) for d, _ in node.device.outgoing if d[0] == messages.MESSAGE_INITIATION)
    endpoint = peer.endpoint
    if kind == "sink":
        peer.endpoint = sink.getsockname()
    sent, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        if kind in ("transport", "sink"):
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
    peer.endpoint = endpoint
    return {"kind": kind, "sent": sent, "per_s": sent / (time.perf_counter() - start)}


async def main(control_url: str, api_key: str) -> None:
    node = TunnelNode(keys.generate_private(), listen_host="127.0.0.1")
    agent = Agent(node)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, _echo, 0, host="127.0.0.1"))
        echo_port = listeners[0].socket.getsockname()[1]
        sink = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        await sink.bind(("127.0.0.1", 0))
        await nursery.start(agent.run)
        await nursery.start(agent.control_client(control_url, api_key).run)
        with trio.fail_after(60):  # control's config, then the session its persistent keepalive starts
            while not any(peer.current for peer in node.device.peers.values()) or not node.stack.addresses:
                await trio.sleep(0.05)
        print("ready", flush=True)
        stdin = trio.wrap_file(sys.stdin)
        async for line in stdin:
            kind, seconds = line.split()
            print(json.dumps(await _flood(node, kind, float(seconds), echo_port, sink)), flush=True)
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    logs.setup("warning")
    url, key = sys.argv[1:]
    sys.exit(command.run("flood_tenant", main, url, key))

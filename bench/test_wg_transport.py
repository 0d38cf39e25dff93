"""Scenario 1: WireGuard transport between two of our devices (separate processes) over loopback,
1420-byte inner packets; and handshakes per second through the sans-IO core."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from kakuremichi.wg import keys
from kakuremichi.wg.device import Device

HERE = Path(__file__).parent
SECONDS = 5.0


def _free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_transport_throughput(record):
    a, b = keys.generate_private(), keys.generate_private()
    pa, pb = keys.public_from_private(a), keys.public_from_private(b)
    port_a, port_b = _free_udp_port(), _free_udp_port()
    env = dict(os.environ, PYTHONPATH=str(HERE.parent))
    receiver = subprocess.Popen([sys.executable, str(HERE / "wg_peer.py"), "receive", b.hex(), pa.hex(),
                                 str(port_a), str(port_b), str(SECONDS)], stdout=subprocess.PIPE, text=True,
                                env=env)
    assert receiver.stdout.readline().strip() == "ready"
    sender = subprocess.run([sys.executable, str(HERE / "wg_peer.py"), "send", a.hex(), pb.hex(), str(port_b),
                             str(port_a), str(SECONDS)], capture_output=True, text=True, env=env, timeout=60)
    sent = json.loads(sender.stdout.strip().splitlines()[-1])
    received = json.loads(receiver.communicate(timeout=30)[0].strip().splitlines()[-1])
    pps = received["packets"] / sent["elapsed"]
    record("wg_transport", ours_datagrams_per_s=pps, ours_mbps=received["bytes"] * 8 / sent["elapsed"] / 1e6,
           sender_datagrams_per_s=sent["sent"] / sent["elapsed"],
           delivered_fraction=received["packets"] / max(sent["sent"], 1), inner_packet_bytes=1420)
    assert received["packets"] > 0


def test_handshakes_per_second(record):
    clock = [1000.0]
    initiator = Device(keys.generate_private(), clock=lambda: clock[0])
    responder = Device(keys.generate_private(), clock=lambda: clock[0])
    peer = initiator.add_peer(responder.public_key, endpoint=("127.0.0.1", 2), allowed_ips=["10.0.0.2/32"])
    responder.add_peer(initiator.public_key, endpoint=("127.0.0.1", 1), allowed_ips=["10.0.0.1/32"])
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < 2.0:
        clock[0] += 6  # past REKEY_TIMEOUT and the flood limit, so every initiation is fresh
        initiator._initiate_handshake(peer, retry=False)
        for datagram, _ in initiator.outgoing:
            responder.receive_datagram(datagram, ("127.0.0.1", 1))
        initiator.outgoing.clear()
        for datagram, _ in responder.outgoing:
            initiator.receive_datagram(datagram, ("127.0.0.1", 2))
        responder.outgoing.clear()
        initiator.outgoing.clear()
        count += 1
    elapsed = time.perf_counter() - start
    assert peer.current is not None
    record("wg_handshake", ours_handshakes_per_s=count / elapsed)

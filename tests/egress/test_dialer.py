"""The order in which the agent tries its gateways' exits, on a WireGuard device with a fake clock."""

from __future__ import annotations

import pytest

from kakuremichi.egress.dialer import FAILURE_MEMORY, ExitDialer, ExitRoute
from kakuremichi.tunnel import TunnelNode
from kakuremichi.wg import keys
from kakuremichi.wg.constants import REJECT_AFTER_TIME, REKEY_TIMEOUT


@pytest.fixture
def dialer_with_gateways():
    """A dialer on a node (never run) with a peer per gateway address, on a fake clock."""
    nodes = []

    def make(*addresses: str):
        now = [1000.0]
        node = TunnelNode(keys.generate_private(), listen_host="127.0.0.1", clock=lambda: now[0])
        nodes.append(node)
        peers = [node.device.add_peer(keys.public_from_private(keys.generate_private()), allowed_ips=[f"{a}/32"])
                 for a in addresses]
        return ExitDialer(node), peers, now

    yield make
    for node in nodes:
        node.interface.sock.close()


def hear_from(peer, now: float) -> None:
    peer.current = object()  # an established session
    peer.stats.last_received = now


def test_live_gateways_first_then_config_order(dialer_with_gateways):
    routes = [ExitRoute("10.1.0.2", ip) for ip in ("10.1.0.254", "10.1.0.253", "10.1.0.252")]
    dialer, (first, second, third), now = dialer_with_gateways("10.1.0.254", "10.1.0.253", "10.1.0.252")
    assert dialer.candidates(routes) == routes  # nobody heard from yet: config order
    hear_from(second, now[0])
    hear_from(third, now[0] - REJECT_AFTER_TIME - 1)  # its session is too old to count
    assert dialer.candidates(routes) == [routes[1], routes[0], routes[2]]
    hear_from(first, now[0])
    assert dialer.candidates(routes) == routes


def test_a_failed_gateway_waits_at_the_back_for_a_while(dialer_with_gateways):
    routes = [ExitRoute("10.1.0.2", ip) for ip in ("10.1.0.254", "10.1.0.253")]
    dialer, peers, now = dialer_with_gateways("10.1.0.254", "10.1.0.253")
    for peer in peers:
        hear_from(peer, now[0])
    dialer.mark_failed("10.1.0.254")
    assert dialer.candidates(routes) == [routes[1], routes[0]]
    now[0] += FAILURE_MEMORY + 1
    for peer in peers:
        hear_from(peer, now[0])
    assert dialer.candidates(routes) == routes


def test_a_gateway_without_a_live_session_gets_time_for_a_handshake_retry(dialer_with_gateways):
    dialer, (peer,), now = dialer_with_gateways("10.1.0.254")
    fresh = dialer.connect_timeout("10.1.0.254")
    assert fresh > REKEY_TIMEOUT  # one lost handshake initiation is sent again before the attempt gives up
    hear_from(peer, now[0])
    assert dialer.connect_timeout("10.1.0.254") < REKEY_TIMEOUT  # a live session: a dead exit shows fast

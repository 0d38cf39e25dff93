"""Deterministic TCP tests: two sans-IO stacks, a programmable wire, a fake clock."""

from __future__ import annotations

import os
import struct

import pytest

from kakuremichi.netstack import ipv4, tcp
from kakuremichi.netstack.tcp import ACK, FIN, PSH, RST, SYN, Config, State
from tests.netstack.wire import A, B, Wire, pump

DATA = os.urandom(300_000)


def test_handshake_negotiates_mss_window_scale_and_sack():
    wire = Wire(mtu=1420, mtu_b=1000)
    client, server = wire.connect()
    syn, synack, ack = wire.log[:3]
    assert syn.flags == SYN and synack.flags == SYN | ACK and ack.flags == ACK
    assert syn.segment.mss == 1380 and synack.segment.mss == 960  # MSS derived from each side's MTU
    assert client.snd_mss == server.snd_mss == 960
    assert syn.segment.wscale == client.rcv_wscale > 0 and synack.segment.wscale == server.rcv_wscale
    assert client.snd_wscale == server.rcv_wscale and server.snd_wscale == client.rcv_wscale
    assert client.sack_ok and server.sack_ok
    assert server.state == client.state == State.ESTABLISHED


def test_data_both_ways_arrives_intact():
    wire = Wire()
    client, server = wire.connect()
    assert pump(wire, client, server, DATA) == DATA
    assert pump(wire, server, client, DATA[::-1]) == DATA[::-1]
    assert not [s for s in wire.log if s.segment.flags & RST]


def test_window_scaling_lets_more_than_64k_fly():
    wire = Wire(Config(send_buffer=1 << 20), Config(receive_buffer=1 << 20))
    client, server = wire.connect()
    client.send(b"x")  # the SYN-ACK's window is unscaled: the first ACK after it shows the real one
    wire.flush()
    wire.advance(0.1)
    assert server.receive(10) == b"x"
    assert client.snd_wnd > 0xFFFF
    client.congestion.cwnd = 1 << 20  # take congestion control out of the picture
    client.send(DATA)
    wire.poll(wire.a)
    in_flight = client.snd_max - client.snd_una
    assert in_flight > 0xFFFF
    assert in_flight <= server.rcv_adv - server.rcv_nxt + (1 << server.rcv_wscale)


def test_without_window_scaling_the_window_stops_at_64k():
    wire = Wire(Config(send_buffer=1 << 20), Config(receive_buffer=1 << 20, window_scaling=False))
    client, server = wire.connect()
    assert client.snd_wscale == 0 and client.rcv_wscale == 0
    client.congestion.cwnd = 1 << 20
    client.send(DATA)
    wire.poll(wire.a)
    assert client.snd_max - client.snd_una <= 0xFFFF


def test_delayed_ack_waits_for_a_second_segment_or_the_timer():
    wire = Wire()
    client, server = wire.connect()
    start = len(wire.log)
    client.send(b"x" * 100)
    wire.flush()
    assert [s.sender for s in wire.log[start:]] == ["a"]  # no ACK yet
    wire.advance(0.039)
    assert len(wire.log) == start + 1
    wire.advance(0.002)
    assert wire.log[-1].sender == "b" and wire.log[-1].flags == ACK  # the 40 ms delayed ACK
    start = len(wire.log)
    client.send(b"y" * (2 * client.snd_mss))
    wire.flush()
    acks = [s for s in wire.log[start:] if s.sender == "b"]
    assert len(acks) == 1 and acks[0].time == wire.now  # two full segments: acknowledged at once


@pytest.mark.parametrize("authenticated", [False, True], ids=["checksums", "authenticated-link"])
def test_in_order_segments_of_a_batch_reach_the_connection_as_one(monkeypatch, authenticated):
    """GRO-like: a batch's consecutive in-order segments of one connection are checked, acknowledged and
    buffered once; a segment of another connection between them splits the run, and order is kept. On a
    link that authenticates its packets a run is extended from the raw headers (no parse)."""
    wire = Wire()
    wire.a.verify_checksums = wire.b.verify_checksums = not authenticated
    client, server = wire.connect(80)
    other_client, other_server = wire.connect(81)
    seen = []
    on_segment = tcp.Connection.on_segment

    def counted(connection, segment, now):
        seen.append((connection, len(segment.payload)))
        on_segment(connection, segment, now)

    monkeypatch.setattr(tcp.Connection, "on_segment", counted)
    mss = client.snd_mss
    client.send(DATA[:10 * mss])
    other_client.send(b"between")
    wire.poll(wire.a)
    packets = wire.a.take_outgoing()
    ours = [p for p in packets if tcp.parse(ipv4.parse(p)).source_port == client.local[1]]
    theirs = [p for p in packets if p not in ours]
    assert len(ours) == 10 and len(theirs) == 1
    parsed = []
    parse = ipv4.parse
    monkeypatch.setattr(ipv4, "parse", lambda packet: parsed.append(packet) or parse(packet))
    wire.b.receive(ours[:4] + theirs + ours[4:], wire.now)
    assert len(parsed) == (3 if authenticated else 11)  # the first of each run, and the other one
    assert [(c is server, size) for c, size in seen] == [(True, 4 * mss), (False, 7), (True, 6 * mss)]
    assert server.receive(1 << 20) == DATA[:10 * mss] and other_server.receive(100) == b"between"
    acks = [tcp.parse(ipv4.parse(p)) for p in wire.b.take_outgoing()]
    assert [(a.destination_port, a.ack) for a in acks if a.destination_port == client.local[1]] == [
        (client.local[1], (client.snd_max) & tcp.MASK)]  # one ACK for the whole batch


def test_a_run_on_an_authenticated_link_still_drops_a_corrupt_ip_header():
    wire = Wire()
    wire.a.verify_checksums = wire.b.verify_checksums = False
    client, server = wire.connect()
    client.send(DATA[:4 * client.snd_mss])
    wire.poll(wire.a)
    packets = wire.a.take_outgoing()
    corrupt = bytearray(packets[1])
    corrupt[10] ^= 0xFF  # the IP header checksum
    wire.b.receive([packets[0], bytes(corrupt), packets[2], packets[3]], wire.now)
    assert wire.b.drops["bad-checksum"] == 1
    assert server.receive(1 << 20) == DATA[:client.snd_mss]  # what follows the hole waits for it


def test_a_writer_waiting_on_a_full_send_buffer_wakes_once_a_third_is_free():
    wire = Wire(Config(send_buffer=60 * 1380))
    client, server = wire.connect()
    client.user = "a task waiting to write"
    assert client.send(DATA) == 60 * client.snd_mss
    wire.poll(wire.a)  # the initial window: 10 segments

    def round_trip() -> bool:
        wire.b.receive(wire.a.take_outgoing(), wire.now)
        wire.a.receive(wire.b.take_outgoing(), wire.now)
        return client in wire.a.take_changed()

    wire.a.take_changed()
    assert not round_trip()  # 10 of 60 segments acknowledged: not worth waking the writer
    assert round_trip()  # 30 of 60: room for a large piece
    assert server.receive(1 << 20) == DATA[:30 * client.snd_mss]


def test_rto_retransmits_with_exponential_backoff_then_gives_up():
    wire = Wire(Config(data_retries=4))
    client, server = wire.connect()
    wire.drop = lambda sent: sent.sender == "a"
    client.send(b"hello")
    wire.flush()
    wire.advance(30)
    sends = [s.time for s in wire.sent_by("a", data=True)]
    assert len(sends) == 5  # original + 4 retransmissions
    gaps = [b - a for a, b in zip(sends, sends[1:])]
    for earlier, later in zip(gaps, gaps[1:]):
        assert later == pytest.approx(2 * earlier)
    assert gaps[0] >= Config().min_rto
    assert client.state == State.CLOSED and isinstance(client.error, TimeoutError)


def test_syn_is_retransmitted_with_backoff_and_times_out():
    wire = Wire(Config(syn_retries=3))
    wire.drop = lambda sent: True
    client = wire.a.connect(B, 80, wire.now)
    wire.flush()
    wire.advance(60)
    times = [s.time for s in wire.log if s.flags == SYN]
    assert times == pytest.approx([0.0, 1.0, 3.0, 7.0])
    assert isinstance(client.error, TimeoutError)


def test_rtt_sampling_sets_rto_from_measured_rtt():
    wire = Wire(Config(min_rto=0.01))
    wire.b.listen(80)
    client = wire.a.connect(B, 80, wire.now)
    wire.poll(wire.a)
    wire.now += 0.05  # the SYN-ACK comes back 50 ms later
    wire.deliver()
    assert client.state == State.ESTABLISHED
    assert client.rtt.srtt == pytest.approx(0.05) and client.rtt.rto == pytest.approx(0.05 + 4 * 0.025)
    client.send(b"a" * 5000)
    wire.poll(wire.a)
    wire.now += 0.05  # and so does the ACK of the data
    wire.deliver()
    assert client.rtt.srtt == pytest.approx(0.05)
    assert client.rtt.rttvar == pytest.approx(0.75 * 0.025)
    assert client.rtt.rto == pytest.approx(0.05 + 4 * 0.75 * 0.025)


def _drop_nth_data(n_list, name="a"):
    state = {"count": 0, "dropped": set()}

    def drop(sent):
        if sent.sender != name or not sent.segment.payload:
            return False
        seq = sent.segment.seq
        if seq in state["dropped"]:
            return False  # retransmissions get through
        state["count"] += 1
        if state["count"] in n_list:
            state["dropped"].add(seq)
            return True
        return False

    return drop


def test_fast_retransmit_repairs_a_loss_before_the_rto():
    wire = Wire()
    client, server = wire.connect()
    client.congestion.cwnd = 40 * client.snd_mss
    wire.drop = _drop_nth_data({3})
    client.send(DATA[:30 * client.snd_mss])
    wire.flush()
    # everything was repaired without any time passing: three duplicate ACKs triggered the retransmission
    assert server.receive(1 << 30) == DATA[:30 * client.snd_mss]
    assert wire.now == 0.0
    dupacks = [s for s in wire.sent_by("b") if s.segment.sack_blocks]
    assert len(dupacks) >= 3
    assert client.congestion.ssthresh < 40 * client.snd_mss  # congestion window was halved
    assert not client.in_recovery


def test_sack_repairs_several_holes_in_one_recovery():
    wire = Wire()
    client, server = wire.connect()
    client.congestion.cwnd = 60 * client.snd_mss
    wire.drop = _drop_nth_data({5, 15, 25})
    payload = DATA[:50 * client.snd_mss]
    client.send(payload)
    wire.flush()
    assert server.receive(1 << 30) == payload
    assert wire.now == 0.0  # no RTO needed
    retransmissions = len(wire.sent_by("a", data=True)) - 50
    assert retransmissions == 3  # exactly the holes, nothing that was SACKed


def test_newreno_without_sack_recovers_with_partial_acks():
    wire = Wire(Config(sack=False))
    client, server = wire.connect()
    assert not client.sack_ok
    client.congestion.cwnd = 60 * client.snd_mss
    wire.drop = _drop_nth_data({5, 15})
    payload = DATA[:40 * client.snd_mss]
    client.send(payload)
    wire.flush()
    assert server.receive(1 << 30) == payload
    assert wire.now == 0.0  # the partial ACK made the second retransmission, no RTO


def test_out_of_order_segments_are_reassembled_and_sacked():
    wire = Wire()
    client, server = wire.connect()
    client.congestion.cwnd = 10 * client.snd_mss
    held = []
    wire.drop = lambda sent: sent.sender == "a" and bool(sent.segment.payload) and not held.append(sent.packet)
    payload = DATA[:6 * client.snd_mss]
    client.send(payload)
    wire.flush()
    assert len(held) == 6
    wire.drop = lambda sent: False
    for packet in reversed(held):  # deliver backwards
        wire.b.receive([packet], wire.now)
    assert server.receive(1 << 30) == payload
    wire.deliver()
    sack_acks = [s for s in wire.sent_by("b") if s.segment.sack_blocks]
    assert sack_acks, "out-of-order data must be reported with SACK blocks"
    first = sack_acks[0].segment
    assert first.sack_blocks[0][0] == (client.iss + 1 + 5 * client.snd_mss) & tcp.MASK


def test_zero_window_is_probed_until_it_opens():
    wire = Wire(Config(send_buffer=200_000), Config(receive_buffer=20_000))
    client, server = wire.connect()
    client.send(DATA[:100_000])
    wire.flush()
    wire.advance(0.1)
    assert client.snd_wnd == 0 and client.timer_kind == tcp._PERSIST and client.timer_rto is not None
    buffered = len(server.rcv_buf)
    assert 19_000 <= buffered <= 20_010  # the slow reader's buffer bounds what was accepted
    probes_start = len(wire.log)
    wire.advance(5)
    probes = [s for s in wire.log[probes_start:] if s.sender == "a"]
    assert len(probes) >= 3 and all(not s.segment.payload for s in probes)
    gaps = [b.time - a.time for a, b in zip(probes, probes[1:])]
    assert gaps[1] == pytest.approx(2 * gaps[0])  # persist timer backs off
    # The reader drains, but the window update is lost: only a probe can discover the open window.
    wire.drop = lambda sent: sent.sender == "b" and not sent.segment.payload
    got = server.receive(1 << 30)
    wire.flush()
    wire.drop = lambda sent: False
    got += pump(wire, client, server, b"", max_seconds=120)  # nothing new to send; let probes run
    while len(got) < 100_000:
        wire.advance(0.5)
        got += server.receive(1 << 30)
    assert got == DATA[:100_000]


def test_half_close_keeps_the_other_direction_open():
    wire = Wire()
    client, server = wire.connect()
    client.send(b"request")
    client.shutdown()
    wire.flush()
    assert server.receive(100) == b"request" and server.eof_received
    assert server.state == State.CLOSE_WAIT and client.state == State.FIN_WAIT_2
    assert pump(wire, server, client, DATA[:50_000]) == DATA[:50_000]
    with pytest.raises(OSError):
        client.send(b"more")
    server.close()
    wire.flush()
    assert client.eof_received and client.state == State.TIME_WAIT
    assert server.state == State.CLOSED and server.key not in wire.b.connections


def test_time_wait_acks_a_retransmitted_fin_and_expires_after_2msl():
    wire = Wire(Config(msl=10), Config(min_rto=8, initial_rto=8, sack=False))  # no loss probe: RTO only
    client, server = wire.connect()
    client.close()
    wire.flush()
    lost_last_ack = {"done": False}

    def drop(sent):  # lose the client's final ACK once, so the server repeats its FIN
        if sent.sender == "a" and sent.segment.flags == ACK and not lost_last_ack["done"]:
            lost_last_ack["done"] = True
            return True
        return False

    wire.drop = drop
    server.close()
    wire.flush()
    assert client.state == State.TIME_WAIT and server.state == State.LAST_ACK
    wire.advance(9)  # at 8 s the server's RTO repeats the FIN; TIME_WAIT answers it
    assert server.state == State.CLOSED
    assert client.state == State.TIME_WAIT
    wire.advance(15)
    assert client.key in wire.a.connections  # 24 s > 2 MSL: restarted when the FIN came again
    wire.advance(5)
    assert client.state == State.CLOSED and client.key not in wire.a.connections


def test_time_wait_lets_a_new_syn_reuse_the_pair():
    wire = Wire(Config(msl=30))
    listener = wire.b.listen(80)
    client = wire.a.connect(B, 80, wire.now)
    wire.flush()
    server = listener.accept()
    server.close()  # the server closes first and sits in TIME_WAIT
    wire.flush()
    client.close()
    wire.flush()
    assert server.state == State.TIME_WAIT
    wire.advance(1)
    # a new connection from the same client port: its sequence number is higher, so it is let in
    new = tcp.Connection(wire.a.config, client.local, client.remote, (client.snd_nxt + 100_000) & tcp.MASK, 1420,
                         wire.now)
    wire.a.connections[new.key] = new
    new.connect(wire.now)
    wire.flush()
    assert new.state == State.ESTABLISHED and listener.accept() is not None


def test_syn_to_a_closed_port_is_refused_with_rst():
    wire = Wire()
    client = wire.a.connect(B, 81, wire.now)
    wire.flush()
    reset = wire.log[1]
    assert reset.flags == RST | ACK and reset.segment.ack == (client.iss + 1) & tcp.MASK
    assert isinstance(client.error, ConnectionRefusedError) and client.state == State.CLOSED


def test_stray_ack_gets_rst_with_its_ack_as_sequence():
    wire = Wire()
    wire.b.listen(80)
    stray = tcp._raw_segment(ipv4.address(A), ipv4.address(B), 5555, 80, 1000, 424242, ACK)
    wire.b.receive([stray], 0.0)
    (reply,) = wire.b.take_outgoing()
    segment = tcp.parse(ipv4.parse(reply))
    assert segment.flags == RST and segment.seq == 424242


def test_exact_rst_resets_and_in_window_rst_gets_a_challenge_ack():
    wire = Wire()
    client, server = wire.connect()
    a, b = ipv4.address(A), ipv4.address(B)
    near = tcp._raw_segment(a, b, client.local[1], 80, (server.rcv_nxt + 10) & tcp.MASK, 0, RST)
    wire.b.receive([near], wire.now)
    (challenge,) = wire.b.take_outgoing()
    assert tcp.parse(ipv4.parse(challenge)).flags == ACK and server.state == State.ESTABLISHED
    exact = tcp._raw_segment(a, b, client.local[1], 80, server.rcv_nxt & tcp.MASK, 0, RST)
    wire.b.receive([exact], wire.now)
    assert server.state == State.CLOSED and isinstance(server.error, ConnectionResetError)


def test_syn_on_an_established_connection_gets_a_challenge_ack():
    wire = Wire()
    client, server = wire.connect()
    syn = tcp._raw_segment(ipv4.address(A), ipv4.address(B), client.local[1], 80, 12345, 0, SYN)
    wire.b.receive([syn], wire.now)
    (reply,) = wire.b.take_outgoing()
    assert tcp.parse(ipv4.parse(reply)).flags == ACK and server.state == State.ESTABLISHED


def test_abort_sends_rst_and_peer_sees_reset():
    wire = Wire()
    client, server = wire.connect()
    client.abort()
    wire.flush()
    assert wire.log[-1].flags & RST
    assert isinstance(server.error, ConnectionResetError) and server.key not in wire.b.connections


def test_an_abort_the_stack_has_not_collected_yet_still_answers_late_segments_with_rst():
    """A user call takes effect at once: a segment arriving before the layer above reported the abort
    finds no connection (RST), and the connection leaves the table."""
    wire = Wire()
    client, server = wire.connect()
    server.abort()  # on b, not collected
    client.send(b"late")
    wire.a.collect(client)
    wire.a.poll(wire.now)
    wire.b.receive(wire.a.take_outgoing(), wire.now)
    assert server.key not in wire.b.connections
    flags = [tcp.parse(ipv4.parse(packet)).flags for packet in wire.b.take_outgoing()]
    assert sorted(flags) == [RST, RST | ACK]  # the reset answering "late", and the abort's own


def test_close_with_unread_data_resets():
    wire = Wire()
    client, server = wire.connect()
    client.send(b"unread")
    wire.flush()
    server.close()
    wire.flush()
    assert any(s.sender == "b" and s.flags & RST for s in wire.log)
    assert isinstance(client.error, ConnectionResetError)


def test_data_after_close_gets_rst():
    wire = Wire()
    client, server = wire.connect()
    server.close()
    wire.flush()
    assert server.state == State.FIN_WAIT_2
    client.send(b"nobody reads this")
    wire.flush()
    assert any(s.sender == "b" and s.flags & RST for s in wire.log)
    assert isinstance(client.error, ConnectionResetError)


def test_rst_in_syn_received_returns_to_listen():
    wire = Wire()
    listener = wire.b.listen(80)
    wire.drop = lambda sent: sent.sender == "b"
    client = wire.a.connect(B, 80, wire.now)
    wire.flush()
    (half_open,) = listener.half_open.values()
    rst = tcp._raw_segment(ipv4.address(A), ipv4.address(B), client.local[1], 80,
                           (client.iss + 1) & tcp.MASK, 0, RST)
    wire.b.receive([rst], wire.now)
    assert not listener.half_open and half_open.state == State.CLOSED and listener.accept() is None
    assert not listener.closed


def test_keepalive_probes_and_times_out_a_silent_peer():
    config = Config(keepalive_idle=10, keepalive_interval=2, keepalive_count=3)
    wire = Wire(config)
    client, server = wire.connect()
    wire.advance(30)
    assert client.state == State.ESTABLISHED  # probes answered
    probes = [s for s in wire.sent_by("a") if not s.segment.payload and s.time > 0]
    assert len(probes) >= 2 and probes[0].time == pytest.approx(10)
    wire.drop = lambda sent: sent.sender == "b"  # the peer vanishes
    wire.advance(30)
    assert isinstance(client.error, TimeoutError)


def test_nagle_coalesces_small_writes_while_one_is_in_flight():
    wire = Wire(Config(nodelay=False))
    client, server = wire.connect()
    client.send(b"a")
    wire.poll(wire.a)
    for _ in range(10):
        client.send(b"b")
        wire.poll(wire.a)
    assert len([p for p in wire.a.outgoing if len(p) > 40]) == 1  # the rest waits for the ACK
    wire.deliver()
    wire.advance(0.05)
    assert server.receive(100) == b"a" + b"b" * 10
    data_segments = wire.sent_by("a", data=True)
    assert len(data_segments) == 2

    wire = Wire(Config(nodelay=True))
    client, server = wire.connect()
    for _ in range(5):
        client.send(b"c")
        wire.poll(wire.a)
    assert len([p for p in wire.a.outgoing if len(p) > 40]) == 5


def test_slow_reader_shrinks_the_advertised_window():
    wire = Wire(Config(), Config(receive_buffer=64 * 1024))
    client, server = wire.connect()
    client.send(DATA[:40_000])
    wire.flush()
    windows = [s.segment.window << client.snd_wscale for s in wire.sent_by("b")[1:]]
    assert windows[-1] < windows[0]
    assert windows[-1] <= 64 * 1024 - 40_000 + 1024


def test_listener_backlog_bounds_the_accept_queue():
    wire = Wire()
    listener = wire.b.listen(80, backlog=2)
    clients = [wire.a.connect(B, 80, wire.now) for _ in range(4)]
    wire.flush()
    assert len(listener.queue) == 2
    assert len(listener.half_open) == 2  # the rest wait in SYN_RECEIVED; their final ACK was ignored
    listener.accept()
    listener.accept()
    wire.advance(2)  # the SYN-ACK is retransmitted, the ACK comes again, now there is room
    assert len(listener.queue) == 2 and not listener.half_open
    assert all(c.state == State.ESTABLISHED for c in clients)


def test_fin_in_segment_with_data_and_out_of_order_fin():
    wire = Wire()
    client, server = wire.connect()
    held = []
    wire.drop = lambda sent: sent.sender == "a" and bool(sent.segment.payload) and not held.append(sent)
    client.send(b"x" * 2000)
    client.shutdown()
    wire.flush()
    assert held[-1].flags & FIN and held[-1].flags & PSH
    wire.drop = lambda sent: False
    wire.b.receive([held[-1].packet], wire.now)  # the FIN-carrying tail first
    assert not server.eof_received
    wire.b.receive([held[0].packet], wire.now)
    assert server.eof_received and server.receive(5000) == b"x" * 2000


def _connect_with_rtt(wire: Wire, rtt: float):
    """A connection whose handshake took `rtt`, so that srtt is known."""
    listener = wire.b.listen(80)
    client = wire.a.connect(B, 80, wire.now)
    wire.poll(wire.a)
    wire.now += rtt
    wire.deliver()
    return client, listener.accept()


def test_tail_loss_probe_repairs_a_lost_tail_long_before_the_rto():
    wire = Wire()
    client, server = _connect_with_rtt(wire, 0.01)
    wire.drop = _drop_nth_data({5, 6})  # the tail of the flight: no duplicate ACK can follow it
    payload = DATA[:6 * client.snd_mss]
    client.send(payload)
    wire.flush()
    wire.advance(0.05)
    assert server.receive(1 << 30) == payload  # repaired within 50 ms, where the RTO is 200 ms
    assert client.rtt.backoff == 0 and client.rtt.rto >= Config().min_rto


def test_reordering_window_declares_a_lone_hole_lost():
    wire = Wire()
    client, server = _connect_with_rtt(wire, 0.02)
    held = []

    def drop(sent):  # the first segment is lost, the third to fifth are late; only the second arrives
        if sent.sender != "a" or not sent.segment.payload or sent.time > 0.02:
            return False
        offset = (sent.segment.seq - client.iss - 1) & tcp.MASK
        if offset >= 2 * client.snd_mss:
            held.append(sent.packet)
        return offset != client.snd_mss

    wire.drop = drop
    payload = DATA[:5 * client.snd_mss]
    client.send(payload)
    wire.flush()
    assert client.scoreboard.ranges and not client.in_recovery  # too little SACKed to call the hole lost yet
    wire.advance(0.006)  # a quarter of the RTT later it counts as lost
    resends = [s.time for s in wire.sent_by("a", data=True) if s.segment.seq == (client.iss + 1) & tcp.MASK]
    assert resends[1:] == [pytest.approx(0.02 + 0.005)]
    wire.b.receive(held, wire.now)
    wire.advance(0.05)
    assert server.receive(1 << 30) == payload


def test_segments_to_a_peer_that_skips_checksums_go_without_and_still_arrive():
    """A stack asks, per connection, whether the peer checks TCP checksums; one that skips them (a stack
    behind an authenticating link, ours across WireGuard) gets segments with the field left zero."""
    wire = Wire()
    wire.a.peer_needs_checksums = lambda address: False
    wire.b.verify_checksums = False  # what such a peer does
    client, server = wire.connect()
    wire.b.peer_needs_checksums = lambda address: True  # the server side went on checking: a fresh decision
    other_client, other_server = wire.connect(81)
    client.send(DATA[:3 * client.snd_mss])
    wire.poll(wire.a)
    packets = wire.a.take_outgoing()
    assert packets and all(tcp.parse(ipv4.parse(p), verify_checksum=False).flags & ACK for p in packets)
    assert all(struct.unpack_from("!H", p, 20 + 16)[0] == 0 for p in packets)  # the TCP checksum field
    wire.b.receive(packets, wire.now)
    assert server.receive(1 << 20) == DATA[:3 * client.snd_mss]
    other_server.send(b"checked")  # b's connections made after the change carry valid sums
    wire.poll(wire.b)
    answer = wire.b.take_outgoing()
    assert answer and all(tcp.parse(ipv4.parse(p)) for p in answer)  # parse verifies the checksum

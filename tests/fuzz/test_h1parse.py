"""Fuzzing kakuremichi.h1parse, the gateway's HTTP/1.1 reader and writer.

Messages written by one side read back the same on the other, however the bytes are split. Random and
mutated bytes raise nothing but Malformed. And against h11 (an independent parser): whatever both accept
reads as the same requests with the same bodies, so no byte string is one request to the gateway and
another to a server behind it that parses like h11 — the smuggling a proxy must not allow.
"""

from __future__ import annotations

import h11
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kakuremichi import h1parse
from tests.fuzz.test_gateway_http import MUTATION, http1_request, mutate, split

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                        HealthCheck.data_too_large])
TOKEN = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12).map(str.encode)
VALUE = st.binary(max_size=30).map(lambda v: bytes(b for b in v if b >= 0x21 and b != 0x7f))
FIELDS = st.lists(st.tuples(TOKEN.filter(lambda n: n not in (b"content-length", b"transfer-encoding",
                                                             b"connection", b"upgrade", b"expect")), VALUE),
                  max_size=6)


def read_all(conn: h1parse.Connection, pieces: list[bytes], answers: list[bytes] | None = None) -> list:
    """Events from `pieces` fed one after another, then EOF; cycles are started as each message ends (a
    server answers each request with a 204 first, its bytes added to `answers`)."""
    events = []
    for piece in [*pieces, b""]:
        conn.receive_data(piece)
        while True:
            event = conn.next_event()
            if event is h1parse.NEED_DATA or event is h1parse.CLOSED:
                break
            if event is h1parse.PAUSED:
                if not conn.reusable:
                    return events
                conn.start_next_cycle()
                continue
            events.append(event)
            if isinstance(event, h1parse.EndOfMessage) and conn.server:
                answer = conn.send(h1parse.Response(204, [])) + conn.send(h1parse.END)
                if answers is not None:
                    answers.append(answer)
    return events


def messages(events: list) -> list[tuple]:
    """(head fields..., body) per message."""
    out = []
    for event in events:
        if isinstance(event, h1parse.Request):
            out.append([event.method, event.target, list(event.headers), b""])
        elif isinstance(event, h1parse.Response):
            out.append([event.status_code, list(event.headers), b""])
        elif isinstance(event, h1parse.Data):
            out[-1][-1] += event.data
    return [tuple(m) for m in out]


@FUZZ
@given(st.lists(st.tuples(st.sampled_from([b"GET", b"POST", b"PUT"]), TOKEN, FIELDS, st.binary(max_size=500),
                          st.booleans()), min_size=1, max_size=3),
       st.lists(st.integers(0, 3000), max_size=5), st.booleans())
def test_written_requests_read_back_the_same_however_split(requests, cuts, close):
    """With `close`, the last request asks for the connection to close: its answer says so, and the
    connection cannot carry another request (whether or not the request had a body)."""
    writer, wire, expected = h1parse.Connection(server=False), b"", []
    for i, (method, path, fields, body, chunked) in enumerate(requests):
        headers = [(b"host", b"app.test"), *fields]
        if close and i == len(requests) - 1:
            headers.append((b"connection", b"close"))
        if body:
            headers.append((b"transfer-encoding", b"chunked") if chunked else (b"content-length", b"%d" % len(body)))
        wire += writer.send(h1parse.Request(method, b"/" + path, headers))
        for piece in split(body, [len(body) // 3]):
            wire += writer.send(h1parse.Data(piece))
        wire += writer.send(h1parse.END)
        expected.append((method, b"/" + path, headers, body))
        if i < len(requests) - 1:
            writer.receive_data(b"HTTP/1.1 204 No Content\r\n\r\n")
            assert isinstance(writer.next_event(), h1parse.Response) and writer.next_event() is h1parse.END
            writer.start_next_cycle()
    server, answers = h1parse.Connection(server=True), []
    assert messages(read_all(server, split(wire, cuts), answers)) == expected
    assert (b"connection: close" in answers[-1]) is close
    writer.receive_data(answers[-1])  # the last answer, as the client reads it
    assert isinstance(writer.next_event(), h1parse.Response) and writer.next_event() is h1parse.END
    assert writer.reusable is not close


@FUZZ
@given(st.integers(100, 599), FIELDS, st.binary(max_size=2000), st.sampled_from(["length", "chunked", "close"]),
       st.lists(st.integers(0, 3000), max_size=5))
def test_written_responses_read_back_the_same_however_split(status, fields, body, framing, cuts):
    if status in (101, 204, 304) or status < 200:
        status = 200
    server = h1parse.Connection(server=True)
    server.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n" + (b"Connection: close\r\n" if framing == "close" else b"")
                        + b"\r\n")
    assert isinstance(server.next_event(), h1parse.Request) and server.next_event() is h1parse.END
    headers = list(fields) + ([(b"content-length", b"%d" % len(body))] if framing == "length" else [])
    wire = server.send(h1parse.Response(status, headers))
    for piece in split(body, [len(body) // 2]):
        wire += server.send(h1parse.Data(piece))
    wire += server.send(h1parse.END)
    client = h1parse.Connection(server=False)
    client.send(h1parse.Request(b"GET", b"/", [(b"host", b"a")]))
    client.send(h1parse.END)
    [(got_status, got_headers, got_body)] = messages(read_all(client, split(wire, cuts)))
    assert (got_status, got_body) == (status, body)
    assert got_headers[:len(fields)] == fields


def refused_or_events(conn: h1parse.Connection, pieces: list[bytes]) -> list | None:
    try:
        return read_all(conn, pieces)
    except h1parse.Malformed as exc:
        assert exc.status in (400, 431, 501, 505)
        assert conn.their_state is h1parse.ERROR and not conn.reusable
        return None


def h11_requests(data: bytes) -> list[tuple] | None:
    """What h11 reads from `data` as a server, None where it refuses."""
    conn, out = h11.Connection(h11.SERVER), []
    conn.receive_data(data)
    conn.receive_data(b"")
    try:
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Request):
                out.append([event.method, event.target, list(event.headers), b""])
            elif isinstance(event, h11.Data):
                out[-1][-1] += event.data
            elif isinstance(event, h11.EndOfMessage):
                conn.send(h11.Response(status_code=204, headers=[]))
                conn.send(h11.EndOfMessage())
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    break
                conn.start_next_cycle()
            else:
                break
    except h11.ProtocolError:
        return None
    return [tuple(m) for m in out]


@FUZZ
@given(st.lists(http1_request(), min_size=1, max_size=3), st.lists(MUTATION, max_size=4),
       st.lists(st.integers(0, 4000), max_size=3))
def test_mutated_requests_read_as_h11_reads_them_or_are_refused(requests, mutations, cuts):
    data = mutate(b"".join(requests), mutations)
    events = refused_or_events(h1parse.Connection(server=True), split(data, cuts))
    if events is None:
        return
    ours = messages(events)
    theirs = h11_requests(data)
    if theirs is not None:
        # h11 may read further (it accepts what llhttp refuses, e.g. bare LF); what both read is the same
        common = min(len(ours), len(theirs))
        assert ours[:common] == theirs[:common]


@FUZZ
@given(st.binary(max_size=3000), st.lists(st.integers(0, 4000), max_size=3), st.booleans())
def test_random_bytes_raise_only_malformed(data, cuts, server):
    conn = h1parse.Connection(server=server, max_header_bytes=1024)
    if not server:
        conn.send(h1parse.Request(b"GET", b"/", [(b"host", b"a")]))
        conn.send(h1parse.END)
    refused_or_events(conn, split(data, cuts))

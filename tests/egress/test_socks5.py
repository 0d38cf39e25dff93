"""The SOCKS5 codec on its own: good requests of every address type, and every kind of bad input
answered with the reply RFC 1928 asks for."""

from __future__ import annotations

import pytest

from kakuremichi.egress import socks5

GREETING = b"\x05\x01\x00"


def server_events(*chunks: bytes) -> tuple[list, bytes]:
    handshake = socks5.ServerHandshake()
    events, out = [], b""
    for chunk in chunks:
        handshake.receive_data(chunk)
        while True:
            event = handshake.next_event()
            out += handshake.data_to_send()
            events.append(event)
            if event is socks5.NEED_DATA or not isinstance(event, socks5.NeedData):
                break
        if not isinstance(events[-1], socks5.NeedData):
            break
    return events, out


@pytest.mark.parametrize("address, host", [
    (b"\x01\x5d\xb8\xd8\x22", "93.184.216.34"),
    (b"\x03\x0bexample.com", "example.com"),
    (b"\x04" + bytes.fromhex("20010db8000000000000000000000001"), "2001:db8::1"),
])
def test_connect_of_every_address_type(address, host):
    events, out = server_events(GREETING + b"\x05\x01\x00" + address + b"\x01\xbb" + b"early")
    assert events[-1] == socks5.Request(host, 443)
    assert out == b"\x05\x00"


def test_byte_by_byte_and_reply():
    handshake = socks5.ServerHandshake()
    message = GREETING + b"\x05\x01\x00\x03\x0bexample.com\x00\x50hello"
    events = []
    for i in range(len(message)):
        handshake.receive_data(message[i:i + 1])
        events.append(handshake.next_event())
        if isinstance(events[-1], socks5.Request):
            handshake.receive_data(message[i + 1:])
            break
    assert events[-1] == socks5.Request("example.com", 80)
    assert all(e is socks5.NEED_DATA for e in events[:-1])
    assert handshake.data_to_send() == b"\x05\x00"
    assert handshake.reply(socks5.SUCCEEDED, ("192.0.2.1", 4242)) == b"\x05\x00\x00\x01\xc0\x00\x02\x01\x10\x92"


@pytest.mark.parametrize("data, code, out", [
    (b"\x04\x01\x00\x50", socks5.NO_ACCEPTABLE_METHODS, b"\x05\xff"),  # SOCKS4
    (b"GET / HTTP/1.1\r\n", socks5.NO_ACCEPTABLE_METHODS, b"\x05\xff"),  # garbage
    (b"\x05\x01\x02", socks5.NO_ACCEPTABLE_METHODS, b"\x05\xff"),  # username/password only
    (GREETING + b"\x05\x02\x00\x01\x01\x02\x03\x04\x00\x50", socks5.COMMAND_NOT_SUPPORTED, b"\x05\x00\x05\x07"),
    (GREETING + b"\x05\x03\x00\x01\x01\x02\x03\x04\x00\x50", socks5.COMMAND_NOT_SUPPORTED, b"\x05\x00\x05\x07"),
    (GREETING + b"\x05\x01\x00\x05\x01\x02\x03\x04\x00\x50", socks5.ADDRESS_TYPE_NOT_SUPPORTED, b"\x05\x00\x05\x08"),
    (GREETING + b"\x04\x01\x00\x01\x01\x02\x03\x04\x00\x50", socks5.GENERAL_FAILURE, b"\x05\x00\x05\x01"),
    (GREETING + b"\x05\x01\x01\x01\x01\x02\x03\x04\x00\x50", socks5.GENERAL_FAILURE, b"\x05\x00\x05\x01"),
    (GREETING + b"\x05\x01\x00\x03\x00\x00\x50", socks5.GENERAL_FAILURE, b"\x05\x00\x05\x01"),  # empty name
    (GREETING + b"\x05\x01\x00\x03\x03a\x00b\x00\x50", socks5.GENERAL_FAILURE, b"\x05\x00\x05\x01"),  # NUL
    (GREETING + b"\x05\x01\x00\x01\x01\x02\x03\x04\x00\x00", socks5.GENERAL_FAILURE, b"\x05\x00\x05\x01"),  # port 0
])
def test_bad_input_gets_the_right_reply(data, code, out):
    events, sent = server_events(data)
    assert isinstance(events[-1], socks5.Rejected) and events[-1].code == code
    assert sent[:len(out)] == out
    if len(sent) > 2:  # a request reply: the whole reply, with an all-zero bound address
        assert sent[2:] == b"\x05" + bytes((code,)) + b"\x00\x01" + bytes(6)


def test_truncated_then_eof_is_rejected_without_a_reply():
    for data in (b"\x05", b"\x05\x02\x00", GREETING + b"\x05\x01\x00\x03\x0bexam"):
        events, sent = server_events(data, b"")
        assert isinstance(events[-1], socks5.Rejected), data
        assert sent in (b"", b"\x05\x00")


def test_client_pipelines_greeting_and_request_and_reads_the_reply():
    client = socks5.ClientHandshake("example.com", 443)
    assert client.data_to_send() == GREETING + b"\x05\x01\x00\x03\x0bexample.com\x01\xbb"
    assert client.next_event() is socks5.NEED_DATA
    client.receive_data(b"\x05\x00\x05\x00\x00\x04" + bytes(15) + b"\x01\x00\x50first bytes")
    assert client.next_event() == socks5.Connected(("::1", 80))
    assert client.trailing_data == b"first bytes"
    assert socks5.ClientHandshake("10.0.0.1", 80).data_to_send()[3:] == b"\x05\x01\x00\x01\x0a\x00\x00\x01\x00\x50"


@pytest.mark.parametrize("reply, code", [
    (b"\x05\x00\x05\x02\x00\x01" + bytes(6), socks5.NOT_ALLOWED),
    (b"\x05\x00\x05\x05\x00\x01" + bytes(6), socks5.CONNECTION_REFUSED),
    (b"\x05\xff", socks5.GENERAL_FAILURE),  # wants authentication we do not have
    (b"\x05\x00\x05\x00\x01\x01" + bytes(6), socks5.GENERAL_FAILURE),  # reserved byte set
    (b"\x05\x00\x05\x00\x00\x09" + bytes(6), socks5.GENERAL_FAILURE),  # unknown address type
    (b"HTTP/1.1 400 Bad", socks5.GENERAL_FAILURE),
])
def test_client_failures(reply, code):
    client = socks5.ClientHandshake("example.com", 443)
    client.receive_data(reply)
    event = client.next_event()
    assert isinstance(event, socks5.Failed) and event.code == code


def test_client_eof_before_the_reply_fails():
    client = socks5.ClientHandshake("example.com", 443)
    client.receive_data(b"\x05\x00\x05")
    assert client.next_event() is socks5.NEED_DATA
    client.receive_data(b"")
    assert isinstance(client.next_event(), socks5.Failed)


def test_encode_address_refuses_what_does_not_fit():
    with pytest.raises(ValueError):
        socks5.encode_address("a" * 256, 80)
    assert socks5.encode_address("bücher.example", 80)[2:] == b"xn--bcher-kva.example\x00\x50"

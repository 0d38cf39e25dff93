"""The PROXY protocol module: the headers HAProxy's specification gives as examples, both versions, and the
strict decoder's refusals."""

from __future__ import annotations

import ipaddress

import pytest

from kakuremichi.proxyprotocol import Header, Incomplete, ProxyProtocolError, decode, encode


def test_v1_tcp4_and_tcp6_lines():
    assert encode("v1", "tcp", ("192.0.2.1", 56324), ("198.51.100.2", 443)) == \
        b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n"
    line = encode("v1", "tcp", ("2001:db8::1", 1), ("::1", 2))
    assert line == b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n"
    assert decode(line + b"SSH-2.0") == (Header(1, "tcp", ("2001:db8::1", 1), ("::1", 2)), len(line))


def test_mapped_and_mixed_families_are_written_in_one():
    assert encode("v1", "tcp", ("::ffff:127.0.0.1", 5), ("127.0.0.1", 6)).startswith(b"PROXY TCP4 127.0.0.1 ")
    mixed = encode("v1", "tcp", ("192.0.2.1", 5), ("2001:db8::2", 6))
    assert mixed.startswith(b"PROXY TCP6 ")
    assert ipaddress.ip_address(decode(mixed)[0].source[0]) == ipaddress.ip_address("::ffff:192.0.2.1")


def test_v2_tcp_and_udp_binary():
    header = encode("v2", "udp", ("192.0.2.1", 5353), ("198.51.100.2", 53))
    assert header == (b"\r\n\r\n\x00\r\nQUIT\n\x21\x12\x00\x0c" + bytes([192, 0, 2, 1, 198, 51, 100, 2])
                      + (5353).to_bytes(2, "big") + (53).to_bytes(2, "big"))
    assert decode(header + b"payload") == (Header(2, "udp", ("192.0.2.1", 5353), ("198.51.100.2", 53)), 28)
    six = encode("v2", "tcp", ("2001:db8::1", 1), ("2001:db8::2", 2))
    assert len(six) == 16 + 36 and decode(six)[0].source == ("2001:db8::1", 1)
    with pytest.raises(ValueError, match="v1 describes TCP only"):
        encode("v1", "udp", ("192.0.2.1", 1), ("192.0.2.2", 2))


def test_local_unknown_and_tlvs():
    assert decode(b"PROXY UNKNOWN\r\n") == (Header(1, "tcp", None, None), 15)
    local = b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"
    assert decode(local) == (Header(2, "tcp", None, None), 16)
    with_tlv = bytearray(encode("v2", "tcp", ("192.0.2.1", 1), ("192.0.2.2", 2)))
    with_tlv[14:16] = (12 + 4).to_bytes(2, "big")
    assert decode(bytes(with_tlv) + b"\x04\x00\x01X")[1] == 16 + 16  # a TLV is skipped over


@pytest.mark.parametrize("data", [b"", b"PROX", b"PROXY TCP4 1.2.3.4", b"\r\n\r\n\x00",
                                  b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c1234"])
def test_incomplete_headers_ask_for_more(data):
    with pytest.raises(Incomplete):
        decode(data)


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\n", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
    b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", b"PROXY TCP4 1.2.3.04 5.6.7.8 1 2\r\n", b"PROXY " + b"A" * 120,
    b"\r\n\r\n\x00\r\nQUIT\n\x31\x11\x00\x0c" + bytes(12), b"\r\n\r\n\x00\r\nQUIT\n\x21\x31\x00\x0c" + bytes(12),
    b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x04" + bytes(4), b"\r\n\r\n\x00\r\nQUXT\n\x21\x11\x00\x0c" + bytes(12),
])
def test_malformed_headers_are_refused(data):
    with pytest.raises(ProxyProtocolError) as refused:
        decode(data)
    assert not isinstance(refused.value, Incomplete)

"""Random and mutated bytes to the PROXY protocol decoder: only its own error escapes; every header encoded
decodes to the addresses it was made from."""

from __future__ import annotations

import ipaddress

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kakuremichi.proxyprotocol import ProxyProtocolError, decode, encode

FUZZ = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PORTS = st.integers(0, 65535)
V4 = st.ip_addresses(v=4).map(str)
V6 = st.ip_addresses(v=6).filter(lambda a: a.ipv4_mapped is None).map(str)


@st.composite
def mutated(draw) -> bytes:
    header = bytearray(encode(draw(st.sampled_from(["v1", "v2"])), "tcp", (draw(V4), draw(PORTS)),
                              (draw(V4), draw(PORTS))))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(header) - 1))
        header[at] = draw(st.integers(0, 255))
    return bytes(header[:draw(st.integers(0, len(header)))])


@FUZZ
@given(st.one_of(st.binary(max_size=120), mutated(), st.binary(max_size=40).map(lambda b: b"PROXY " + b),
                 st.binary(max_size=60).map(lambda b: b"\r\n\r\n\x00\r\nQUIT\n" + b)))
def test_only_the_own_error_escapes(data):
    try:
        header, length = decode(data)
    except ProxyProtocolError:
        return
    assert 0 < length <= len(data) and header.version in (1, 2)


@FUZZ
@given(st.sampled_from(["v1", "v2"]), st.sampled_from(["tcp", "udp"]), st.one_of(
    st.tuples(V4, V4), st.tuples(V6, V6)), PORTS, PORTS, st.binary(max_size=20))
def test_encoded_headers_decode_to_their_addresses(version, transport, hosts, sport, dport, payload):
    if version == "v1" and transport == "udp":
        transport = "tcp"
    header = encode(version, transport, (hosts[0], sport), (hosts[1], dport))
    decoded, length = decode(header + payload)
    assert length == len(header) and decoded.transport == transport
    assert decoded.source == (str(ipaddress.ip_address(hosts[0])), sport)
    assert decoded.destination == (str(ipaddress.ip_address(hosts[1])), dport)

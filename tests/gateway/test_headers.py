"""Sans-IO pieces of the proxy: Host normalisation, route table, forwarding headers, error pages."""

from __future__ import annotations

import json

import pytest
import trio

from kakuremichi.gateway.http import errorpages
from kakuremichi.gateway.http.forwarding import ForwardingPolicy, forwarded_headers
from kakuremichi.gateway.routes import Route, RouteTable
from kakuremichi.httpheaders import strip_hop_by_hop
from kakuremichi.values import InvalidHost, request_host


@pytest.mark.parametrize("raw, expected", [
    ("Example.COM", "example.com"),
    ("example.com.:8443", "example.com"),
    ("bücher.example", "xn--bcher-kva.example"),
    (b"app.localhost:8081", "app.localhost"),
    ("[2001:DB8::1]:80", "[2001:db8::1]"),
    ("127.0.0.1:80", "127.0.0.1"),
])
def test_request_host(raw, expected):
    assert request_host(raw) == expected


@pytest.mark.parametrize("raw", ["", ":80", "a..b", "exa mple.com", "example.com:http", "example.com:0",
                                 "-bad.com", "a" * 64 + ".com", "[::1", "evil.com/path", "*.example.com",
                                 b"\xff.com", "x:99999"])
def test_request_host_rejects_garbage(raw):
    with pytest.raises(InvalidHost):
        request_host(raw)


def test_route_lookup_exact_then_wildcard_and_disabled():
    table = RouteTable([Route("*.Example.com", "10.1.0.2", 80), Route("api.example.com", "10.1.0.3", 80),
                        Route("off.example.org", "10.1.0.4", 80, enabled=False)])
    assert table.lookup("api.example.com").address == "10.1.0.3"
    assert table.lookup("www.example.com").address == "10.1.0.2"
    assert table.lookup("a.b.example.com") is None
    assert table.lookup("off.example.org") is None
    with pytest.raises(ValueError):
        RouteTable([Route("a.test", "10.0.0.1", 80), Route("A.test.", "10.0.0.2", 80)])


async def test_route_hold_is_cancelled_only_when_its_route_changes():
    a, b = Route("a.test", "10.0.0.1", 80), Route("b.test", "10.0.0.2", 80)
    table = RouteTable([a, b])
    with trio.CancelScope() as scope_a, trio.CancelScope() as scope_b, table.hold(a, scope_a), \
            table.hold(b, scope_b):
        table.replace([a, Route("b.test", "10.0.0.2", 80, force_https=True)])  # same upstream
        assert not scope_a.cancel_called and not scope_b.cancel_called
        table.replace([a, Route("b.test", "10.0.0.9", 80)])
        assert not scope_a.cancel_called and scope_b.cancel_called
        await trio.lowlevel.checkpoint_if_cancelled()


def test_hop_by_hop_fields_and_connection_tokens_are_dropped():
    headers = [(b"connection", b"keep-alive, x-private"), (b"keep-alive", b"timeout=5"),
               (b"x-private", b"1"), (b"te", b"trailers"), (b"accept", b"*/*")]
    assert strip_hop_by_hop(headers) == [(b"accept", b"*/*")]


def test_forwarded_quotes_ipv6_and_odd_hosts():
    out = dict(forwarded_headers([], peer_ip="2001:db8::7", host="app.test:8443", scheme="https",
                                 policy=ForwardingPolicy()))
    assert out[b"forwarded"] == b'for="[2001:db8::7]";host="app.test:8443";proto=https'
    assert out[b"x-real-ip"] == b"2001:db8::7"


def test_real_ip_skips_trusted_hops_of_the_chain():
    policy = ForwardingPolicy.from_strings(["10.0.0.0/8"])
    out = forwarded_headers([(b"x-forwarded-for", b"198.51.100.1, 10.0.0.5")], peer_ip="10.0.0.9",
                            host="a.test", scheme="http", policy=policy)
    assert dict(out)[b"x-real-ip"] == b"198.51.100.1"
    assert dict(out)[b"x-forwarded-for"] == b"198.51.100.1, 10.0.0.5, 10.0.0.9"


@pytest.mark.parametrize("accept, is_json", [
    (b"application/json", True), (b"text/html,application/xhtml+xml,*/*;q=0.8", False),
    (b"*/*", False), (b"", False), (b"application/json;q=0.5, text/html", False),
    (b"text/html;q=0.1, application/json", True),
])
def test_error_page_negotiates_json_or_html(accept, is_json):
    headers, body = errorpages.render(errorpages.unknown_host("<x>.test"), accept)
    if is_json:
        assert json.loads(body) == {"error": "No tunnel serves this domain", "code": "unknown_host",
                                    "details": json.loads(body)["details"]}
    else:
        assert body.startswith(b"<!doctype html>") and b"&lt;x&gt;.test" in body

"""The local HTTP proxy's request handling on its own: where a request goes, and what the origin gets."""

from __future__ import annotations

import h11
import pytest

from kakuremichi.egress.httpproxy import BadRequest, destination, origin_request, split_authority


def request(method: bytes, target: bytes, *headers: tuple[bytes, bytes]) -> h11.Request:
    return h11.Request(method=method, target=target, headers=[(b"host", b"example.com"), *headers])


@pytest.mark.parametrize("target, expected", [
    ("example.com:443", ("example.com", 443)),
    ("93.184.216.34:8443", ("93.184.216.34", 8443)),
    ("[2001:db8::1]:443", ("2001:db8::1", 443)),
])
def test_connect_targets(target, expected):
    assert split_authority(target) == expected


@pytest.mark.parametrize("target", ["example.com", "example.com:0", "example.com:65536", ":443", "example.com:x"])
def test_bad_connect_targets(target):
    with pytest.raises(BadRequest):
        split_authority(target)


def test_destinations():
    assert destination(request(b"GET", b"http://example.com/a")) == ("example.com", 80)
    assert destination(request(b"GET", b"http://example.com:8080/a")) == ("example.com", 8080)
    assert destination(request(b"CONNECT", b"example.com:443")) == ("example.com", 443)
    for target in (b"/", b"https://example.com/", b"ftp://example.com/", b"http:///path", b"http://example.com:99999/",
                   b"http://[::1/", b"http://[example.com]/"):
        with pytest.raises(BadRequest):
            destination(request(b"GET", target))


def test_origin_request_drops_hop_by_hop_headers():
    sent = origin_request(request(b"POST", b"http://example.com:8080/p/a?q=1&r=2",
                                  (b"proxy-connection", b"keep-alive"), (b"proxy-authorization", b"Basic eA=="),
                                  (b"connection", b"keep-alive, x-private"), (b"x-private", b"1"),
                                  (b"te", b"trailers"), (b"content-length", b"3"), (b"x-kept", b"yes")))
    assert sent.target == b"/p/a?q=1&r=2"
    assert sent.headers == [(b"host", b"example.com:8080"), (b"content-length", b"3"), (b"x-kept", b"yes"),
                            (b"connection", b"close")]


def test_origin_request_takes_its_host_from_the_url():
    """RFC 9112 §3.2.2: a proxy ignores the Host header of an absolute-form request."""
    sent = origin_request(h11.Request(method=b"GET", target=b"http://real.example.net/",
                                      headers=[(b"host", b"other.example.org")]))
    assert [value for name, value in sent.headers if name == b"host"] == [b"real.example.net"]


def test_origin_request_without_host_gets_one_from_the_url():
    sent = origin_request(h11.Request(method=b"GET", target=b"http://user@example.com:8080", headers=[],
                                      http_version=b"1.0"))
    assert sent.target == b"/" and (b"host", b"example.com:8080") in sent.headers

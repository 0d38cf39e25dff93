"""Fuzz target of the login form's `next=` check: whatever it accepts, a browser resolves on this site."""

from __future__ import annotations

from urllib.parse import unquote, urljoin, urlsplit

from hypothesis import HealthCheck, given, settings, strategies as st

from kakuremichi.control.web.views import is_local_target

BASE = "https://control.example/login"
TRICKY = st.sampled_from(["/", "//", "\\", "\t", "\r", "\n", " ", "%2F", "%5C", "%09", "%0a", "%2f%2f", ":", "@",
                          "?", "#", ".", "..", "evil.example", "javascript:", "http:", "\x00", "\u2028", "%25"])


def _as_a_browser_reads_it(location: str) -> str:
    """What WHATWG URL parsing makes of a Location: tabs and newlines dropped, backslashes as slashes."""
    return urljoin(BASE, location.replace("\t", "").replace("\r", "").replace("\n", "").replace("\\", "/")
                   .strip("\x00 "))


def _check(target: str) -> None:
    if is_local_target(target):
        for text in (target, unquote(target)):
            assert urlsplit(_as_a_browser_reads_it(text)).netloc == "control.example", target


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.text(max_size=40))
def test_random_targets(target):
    _check(target)


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.one_of(TRICKY, st.text(alphabet="abc/", max_size=3)), max_size=8),
       st.sampled_from(["/agents/abc", "/tunnels/new?agent=1", "/"]))
def test_mutated_valid_targets(pieces, valid):
    _check("".join(pieces) + valid)
    _check(valid[:1] + "".join(pieces) + valid[1:])
    assert is_local_target(valid)

"""Random and mutated text to each parser of kakuremichi.values: only its own ValueError escapes, and whatever
parses re-parses to the same value from its canonical string."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kakuremichi.values import (Domain, Endpoint, InvalidDomain, InvalidEndpoint, InvalidHost, InvalidTarget,
                                Target, request_host)

VALID = ["app.example.com", "*.example.co.uk", "bücher.example", "app.localhost", "localhost:8080",
         "https://[::1]:8443/", "http://nas.lan", "203.0.113.1:51820", "[2001:db8::1]:51820", "db_1:5432"]
ALPHABET = st.sampled_from(list("aZ09-_.*:/[]@%?#xn ") + ["ß", "ü", "．", "²", "\x00", "\u200d"])
FUZZ = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def mutated(draw) -> str:
    """A valid value with a few characters replaced, inserted or dropped."""
    text = list(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        action = draw(st.sampled_from(("replace", "insert", "drop")))
        if action == "insert" or not text:
            text.insert(at, draw(ALPHABET))
        elif action == "replace":
            text[min(at, len(text) - 1)] = draw(ALPHABET)
        else:
            del text[min(at, len(text) - 1)]
    return "".join(text)


TEXT = st.one_of(st.text(max_size=80), st.text(ALPHABET, max_size=40), mutated())
PARSERS = [(Domain, InvalidDomain), (Target, InvalidTarget), (Endpoint, InvalidEndpoint)]


@FUZZ
@given(TEXT)
def test_only_the_own_error_escapes_and_the_canonical_form_round_trips(text):
    for kind, error in PARSERS:
        try:
            value = kind.parse(text)
        except error:
            continue
        canonical = str(value)
        assert canonical.isascii() and kind.parse(canonical) == value and str(kind.parse(canonical)) == canonical


@FUZZ
@given(st.one_of(TEXT, st.binary(max_size=40)))
def test_request_hosts_raise_only_invalid_host_and_are_stable(raw):
    try:
        host = request_host(raw)
    except InvalidHost:
        return
    assert host.isascii() and request_host(host) == host

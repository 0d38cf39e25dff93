"""Hostile cookies, share tokens and login forms: the access core answers, never raises."""

from hypothesis import given, settings, strategies as st

from kakuremichi.access import tokens
from kakuremichi.access.gate import COOKIE, Forward, Gate, Reply
from kakuremichi.access.policy import AccessPolicy
from kakuremichi.access.tokens import Claims

KEY = b"f" * 32
POLICY = AccessPolicy("tun", KEY, mode="password", password_hash="scrypt$16$1$1$AA$AA")
GENUINE = tokens.sign(KEY, "session", Claims(tunnel="tun", expires=2e9, issued=1e9, user="password")).encode()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_token_parser_takes_any_bytes(data):
    assert tokens.verify(KEY, "session", data, 1e9) is None or data == GENUINE


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(0, len(GENUINE) - 1))
def test_a_changed_genuine_token_is_refused(noise, where):
    changed = GENUINE[:where] + noise + GENUINE[where + 1:]
    assert changed == GENUINE or tokens.verify(KEY, "session", changed, 1e9) is None


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=300),
       st.one_of(st.binary(max_size=300), st.lists(st.sampled_from([b"&", b"=", b"password", b"%", b";"])).map(b"".join)))
def test_gate_answers_any_cookie_target_and_body(cookie, target, body):
    gate = Gate(clock=lambda: 1e9)
    outcome = gate.check(POLICY, method=b"POST", target=b"/.kakuremichi/" + target,
                         headers=[(b"cookie", COOKIE.encode() + b"=" + cookie), (b"accept", b"text/html")],
                         client_ip="192.0.2.1", host="h.example.com", scheme="http", body=body)
    assert isinstance(outcome, (Forward, Reply))
    outcome = gate.check(POLICY, method=b"GET", target=b"/" + target,
                         headers=[(b"cookie", cookie), (b"authorization", b"Basic " + cookie)],
                         client_ip="192.0.2.1", host="h.example.com", scheme="http")
    assert isinstance(outcome, Reply)

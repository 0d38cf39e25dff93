"""The access gate as a sans-IO core: requests' parts and a fake clock in, Forward or Reply out."""

import base64

import pytest

from kakuremichi.access import tokens
from kakuremichi.access.gate import COOKIE, LOGGED_IN, Forward, Gate, Reply
from kakuremichi.access.passwords import hash_password, verify_password
from kakuremichi.access.policy import AccessPolicy, Rule, secret_digest
from kakuremichi.access.throttle import Limits, Throttle
from kakuremichi.access.tokens import Claims

KEY = b"k" * 32
HASH = hash_password("hunter2")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def policy(**changes) -> AccessPolicy:
    return AccessPolicy(**{"tunnel_id": "tunA", "key": KEY, "mode": "password", "password_hash": HASH, **changes})


def check(gate, pol, target=b"/", method=b"GET", headers=(), ip="203.0.113.9", body=b""):
    headers = [(b"host", b"a.example.com"), (b"accept", b"text/html"), *headers]
    return gate.check(pol, method=method, target=target, headers=headers, client_ip=ip, host="a.example.com",
                      scheme="https", body=body)


def login(gate, pol, password="hunter2", ip="203.0.113.9"):
    return check(gate, pol, b"/.kakuremichi/login", b"POST", ip=ip,
                 body=f"password={password}&next=/inside".encode())


def cookie_of(reply: Reply) -> bytes:
    value = dict(reply.headers)[b"set-cookie"]
    return value.split(b";", 1)[0].split(b"=", 1)[1]


def with_cookie(token: bytes):
    return [(b"cookie", b"theme=dark; " + COOKIE.encode() + b"=" + token)]


def test_password_hash_round_trip_and_malformed_hashes_match_nothing():
    assert verify_password("hunter2", HASH) and not verify_password("hunter3", HASH)
    assert not verify_password("hunter2", "scrypt$1$1$1$$") and not verify_password("x", "plain")


def test_password_login_sets_a_scoped_cookie_that_opens_the_tunnel_with_identity():
    gate, pol = Gate(clock=Clock()), policy()
    assert check(gate, pol).status == 401
    reply = login(gate, pol)
    assert reply.status == 303 and dict(reply.headers)[b"location"] == b"/inside"
    attributes = dict(reply.headers)[b"set-cookie"]
    for attribute in (b"HttpOnly", b"SameSite=Lax", b"Secure", b"Path=/"):
        assert attribute in attributes
    assert b"Domain" not in attributes  # host-only: the tunnel's domain and nothing else
    outcome = check(gate, pol, headers=with_cookie(cookie_of(reply)))
    assert isinstance(outcome, Forward)
    assert (b"x-kakuremichi-user", b"password") in outcome.headers
    assert (b"cookie", b"theme=dark") in outcome.headers  # our cookie is not passed on


def test_a_wrong_password_is_refused_and_logged_without_it():
    reply = login(Gate(clock=Clock()), policy(), "guess")
    assert reply.status == 401 and reply.code == "access_password_wrong" and b"guess" not in reply.body


def test_brute_force_is_limited_per_source_and_per_tunnel_then_forgotten():
    clock = Clock()
    gate = Gate(Throttle(Limits(per_source=3, per_tunnel=5, window=60)), clock=clock)
    pol = policy()
    for _ in range(3):
        assert login(gate, pol, "guess").status == 401
    assert login(gate, pol).status == 429  # even the right password waits
    for ip in ("198.51.100.1", "198.51.100.2"):
        assert login(gate, pol, "guess", ip).status == 401
    assert login(gate, pol, ip="198.51.100.3").status == 429  # the tunnel as a whole
    clock.now += 61
    assert login(gate, pol).status == 303


def test_a_cookie_of_another_tunnel_a_tampered_or_expired_one_is_refused():
    clock = Clock()
    gate = Gate(clock=clock)
    token = cookie_of(login(gate, policy()))
    assert isinstance(check(gate, policy(), headers=with_cookie(token)), Forward)
    assert check(gate, policy(tunnel_id="tunB"), headers=with_cookie(token)).status == 401
    payload, mac = token.split(b".")
    forged = tokens.sign(b"x" * 32, "session", Claims(tunnel="tunA", expires=clock.now + 99, issued=clock.now,
                                                      user="password")).encode()
    flipped = payload[:-1] + (b"A" if payload[-1:] != b"A" else b"B") + b"." + mac
    for bad in (flipped, forged, token + b"x", b"", b"." * 9):
        assert check(gate, policy(), headers=with_cookie(bad)).status == 401
    clock.now += 24 * 3600 + 1
    assert check(gate, policy(), headers=with_cookie(token)).status == 401


def test_revocation_by_epoch_and_by_time():
    clock = Clock()
    gate = Gate(clock=clock)
    token = cookie_of(login(gate, policy()))
    assert check(gate, policy(epoch=1), headers=with_cookie(token)).status == 401
    assert check(gate, policy(revoked_before=clock.now + 1), headers=with_cookie(token)).status == 401


def test_revoking_one_sso_user_leaves_the_others_in():
    clock = Clock()
    gate = Gate(clock=clock)
    pol = policy(mode="sso", allowed_domains=frozenset({"example.com"}))
    sessions = {}
    for index, email in enumerate(("ann@example.com", "bob@example.com")):
        reply = check(gate, pol, b"/.kakuremichi/sso?code=" + sso_code(clock, email, code_id=f"R{index}"))
        sessions[email] = cookie_of(reply)
    revoked = policy(mode="sso", allowed_domains=frozenset({"example.com"}), login_url="https://control/auth/login",
                     revoked_users={"ann@example.com": clock.now + 1})
    assert check(gate, revoked, headers=with_cookie(sessions["ann@example.com"])).status == 303  # log in again
    assert isinstance(check(gate, revoked, headers=with_cookie(sessions["bob@example.com"])), Forward)
    clock.now += 2  # a new login after the revocation opens it again
    fresh = cookie_of(check(gate, revoked, b"/.kakuremichi/sso?code=" + sso_code(clock, code_id="R9")))
    assert isinstance(check(gate, revoked, headers=with_cookie(fresh)), Forward)


def share_link(clock, tunnel="tunA", lifetime=3600.0, link_id="L1") -> bytes:
    return tokens.sign(KEY, "share", Claims(tunnel=tunnel, expires=clock.now + lifetime, issued=clock.now,
                                            id=link_id)).encode()


def test_share_links_valid_expired_revoked_and_foreign():
    clock = Clock()
    gate = Gate(clock=clock)
    reply = check(gate, policy(), b"/.kakuremichi/share/" + share_link(clock))
    assert reply.status == 303
    session = cookie_of(reply)
    opened = check(gate, policy(), headers=with_cookie(session))
    assert isinstance(opened, Forward) and (b"x-kakuremichi-user", b"share:L1") in opened.headers
    # revoking the link ends the sessions it opened, and refuses it from then on
    revoked = policy(revoked_links=frozenset({"L1"}))
    assert check(gate, revoked, headers=with_cookie(session)).status == 401
    assert check(gate, revoked, b"/.kakuremichi/share/" + share_link(clock)).status == 403
    assert check(gate, policy(), b"/.kakuremichi/share/" + share_link(clock, tunnel="tunB")).status == 403
    expired = share_link(clock, lifetime=10)
    clock.now += 11
    assert check(gate, policy(), b"/.kakuremichi/share/" + expired).status == 403


def test_ranked_cidr_rules_first_match_wins():
    gate = Gate(clock=Clock())
    rules = (Rule.parse("bypass", "10.0.0.5/32"), Rule.parse("deny", "10.0.0.0/8"),
             Rule.parse("allow", "0.0.0.0/0"))
    pol = policy(rules=rules)
    assert isinstance(check(gate, pol, ip="10.0.0.5"), Forward)  # bypass before the wider deny
    assert check(gate, pol, ip="10.9.9.9").status == 403
    assert check(gate, pol, ip="192.0.2.1").status == 401  # allow: on to the login
    allowlist = policy(mode="public", rules=(Rule.parse("allow", "192.0.2.0/24"),))
    assert isinstance(check(gate, allowlist, ip="192.0.2.7"), Forward)
    assert check(gate, allowlist, ip="198.51.100.7").status == 403  # outside an allowlist
    assert check(gate, allowlist, ip="::ffff:192.0.2.7").__class__ is Forward  # mapped IPv4 is IPv4
    with pytest.raises(ValueError):
        Rule.parse("permit", "10.0.0.0/8")


def test_bypass_by_path_prefix_secret_header_or_basic_password():
    gate = Gate(clock=Clock())
    pol = policy(bypass_paths=("/caldav/",), bypass_secret_digest=secret_digest("s3cret-app-token"))
    assert isinstance(check(gate, pol, b"/caldav/calendar.ics"), Forward)
    for sneaky in (b"/caldav/../admin", b"/caldav/%2e%2e/admin", b"/caldav%2f..%2fadmin", b"/caldavx"):
        assert check(gate, pol, sneaky).status == 401
    assert isinstance(check(gate, pol, headers=[(b"x-kakuremichi-bypass", b"s3cret-app-token")]), Forward)
    basic = b"Basic " + base64.b64encode(b"phone:s3cret-app-token")
    forwarded = check(gate, pol, headers=[(b"authorization", basic)])
    assert isinstance(forwarded, Forward) and (b"authorization", basic) in forwarded.headers
    assert check(gate, pol, headers=[(b"x-kakuremichi-bypass", b"wrong")]).status == 401


def test_identity_headers_from_the_client_are_always_dropped():
    gate = Gate(clock=Clock())
    forged = [(b"x-kakuremichi-user", b"admin"), (b"x-kakuremichi-email", b"boss@example.com"),
              (b"x-kakuremichi-groups", b"admins")]
    for pol in (None, policy(mode="public")):
        outcome = check(gate, pol, headers=forged)
        assert isinstance(outcome, Forward)
        assert not any(name.startswith(b"x-kakuremichi-") for name, _ in outcome.headers)


def sso_code(clock, email="ann@example.com", groups=(), tunnel="tunA", code_id="C1") -> bytes:
    return tokens.sign(KEY, "code", Claims(tunnel=tunnel, expires=clock.now + 60, issued=clock.now, id=code_id,
                                           user="sub-1", email=email, groups=groups)).encode()


def test_sso_code_is_good_once_and_only_for_allowed_users():
    clock = Clock()
    gate = Gate(clock=clock)
    pol = policy(mode="sso", password_hash="", allowed_emails=frozenset({"ann@example.com"}),
                 login_url="https://control.example.com/auth/login")
    sent = check(gate, pol, b"/page")
    assert sent.status == 303 and dict(sent.headers)[b"location"].startswith(
        b"https://control.example.com/auth/login?tunnel=tunA&next=https%3A%2F%2Fa.example.com%2Fpage")
    assert check(gate, policy(mode="sso", login_url=""), b"/page").status == 503  # no providers on control
    code = sso_code(clock)
    reply = check(gate, pol, b"/.kakuremichi/sso?code=" + code + b"&next=/page")
    assert reply.status == 303 and dict(reply.headers)[b"location"] == b"/page"
    opened = check(gate, pol, headers=with_cookie(cookie_of(reply)))
    assert isinstance(opened, Forward) and (b"x-kakuremichi-email", b"ann@example.com") in opened.headers
    assert check(gate, pol, b"/.kakuremichi/sso?code=" + code).status == 403  # used
    assert check(gate, pol, b"/.kakuremichi/sso?code=" + sso_code(clock, "bob@example.com", code_id="C2")
                 ).status == 403
    group_policy = policy(mode="sso", allowed_groups=frozenset({"family"}))
    assert check(gate, group_policy, b"/.kakuremichi/sso?code=" + sso_code(clock, "bob@x.org", ("family",), code_id="C3")
                 ).status == 303


def test_api_clients_get_json_and_next_never_leaves_the_site():
    gate = Gate(clock=Clock())
    outcome = gate.check(policy(), method=b"GET", target=b"/", headers=[(b"accept", b"application/json")],
                         client_ip="192.0.2.1", host="a.example.com", scheme="https")
    assert outcome.status == 401 and outcome.json
    for evil in ("//evil.example", "https://evil.example", "/\\evil.example"):
        reply = check(gate, policy(), b"/.kakuremichi/login", b"POST",
                      body=f"password=hunter2&next={evil}".encode())
        assert dict(reply.headers)[b"location"] == b"/"


def test_exactly_the_issued_sessions_count_as_logins_that_open_raw_ports():
    clock = Clock()
    gate = Gate(clock=clock)
    sso = policy(mode="sso", allowed_emails=frozenset({"ann@example.com"}))
    issued = [login(gate, policy()), check(gate, policy(), b"/.kakuremichi/share/" + share_link(clock)),
              check(gate, sso, b"/.kakuremichi/sso?code=" + sso_code(clock))]
    assert all(reply.code in LOGGED_IN for reply in issued)
    refused = [login(gate, policy(), "guess"), check(gate, policy()),
               check(gate, sso, b"/.kakuremichi/sso?code=" + sso_code(clock, "bob@example.com", code_id="C2")),
               check(gate, policy(), b"/.kakuremichi/logout")]
    assert not any(reply.code in LOGGED_IN for reply in refused)

"""The shared message schema: round trips, and strict decoding that names the bad field."""

import base64
import datetime
import json
import pathlib

import pytest

from kakuremichi import protocol as p

KEY = base64.b64encode(bytes(range(32))).decode()
CHALLENGE = p.AcmeChallenge("app.example.com", "tok_1-A", "tok_1-A.thumbprint")
NOT_AFTER = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)


# One of each message, in the order of protocol_v1_frames.jsonl: the frames the hand-written codec (before
# msgspec) produced for them, kept literally so that today's decoder is held to the wire of older peers.
MESSAGES = [
    p.Auth("agt_" + "x" * 43, "agent", KEY),
    p.Auth("gtw_" + "x" * 43, "gateway", KEY, "[2001:db8::1]:51820"),
    p.AuthSuccess("id", "gw1", 30.0), p.AuthError("invalid_key", "no"),
    p.Ping(), p.Pong(), p.Stopping(),
    p.StatusUpdate({"peers": {KEY: {"rxBytes": 1, "connected": True, "latency": 0.5}}, "routes": ["a", None]}),
    p.ConfigAck(3),
    p.ConfigUpdate(p.GatewayConfig(4, 51820, ["10.1.0.254"], [p.AgentPeer(KEY, ["10.1.0.2/32"])], [
        p.RouteConfig("app.example.com", "10.1.0.2", "10.1.0.254", "t1", tls_mode="off", force_https=True, exit=True,
                      agent_stopped=True)])),
    p.ConfigUpdate(p.GatewayConfig(6)),
    p.ConfigUpdate(p.AgentConfig(5, ["10.1.0.2"], [p.GatewayPeer(KEY, "203.0.113.1:51820", ["10.1.0.254/32"], 0)], [
        p.TunnelMapping("t1", "app.example.com", "10.1.0.2", "localhost:8080", enabled=False, http_proxy=True,
                        socks_proxy=True, gateway_ips=["10.1.0.254"])])),
    p.ChallengePublished(CHALLENGE), p.ChallengeWithdrawn("app.example.com", "tok_1-A"), p.ChallengeReady("tok_1-A"),
    p.Challenges([CHALLENGE]), p.ChallengesAck(["tok_1-A"]),
    p.LeaseRequest("app.example.com"), p.Lease("app.example.com", False, "gw2", 412.5),
    p.CertificateUpload("app.example.com", "CHAIN", "KEY", NOT_AFTER),
    p.CertificateInstall("app.example.com", "CHAIN", "KEY", NOT_AFTER),
]
# Messages and fields added since version 1 (optional for a peer: an old control ignores them, an old agent never
# sends them)
SINCE_V1 = [
    p.TunnelsDeclared([p.DeclaredTunnel("app.example.com", "localhost:8080", "off", True)]),
    p.DeclarationRefused({"app.example.com": "not delegated"}),
    p.AccessGranted("t1", "198.51.100.7"),
    p.BackendHealth("b1", "unhealthy", "HTTP status 500"),
    p.ConfigUpdate(p.GatewayConfig(7, routes=[p.RouteConfig("app.example.com", "10.1.0.2", "10.1.0.254", "t1", backends=[
        p.RouteBackend("b1", "10.1.0.2", weight=3), p.RouteBackend("b2", "10.1.0.3", priority=1, health="healthy")],
        affinity=True)])),
    p.ConfigUpdate(p.AgentConfig(8, ["10.1.0.3"], tunnels=[p.TunnelMapping(
        "t1", "app.example.com", "10.1.0.3", "localhost:8080", backend_id="b2",
        health_check=p.HealthCheck("http", "/healthz", expect_status=204))])),
]
V1_FRAMES = (pathlib.Path(__file__).parent / "protocol_v1_frames.jsonl").read_text().splitlines()


def test_every_message_round_trips():
    assert {m.type for m in MESSAGES + SINCE_V1} == set(p._TYPES)
    for message in MESSAGES + SINCE_V1:
        assert p.decode(message.to_json()) == message
        assert p.decode(p.decode(message.to_json()).to_json()) == message  # decoded values encode again


@pytest.mark.parametrize("message, frame", list(zip(MESSAGES, V1_FRAMES, strict=True)), ids=[m.type for m in MESSAGES])
def test_frames_of_the_first_codec_decode_and_are_what_the_encoder_sends(message, frame):
    """An old peer talks to a new one: its frames decode, and what is sent back reads as the same object."""
    assert p.decode(frame) == message
    assert json.loads(message.to_json()) == json.loads(frame)


def test_unknown_keys_are_ignored_at_every_level():
    frame = json.loads(V1_FRAMES[9])  # a gateway config_update
    frame["since"] = 2
    frame["config"]["ipv6"] = True
    frame["config"]["routes"][0]["http3"] = {"on": False}
    assert p.decode(json.dumps(frame)) == MESSAGES[9]


def test_values_are_checked_where_they_arrive_not_where_they_are_built():
    route = p.RouteConfig("App.Example.COM.", "10.1.0.2", "10.1.0.254", "t1")  # control built it from checked rows
    assert route.domain == "App.Example.COM."
    decoded = p.decode(p.ConfigUpdate(p.GatewayConfig(1, routes=[route])).to_json())
    assert decoded.config.routes[0].domain == "app.example.com"


def test_certificate_times_arrive_in_utc():
    frame = json.loads(V1_FRAMES[-1])
    frame["notAfter"] = "2030-01-02T05:04:05+02:00"
    assert p.decode(json.dumps(frame)).not_after == NOT_AFTER
    assert p.decode(json.dumps(frame)).not_after.tzinfo == datetime.timezone.utc


def test_auth_repr_hides_the_api_key():
    assert "gtw_secret" not in repr(p.Auth("gtw_secret", "gateway", KEY))


def test_certificate_repr_hides_the_private_key():
    for cls in (p.CertificateUpload, p.CertificateInstall):
        assert "SECRET" not in repr(cls("app.example.com", "CHAIN", "SECRET", NOT_AFTER))


@pytest.mark.parametrize("frame, complaint", [
    ("not json", "not JSON"),
    ("[1]", "object"),
    ('{"type": "hello"}', "unknown message type"),
    ('{"kind": "ping"}', "^frame: .*`type`"),
    ('{"type": "status_update", "stats": {"a": {"b": {"c": {"d": {}}}}}}', "^status_update: stats: nest deeper"),
    ('{"type": "auth", "role": "gateway", "publicKey": "%s", "version": 1}' % KEY, "auth: .*apiKey"),
    ('{"type": "auth", "apiKey": "k", "role": "boss", "publicKey": "%s", "version": 1}' % KEY, "role"),
    ('{"type": "auth", "apiKey": "k", "role": "agent", "publicKey": "short", "version": 1}', "publicKey"),
    ('{"type": "auth", "apiKey": "k", "role": "agent", "publicKey": "%s", "version": true}' % KEY, "auth: version: .*int"),
    ('{"type": "auth", "apiKey": "k", "role": "gateway", "publicKey": "%s", "version": 1, '
     '"publicEndpoint": "host:99999"}' % KEY, "from 1 to 65535"),
    ('{"type": "config_update", "version": 1, "role": "agent", "config": {"addresses": ["10.1.0.999"], '
     '"gateways": [], "tunnels": []}}', "not an IP address"),
    ('{"type": "config_update", "version": 1, "role": "gateway", "config": {"addresses": [], "peers": [], '
     '"routes": [{"domain": "a.example", "agentIp": "10.1.0.2", "gatewayIp": "10.1.0.254", "tunnelId": "t", '
     '"tlsMode": "maybe"}]}}', r"config_update: config\.routes\[0\]\.tlsMode"),
    ('{"type": "config_ack"}', "config_ack: .*version"),
    ('{"type": "acme_challenge_published", "domain": "a", "token": "../etc", "keyAuthorization": "x"}', "base64url"),
    ('{"type": "acme_lease", "domain": "a", "granted": "yes", "holder": "g", "expiresIn": 1}', "granted: .*bool"),
    ('{"type": "certificate", "domain": "a", "chain": "c", "key": "k", "notAfter": "2030-01-01T00:00:00"}',
     "notAfter: .*timezone"),
    ('{"type": "certificate_upload", "domain": "a", "chain": "c", "key": "k", "notAfter": "soon"}', "notAfter: .*RFC3339"),
])
def test_bad_frames_name_the_problem(frame, complaint):
    with pytest.raises(p.ProtocolError, match=complaint):
        p.decode(frame)

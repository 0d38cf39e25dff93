"""The shared message schema: round trips, and strict decoding that names the bad field."""

import base64
import datetime

import pytest

from kakuremichi import protocol as p

KEY = base64.b64encode(bytes(range(32))).decode()
CHALLENGE = p.AcmeChallenge("app.example.com", "tok_1-A", "tok_1-A.thumbprint")
NOT_AFTER = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)


def test_every_message_round_trips():
    gateway = p.GatewayConfig(
        version=3, wireguard_port=51820, addresses=["10.1.0.254"],
        peers=[p.AgentPeer(KEY, ["10.1.0.2/32"])],
        routes=[p.RouteConfig("app.example.com", "10.1.0.2", "10.1.0.254", "t1", tls_mode="off", force_https=True)])
    agent = p.AgentConfig(
        version=4, addresses=["10.1.0.2"],
        gateways=[p.GatewayPeer(KEY, "[2001:db8::1]:51820", ["10.1.0.254/32"])],
        tunnels=[p.TunnelMapping("t1", "app.example.com", "10.1.0.2", "localhost:8080", enabled=False)])
    messages = [
        p.Auth("gtw_x", "gateway", KEY, "203.0.113.7:51820"), p.AuthSuccess("id", "gw1", 30.0),
        p.AuthError("invalid_key", "no"), p.Ping(), p.Pong(), p.StatusUpdate({"peers": 2}),
        p.ConfigUpdate(gateway), p.ConfigUpdate(agent), p.ConfigAck(4),
        p.LeaseRequest("app.example.com"), p.Lease("app.example.com", False, "gw2", 412.5),
        p.ChallengePublished(CHALLENGE), p.ChallengeWithdrawn("app.example.com", "tok_1-A"),
        p.ChallengeReady("tok_1-A"), p.Challenges([CHALLENGE]), p.ChallengesAck(["tok_1-A"]),
        p.CertificateUpload("app.example.com", "CHAIN", "KEY", NOT_AFTER),
        p.CertificateInstall("app.example.com", "CHAIN", "KEY", NOT_AFTER),
    ]
    for message in messages:
        assert p.decode(message.to_json()) == message


def test_auth_repr_hides_the_api_key():
    assert "gtw_secret" not in repr(p.Auth("gtw_secret", "gateway", KEY))


def test_certificate_repr_hides_the_private_key():
    for cls in (p.CertificateUpload, p.CertificateInstall):
        assert "SECRET" not in repr(cls("app.example.com", "CHAIN", "SECRET", NOT_AFTER))


@pytest.mark.parametrize("frame, complaint", [
    ("not json", "not JSON"),
    ("[1]", "JSON object"),
    ('{"type": "hello"}', "unknown message type"),
    ('{"type": "auth", "role": "gateway", "publicKey": "%s", "version": 1}' % KEY, "'apiKey'"),
    ('{"type": "auth", "apiKey": "k", "role": "boss", "publicKey": "%s", "version": 1}' % KEY, "role"),
    ('{"type": "auth", "apiKey": "k", "role": "agent", "publicKey": "short", "version": 1}', "publicKey"),
    ('{"type": "auth", "apiKey": "k", "role": "agent", "publicKey": "%s", "version": true}' % KEY, "integer"),
    ('{"type": "auth", "apiKey": "k", "role": "gateway", "publicKey": "%s", "version": 1, '
     '"publicEndpoint": "host:99999"}' % KEY, "from 1 to 65535"),
    ('{"type": "config_update", "version": 1, "role": "agent", "config": {"addresses": ["10.1.0.999"], '
     '"gateways": [], "tunnels": []}}', "not an IP address"),
    ('{"type": "config_update", "version": 1, "role": "gateway", "config": {"addresses": [], "peers": [], '
     '"routes": [{"domain": "a", "agentIp": "10.1.0.2", "gatewayIp": "10.1.0.254", "tunnelId": "t", '
     '"tlsMode": "maybe"}]}}', "tlsMode"),
    ('{"type": "config_ack"}', "'version'"),
    ('{"type": "acme_challenge_published", "domain": "a", "token": "../etc", "keyAuthorization": "x"}', "base64url"),
    ('{"type": "acme_lease", "domain": "a", "granted": "yes", "holder": "g", "expiresIn": 1}', "boolean"),
    ('{"type": "certificate", "domain": "a", "chain": "c", "key": "k", "notAfter": "2030-01-01T00:00:00"}',
     "time zone"),
    ('{"type": "certificate_upload", "domain": "a", "chain": "c", "key": "k", "notAfter": "soon"}', "ISO 8601"),
])
def test_bad_frames_name_the_problem(frame, complaint):
    with pytest.raises(p.ProtocolError, match=complaint):
        p.decode(frame)

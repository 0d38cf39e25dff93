"""Fuzzing control's protocol: every message decoder fed random frames, random JSON objects of each type and
valid messages mutated; only ProtocolError may come out, and a frame that decodes re-encodes to the same
message. Then a running control's /ws fed arbitrary frames after auth: the session answers on or closes
cleanly, and nothing escapes its handler."""

from __future__ import annotations

import datetime
import json
import logging
import tempfile

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trio_websocket import ConnectionClosed

from kakuremichi import protocol
from kakuremichi.control.state import Settings
from tests.control.conftest import ADMIN, connect, public_key, start_control

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
WS_FUZZ = settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
TYPES = sorted(protocol._TYPES)
KEY, ENDPOINT = public_key(), "203.0.113.1:51820"
NOW = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)
VALID = [
    protocol.Auth("agt_" + "x" * 43, "agent", KEY),
    protocol.Auth("gtw_" + "x" * 43, "gateway", KEY, ENDPOINT),
    protocol.AuthSuccess("id", "name", 30.0), protocol.AuthError("invalid_key", "no"),
    protocol.Ping(), protocol.Pong(), protocol.Stopping(), protocol.StatusUpdate({"peers": {KEY: {"rxBytes": 1, "connected": True}}}),
    protocol.ConfigAck(3),
    protocol.ConfigUpdate(protocol.GatewayConfig(4, 51820, ["10.1.0.254"], [protocol.AgentPeer(KEY, ["10.1.0.2/32"])],
                                                 [protocol.RouteConfig("a.example", "10.1.0.2", "10.1.0.254", "t1", agent_stopped=True)])),
    protocol.ConfigUpdate(protocol.AgentConfig(5, ["10.1.0.2"], [protocol.GatewayPeer(KEY, ENDPOINT, ["10.1.0.254/32"])],
                                               [protocol.TunnelMapping("t1", "a.example", "10.1.0.2", "localhost:80",
                                                                       gateway_ips=["10.1.0.254"])])),
    protocol.ChallengePublished(protocol.AcmeChallenge("a.example", "tok", "tok.thumb")),
    protocol.ChallengeWithdrawn("a.example", "tok"), protocol.ChallengeReady("tok"),
    protocol.Challenges([protocol.AcmeChallenge("a.example", "tok", "tok.thumb")]), protocol.ChallengesAck(["tok"]),
    protocol.LeaseRequest("a.example"), protocol.Lease("a.example", True, "gw1", 600.0),
    protocol.CertificateUpload("a.example", "-----BEGIN CERTIFICATE-----", "-----BEGIN PRIVATE KEY-----", NOW),
    protocol.CertificateInstall("a.example", "chain", "key", NOW),
    protocol.TunnelsDeclared([protocol.DeclaredTunnel("a.example", "localhost:80", "off")]),
    protocol.DeclarationRefused({"a.example": "not delegated"}),
    protocol.BackendHealth("b1", "unhealthy", "HTTP status 500"),
    protocol.ConfigUpdate(protocol.GatewayConfig(6, routes=[protocol.RouteConfig(
        "a.example", "10.1.0.2", "10.1.0.254", "t1", backends=[protocol.RouteBackend("b1", "10.1.0.3", weight=3)],
        affinity=True)])),
    protocol.ConfigUpdate(protocol.GatewayConfig(7, ports=[protocol.PortRoute(
        "t2", "tcp", 2222, "10.1.0.2", "10.1.0.254", proxy_protocol="v2", max_connections_per_source=4,
        login_tunnel_id="t1", granted={"198.51.100.7": 1.9e9},
        backends=[protocol.RouteBackend("b2", "10.1.0.3", weight=3)], affinity=True)])),
    protocol.AccessGranted("t1", "198.51.100.7"),
]
assert {m.type for m in VALID} == set(TYPES)
assert all(protocol.decode(m.to_json()) == m for m in VALID)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70) | st.floats(allow_nan=True) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=30)


def decodes_or_refuses(frame: str | bytes) -> None:
    """Only ProtocolError comes out; what decodes encodes again to the same message."""
    try:
        message = protocol.decode(frame)
    except protocol.ProtocolError:
        return
    assert protocol.decode(message.to_json()) == message


@FUZZ
@given(st.binary(max_size=300) | st.text(max_size=300))
def test_random_frames(frame):
    decodes_or_refuses(frame)


@FUZZ
@given(st.sampled_from(TYPES), st.dictionaries(st.sampled_from(
    ["apiKey", "role", "publicKey", "publicEndpoint", "version", "stats", "config", "challenges", "tokens", "token",
     "domain", "keyAuthorization", "chain", "key", "notAfter", "expiresIn", "granted", "holder", "code", "message",
     "clientId", "name", "heartbeatInterval"]), json_values, max_size=8))
def test_random_objects_of_every_type(kind, fields):
    decodes_or_refuses(json.dumps({**fields, "type": kind}))


def _paths(value, path=()):
    """Every place inside a decoded JSON value, as a key path."""
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*path, index))


@FUZZ
@given(st.sampled_from(VALID), st.data())
def test_valid_messages_mutated(message, data):
    obj = json.loads(message.to_json())
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(list(_paths(obj))[1:]))
        parent = obj
        for step in path[:-1]:
            parent = parent[step]
        if data.draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = data.draw(json_values)
        if path[:1] == ("type",):
            break
    decodes_or_refuses(json.dumps(obj))
    decodes_or_refuses(json.dumps(obj)[: data.draw(st.integers(0, 400))])  # cut anywhere


def test_deep_nesting_is_a_protocol_error():
    decodes_or_refuses('{"type": "ping", "x": ' + "[" * 100000 + "]" * 100000 + "}")


frames_after_auth = st.lists(
    st.text(max_size=200) | st.binary(max_size=100)
    | st.builds(lambda kind, fields: json.dumps({**fields, "type": kind}), st.sampled_from(TYPES),
                st.dictionaries(st.text(max_size=10), json_values, max_size=4))
    | st.builds(lambda message: message.to_json(), st.sampled_from(VALID)),
    min_size=1, max_size=25)


@WS_FUZZ
@given(st.sampled_from(["agent", "gateway"]), frames_after_auth)
def test_arbitrary_frames_after_auth_never_escape_the_session(role, frames):
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = records.append
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        trio.run(_feed, role, frames)
    finally:
        root.removeHandler(handler)
    assert not records, [r.getMessage() for r in records]


async def _feed(role: str, frames: list) -> None:
    with tempfile.TemporaryDirectory() as data_dir:
        async with trio.open_nursery() as nursery:
            control = await start_control(nursery, Settings(listen="127.0.0.1:0", data_dir=data_dir,
                                                            admin_token=ADMIN, heartbeat_interval=5.0))
            async with control.api:
                agent = await control.create("agents", name="a")
                gateway = await control.create("gateways", name="g")
                await control.create("tunnels", domain="a.example", agentId=agent["id"], target="localhost:80")
                key = agent["apiKey"] if role == "agent" else gateway["apiKey"]
                async with connect(control, key, role, endpoint=ENDPOINT if role == "gateway" else None) as client:
                    try:
                        for frame in frames:
                            await client.ws.send_message(frame)
                        await client.send(protocol.Ping())
                        with trio.fail_after(5):
                            while not isinstance(protocol.decode(await client.ws.get_message()), protocol.Pong):
                                pass
                    except ConnectionClosed as closed:  # a clean close with one of control's codes
                        assert closed.reason.code in (1000, 1009, 4000, 4004, 4005), closed.reason
                assert (await control.api.get("/healthz")).status_code == 200
            nursery.cancel_scope.cancel()

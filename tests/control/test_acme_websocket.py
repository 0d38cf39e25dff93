"""ACME coordination on /ws, frame by frame: leases, challenges relayed (and confirmed only once the other
gateways answer them), certificates kept and pushed to every gateway — never echoed, never in the REST API."""

from __future__ import annotations

import datetime
import logging

import pytest
import trio
from pony.orm import db_session
from trio_websocket import open_websocket_url

from kakuremichi import protocol
from kakuremichi.control.models import open_database
from tests.control.conftest import WsClient, connect, public_key
from tests.gateway.testca import TestCA

DOMAIN = "app.example.com"

pytestmark = pytest.mark.both_databases


async def setup(control) -> dict[str, str]:
    agent = await control.create("agents", name="home")
    keys = {name: (await control.create("gateways", name=name))["apiKey"] for name in ("gw1", "gw2", "gw3")}
    await control.create("tunnels", domain=DOMAIN, agentId=agent["id"], target="localhost:8080", tlsMode="acme")
    return keys


def upload(ca: TestCA) -> protocol.CertificateUpload:
    cert, key = ca.issue(DOMAIN, days=90)
    return protocol.CertificateUpload(DOMAIN, cert.decode(), key.decode(),
                                      datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=90))


def stored_certificates(control) -> int:
    db = open_database(control.settings.database)
    try:
        with db_session:
            return db.Certificate.select().count()
    finally:
        db.disconnect()


async def test_leases_challenges_and_certificates_between_gateways(control, caplog):
    caplog.set_level(logging.DEBUG)
    keys = await setup(control)
    async with connect(control, keys["gw1"], "gateway") as gw1, connect(control, keys["gw2"], "gateway") as gw2:
        await gw1.send(protocol.LeaseRequest(DOMAIN))
        granted = await gw1.receive()
        assert granted.granted and granted.holder == "gw1" and granted.expires_in == pytest.approx(600, abs=2)
        await gw2.send(protocol.LeaseRequest(DOMAIN))
        refused = await gw2.receive()
        assert not refused.granted and refused.holder == "gw1"
        await gw2.send(protocol.LeaseRequest("elsewhere.example.com"))  # not its domain: refused, nobody holds it
        outright = await gw2.receive()
        assert not outright.granted and outright.holder == "" and outright.expires_in == 600

        # A challenge reaches the other gateway; the publisher hears "ready" only once it is answered there.
        challenge = protocol.AcmeChallenge(DOMAIN, "tok_1", "tok_1.thumbprint")
        await gw1.send(protocol.ChallengePublished(challenge))
        assert await gw2.receive() == protocol.Challenges([challenge])
        with pytest.raises(trio.TooSlowError):
            await gw1.receive(timeout=0.3)
        await gw2.send(protocol.ChallengesAck(["tok_1"]))
        assert await gw1.receive() == protocol.ChallengeReady("tok_1")
        await gw1.send(protocol.ChallengeWithdrawn(DOMAIN, "tok_1"))
        assert await gw2.receive() == protocol.Challenges([])

        # A certificate goes to the others, not back to its uploader; unusable or older ones are refused.
        ca = TestCA()
        certificate = upload(ca)
        await gw1.send(certificate)
        pushed = await gw2.receive()
        assert isinstance(pushed, protocol.CertificateInstall) and pushed.key_pem == certificate.key_pem
        mismatched = protocol.CertificateUpload(DOMAIN, certificate.chain_pem, ca.issue(DOMAIN)[1].decode(),
                                                certificate.not_after)
        await gw2.send(mismatched)
        older_cert, older_key = ca.issue(DOMAIN, days=30)
        await gw2.send(protocol.CertificateUpload(DOMAIN, older_cert.decode(), older_key.decode(),
                                                  certificate.not_after))
        for client in (gw1, gw2):
            await client.send(protocol.Ping())
            await client.receive_pong()  # nothing else was pushed to either
    refusals = [r.fields["error"] for r in caplog.records if r.getMessage() == "refused an uploaded certificate"]
    assert len(refusals) == 1 and "does not belong" in refusals[0]

    # A gateway connecting later gets the stored certificate before its routes, so it orders nothing.
    async with open_websocket_url(control.ws_url) as ws:
        gw3 = WsClient(ws)
        await gw3.send(protocol.Auth(keys["gw3"], "gateway", public_key()))
        assert isinstance(await gw3.receive(), protocol.AuthSuccess)
        first = await gw3.receive()
        assert isinstance(first, protocol.CertificateInstall) and first.chain_pem == certificate.chain_pem
        assert (await gw3.config()).routes[0].domain == DOMAIN

    for kind in ("gateways", "tunnels"):
        assert "PRIVATE KEY" not in (await control.api.get(f"/api/{kind}")).text
    # Once the tunnel is gone, control keeps its key no longer.
    tunnel = (await control.api.get("/api/tunnels")).json()["items"][0]
    assert stored_certificates(control) == 1
    await control.api.delete(f"/api/tunnels/{tunnel['id']}")
    assert stored_certificates(control) == 0
    assert not [r for r in caplog.records if "PRIVATE KEY" in r.getMessage() + str(getattr(r, "fields", ""))]


async def test_an_offline_holder_loses_its_lease_at_once(control):
    keys = await setup(control)
    async with connect(control, keys["gw1"], "gateway") as gw1:
        await gw1.send(protocol.LeaseRequest(DOMAIN))
        assert (await gw1.receive()).granted
    with trio.fail_after(5):
        while (await control.api.get("/api/gateways")).json()["items"][0]["status"] != "offline":
            await trio.sleep(0.05)
    async with connect(control, keys["gw2"], "gateway") as gw2:
        await gw2.send(protocol.LeaseRequest(DOMAIN))
        lease = await gw2.receive()
        assert lease.granted and lease.holder == "gw2"


async def test_deleting_an_agent_drops_its_tunnels_certificates(control):
    keys = await setup(control)
    async with connect(control, keys["gw1"], "gateway") as gw1, connect(control, keys["gw2"], "gateway") as gw2:
        await gw1.send(protocol.LeaseRequest(DOMAIN))
        assert (await gw1.receive()).granted
        await gw1.send(upload(TestCA()))
        assert isinstance(await gw2.receive(), protocol.CertificateInstall)
    assert stored_certificates(control) == 1
    agent = (await control.api.get("/api/agents")).json()["items"][0]
    assert (await control.api.delete(f"/api/agents/{agent['id']}")).status_code == 204
    assert stored_certificates(control) == 0  # its tunnels went with it, and so did their keys

"""The certificate status on tunnels in the REST API: what a gateway uploaded, described from the stored PEM,
with the lease to renew it — and never the private key."""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from kakuremichi import protocol
from kakuremichi.control.openapi import DOCUMENT
from kakuremichi.control.web import certificates as web_certificates
from tests.control.conftest import connect
from tests.gateway.testca import TestCA

DOMAIN = "app.example.com"


def iso(moment: datetime.datetime) -> str:
    return moment.replace(tzinfo=None).isoformat() + "Z"


def key_traces(key_pem: bytes) -> list[str]:
    """Every form in which the key could leak: its PEM marker, its base64 body (whole and line by line) and
    its DER bytes in hex."""
    lines = key_pem.decode().strip().splitlines()
    der = serialization.load_pem_private_key(key_pem, None).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return ["PRIVATE KEY", "".join(lines[1:-1]), *lines[1:-1], der.hex(), der.hex().upper()]


async def test_tunnels_describe_the_stored_certificate_never_its_key(control):
    agent = await control.create("agents", name="home")
    gateway = await control.create("gateways", name="gw1")
    tunnel = await control.create("tunnels", domain=DOMAIN, agentId=agent["id"], target="localhost:8080")
    other = await control.create("tunnels", domain="dev.example.com", agentId=agent["id"], target="localhost:8081",
                                 tlsMode="self-signed")
    assert tunnel["certificate"] is None and other["certificate"] is None  # none obtained yet

    cert_pem, key_pem = TestCA().issue(DOMAIN, "www.example.com", days=90)
    leaf = x509.load_pem_x509_certificate(cert_pem)
    async with connect(control, gateway["apiKey"], "gateway") as gw1:
        await gw1.send(protocol.LeaseRequest(DOMAIN))
        lease = await gw1.receive()
        assert lease.granted
        await gw1.send(protocol.CertificateUpload(DOMAIN, cert_pem.decode(), key_pem.decode(),
                                                  leaf.not_valid_after_utc))
        await gw1.send(protocol.Ping())
        await gw1.receive_pong()  # the upload before it is stored
        single = await control.api.get(f"/api/tunnels/{tunnel['id']}")
        listed = await control.api.get("/api/tunnels")

    certificate = single.json()["certificate"]
    expires_at = certificate["lease"].pop("expiresAt")
    assert certificate == {
        "issuer": "kakuremichi test CA", "notBefore": iso(leaf.not_valid_before_utc),
        "notAfter": iso(leaf.not_valid_after_utc), "daysLeft": 89,  # issued an hour ago for 90 days
        "fingerprintSha256": leaf.fingerprint(hashes.SHA256()).hex(":").upper(),
        "domains": [DOMAIN, "www.example.com"], "lease": {"holder": "gw1"}}
    remaining = datetime.datetime.fromisoformat(expires_at.replace("Z", "+00:00")) - datetime.datetime.now(datetime.UTC)
    assert expires_at.endswith("Z") and 0 < remaining.total_seconds() <= lease.expires_in
    items = {item["domain"]: item for item in listed.json()["items"]}
    assert items[DOMAIN]["certificate"]["fingerprintSha256"] == certificate["fingerprintSha256"]
    assert items["dev.example.com"]["certificate"] is None  # not an ACME tunnel
    schema = DOCUMENT["components"]["schemas"]
    assert set(items[DOMAIN]) == set(schema["Tunnel"]["properties"])
    assert set(certificate) == set(schema["Certificate"]["properties"])

    # Only ACME tunnels share a certificate through control: another mode shows none, even if one is kept.
    custom = await control.api.patch(f"/api/tunnels/{tunnel['id']}", json={"tlsMode": "custom"})
    assert custom.json()["certificate"] is None
    back = await control.api.patch(f"/api/tunnels/{tunnel['id']}", json={"tlsMode": "acme"})
    assert back.json()["certificate"]["domains"] == [DOMAIN, "www.example.com"]

    for response in (single, listed, custom, back):
        assert response.status_code == 200
        assert not [trace for trace in key_traces(key_pem) if trace in response.text]


def test_the_web_badge_words_the_days_left():
    def badge(days_left: int | None, mode: str = "acme") -> tuple[str, str] | None:
        certificate = None if days_left is None else {"daysLeft": days_left, "notAfter": "2030-01-31T12:00:00Z"}
        shown = web_certificates.badge({"tlsMode": mode, "certificate": certificate})
        return shown and (shown["style"], " ".join(filter(None, (shown["text"], shown["until"]))))

    assert badge(None) == ("none", "none yet")
    assert badge(-1) == ("expired", "expired")
    assert badge(0) == ("warning", "expiring today")
    assert badge(1) == ("warning", "expiring in 1 day")
    assert badge(13) == ("warning", "expiring in 13 days")
    assert badge(14) == ("valid", "valid until 2030-01-31T12:00:00Z")
    assert badge(None, "self-signed") is None  # control keeps no certificate for other modes
    assert web_certificates.utc_time("2030-01-31T12:05:09Z") == "2030-01-31 12:05 UTC"

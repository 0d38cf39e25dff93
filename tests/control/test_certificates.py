"""Control's side of ACME across gateways, on a real database with a fake clock: who holds a domain's lease,
which challenges each gateway must answer, which uploaded certificates are kept, and the schema upgrade."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from pony.orm import IntegrityError, db_session

from kakuremichi import protocol
from kakuremichi.certpair import CertificateError
from kakuremichi.control import certificates as c
from kakuremichi.control.models import SCHEMA_VERSION, open_database
from kakuremichi.control.sealing import Sealer
from tests.gateway.testca import TestCA

T0 = datetime.datetime(2030, 1, 1, 12, 0, 0)
LEASE = 600.0

SEALER = Sealer(bytes(32), "a test")


def seconds(n: float) -> datetime.datetime:
    return T0 + datetime.timedelta(seconds=n)


@pytest.fixture
def db(tmp_path):
    db = open_database(f"sqlite:///{tmp_path}/control.sqlite")
    with db_session:
        agent = db.Agent(name="home", api_key_hash="a")
        gateways = [db.Gateway(id=name, name=name, api_key_hash=name, status="online") for name in ("gw1", "gw2", "gw3")]
        for i, (domain, mode) in enumerate([("app.test", "acme"), ("plain.test", "off")], 1):
            tunnel = db.Tunnel(domain=domain, agent=agent, target="127.0.0.1:80", subnet=f"10.{i}.0.0/24",
                               agent_ip=f"10.{i}.0.2", tls_mode=mode)
            for n, gateway in enumerate(gateways[:2]):  # gw3 serves nothing
                db.TunnelGatewayIp(tunnel=tunnel, gateway=gateway, ip=f"10.{i}.0.{254 - n}")
    return db


@db_session
def lease(db, gateway: str, at: float) -> c.LeaseDecision:
    return c.request_lease(db, gateway, "app.test", seconds(at), LEASE)


def challenges(db, gateway: str, at: datetime.datetime) -> list[protocol.AcmeChallenge]:
    return c.challenges_for(db, gateway, c.served_domains(db, gateway), at)


def serials(db, gateway: str) -> dict[str, str]:
    return c.certificate_serials(db, c.served_domains(db, gateway))


@db_session
def set_status(db, gateway: str, status: str) -> None:
    db.Gateway[gateway].status = status


def test_one_gateway_orders_until_its_lease_expires(db):
    first = lease(db, "gw1", 0)
    assert first == c.LeaseDecision(True, "gw1", seconds(LEASE))
    refused = lease(db, "gw2", 10)
    assert not refused.granted and refused.holder == "gw1" and refused.expires_at == seconds(LEASE)
    assert lease(db, "gw1", 300) == c.LeaseDecision(True, "gw1", seconds(300 + LEASE))  # the holder extends it
    assert not lease(db, "gw2", 300 + LEASE - 1).granted
    assert lease(db, "gw2", 300 + LEASE) == c.LeaseDecision(True, "gw2", seconds(300 + 2 * LEASE))
    assert not lease(db, "gw1", 300 + LEASE + 1).granted


def test_the_lease_passes_on_at_once_when_its_holder_goes_offline(db):
    assert lease(db, "gw1", 0).granted
    assert not lease(db, "gw2", 1).granted
    set_status(db, "gw1", "offline")
    assert lease(db, "gw2", 2) == c.LeaseDecision(True, "gw2", seconds(2 + LEASE))
    set_status(db, "gw1", "online")  # back: it waits for gw2's lease now
    assert not lease(db, "gw1", 3).granted


def test_a_deleted_holder_frees_the_lease(db):
    assert lease(db, "gw1", 0).granted
    with db_session:
        db.Gateway["gw1"].delete()
    assert lease(db, "gw2", 1).granted


def test_only_acme_domains_routed_to_a_gateway_are_its_to_share(db):
    with db_session:
        assert c.served_domains(db, "gw1") == {"app.test"}
        assert c.served_domains(db, "gw3") == set()


def test_a_domain_the_gateway_does_not_serve_with_acme_is_never_leased_to_it(db):
    with db_session:
        assert c.request_lease(db, "gw3", "app.test", seconds(0), LEASE) == c.NotServed("app.test")  # not routed
        assert c.request_lease(db, "gw1", "plain.test", seconds(0), LEASE) == c.NotServed("plain.test")  # TLS off
        assert c.request_lease(db, "gw1", "nowhere.test", seconds(0), LEASE) == c.NotServed("nowhere.test")
        assert db.AcmeLease.select().count() == 0
    assert lease(db, "gw1", 1).granted  # and it holds nothing that keeps the gateways that serve it waiting


def test_a_challenge_waits_for_the_other_online_gateways_serving_its_domain(db):
    challenge = protocol.AcmeChallenge("app.test", "tok-1", "tok-1.thumb")
    with db_session:
        assert c.unconfirmed(db, challenge, "gw1") == ["gw2"]  # not gw3: it does not serve app.test
        c.record_acks(db, "gw2", ["tok-0"])
        assert c.unconfirmed(db, challenge, "gw1") == ["gw2"]
        c.record_acks(db, "gw2", ["tok-1", "tok-0"])
        assert c.unconfirmed(db, challenge, "gw1") == []
        c.forget_acks(db, "gw2")  # it reconnected and answers nothing yet
        assert c.unconfirmed(db, challenge, "gw1") == ["gw2"]
    set_status(db, "gw2", "offline")
    with db_session:
        assert c.unconfirmed(db, challenge, "gw1") == []


def test_challenges_go_to_the_other_gateways_until_withdrawn_or_stale(db):
    challenge = protocol.AcmeChallenge("app.test", "tok-1", "tok-1.thumb")
    with db_session:
        c.publish_challenge(db, "gw1", challenge, seconds(0))
    with db_session:
        assert challenges(db, "gw2", seconds(1)) == [challenge]
        assert challenges(db, "gw1", seconds(1)) == []  # the publisher answers it already
        assert challenges(db, "gw3", seconds(1)) == []  # does not serve the domain
        assert challenges(db, "gw2", T0 + c.CHALLENGE_TTL) == []  # its gateway died mid-order
        assert not c.withdraw_challenge(db, "gw2", "tok-1")  # only the publisher withdraws it
    with db_session:
        assert c.withdraw_challenge(db, "gw1", "tok-1")
    with db_session:
        assert challenges(db, "gw2", seconds(2)) == []


def upload(ca: TestCA, names: str = "app.test", days: int = 90, wrong_key: bool = False):
    """What a gateway uploads for app.test: a certificate for `names` and (normally) its key."""
    cert, key = ca.issue(names, days=days)
    if wrong_key:
        key = ca.issue(names)[1]
    return protocol.CertificateUpload("app.test", cert.decode(), key.decode(),
                                      datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc))


def test_only_a_usable_newer_certificate_replaces_the_stored_one(db):
    ca = TestCA()
    older, newer = upload(ca, days=30), upload(ca, days=90)
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    with db_session:
        assert c.store_certificate(db, SEALER, "gw1", older, now) is not None
        serial = c.store_certificate(db, SEALER, "gw2", newer, now)
        assert serial is not None
        assert c.store_certificate(db, SEALER, "gw1", older, now) is None  # late, older: the renewal stays
        assert serials(db, "gw1") == {"app.test": serial} == serials(db, "gw2")
        assert serials(db, "gw3") == {}
        assert c.certificate(db, SEALER, "app.test").key_pem == newer.key_pem
        with pytest.raises(CertificateError, match="does not belong"):
            c.store_certificate(db, SEALER, "gw1", upload(ca, wrong_key=True), now)
        with pytest.raises(CertificateError, match="is for other.test"):
            c.store_certificate(db, SEALER, "gw1", upload(ca, "other.test"), now)
        with pytest.raises(CertificateError, match="expired"):
            c.store_certificate(db, SEALER, "gw1", upload(ca, days=400), now + datetime.timedelta(days=500))


def test_the_summary_counts_days_from_now_and_shows_only_a_live_lease(db):
    ca = TestCA()
    stored = upload(ca, days=30)
    not_after = x509.load_pem_x509_certificate(stored.chain_pem.encode()).not_valid_after_utc.replace(tzinfo=None)
    with db_session:
        assert c.summary(db, "app.test", T0) is None  # nothing stored yet
        c.store_certificate(db, SEALER, "gw1", stored, not_after - datetime.timedelta(days=1))
        lease = c.request_lease(db, "gw2", "app.test", not_after - datetime.timedelta(days=10), LEASE)
        at_lease = c.summary(db, "app.test", not_after - datetime.timedelta(days=10))
        assert at_lease.lease == lease and at_lease.days_left(not_after - datetime.timedelta(days=10)) == 10
        assert at_lease.issuer == "kakuremichi test CA" and at_lease.domains == ("app.test",)
        later = not_after - datetime.timedelta(days=10) + datetime.timedelta(seconds=LEASE)
        assert c.summary(db, "app.test", later).lease is None  # it ran out
        assert at_lease.days_left(not_after - datetime.timedelta(hours=1)) == 0  # its last day
        assert at_lease.days_left(not_after + datetime.timedelta(seconds=1)) == -1  # expired


def test_the_issuer_is_named_by_common_name_and_organisation():
    def issuer(*attributes: tuple) -> str:
        return c._issuer(x509.Name([x509.NameAttribute(oid, value) for oid, value in attributes]))

    assert issuer((NameOID.COUNTRY_NAME, "US"), (NameOID.ORGANIZATION_NAME, "Let's Encrypt"),
                  (NameOID.COMMON_NAME, "R11")) == "R11 (Let's Encrypt)"
    assert issuer((NameOID.ORGANIZATION_NAME, "Example CA")) == "Example CA"
    assert issuer((NameOID.COUNTRY_NAME, "JP")) == "C=JP"


@pytest.mark.parametrize("version, dropped", [("1", ["certificates", "acme_acks", "wireguard_keys", "web_sessions"]),
                                              ("2", ["acme_acks", "wireguard_keys", "web_sessions"]),
                                              ("3", ["wireguard_keys", "web_sessions"]), ("4", ["web_sessions"])])
def test_an_older_database_is_upgraded(tmp_path, version, dropped):
    url = f"sqlite:///{tmp_path}/old.sqlite"
    db = open_database(url)
    with db_session:
        db.Setting["schema_version"].value = version
        for table in dropped:
            db.execute(f"DROP TABLE {table}")
    db.disconnect()
    db = open_database(url)
    with db_session:
        assert db.Setting["schema_version"].value == str(SCHEMA_VERSION) == "5"
        assert db.Certificate.select().count() == db.AcmeAck.select().count() == 0


def test_the_upgrade_to_4_gives_each_reported_key_to_one_client(tmp_path):
    """Before version 4 a client could report another's key; the older client keeps it, the newer reports again."""
    url = f"sqlite:///{tmp_path}/old.sqlite"
    db = open_database(url)
    with db_session:
        db.Setting["schema_version"].value = "3"
        db.execute("DROP TABLE wireguard_keys")
        old = datetime.datetime(2025, 1, 1)
        db.Agent(name="victim", api_key_hash="h1", public_key="K", created_at=old)
        db.Agent(name="thief", api_key_hash="h2", public_key="K", created_at=old + datetime.timedelta(days=1))
        db.Gateway(name="gw", api_key_hash="h3", public_key="G")
    db.disconnect()
    db = open_database(url)
    with db_session:
        assert db.Agent.get(name="victim").public_key == "K" and db.Agent.get(name="thief").public_key is None
        assert {(k.public_key, k.role) for k in db.WireguardKey.select()} == {("K", "agent"), ("G", "gateway")}
        assert db.WireguardKey["K"].client_id == db.Agent.get(name="victim").id
    with pytest.raises(IntegrityError), db_session:  # the database itself refuses a second holder
        db.execute("INSERT INTO wireguard_keys (public_key, role, client_id) VALUES ('K', 'gateway', 'x')")

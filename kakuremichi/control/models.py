"""The control database: agents, gateways, tunnels and each gateway's address inside each tunnel, plus what
gateways share for ACME (certificates with their keys, pending HTTP-01 challenges, who may order a domain).

Entities are defined per `Database` (not at import time) so one process can open several databases — tests
run a server, stop it and start another on the same file. Uniqueness the allocator relies on (domain, subnet,
one address per tunnel) is enforced by the database itself, so concurrent controls sharing PostgreSQL can
never hand out the same subnet twice.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any
from urllib.parse import unquote, urlsplit

from pony.orm import Database, Json, LongStr, Optional, PrimaryKey, Required, Set, composite_key, db_session

from kakuremichi.control import allocation, certificates, datadir

SCHEMA_VERSION = 5  # 2: certificates, acme_challenges, acme_leases; 3: acme_acks; 4: wireguard_keys; 5: web_sessions
# (new tables each)
WRITE_RETRIES = 3  # a transaction that met a concurrent write (another control's) is replayed


class SchemaError(RuntimeError):
    """The database was written by an incompatible version of control."""


class DatabaseUrlError(ValueError):
    """--database-url names a database control cannot use as given (scheme, missing driver)."""


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def define(db: Database) -> None:
    """Declare the entities on `db` (reachable afterwards as db.Agent, db.Gateway, ...)."""

    class Agent(db.Entity):
        _table_ = "agents"
        id = PrimaryKey(str, default=new_id)
        name = Required(str, unique=True)
        api_key_hash = Required(str, unique=True)
        public_key = Optional(str, nullable=True)
        status = Required(str, default="offline")
        last_seen_at = Optional(datetime)
        metadata = Optional(Json)
        created_at = Required(datetime, default=utcnow)
        tunnels = Set("Tunnel", cascade_delete=True)
        backends = Set("Backend", cascade_delete=True)

        def delete(self) -> None:
            hand_over_tunnels(self)  # before the cascade: it takes only the tunnels left in `tunnels`
            super().delete()

        def before_delete(self) -> None:
            release_public_key(self._database_, "agent", self.id)

    class Gateway(db.Entity):
        _table_ = "gateways"
        id = PrimaryKey(str, default=new_id)
        name = Required(str, unique=True)
        api_key_hash = Required(str, unique=True)
        public_key = Optional(str, nullable=True)
        public_endpoint = Optional(str, nullable=True)  # host:port of its WireGuard socket, as it reported
        wireguard_port = Optional(int)  # pushed to the gateway; None keeps its own
        metadata = Optional(Json)
        status = Required(str, default="offline")
        last_seen_at = Optional(datetime)
        created_at = Required(datetime, default=utcnow)
        tunnel_ips = Set("TunnelGatewayIp", cascade_delete=True)
        acme_leases = Set("AcmeLease", cascade_delete=True)
        acme_challenges = Set("AcmeChallenge", cascade_delete=True)
        acme_ack = Optional("AcmeAck", cascade_delete=True)
        workers = Set("GatewayWorker", reverse="gateway", cascade_delete=True)
        worker_of = Optional("GatewayWorker", reverse="worker", cascade_delete=True)

        def delete(self) -> None:
            for link in list(self.workers):  # its worker processes' identities go with it
                link.worker.delete()
            super().delete()

        def before_delete(self) -> None:
            release_public_key(self._database_, "gateway", self.id)

    class GatewayWorker(db.Entity):
        """Worker process `index` (1, 2, …) of a gateway started with --workers: a gateway row of its own (key,
        endpoint, tunnel addresses, session, ACME part), made when it first connects with its gateway's API key,
        listed under its gateway and deleted with it. A new table only, so the schema version stays."""
        _table_ = "gateway_workers"
        worker = PrimaryKey("Gateway", reverse="worker_of")
        gateway = Required("Gateway", reverse="workers")
        index = Required(int)
        composite_key(gateway, index)

    class Tunnel(db.Entity):
        _table_ = "tunnels"
        id = PrimaryKey(str, default=new_id)
        domain = Required(str, unique=True)  # stored lowercased
        agent = Required(Agent)
        target = Required(str)
        enabled = Required(bool, default=True)
        description = Optional(str, default="")
        subnet = Required(str, unique=True)
        agent_ip = Required(str)
        tls_mode = Required(str, default="acme")
        force_https = Required(bool, default=False)
        http_proxy_enabled = Required(bool, default=False)
        socks_proxy_enabled = Required(bool, default=False)
        created_at = Required(datetime, default=utcnow)
        gateway_ips = Set("TunnelGatewayIp", cascade_delete=True)
        port = Optional("TunnelPort", cascade_delete=True)  # tcp and udp tunnels only
        access = Optional("TunnelAccess", cascade_delete=True)  # no column here: new tables only (access.py)
        share_links = Set("ShareLink", cascade_delete=True)
        backends = Set("Backend", cascade_delete=True)
        balancing = Optional("TunnelBalancing", cascade_delete=True)
        access_grants = Set("AccessGrant", cascade_delete=True)  # tcp/udp tunnels with a login tunnel
        proxy_header = Optional("TunnelProxyHeader", cascade_delete=True)  # http tunnels only (ports.py)

        def before_delete(self) -> None:
            # However it goes (alone, or with its agent), its certificate's key is kept nowhere afterwards.
            certificates.forget(self._database_, self.domain)

    class TunnelPort(db.Entity):
        """A tcp or udp tunnel's public port and how it is carried (control/ports.py); http tunnels have none.
        A new table only, so the schema version stays; the database refuses one port to two tunnels."""
        _table_ = "tunnel_ports"
        tunnel = PrimaryKey(Tunnel)
        protocol = Required(str)  # "tcp" or "udp"
        public_port = Required(int)
        name = Optional(str, default="")
        proxy_protocol = Optional(str, nullable=True)  # "v1", "v2" or None
        udp_idle_timeout = Required(float, default=60.0)
        udp_max_flows = Required(int, default=1024)
        composite_key(protocol, public_port)
    class TunnelProxyHeader(db.Entity):
        """The PROXY protocol version an http tunnel's upstream connections begin with (control/ports.py; tcp
        and udp tunnels keep theirs on their TunnelPort). A new table only, so the schema version stays."""
        _table_ = "tunnel_proxy_headers"
        tunnel = PrimaryKey(Tunnel)
        version = Required(str)  # "v1" or "v2"
    class Backend(db.Entity):
        """One of a tunnel's backends: an agent, its local target and its own address in the tunnel subnet
        (.2 upward). The tunnel's agent, target and agent_ip columns repeat its first backend's (position 0), the
        one-backend shorthand older code and older controls read. A new table only, so the schema version
        stays; tunnels without rows get theirs at start (`adopt_single_backends`)."""
        _table_ = "backends"
        id = PrimaryKey(str, default=new_id)
        tunnel = Required(Tunnel)
        agent = Required(Agent)
        target = Required(str)
        address = Required(str)
        position = Required(int)
        weight = Required(int, default=1)
        priority = Required(int, default=0)
        enabled = Required(bool, default=True)
        draining = Required(bool, default=False)
        health_check = Optional(Json, nullable=True)  # overrides the tunnel's; None: the tunnel's applies
        health = Required(str, default="unknown")  # as its agent last reported: healthy, unhealthy, unknown
        health_error = Optional(str, nullable=True)
        health_checked_at = Optional(datetime)
        composite_key(tunnel, address)

    class TunnelBalancing(db.Entity):
        """A tunnel's health check and session affinity, apart from the tunnels table so no column is added to
        it (a new table only: the schema version stays). None: no checks, no affinity."""
        _table_ = "tunnel_balancing"
        tunnel = PrimaryKey(Tunnel)
        health_check = Optional(Json, nullable=True)
        affinity = Required(bool, default=False)

    class TunnelGatewayIp(db.Entity):
        _table_ = "tunnel_gateway_ips"
        tunnel = Required(Tunnel)
        gateway = Required(Gateway)
        ip = Required(str)
        PrimaryKey(tunnel, gateway)
        composite_key(tunnel, ip)

    class Certificate(db.Entity):
        """The newest certificate a gateway obtained for a domain, pushed to every gateway serving it.
        Holds the private key: only the gateway WebSocket ever carries it (never the REST API or logs)."""
        _table_ = "certificates"
        domain = PrimaryKey(str)
        chain_pem = Required(LongStr, autostrip=False)
        key_pem = Required(LongStr, autostrip=False)
        serial = Required(str)  # hex
        not_before = Required(datetime)
        not_after = Required(datetime)
        issuer = Required(str)
        uploaded_by = Required(str)  # gateway name, for the record
        updated_at = Required(datetime, default=utcnow)

    class AcmeLease(db.Entity):
        """Which gateway alone may order `domain`'s certificate until `expires_at` (or until it goes offline)."""
        _table_ = "acme_leases"
        domain = PrimaryKey(str)
        gateway = Required(Gateway)
        expires_at = Required(datetime)

    class AcmeChallenge(db.Entity):
        """An HTTP-01 answer one gateway published; every other gateway serving `domain` answers it too."""
        _table_ = "acme_challenges"
        token = PrimaryKey(str)
        domain = Required(str)
        key_authorization = Required(str)
        gateway = Required(Gateway)
        expires_at = Required(datetime)

    class AcmeAck(db.Entity):
        """The challenge tokens a gateway last confirmed it answers. Kept here, not in its session, because the
        publisher may be connected to another control instance, which must wait for this confirmation too."""
        _table_ = "acme_acks"
        gateway = PrimaryKey(Gateway)
        tokens = Optional(Json)

    class WireguardKey(db.Entity):
        """Which agent or gateway holds a WireGuard public key. Public keys are public (API, UI), so without
        this one table's primary key a client could announce another's and have the gateways re-point that
        client's peer at itself; a key is held by one client across both roles, even with controls racing."""
        _table_ = "wireguard_keys"
        public_key = PrimaryKey(str)
        role = Required(str)
        client_id = Required(str)
        composite_key(role, client_id)

    class WebSession(db.Entity):
        """A web UI login, so that logging out ends it on every control sharing the database. The cookie
        carries the session id; this row only its hash. A new table only (created by generate_mapping), so
        the schema version stays: an older control ignores it."""
        _table_ = "web_sessions"
        id_hash = PrimaryKey(str)
        expires_at = Required(datetime)

    class TunnelAccess(db.Entity):
        """A tunnel's access policy (control/access.py): absent means public. A new table, so the schema
        version stays. The password and the bypass secret are kept only as hashes."""
        _table_ = "tunnel_access"
        tunnel = PrimaryKey(Tunnel)
        settings = Required(Json)  # mode, rules, allowed users, bypass paths, session hours
        password_hash = Optional(str, nullable=True)
        bypass_secret_digest = Optional(str, nullable=True)
        epoch = Required(int, default=0)  # bumped to revoke every session
        revoked_before = Optional(datetime)  # sessions issued earlier are revoked

    class ShareLink(db.Entity):
        """A share link of a tunnel: the link itself is a signed token, this row its expiry and revocation."""
        _table_ = "share_links"
        id = PrimaryKey(str)
        tunnel = Required(Tunnel)
        note = Optional(str, default="")
        created_at = Required(datetime, default=utcnow)
        expires_at = Required(datetime)
        revoked_at = Optional(datetime)

    class AccessGrant(db.Entity):
        """A client address a login opened a tcp/udp tunnel to, until expires_at (control/grants.py)."""
        _table_ = "access_grants"
        tunnel = Required(Tunnel)
        address = Required(str)
        expires_at = Required(datetime)
        composite_key(tunnel, address)

    class Setting(db.Entity):
        _table_ = "settings"
        key = PrimaryKey(str)
        value = Required(str)


def open_database(url: str) -> Database:
    """Bind a new Database to `url`: `sqlite:///path`, a bare file path, or `postgres://user:pw@host/db`."""
    db = Database()
    define(db)
    parts = urlsplit(url)
    if parts.scheme in ("postgres", "postgresql"):
        params = {"user": unquote(parts.username or "") or None, "password": unquote(parts.password or "") or None,
                  "host": parts.hostname or None, "port": parts.port, "database": parts.path.lstrip("/")}
        try:
            import psycopg2  # noqa: F401  (the `postgres` extra)
        except ImportError:
            raise DatabaseUrlError("a postgres:// database needs psycopg2: pip install 'kakuremichi[postgres]'") from None
        db.bind(provider="postgres", **params)
        with _postgres_schema_lock(params):
            _create_schema(db)
    elif parts.scheme in ("sqlite", ""):
        path = url[len("sqlite://"):] if parts.scheme else url
        path = path[1:] if path.startswith("//") else path  # sqlite:////abs and sqlite:///rel
        with datadir.private_files():  # it holds key hashes and TLS keys: 0700 and 0600 from the start
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            db.bind(provider="sqlite", filename=os.path.abspath(path), create_db=True)
            _create_schema(db)
        datadir.tighten_sqlite(os.path.abspath(path))  # made by an older control
    else:
        raise DatabaseUrlError(f"unsupported database URL scheme {parts.scheme!r}: use sqlite:///path or postgres://")
    return db


SCHEMA_LOCK = 0x6B616B75  # pg_advisory_lock key held while one control creates or upgrades the schema


@contextmanager
def _postgres_schema_lock(params: dict):
    """Controls started at once on an empty database would all create the same tables, and PostgreSQL fails
    all but one (duplicate key in pg_type): one at a time, the first creates them and the others find them."""
    import psycopg2

    connection = psycopg2.connect(**params)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s)", (SCHEMA_LOCK,))
        yield
    finally:
        connection.close()  # releases the lock


def _create_schema(db: Database) -> None:
    db.generate_mapping(create_tables=True)
    _check_schema(db)


MIGRATED_BY_CREATE_TABLES = {1, 2, 3, 4}  # older versions whose upgrade adds tables (and fills wireguard_keys)


@db_session
def _check_schema(db: Database) -> None:
    row = db.Setting.get(key="schema_version")
    if row is None:
        db.Setting(key="schema_version", value=str(SCHEMA_VERSION))
    elif int(row.value) in MIGRATED_BY_CREATE_TABLES:
        if int(row.value) < 4:
            _claim_reported_keys(db)
        row.value = str(SCHEMA_VERSION)  # generate_mapping(create_tables=True) added the new tables
    elif int(row.value) != SCHEMA_VERSION:
        raise SchemaError(f"database schema version {row.value} is not supported by this control "
                          f"(expects {SCHEMA_VERSION}); upgrade kakuremichi or use the matching release")
    adopt_single_backends(db)


def preload_optional(tunnels: list, *attributes) -> None:
    """Load what the tunnels' reverse one-to-one `attributes` (Tunnel.port, Tunnel.access, ...) point to in one
    query each, instead of one query per tunnel at first access: a config reads them for every tunnel. Loading
    the rows sets them on their tunnels; the tunnels without one get None, as Pony's own lazy load records a
    missing row (orm.core.Attribute.load), so reading them asks the database nothing more."""
    for attribute in attributes:
        attribute.reverse.entity.select()[:]
        for tunnel in tunnels:
            tunnel._vals_.setdefault(attribute, None)


def hand_over_tunnels(agent) -> None:
    """Before `agent` is deleted: a tunnel it serves first but other agents serve too passes to the next of them
    (its shorthand columns follow that backend), so only the tunnels it alone serves go with it."""
    for tunnel in list(agent.tunnels):
        others = sorted((b for b in tunnel.backends if b.agent.id != agent.id), key=lambda b: (b.position, b.id))
        if others:
            tunnel.set(agent=others[0].agent, target=others[0].target, agent_ip=others[0].address)


def adopt_single_backends(db: Database) -> None:
    """Each tunnel stored before tunnels had several backends (or by an older control) gets its one backend:
    its agent and target at its agent address. Inside the caller's db_session."""
    for tunnel in db.Tunnel.select(lambda t: not t.backends):
        db.Backend(tunnel=tunnel, agent=tunnel.agent, target=tunnel.target, address=tunnel.agent_ip, position=0)


def _claim_reported_keys(db: Database) -> None:
    """Version 3 → 4: the keys clients reported so far become their claims. A key two clients reported (one
    announced the other's) stays with the older client; the newer one's is cleared and must be reported again."""
    for role, entity in (("gateway", db.Gateway), ("agent", db.Agent)):
        for row in entity.select(lambda r: r.public_key is not None).order_by(lambda r: r.created_at):
            if db.WireguardKey.get(public_key=row.public_key) is None:
                db.WireguardKey(public_key=row.public_key, role=role, client_id=row.id)
            else:
                row.public_key = None


def public_key_holder(db: Database, public_key: str) -> tuple[str, str] | None:
    """(role, client id) of whoever holds `public_key`; call inside a db_session."""
    claim = db.WireguardKey.get(public_key=public_key)
    return None if claim is None else (claim.role, claim.client_id)


def claim_public_key(db: Database, role: str, client_id: str, public_key: str) -> None:
    """Make `public_key` this client's (dropping the one it held before); the caller checked that no other client
    holds it, and the primary key refuses it at commit if another control gave it away meanwhile."""
    release_public_key(db, role, client_id)
    db.WireguardKey(public_key=public_key, role=role, client_id=client_id)


def release_public_key(db: Database, role: str, client_id: str) -> None:
    claim = db.WireguardKey.get(role=role, client_id=client_id)
    if claim is not None:
        claim.delete()


def worker_row(db: Database, gateway, index: int) -> tuple[Any, bool]:
    """The gateway row of `gateway`'s worker `index` (call inside a db_session), and whether it was made just now,
    with an address in every tunnel's subnet. It needs no key of its own (its worker logs in with its gateway's), so
    its key hash is one no key has; its name follows its gateway's."""
    name = f"{gateway.name}#{index}"  # '#' is in no name a user can give
    link = db.GatewayWorker.get(gateway=gateway, index=index)
    if link is not None:
        if link.worker.name != name:
            link.worker.name = name
        return link.worker, False
    worker = db.Gateway(name=name, api_key_hash=f"worker {index} of {gateway.id}")
    db.GatewayWorker(worker=worker, gateway=gateway, index=index)
    allocation.assign_gateway_addresses(db, db.Tunnel.select(), [worker])
    return worker, True


def get_setting(db: Database, key: str) -> str | None:
    """A stored setting; call inside a db_session."""
    row = db.Setting.get(key=key)
    return None if row is None else row.value


def put_setting(db: Database, key: str, value: str) -> None:
    """Create or replace a setting; call inside a db_session."""
    row = db.Setting.get(key=key)
    if row is None:
        db.Setting(key=key, value=value)
    else:
        row.value = value


WRITE_LOCK = SCHEMA_LOCK + 1  # pg_advisory_xact_lock key every change of the control's data holds


def lock_for_writing(db: Database) -> None:
    """Start the caller's transaction by waiting for the other controls sharing this PostgreSQL database to
    finish theirs. Without it, controls creating tunnels at once all pick the same lowest free subnet and bump
    the same config version, and the losers' retries collide again until they give up with a 409. Changes are
    small, so one at a time costs little; SQLite (one control) already writes one at a time."""
    if db.provider.dialect == "PostgreSQL":
        db.execute(f"SELECT pg_advisory_xact_lock({WRITE_LOCK})")


def bump_config_version(db: Database) -> int:
    """Advance the global config version inside the caller's transaction, so every change gets a new one."""
    version = int(get_setting(db, "config_version") or 0) + 1
    put_setting(db, "config_version", str(version))
    return version


def write(db: Database, change: Callable[..., Any], *args: Any, bump: bool = False) -> Any:
    """`change(db, *args)` in one transaction, in turn with the other controls sharing the database (so two
    of them never allocate one subnet or grant one lease twice), replayed if it met a concurrent write.
    `bump`: the change alters configs, so the config version advances with it (a change that alters them only
    sometimes calls `bump_config_version` itself, and tells its caller)."""

    @db_session(retry=WRITE_RETRIES)
    def transaction() -> Any:
        lock_for_writing(db)
        result = change(db, *args)
        if bump:
            bump_config_version(db)
        return result

    return transaction()

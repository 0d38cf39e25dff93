"""What one running control holds: settings, the database, connected clients, the change notifier."""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Protocol

import trio
from pony.orm import Database, db_session
from quart import current_app

from kakuremichi.control import access, auth, configs, datadir, models, oidc
from kakuremichi.control.allocation import parse_pool
from kakuremichi.control.metrics import Metrics
from kakuremichi.control.models import get_setting, open_database, put_setting
from kakuremichi.control.sealing import Sealer, seal_stored_keys
from kakuremichi.logs import log
from kakuremichi.values import PortRanges

logger = logging.getLogger("kakuremichi.control")


class Session(Protocol):
    """What the state needs of a connected client's session (the /ws endpoint's ClientSession)."""

    config_dirty: trio.Event

    def close(self, code: int, reason: str) -> None: ...


@dataclass
class Settings:
    """How control runs; the CLI fills this from flags and KAKUREMICHI_* variables."""

    listen: str = "127.0.0.1:8000"
    data_dir: str = "kakuremichi-data"
    database_url: str | None = None  # default: SQLite file control.sqlite in data_dir
    admin_token: str | None = None  # default: generated on first start, printed once, stored hashed
    heartbeat_interval: float = 30.0
    subnet_pool: str = "10.0.0.0/8"
    auth_timeout: float = 10.0
    change_poll_interval: float = 1.0  # how often to look for changes made by another control instance
    acme_lease: float = 600.0  # seconds one gateway alone may order a domain's certificate
    secrets_key: str | None = None  # base64url, encrypts TLS keys in the database; default: secrets.key in data_dir
    secrets_key_source: str = "KAKUREMICHI_SECRETS_KEY"  # the flag or variable it came from, for errors
    metrics_token: str | None = None  # /metrics also accepts it (the admin token always works)
    metrics_public: bool = False  # /metrics without any token
    public_ports: str = "20000-29999"  # what tcp/udp tunnels' public ports are allocated from (values.PortRanges)
    public_url: str = ""  # control's URL as browsers reach it (SSO logins return to it)
    oidc_providers_file: str | None = None  # JSON list of OpenID Connect providers for tunnels in sso mode

    @property
    def database(self) -> str:
        return self.database_url or "sqlite:///" + os.path.join(os.path.abspath(self.data_dir), "control.sqlite")


class Broadcast:
    """Wakes everyone waiting at each `set()`; a later `wait` waits for the next one (an Event replaced on set)."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def set(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def wait(self, timeout: float) -> None:
        """Return at the next `set`, or after `timeout` seconds (what other control instances do is polled)."""
        with trio.move_on_after(timeout):
            await self._event.wait()


class ControlState:
    """Shared by the REST API, the WebSocket sessions and the metrics endpoint of one app."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pool: ipaddress.IPv4Network = parse_pool(settings.subnet_pool)
        self.public_ports = PortRanges.parse(settings.public_ports)
        data_dir = datadir.prepare(settings.data_dir)
        secrets_key, secrets_source = datadir.secrets_key(data_dir, settings.secrets_key, settings.secrets_key_source)
        self.sealer = Sealer(secrets_key, secrets_source)
        self.oidc = oidc.load_providers(settings.oidc_providers_file)
        if self.oidc and not settings.public_url:
            raise oidc.ProviderConfigError("--oidc-providers-file needs --public-url (control's URL as browsers "
                                           "reach it, e.g. https://control.example.com): logins return there")
        login_url = settings.public_url.rstrip("/") + "/auth/login" if self.oidc else ""
        # signs visitors' sessions and share links; tells gateways where SSO logins start
        self.access = access.Deployment(access.derive_key(secrets_key), login_url)
        self.db: Database = open_database(settings.database)
        models.write(self.db, seal_stored_keys, self.sealer)
        self.metrics = Metrics()
        self.clients: dict[tuple[str, str], Session] = {}
        self.status_changes = Broadcast()  # clients came, went, reported stats, or data changed: for the web UI
        self.challenge_acks = Broadcast()  # a gateway confirmed the ACME challenges it answers, or went away
        self.admin_token_hash, self.new_admin_token = _admin_token(self.db, settings.admin_token)
        self.metrics_token_hash = auth.key_hash(settings.metrics_token) if settings.metrics_token else None

    def write(self, change: Callable[..., Any], *args: Any, bump: bool = False,
              agents_of: Callable[[Any], Collection[str]] | None = None) -> Any:
        """`models.write` on this control's database; `bump`: the change alters configs — wake every client too,
        or, with `agents_of`, every gateway and the agents `agents_of(result)` names."""
        result = models.write(self.db, change, *args, bump=bump)
        if bump:
            self.changed(agents=None if agents_of is None else agents_of(result))
        return result

    def changed(self, *, gateways: bool = True, agents: Collection[str] | None = None) -> None:
        """Something in the database changed: the connected clients whose configs it may alter rebuild theirs
        and, if different, get it: the gateways unless `gateways` is false, and the `agents` given (None: every
        agent). Rebuilding costs each client in proportion to its tunnels, so a hundred agents connecting, or
        a tunnel edited, must not rebuild every agent's config."""
        for (role, client_id), client in self.clients.items():
            if gateways if role == "gateway" else agents is None or client_id in agents:
                client.config_dirty.set()
        self.status_changed()

    def status_changed(self) -> None:
        """A client came, went or reported stats, or data changed: wake whoever shows live status (the web UI)."""
        self.status_changes.set()

    def disconnect(self, role: str, client_id: str, code: int, reason: str) -> None:
        """Close a client's session, if it has one (its key was rotated, or it was deleted)."""
        session = self.clients.get((role, client_id))
        if session is not None:
            session.close(code, reason)

    def connected_counts(self) -> dict[str, int]:
        counts = {"agent": 0, "gateway": 0}
        for role, _ in self.clients:
            counts[role] += 1
        return counts

    @db_session
    def config_version(self) -> int:
        return configs.current_version(self.db)


def current() -> ControlState:
    """The state of the app serving the current request."""
    return current_app.extensions["kakuremichi.control"]


def _admin_token(db: Database, configured: str | None) -> tuple[str, str | None]:
    """The admin token hash to check against, and a newly generated token to show once (or None)."""
    if configured:
        return auth.key_hash(configured), None
    # in turn: controls started at once on a new database generate one token, not one each
    return models.write(db, _stored_admin_token)


def _stored_admin_token(db: Database) -> tuple[str, str | None]:
    stored = get_setting(db, "admin_token_hash")
    if stored:
        return stored, None
    token = auth.new_key(auth.ADMIN_PREFIX)
    put_setting(db, "admin_token_hash", auth.key_hash(token))
    log(logger, logging.INFO, "generated the admin token; it is printed once on stdout")
    return auth.key_hash(token), token

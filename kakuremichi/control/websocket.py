"""The /ws endpoint: authenticate a gateway or agent, keep its status, push its config whenever it changes.

One session per client runs two tasks: the receiver (pings, acks, status, ACME coordination, silence
detection) and the pusher, which wakes on `config_dirty`, rebuilds the client's config — and a gateway's
certificates and challenges — and sends what differs from what it last sent. Any database change
therefore reaches exactly the affected clients, without control having to know which change affects whom.
A rebuild costs in proportion to the client's tunnels (all of them, for a gateway), so after each one the
pusher waits REBUILD_PACING times as long before the next: a burst of changes (a hundred agents connecting,
tunnels created back to back) is folded into fewer rebuilds instead of filling control's one thread.
"""

from __future__ import annotations

import logging

import trio
from pony.orm import Database, IntegrityError, TransactionIntegrityError, db_session
from quart import Blueprint, websocket

from kakuremichi import protocol
from kakuremichi.certpair import CertificateError
from kakuremichi.control import auth, backends, certificates, configs, declarations, grants, presence
from kakuremichi.control.models import (WRITE_RETRIES, bump_config_version, claim_public_key, public_key_holder, utcnow,
                                       worker_row)
from kakuremichi.control.sealing import UnsealError
from kakuremichi.control.state import ControlState, current
from kakuremichi.faults import Contained
from kakuremichi.logs import log

logger = logging.getLogger("kakuremichi.control.ws")
blueprint = Blueprint("ws", __name__)

CLOSE_PROTOCOL_ERROR = 4000
CLOSE_AUTH_FAILED = 4001
CLOSE_HEARTBEAT_TIMEOUT = 4002
CLOSE_AUTH_TIMEOUT = 4003
CLOSE_REPLACED = 4004
CLOSE_DELETED = 4005
REBUILD_PACING = 2.0  # a session spends at most a third of the thread on its rebuilds during a burst
CHALLENGE_READY_TIMEOUT = 10.0  # a gateway that never confirms a challenge must not stall the order forever
ACME_MESSAGES = (protocol.LeaseRequest, protocol.ChallengePublished, protocol.ChallengeWithdrawn,
                 protocol.ChallengesAck, protocol.CertificateUpload)


class _Rejected(Exception):
    def __init__(self, code: str, message: str, close_code: int) -> None:
        super().__init__(message)
        self.code, self.message, self.close_code = code, message, close_code


_failures = auth.FailureLog(logger, "client authentication failed")
_contained = Contained(logger, "control /ws session")


class ClientSession:
    """One authenticated WebSocket connection of a gateway or agent."""

    def __init__(self, state: ControlState, role: str, client_id: str, name: str) -> None:
        self.state, self.role, self.client_id, self.name = state, role, client_id, name
        self.config_dirty = trio.Event()
        self.config_dirty.set()  # the full config goes out right after auth
        self.close_reason: tuple[int, str] | None = None
        self.stopping = False  # the client said it is stopping cleanly (its last message)
        self._scope = trio.CancelScope()
        self._sent: dict | None = None
        self._sent_certificates: dict[str, str] = {}  # domain → serial
        self._sent_challenges: list[protocol.AcmeChallenge] = []  # a new gateway answers none yet
        self._next_rebuild = 0.0  # trio time before which the pusher does not rebuild again

    def close(self, code: int, reason: str) -> None:
        """End the session; the handler sends the close frame."""
        self.close_reason = (code, reason)
        self._scope.cancel()

    async def run(self) -> None:
        interval = self.state.settings.heartbeat_interval
        with self._scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._push)
                await self._receive(interval, nursery)
                nursery.cancel_scope.cancel()

    async def _receive(self, interval: float, nursery: trio.Nursery) -> None:
        last_written = trio.current_time()
        while True:
            with trio.move_on_after(2 * interval) as silence:
                frame = await websocket.receive()
            if silence.cancelled_caught:
                self.close_reason = (CLOSE_HEARTBEAT_TIMEOUT, f"no message for {2 * interval:g}s")
                log(logger, logging.WARNING, "client silent, closing", role=self.role, name=self.name)
                return
            if trio.current_time() - last_written >= interval / 2:
                last_written = trio.current_time()
                presence.touch(self.state.db, self.role, self.client_id)
            try:
                message = protocol.decode(frame)
            except protocol.ProtocolError as exc:
                log(logger, logging.WARNING, "ignoring a malformed frame", role=self.role, name=self.name,
                    error=str(exc))
                continue
            if isinstance(message, protocol.Stopping):
                self.stopping = True  # a clean stop: its routes say so once the session ends
                return
            try:
                await self._handle(message, nursery)
            except Exception as exc:  # what decoding did not foresee ends this session only, logged once a minute
                _contained.record(exc, role=self.role, name=self.name, type=message.type)
                self.close_reason = (CLOSE_PROTOCOL_ERROR, f"could not handle {message.type}")
                return

    async def _handle(self, message: protocol.Message, nursery: trio.Nursery) -> None:
        """One decoded message of this client's."""
        if isinstance(message, protocol.Ping):
            await websocket.send(protocol.Pong().to_json())
        elif isinstance(message, protocol.ConfigAck):
            self.state.metrics.inc("kakuremichi_control_config_acks_total", role=self.role)
            log(logger, logging.DEBUG, "config acknowledged", role=self.role, name=self.name,
                version=message.version)
        elif isinstance(message, protocol.StatusUpdate):
            self._store_stats(message.stats)
        elif isinstance(message, ACME_MESSAGES) and self.role == "gateway":
            await self._acme(message, nursery)
        elif isinstance(message, protocol.TunnelsDeclared) and self.role == "agent":
            refused = declarations.reconcile(self.state, self.client_id, message.tunnels)
            await websocket.send(protocol.DeclarationRefused(refused).to_json())
        elif isinstance(message, protocol.BackendHealth) and self.role == "agent":
            self._backend_health(message)
        elif isinstance(message, protocol.AccessGranted) and self.role == "gateway":
            opened = self.state.write(grants.record, message.tunnel_id, str(message.address), utcnow())
            if opened:
                self.state.changed(agents=())  # grants are in the gateways' port routes only
            log(logger, logging.INFO, "login grant", name=self.name, tunnel=message.tunnel_id,
                client=str(message.address), tunnels_opened=opened)

    def _backend_health(self, report: protocol.BackendHealth) -> None:
        """An agent's health transition: stored, and pushed to the gateways at once when the status changed."""

        def change(db) -> bool:
            changed = backends.report_health(db, self.client_id, report)
            if changed:
                bump_config_version(db)
            return changed

        if self.state.write(change):
            self.state.changed(agents=())  # health is in the gateways' routes only
            self.state.metrics.inc("kakuremichi_control_backend_health_transitions_total",
                                   backend=report.backend_id, status=report.status)
        else:
            self.state.status_changed()
        log(logger, logging.INFO, "backend health reported", name=self.name, backend=report.backend_id,
            status=report.status, error=report.error or "-")

    async def _acme(self, message, nursery: trio.Nursery) -> None:
        """One gateway's part in ordering certificates together (see certificates.py)."""
        if isinstance(message, protocol.ChallengesAck):
            self.state.write(certificates.record_acks, self.client_id, message.tokens)
            self.state.challenge_acks.set()
            return
        if isinstance(message, protocol.LeaseRequest):
            await self._lease(message.domain)
            return
        domain = message.challenge.domain if isinstance(message, protocol.ChallengePublished) else message.domain
        with db_session:
            served = domain in certificates.served_domains(self.state.db, self.client_id)
        if not served:
            log(logger, logging.WARNING, "ignoring ACME message for a domain this gateway does not serve with "
                "ACME", name=self.name, type=message.type, domain=domain)
            return
        if isinstance(message, protocol.ChallengePublished):
            self.state.write(certificates.publish_challenge, self.client_id, message.challenge, utcnow(), bump=True)
            nursery.start_soon(self._confirm_challenge, message.challenge)
        elif isinstance(message, protocol.ChallengeWithdrawn):
            self.state.write(certificates.withdraw_challenge, self.client_id, message.token, bump=True)
        else:
            try:
                serial = self.state.write(certificates.store_certificate, self.state.sealer, self.name, message,
                                          utcnow(), bump=True)
            except CertificateError as exc:
                log(logger, logging.WARNING, "refused an uploaded certificate", name=self.name, error=str(exc))
                return
            if serial is not None:
                self._sent_certificates[domain] = serial  # the uploader has it: its key goes back to nobody
            log(logger, logging.INFO, "certificate uploaded" if serial else "uploaded certificate not newer, "
                "kept the stored one", name=self.name, domain=domain, not_after=message.not_after.isoformat())

    async def _lease(self, domain: str) -> None:
        now = utcnow()
        # two controls asked at once: the second transaction sees the first one's lease
        decision = self.state.write(certificates.request_lease, self.client_id, domain, now,
                                    self.state.settings.acme_lease)
        if isinstance(decision, certificates.NotServed):
            log(logger, logging.WARNING, "ACME lease refused: this gateway does not serve the domain with ACME",
                name=self.name, domain=domain)
            lease = protocol.Lease(domain, False, "", self.state.settings.acme_lease)  # asks again after that
        else:
            expires_in = max(0.0, (decision.expires_at - now).total_seconds())
            log(logger, logging.INFO, "ACME lease granted" if decision.granted else "ACME lease refused",
                name=self.name, domain=domain, holder=decision.holder, expires_in=round(expires_in))
            lease = protocol.Lease(domain, decision.granted, decision.holder, expires_in)
        await websocket.send(lease.to_json())

    async def _confirm_challenge(self, challenge: protocol.AcmeChallenge) -> None:
        """Tell the publisher once every other online gateway serving the domain — connected here or to another
        control instance — answers the challenge, so that it lets the CA validate only then (or after a timeout,
        logged)."""

        @db_session
        def unconfirmed() -> list[str]:
            return certificates.unconfirmed(self.state.db, challenge, self.client_id)

        with trio.move_on_after(CHALLENGE_READY_TIMEOUT):
            while unconfirmed():
                # polled too: gateways connected to another control instance ack there
                await self.state.challenge_acks.wait(self.state.settings.change_poll_interval)
        if waiting := unconfirmed():
            log(logger, logging.WARNING, "gateways did not confirm an ACME challenge in time",
                domain=challenge.domain, gateways=",".join(waiting))
        await websocket.send(protocol.ChallengeReady(challenge.token).to_json())

    async def _push(self) -> None:
        while True:
            await self.config_dirty.wait()
            await trio.sleep_until(self._next_rebuild)
            self.config_dirty = trio.Event()
            started = trio.current_time()
            with db_session:
                config = configs.config_for(self.state.db, self.role, self.client_id, self.state.access)
                if config is not None and self.role == "gateway":
                    domains = certificates.served_domains(self.state.db, self.client_id)
                    new_certificates = self._unsent_certificates(domains)
                    challenges = certificates.challenges_for(self.state.db, self.client_id, domains, utcnow())
            self._next_rebuild = trio.current_time() + REBUILD_PACING * (trio.current_time() - started)
            if config is None:
                self.close(CLOSE_DELETED, f"this {self.role} was deleted")
                return
            if self.role == "gateway":  # certificates before the routes they serve: nothing orders needlessly
                for serial, certificate in new_certificates:
                    await websocket.send(certificate.to_json())
                    self._sent_certificates[certificate.domain] = serial
                    log(logger, logging.INFO, "certificate pushed", name=self.name, domain=certificate.domain)
            await self._push_config(config)
            if self.role == "gateway" and challenges != self._sent_challenges:
                await websocket.send(protocol.Challenges(challenges).to_json())
                self._sent_challenges = challenges

    def _unsent_certificates(self, domains: set[str]) -> list[tuple[str, protocol.CertificateInstall]]:
        """(serial, certificate) for each certificate of `domains` this gateway has not been sent yet."""
        unsent = []
        for domain, serial in sorted(certificates.certificate_serials(self.state.db, domains).items()):
            if self._sent_certificates.get(domain) != serial:
                try:
                    unsent.append((serial, certificates.certificate(self.state.db, self.state.sealer, domain)))
                except UnsealError as exc:  # stored by a control with another secrets key: this one cannot share it
                    log(logger, logging.ERROR, "cannot push a certificate", name=self.name, error=str(exc))
        return unsent

    async def _push_config(self, config: protocol.Config) -> None:
        body = config.to_json()
        if body != self._sent:
            await websocket.send(protocol.ConfigUpdate(config).to_json())
            self._sent = body
            self.state.metrics.inc("kakuremichi_control_config_pushes_total", role=self.role)
            log(logger, logging.INFO, "config pushed", role=self.role, name=self.name, version=config.version)

    def row(self):
        """This client's database row (inside a db_session), None once deleted."""
        return presence.client_row(self.state.db, self.role, self.client_id)

    @db_session(retry=WRITE_RETRIES)  # the admin may be changing the metadata through another instance
    def _store_stats(self, stats: dict) -> None:
        row = self.row()
        if row is not None:
            row.metadata = {**(row.metadata or {}), "stats": stats}
        self.state.status_changed()


@blueprint.websocket("/ws")
async def endpoint() -> None:
    state = current()
    remote = websocket.remote_addr or "?"
    try:
        with trio.fail_after(state.settings.auth_timeout):
            frame = await websocket.receive()
    except trio.TooSlowError:
        await _refuse(state, remote, _Rejected("timeout", "no auth message in time", CLOSE_AUTH_TIMEOUT))
        return
    try:
        session = _authenticate(state, frame)
    except _Rejected as rejected:
        await _refuse(state, remote, rejected)
        return
    previous = state.clients.get((session.role, session.client_id))
    if previous is not None:
        previous.close(CLOSE_REPLACED, "replaced by a newer connection")
    state.clients[session.role, session.client_id] = session
    state.status_changed()
    await websocket.send(protocol.AuthSuccess(session.client_id, session.name,
                                              state.settings.heartbeat_interval).to_json())
    log(logger, logging.INFO, "client connected", role=session.role, name=session.name, remote=remote)
    try:
        await session.run()
    finally:
        if state.clients.get((session.role, session.client_id)) is session:
            del state.clients[session.role, session.client_id]
            presence.went_offline(state, session.role, session.client_id, session.stopping)
            state.challenge_acks.set()  # nobody waits for this gateway's confirmation any more
            state.status_changed()
        log(logger, logging.INFO, "client disconnected", role=session.role, name=session.name,
            reason=session.close_reason[1] if session.close_reason else "connection closed")
    if session.close_reason is not None:
        with trio.move_on_after(1):
            await websocket.close(*session.close_reason)


async def _refuse(state: ControlState, remote: str, rejected: _Rejected) -> None:
    state.metrics.inc("kakuremichi_control_auth_failures_total", reason=rejected.code)
    _failures.record(remote, code=rejected.code)
    with trio.move_on_after(1):
        await websocket.send(protocol.AuthError(rejected.code, rejected.message).to_json())
        await websocket.close(rejected.close_code, rejected.message)


def _authenticate(state: ControlState, frame: str | bytes) -> ClientSession:
    try:
        message = protocol.decode(frame)
    except protocol.ProtocolError as exc:
        raise _Rejected("bad_request", str(exc), CLOSE_PROTOCOL_ERROR) from None
    if not isinstance(message, protocol.Auth):
        raise _Rejected("bad_request", f"the first message must be auth, not {message.type}", CLOSE_PROTOCOL_ERROR)
    if message.version != protocol.PROTOCOL_VERSION:
        raise _Rejected("unsupported_version", f"protocol version {message.version} is not supported; this "
                        f"control speaks {protocol.PROTOCOL_VERSION}", CLOSE_PROTOCOL_ERROR)
    if not message.api_key.startswith(auth.PREFIXES[message.role]):
        raise _Rejected("wrong_role", f"a {message.role} authenticates with a {auth.PREFIXES[message.role]}… key",
                        CLOSE_AUTH_FAILED)
    return _register(state, message)


def _register(state: ControlState, message: protocol.Auth) -> ClientSession:
    try:
        (client_id, name), configs_changed = state.write(_registered, message)
    except (IntegrityError, TransactionIntegrityError):  # another control gave the key to another client between check and commit
        raise _key_in_use() from None
    # the clients of the other role peer with this one: their configs change too
    if configs_changed and message.role == "agent":
        state.changed(agents=())
    elif configs_changed:
        state.changed(gateways=False)
    return ClientSession(state, message.role, client_id, name)


def _key_in_use() -> _Rejected:
    return _Rejected("public_key_in_use", "this WireGuard public key belongs to another agent or gateway; each "
                     "client needs its own (delete its copied wireguard.key to have a new one made)", CLOSE_AUTH_FAILED)


def _registered(db: Database, message: protocol.Auth) -> tuple[tuple[str, str], bool]:
    """Look the key up, record what the client reported (never erasing what it did not), mark it online: its
    (id, name), and whether configs changed. A WireGuard public key another client holds is refused: gateways
    would re-point that client's peer here."""
    entity = db.Gateway if message.role == "gateway" else db.Agent
    digest = auth.key_hash(message.api_key)
    row = entity.get(api_key_hash=digest)
    if row is None or not auth.matches(message.api_key, row.api_key_hash):
        raise _Rejected("invalid_key", "the API key is not valid (rotated or deleted?)", CLOSE_AUTH_FAILED)
    new_worker = False
    if message.role == "gateway" and message.worker:
        row, new_worker = worker_row(db, row, message.worker)
    holder = public_key_holder(db, message.public_key)  # in turn with the other controls: it stays so
    if holder not in (None, (message.role, row.id)):
        raise _key_in_use()
    reported = {"public_key": message.public_key}
    if message.role == "gateway":
        certificates.forget_acks(db, row.id)  # a new connection answers no challenge before it says so
        if message.public_endpoint:
            reported["public_endpoint"] = message.public_endpoint
    changed = any(getattr(row, column) != value for column, value in reported.items())
    if changed:
        if holder is None:
            claim_public_key(db, message.role, row.id, message.public_key)
        row.set(**reported)
    changed = presence.mark_online(row) or changed or new_worker
    if changed:
        bump_config_version(db)
    return (row.id, row.name), changed

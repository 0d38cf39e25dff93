"""The control WebSocket protocol, shared by control, gateway and agent.

Every frame is one JSON text object with a `type`; each message is a msgspec Struct declaring its fields, and
`decode` reads a frame in one pass. Decoding is strict: a missing field, a wrong type or an invalid value
raises `ProtocolError` naming the field's path (`config.routes[0].domain`), so a bad peer gets a clear error
instead of a half-applied config. Unknown keys are ignored so that a newer peer may add fields. Wire names
are camelCase; the fields are snake_case. See docs/control-protocol.md for the conversation.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import math
import re
from typing import Annotated, Any, Callable, ClassVar, Literal, Union, get_args

import msgspec

from kakuremichi.values import Domain, Endpoint, Target
from kakuremichi.wg import keys

PROTOCOL_VERSION = 1
TUNNEL_PORT = 80  # where an agent accepts a tunnel's connections on its tunnel address
AGENT_KEEPALIVE = 25  # seconds between an idle agent's keepalives to each gateway (keeps NAT mappings open)
EXIT_PORT = 1080  # where a gateway speaks SOCKS5 to the agents of exit tunnels, on its tunnel addresses
# TCP keepalive on exit connections, both ends (idle seconds, probe interval, probes): an agent or gateway
# that vanished without a FIN (a laptop put to sleep, a dead host) would otherwise hold them open for good
EXIT_KEEPALIVE = (60.0, 15.0, 4)
Role = Literal["gateway", "agent"]
ROLES = get_args(Role)
TlsMode = Literal["acme", "self-signed", "off", "custom"]
TLS_MODES = get_args(TlsMode)
_ACME_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}\Z")  # RFC 8555 §8.3: base64url without padding
_KEY_AUTHORIZATION = re.compile(r"[A-Za-z0-9_-]{1,256}\.[A-Za-z0-9_-]{1,128}\Z")  # token "." thumbprint

# What control buffers of one frame from a client. Anyone may open /ws, so the first frame (auth: two keys, a
# host:port and a few names, some 300 bytes) is held to a few KiB; after it, the biggest a client legitimately
# sends is a gateway's status_update with one peer entry (~140 bytes) per agent, ~420 KiB for 3,000 agents,
# or its certificate_upload (an RSA-4096 key, 3.3 KiB, and a chain of a few 2 KiB certificates: ~16 KiB).
AUTH_FRAME_MAX = 4 * 1024
FRAME_MAX = 512 * 1024
# The stats control keeps per client and serves back in the API: entries (object members and list items,
# counted at every depth), nesting, string lengths (keys too) and integer range are bounded.
STATS_MAX_ENTRIES = 16384
STATS_MAX_DEPTH = 4
STATS_MAX_STRING = 256


class ProtocolError(ValueError):
    """A frame that does not follow this protocol."""


# -- values the decoder checks ---------------------------------------------------------------------------------


class _Checked(str):
    """A string field that the decoder checks, and replaces by its canonical form, with `canonical`.

    Constructors take plain strings unchecked (control builds configs from rows it has already checked): each
    value is parsed once, where it arrives."""

    __slots__ = ()
    canonical: ClassVar[Callable[[str], str]]

    def __init_subclass__(cls, canonical: Callable[[str], str], **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.canonical = staticmethod(canonical)


def check_public_key(text: str, where: str = "publicKey") -> str:
    """Validate a base64 WireGuard public key, returning it unchanged."""
    try:
        keys.decode(text, where)
    except keys.InvalidKey as exc:
        raise ProtocolError(str(exc)) from None
    return text


def check_endpoint(text: str, where: str = "endpoint") -> str:
    """The canonical `host:port` (IPv6 hosts in brackets) of an endpoint."""
    try:
        return _canonical_endpoint(text)
    except ValueError as exc:
        raise ProtocolError(f"{where}: {exc}") from None


# A config repeats its domains and targets each time it is pushed; parsing one is some 10-40 µs (IDNA, the
# public-suffix list), so the last few thousand canonical forms are kept (errors are not cached).
@functools.lru_cache(maxsize=4096)
def _canonical_domain(text: str) -> str:
    return str(Domain.parse(text))


@functools.lru_cache(maxsize=4096)
def _canonical_target(text: str) -> str:
    return str(Target.parse(text))


def _canonical_endpoint(text: str) -> str:
    return str(Endpoint.parse(text))


def _accepting(accepts: Callable[[str], Any], complaint: str) -> Callable[[str], str]:
    """A check returning the text unchanged when `accepts` takes it (neither None nor ValueError)."""

    def check(text: str) -> str:
        try:
            if accepts(text) is not None:
                return text
        except ValueError:
            pass
        raise ValueError(complaint.format(text[:40]))

    return check


class DomainName(_Checked, canonical=_canonical_domain):
    """A kakuremichi.values.Domain, canonical."""


class TargetText(_Checked, canonical=_canonical_target):
    """A kakuremichi.values.Target, canonical."""


class EndpointText(_Checked, canonical=_canonical_endpoint):
    """A kakuremichi.values.Endpoint, canonical."""


class PublicKey(_Checked, canonical=lambda text: check_public_key(text, "the key")):
    """A base64 WireGuard public key."""


class IpAddress(_Checked, canonical=_accepting(ipaddress.ip_address, "{!r} is not an IP address")):
    pass


class IpInterface(_Checked, canonical=_accepting(ipaddress.ip_interface, "{!r} is not an address/prefix")):
    """An address/prefix such as 10.1.0.2/32."""


class AcmeToken(_Checked, canonical=_accepting(
        _ACME_TOKEN.match, "an ACME token must be base64url (RFC 8555), got {!r}")):
    pass


class KeyAuthorization(_Checked, canonical=_accepting(
        _KEY_AUTHORIZATION.match, "keyAuthorization must be token.thumbprint in base64url (RFC 8555 §8.1), got {!r}")):
    pass


class Stats(dict):
    """A client's free-form statistics, held to the STATS_MAX_* bounds when decoded."""

    __slots__ = ()


def _check_stats(stats: Any) -> Stats:
    """Refuse stats beyond the STATS_MAX_* bounds (iteratively: depth is what is being checked)."""
    if not isinstance(stats, dict):
        raise TypeError(f"Expected `object`, got `{type(stats).__name__}`")
    entries, pending = 0, [(stats, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, (dict, list)):
            if depth > STATS_MAX_DEPTH:
                raise ValueError(f"nest deeper than {STATS_MAX_DEPTH} levels")
            entries += len(value)
            if entries > STATS_MAX_ENTRIES:
                raise ValueError(f"more than {STATS_MAX_ENTRIES} entries")
            items = list(value.items()) if isinstance(value, dict) else [(None, item) for item in value]
            for key, item in items:
                if key is not None:
                    _check_stats_string(key)
                pending.append((item, depth + 1))
        elif isinstance(value, str):
            _check_stats_string(value)
        elif isinstance(value, int) and not isinstance(value, bool) and not -(1 << 63) <= value < (1 << 64):
            raise ValueError("a number is out of the 64-bit range")
        elif isinstance(value, float) and not math.isfinite(value):  # no JSON column stores Infinity or NaN
            raise ValueError("a number is not finite")
    return Stats(stats)


def _check_stats_string(text: str) -> None:
    if len(text) > STATS_MAX_STRING:
        raise ValueError(f"a string or key is longer than {STATS_MAX_STRING} characters")
    if "\0" in text:  # PostgreSQL's JSON refuses it
        raise ValueError("a string or key contains NUL")


def _decode_hook(kind: type, value: Any) -> Any:
    if kind is Stats:
        return _check_stats(value)
    if not isinstance(value, str):
        raise TypeError(f"Expected `str`, got `{type(value).__name__}`")
    return kind(kind.canonical(value))


def _encode_hook(value: Any) -> Any:
    if isinstance(value, _Checked):
        return str(value)
    if isinstance(value, Stats):
        return dict(value)
    raise NotImplementedError(f"{type(value).__name__} is not part of the protocol")


Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
MAX_WORKERS = 64  # worker processes of one gateway (`kakuremichi gateway --workers`)
WorkerIndex = Annotated[int, msgspec.Meta(ge=1, lt=MAX_WORKERS)]


class _Body(msgspec.Struct, frozen=True, rename="camel"):
    """A JSON object inside a message."""

    @classmethod
    def from_json(cls, obj: dict, where: str = "") -> Any:
        """Decode the already-parsed JSON object `obj` (errors name fields under `where`)."""
        try:
            return msgspec.convert(obj, cls, dec_hook=_decode_hook)
        except msgspec.ValidationError as exc:
            raise _named(exc, where) from None

    def to_json(self) -> dict:
        return msgspec.to_builtins(self, enc_hook=_encode_hook)


# -- configs ---------------------------------------------------------------------------------------------------


class AgentPeer(_Body, frozen=True):
    """An agent as a gateway's WireGuard peer: traffic to its tunnel addresses goes to this key."""

    public_key: PublicKey
    allowed_ips: list[IpInterface]
    # the peer is a kakuremichi node, whose netstack skips the TCP checksums of packets WireGuard
    # authenticated: segments to it go without (summing them was a quarter of a download's CPU); unset: a
    # peer that may check them (another WireGuard, a kernel behind it), which gets them
    skips_checksums: bool | msgspec.UnsetType = msgspec.UNSET


class IpNetwork(_Checked, canonical=_accepting(lambda text: ipaddress.ip_network(text, strict=False),
                                                "{!r} is not a CIDR such as 192.0.2.0/24")):
    pass


# -- access control (kakuremichi.access) -----------------------------------------------------------------------


class AccessRule(_Body, frozen=True):
    """A ranked CIDR rule: the first matching one decides (deny: 403, bypass: no login, allow: on to the login)."""

    action: Literal["allow", "deny", "bypass"]
    cidr: IpNetwork


class AccessConfig(_Body, frozen=True):
    """A tunnel's access policy as its gateways enforce it; secrets only as hashes."""

    mode: Literal["public", "password", "sso"] = "public"
    password_hash: str = ""
    rules: list[AccessRule] = msgspec.field(default_factory=list)
    bypass_paths: list[str] = msgspec.field(default_factory=list)
    bypass_secret_digest: str = ""  # hex SHA-256 of the secret header's / Basic password's value
    allowed_emails: list[str] = msgspec.field(default_factory=list)
    allowed_domains: list[str] = msgspec.field(default_factory=list)
    allowed_groups: list[str] = msgspec.field(default_factory=list)
    epoch: int = 0  # sessions of an older epoch are revoked
    revoked_before: float = 0.0  # Unix time: sessions issued before it are revoked
    revoked_links: list[str] = msgspec.field(default_factory=list)  # share link ids, until they expire
    revoked_users: dict[str, float] = msgspec.field(default_factory=dict)  # e-mail → sessions before it revoked
    session_lifetime: Annotated[int, msgspec.Meta(ge=60)] = 86400  # seconds
    login_url: str = ""  # control's SSO login (sso mode)


# -- several backends per tunnel (balancing.py, health.py) -------------------------------------------------

HealthType = Literal["http", "tcp", "none"]
HEALTH_TYPES = get_args(HealthType)
HealthStatus = Literal["healthy", "unhealthy", "unknown"]


class HealthCheck(_Body, frozen=True):
    """How an agent probes a backend's local target: `http` (GET `path`, healthy when the status is
    `expect_status`, or any 2xx/3xx when None), `tcp` (a connect), or `none` (never probed: counts as up)."""

    type: HealthType = "none"
    path: str = "/"
    expect_status: Annotated[int, msgspec.Meta(ge=100, le=599)] | None = None
    interval_seconds: Annotated[float, msgspec.Meta(ge=0.1, le=3600)] = 10.0
    timeout_seconds: Annotated[float, msgspec.Meta(ge=0.05, le=600)] = 2.0
    healthy_threshold: Annotated[int, msgspec.Meta(ge=1, le=100)] = 2
    unhealthy_threshold: Annotated[int, msgspec.Meta(ge=1, le=100)] = 3


class RouteBackend(_Body, frozen=True):
    """One backend of a route: its agent's address in the tunnel subnet, how it shares the load, its health."""

    id: str
    address: IpAddress
    weight: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 1
    priority: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 0
    enabled: bool = True
    draining: bool = False
    health: HealthStatus = "unknown"  # as its agent last reported it; "unknown" counts as up
    agent_stopped: bool = False


class RouteConfig(_Body, frozen=True):
    """A public domain a gateway serves, and the agent tunnel address behind it."""

    domain: DomainName
    agent_ip: IpAddress
    gateway_ip: IpAddress  # this gateway's own address in the tunnel subnet, the source of its connections
    tunnel_id: str
    port: Port = TUNNEL_PORT
    enabled: bool = True
    tls_mode: TlsMode = "acme"
    force_https: bool = False
    exit: bool = False  # the agent may send traffic out through this gateway (its HTTP or SOCKS5 proxy is on)
    agent_stopped: bool = False  # the agent said it was stopping (and has not connected since): 502 at once
    access: AccessConfig | msgspec.UnsetType = msgspec.UNSET  # left out (falsy): public, no rules
    # several backends (unset: the one at agent_ip); affinity: an HTTP client keeps its backend (by a cookie).
    # Unset fields are not sent, so a one-backend route's frame stays what version 1 peers send.
    backends: list[RouteBackend] | msgspec.UnsetType = msgspec.UNSET
    affinity: bool | msgspec.UnsetType = msgspec.UNSET
    # each upstream connection begins with a PROXY protocol header naming its client connection (issue 15)
    proxy_protocol: ProxyProtocol | msgspec.UnsetType = msgspec.UNSET


# -- tcp and udp tunnels on public ports (issue 15) --
TunnelProtocol = Literal["http", "tcp", "udp"]
TUNNEL_PROTOCOLS = get_args(TunnelProtocol)
PortProtocol = Literal["tcp", "udp"]
ProxyProtocol = Literal["v1", "v2"]
PROXY_PROTOCOLS = get_args(ProxyProtocol)
UDP_IDLE_TIMEOUT = 60.0  # seconds a udp flow lives without a datagram either way
UDP_MAX_FLOWS = 1024  # flows (client address and port) one udp tunnel holds at a time on each gateway
PORT_ERRORS = "portErrors"  # a gateway's stats: tunnel id → why it cannot listen on that tunnel's port


class PortRoute(_Body, frozen=True):
    """A tcp or udp tunnel a gateway serves on `public_port` of its listen host: each connection (tcp) or
    flow (udp) goes to agent_ip:TUNNEL_PORT from gateway_ip, with a PROXY protocol header if asked for."""

    tunnel_id: str
    protocol: PortProtocol
    public_port: Port
    agent_ip: IpAddress
    gateway_ip: IpAddress
    enabled: bool = True
    proxy_protocol: ProxyProtocol | None = None
    udp_idle_timeout: Annotated[float, msgspec.Meta(gt=0)] = UDP_IDLE_TIMEOUT
    udp_max_flows: Annotated[int, msgspec.Meta(ge=1)] = UDP_MAX_FLOWS
    access_rules: list[AccessRule] = msgspec.field(default_factory=list)  # none: everyone may connect
    max_connections_per_source: Annotated[int, msgspec.Meta(ge=1)] | None = None
    agent_stopped: bool = False
    # login grants (issue 16): with login_tunnel_id, a client no allow/bypass rule holds needs a grant
    login_tunnel_id: str | None = None  # the http tunnel whose logins open this port
    granted: dict[str, float] = msgspec.field(default_factory=dict)  # client address → Unix time its grant ends
    # several backends, as RouteConfig's (unset: the one at agent_ip); affinity: by the client's address
    backends: list[RouteBackend] | msgspec.UnsetType = msgspec.UNSET
    affinity: bool | msgspec.UnsetType = msgspec.UNSET


class _Config(_Body, frozen=True):
    """A client's complete config: its body travels in `config_update` beside `version` and `role`."""

    role: ClassVar[str]

    @classmethod
    def from_json(cls, obj: dict, version: int, where: str = "config") -> Any:
        return msgspec.structs.replace(super().from_json(obj, where), version=version)

    def to_json(self) -> dict:
        """The body, without `version`: what changed is told apart from what was merely renumbered."""
        body = super().to_json()
        del body["version"]
        return body


class GatewayConfig(_Config, frozen=True):
    """Everything one gateway needs: its WireGuard port and addresses, the agents to peer with, its routes."""

    version: int = 0  # set from the frame around the body
    wireguard_port: Port | None = None  # None: keep the port the gateway was started with
    addresses: list[IpAddress] = msgspec.field(default_factory=list)
    peers: list[AgentPeer] = msgspec.field(default_factory=list)
    routes: list[RouteConfig] = msgspec.field(default_factory=list)
    # tcp and udp tunnels; unset (falsy) when there are none, so the frame stays what version 1 peers send
    ports: list[PortRoute] | msgspec.UnsetType = msgspec.UNSET
    access_key: str | msgspec.UnsetType = msgspec.UNSET  # base64url: signs and checks the visitors' sessions and share links (kakuremichi.access)

    role: ClassVar[str] = "gateway"


class GatewayPeer(_Body, frozen=True):
    """A gateway as an agent's WireGuard peer, reached outbound at its public endpoint."""

    public_key: PublicKey
    endpoint: EndpointText
    allowed_ips: list[IpInterface]
    persistent_keepalive: Annotated[int, msgspec.Meta(ge=0, le=65535)] = AGENT_KEEPALIVE
    skips_checksums: bool | msgspec.UnsetType = msgspec.UNSET  # as AgentPeer's


class TunnelMapping(_Body, frozen=True):
    """A tunnel an agent serves: connections to `agent_ip`:TUNNEL_PORT go to the local `target`."""

    tunnel_id: str
    domain: DomainName
    agent_ip: IpAddress
    target: TargetText  # canonical kakuremichi.values.Target
    enabled: bool = True
    http_proxy: bool = False  # the agent offers a local HTTP proxy whose traffic leaves through a gateway
    socks_proxy: bool = False  # the same as a local SOCKS5 proxy
    gateway_ips: list[IpAddress] = msgspec.field(default_factory=list)  # the gateways' addresses in its subnet
    # udp: datagrams to agent_ip:TUNNEL_PORT go to the target too; unset for http (as version 1 peers send it)
    protocol: TunnelProtocol | msgspec.UnsetType = msgspec.UNSET
    udp_idle_timeout: Annotated[float, msgspec.Meta(gt=0)] | msgspec.UnsetType = msgspec.UNSET  # udp: a flow's
    # the tunnel's backend this mapping serves, and how to probe it (the agent reports its health); unset: no
    # checks, and the frame stays what version 1 peers send
    backend_id: str | msgspec.UnsetType = msgspec.UNSET
    health_check: HealthCheck | msgspec.UnsetType = msgspec.UNSET


class AgentConfig(_Config, frozen=True):
    """Everything one agent needs: its tunnel addresses, the gateways to peer with, its tunnels."""

    version: int = 0  # set from the frame around the body
    addresses: list[IpAddress] = msgspec.field(default_factory=list)
    gateways: list[GatewayPeer] = msgspec.field(default_factory=list)
    tunnels: list[TunnelMapping] = msgspec.field(default_factory=list)

    role: ClassVar[str] = "agent"


Config = Union[GatewayConfig, AgentConfig]


# -- messages --------------------------------------------------------------------------------------------------


class _Tag:
    """`Message.type`: the message's tag, on the class and its instances."""

    def __get__(self, instance: Any, owner: type) -> str:
        return owner.__struct_config__.tag


class _Message(msgspec.Struct, frozen=True, rename="camel", tag_field="type"):
    type = _Tag()

    def to_json(self) -> str:
        """This message as one WebSocket text frame."""
        return _ENCODER.encode(self._frame()).decode()

    def _frame(self) -> _Message:
        """What goes on the wire (a message whose fields are not its frame's has a frame of its own)."""
        return self

    def _message(self) -> _Message:
        """The message a decoded frame stands for."""
        return self


class Auth(_Message, frozen=True, tag="auth"):
    """The client's first frame: who it is and how gateways are reached."""

    api_key: str
    role: Role
    public_key: PublicKey
    public_endpoint: EndpointText | None = None  # gateways: host:port of their WireGuard UDP socket
    version: int = PROTOCOL_VERSION
    # a gateway's worker process 1, 2, …: a WireGuard identity of its own, registered beside the gateway's (worker
    # 0, the gateway itself, sends none; unset fields are not sent, so the frame stays what version 1 peers send)
    worker: WorkerIndex | msgspec.UnsetType = msgspec.UNSET

    def __repr__(self) -> str:  # never put the key into logs or tracebacks
        return (f"Auth(role={self.role!r}, public_key={self.public_key!r}, public_endpoint={self.public_endpoint!r}, "
                f"worker={self.worker!r})")


class AuthSuccess(_Message, frozen=True, tag="auth_success"):
    client_id: str
    name: str
    heartbeat_interval: Annotated[float, msgspec.Meta(gt=0)]  # seconds between pings, both ways


class AuthError(_Message, frozen=True, tag="auth_error"):
    code: str  # invalid_key, wrong_role, unsupported_version, bad_request, timeout
    message: str


class Ping(_Message, frozen=True, tag="ping"):
    pass


class Pong(_Message, frozen=True, tag="pong"):
    pass


class Stopping(_Message, frozen=True, tag="stopping"):
    """A client stopping cleanly (SIGTERM, Ctrl-C), its last message: control tells the gateways of a stopped
    agent at once, so its requests get a 502 saying so rather than waiting out its silence."""


class StatusUpdate(_Message, frozen=True, tag="status_update"):
    """Free-form client statistics (counters, peers up, routes served), kept for the UI and metrics."""

    stats: Stats


class ConfigUpdate(_Message, frozen=True, tag="config_update"):
    """A client's complete config. `version` only grows, so a client ignores a stale one."""

    config: Config

    @property
    def version(self) -> int:
        return self.config.version

    def _frame(self) -> _ConfigFrame:
        return _ConfigFrame(self.config.version, self.config.role, self.config.to_json())


class _ConfigFrame(_Message, frozen=True, tag="config_update"):
    version: int
    role: Role
    config: msgspec.Raw  # decoded as the role's config

    def _message(self) -> ConfigUpdate:
        try:
            body = _CONFIG_DECODERS[self.role].decode(self.config)
        except msgspec.ValidationError as exc:
            raise _named(exc, "config") from None
        return ConfigUpdate(msgspec.structs.replace(body, version=self.version))


class BackendHealth(_Message, frozen=True, tag="backend_health"):
    """Agent → control, at once on each transition: a backend's local target became healthy or unhealthy."""

    backend_id: str
    status: HealthStatus
    error: Annotated[str, msgspec.Meta(max_length=500)] | None = None


class ConfigAck(_Message, frozen=True, tag="config_ack"):
    """The client applied config `version`."""

    version: int


# -- ACME coordination between gateways (see docs/control-protocol.md, "Certificates") ---------------------


class AcmeChallenge(_Body, frozen=True):
    """An HTTP-01 answer: GET http://<domain>/.well-known/acme-challenge/<token> returns key_authorization."""

    domain: str
    token: AcmeToken
    key_authorization: KeyAuthorization


class ChallengePublished(_Message, frozen=True, tag="acme_challenge_published"):
    """Gateway → control: this gateway's ACME order needs `challenge` answered by every gateway."""

    challenge: AcmeChallenge

    def _frame(self) -> _PublishedFrame:
        return _PublishedFrame(*msgspec.structs.astuple(self.challenge))


class _PublishedFrame(AcmeChallenge, _Message, frozen=True, tag="acme_challenge_published"):
    """The challenge's fields, flat beside `type`."""

    def _message(self) -> ChallengePublished:
        return ChallengePublished(AcmeChallenge(*msgspec.structs.astuple(self)))


class ChallengeWithdrawn(_Message, frozen=True, tag="acme_challenge_withdrawn"):
    """Gateway → control: the order is over, the challenge need not be answered any more."""

    domain: str
    token: AcmeToken


class ChallengeReady(_Message, frozen=True, tag="acme_challenge_ready"):
    """Control → the publishing gateway: every connected gateway serving the domain now answers `token`."""

    token: AcmeToken


class Challenges(_Message, frozen=True, tag="acme_challenges"):
    """Control → gateway: the complete set of challenges other gateways published for this one's domains."""

    challenges: list[AcmeChallenge]


class ChallengesAck(_Message, frozen=True, tag="acme_challenges_ack"):
    """Gateway → control: these tokens are now answered (the `acme_challenges` just applied)."""

    tokens: list[AcmeToken]


class LeaseRequest(_Message, frozen=True, tag="acme_lease_request"):
    """Gateway → control: may this gateway order (or renew) the certificate of `domain` now?"""

    domain: str


class Lease(_Message, frozen=True, tag="acme_lease"):
    """Control → gateway: the answer to a lease request. Granted or not, `expires_in` seconds say how long
    the holder (named by `holder`) alone may order; a refused gateway asks again after that."""

    domain: str
    granted: bool
    holder: str
    expires_in: Annotated[float, msgspec.Meta(ge=0)]


class _CertificateMessage(_Message, frozen=True):
    """A certificate with its private key: travels only on this authenticated WebSocket, never logged."""

    domain: str
    chain_pem: str = msgspec.field(name="chain")  # leaf first, then intermediates
    key_pem: str = msgspec.field(name="key")
    not_after: Annotated[datetime.datetime, msgspec.Meta(tz=True)] = msgspec.field(name="notAfter")  # UTC

    def __post_init__(self) -> None:
        msgspec.structs.force_setattr(self, "not_after", self.not_after.astimezone(datetime.timezone.utc))

    def __repr__(self) -> str:  # never put the private key into logs or tracebacks
        return f"{type(self).__name__}(domain={self.domain!r}, not_after={self.not_after.isoformat()!r})"


class CertificateUpload(_CertificateMessage, frozen=True, tag="certificate_upload"):
    """Gateway → control: a certificate this gateway just obtained, for control to keep and share."""


class CertificateInstall(_CertificateMessage, frozen=True, tag="certificate"):
    """Control → gateway: serve (and persist) this certificate for `domain`."""


# -- tunnels an agent declares itself (its --tunnels-file, --discover docker) --------------------------------

MAX_DECLARED_TUNNELS = 256  # per agent; a declaration is the whole set, each time


class DeclaredTunnel(_Body, frozen=True):
    """A tunnel as an agent declares it: control makes it, under the domains delegated to that agent."""

    domain: DomainName
    target: TargetText
    tls_mode: TlsMode = "acme"
    force_https: bool = False


class TunnelsDeclared(_Message, frozen=True, tag="tunnels_declared"):
    """Agent → control: every tunnel the agent declares; control makes the agent's tunnels under its delegated
    domains exactly these (creating, changing and deleting)."""

    tunnels: Annotated[list[DeclaredTunnel], msgspec.Meta(max_length=MAX_DECLARED_TUNNELS)]


class DeclarationRefused(_Message, frozen=True, tag="tunnels_declared_refused"):
    """Control → agent: the declared tunnels control did not make, domain → why."""

    refused: dict[str, str]


class AccessGranted(_Message, frozen=True, tag="access_granted"):
    """Gateway → control: a visitor logged in (password, SSO or share link) on the http tunnel `tunnel_id`
    from `address`; control opens the tcp/udp tunnels that name it (loginTunnelId) to that address."""

    tunnel_id: str
    address: IpAddress


Message = Union[Auth, AuthSuccess, AuthError, Ping, Pong, Stopping, StatusUpdate, ConfigUpdate, ConfigAck, ChallengePublished,
                ChallengeWithdrawn, ChallengeReady, Challenges, ChallengesAck, LeaseRequest, Lease, CertificateUpload,
                CertificateInstall, TunnelsDeclared, DeclarationRefused, BackendHealth, AccessGranted]
_TYPES: dict[str, type] = {cls.type: cls for cls in Message.__args__}
_FRAMES = {ConfigUpdate: _ConfigFrame, ChallengePublished: _PublishedFrame}
_ENCODER = msgspec.json.Encoder(enc_hook=_encode_hook)
# float_hook: a stats number too big for a float reads as infinity, which the stats bounds then name
_DECODER = msgspec.json.Decoder(Union[tuple(_FRAMES.get(cls, cls) for cls in Message.__args__)],
                                dec_hook=_decode_hook, float_hook=float)
_CONFIG_DECODERS = {cls.role: msgspec.json.Decoder(cls, dec_hook=_decode_hook) for cls in Config.__args__}


class _Untyped(msgspec.Struct):
    type: str


def _named(exc: msgspec.ValidationError, where: str = "") -> ProtocolError:
    """msgspec's `what - at `$.path`` as `path: what`, the path under `where`."""
    what, _, path = str(exc).partition(" - at `$")
    path = where + path.rstrip("`") if where else path.rstrip("`").lstrip(".")
    if path == "type" and what.startswith("Invalid value"):
        return ProtocolError(f"unknown message type {what.removeprefix('Invalid value ')}; "
                             f"expected one of {', '.join(_TYPES)}")
    return ProtocolError(f"{path}: {what}" if path else what)


def _in_message(error: ProtocolError, frame: str | bytes) -> ProtocolError:
    """`error` prefixed with the type of the message it is in (or `frame`)."""
    try:
        kind = msgspec.json.decode(frame, type=_Untyped).type
    except (msgspec.MsgspecError, UnicodeEncodeError, RecursionError):
        kind = None
    return ProtocolError(f"{kind if kind in _TYPES else 'frame'}: {error}")


def decode(frame: str | bytes) -> Message:
    """Parse one frame into its message, or raise ProtocolError saying what is wrong."""
    if not isinstance(frame, (str, bytes)):  # Quart hands an empty binary frame over as None
        raise ProtocolError("frame is empty")
    try:
        return _DECODER.decode(frame)._message()
    except msgspec.ValidationError as exc:
        raise _in_message(_named(exc), frame) from None
    except ProtocolError as exc:  # in a config
        raise _in_message(exc, frame) from None
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"frame is not JSON: {exc}") from None
    except UnicodeEncodeError:  # a str frame with a lone surrogate
        raise ProtocolError("frame is not JSON: it is not valid Unicode") from None
    except RecursionError:
        raise ProtocolError("frame nests too deeply") from None

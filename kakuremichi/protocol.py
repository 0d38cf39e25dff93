"""The control WebSocket protocol, shared by control, gateway and agent.

Every frame is one JSON text object with a `type`. Decoding is strict: a missing field, a wrong type or an
invalid value raises `ProtocolError` naming the field, so a bad peer gets a clear error instead of a
half-applied config. Unknown keys are ignored so that a newer peer may add fields. Wire names are camelCase;
the dataclasses are snake_case. See docs/control-protocol.md for the conversation.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Union

from kakuremichi.values import Domain, Endpoint, InvalidValue, Target
from kakuremichi.wg import keys

PROTOCOL_VERSION = 1
TUNNEL_PORT = 80  # where an agent accepts a tunnel's connections on its tunnel address
AGENT_KEEPALIVE = 25  # seconds between an idle agent's keepalives to each gateway (keeps NAT mappings open)
EXIT_PORT = 1080  # where a gateway speaks SOCKS5 to the agents of exit tunnels, on its tunnel addresses
# TCP keepalive on exit connections, both ends (idle seconds, probe interval, probes): an agent or gateway
# that vanished without a FIN (a laptop put to sleep, a dead host) would otherwise hold them open for good
EXIT_KEEPALIVE = (60.0, 15.0, 4)
ROLES = ("gateway", "agent")
TLS_MODES = ("acme", "self-signed", "off", "custom")
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


# -- field readers: each names the offending field in its error ---------------------------------------------


def _get(obj: dict, name: str, kind: type | tuple[type, ...], where: str, default: Any = ...) -> Any:
    if name not in obj or obj[name] is None:
        if default is ...:
            raise ProtocolError(f"{where}: missing field {name!r}")
        return default
    value = obj[name]
    # bool is an int subclass; a JSON true must never pass as a port or version
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        raise ProtocolError(f"{where}: field {name!r} must be {_kind_name(kind)}, got {type(value).__name__}")
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", bool: "a boolean", list: "a list", dict: "an object"}
    return " or ".join(names.get(k, k.__name__) for k in _as_tuple(kind))


def _list_of(obj: dict, name: str, where: str, item: type) -> list:
    values = _get(obj, name, list, where)
    for i, value in enumerate(values):
        if not isinstance(value, item):
            raise ProtocolError(f"{where}: {name}[{i}] must be {_kind_name(item)}")
    return values


def _objects(obj: dict, name: str, where: str, cls: type) -> list:
    return [cls.from_json(value, f"{where}.{name}[{i}]") for i, value in enumerate(_list_of(obj, name, where, dict))]


def _port(value: int, where: str) -> int:
    if not 0 < value < 65536:
        raise ProtocolError(f"{where}: port {value} is out of range 1-65535")
    return value


def check_public_key(text: str, where: str = "publicKey") -> str:
    """Validate a base64 WireGuard public key, returning it unchanged."""
    try:
        keys.decode(text, where)
    except keys.InvalidKey as exc:
        raise ProtocolError(str(exc)) from None
    return text


def check_endpoint(text: str, where: str = "endpoint") -> str:
    """The canonical `host:port` (IPv6 hosts in brackets) of an endpoint."""
    return _value(Endpoint, text, where)


def _value(kind: type[Domain | Target | Endpoint], text: str, where: str) -> str:
    """The canonical form of a value of kakuremichi.values, or a ProtocolError naming the field."""
    try:
        return str(kind.parse(text))
    except InvalidValue as exc:
        raise ProtocolError(f"{where}: {exc}") from None


def _address(text: str, where: str) -> str:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise ProtocolError(f"{where}: {text!r} is not an IP address") from None
    return text


def _cidrs(obj: dict, name: str, where: str) -> list[str]:
    values = _list_of(obj, name, where, str)
    for value in values:
        try:
            ipaddress.ip_interface(value)
        except ValueError:
            raise ProtocolError(f"{where}: {name} entry {value!r} is not an address/prefix") from None
    return values


def _addresses(obj: dict, name: str, where: str) -> list[str]:
    return [_address(value, f"{where}.{name}") for value in _list_of(obj, name, where, str)]


# -- configs ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AgentPeer:
    """An agent as a gateway's WireGuard peer: traffic to its tunnel addresses goes to this key."""

    public_key: str
    allowed_ips: list[str]

    def to_json(self) -> dict:
        return {"publicKey": self.public_key, "allowedIps": list(self.allowed_ips)}

    @classmethod
    def from_json(cls, obj: dict, where: str = "peer") -> AgentPeer:
        return cls(check_public_key(_get(obj, "publicKey", str, where), f"{where}.publicKey"),
                   _cidrs(obj, "allowedIps", where))


@dataclass(frozen=True)
class RouteConfig:
    """A public domain a gateway serves, and the agent tunnel address behind it."""

    domain: str
    agent_ip: str
    gateway_ip: str  # this gateway's own address in the tunnel subnet, the source of its connections
    tunnel_id: str
    port: int = TUNNEL_PORT
    enabled: bool = True
    tls_mode: str = "acme"
    force_https: bool = False
    exit: bool = False  # the agent may send traffic out through this gateway (its HTTP or SOCKS5 proxy is on)
    agent_stopped: bool = False  # the agent said it was stopping (and has not connected since): 502 at once

    def to_json(self) -> dict:
        return {"domain": self.domain, "agentIp": self.agent_ip, "port": self.port, "gatewayIp": self.gateway_ip,
                "enabled": self.enabled, "tlsMode": self.tls_mode, "forceHttps": self.force_https,
                "tunnelId": self.tunnel_id, "exit": self.exit, "agentStopped": self.agent_stopped}

    @classmethod
    def from_json(cls, obj: dict, where: str = "route") -> RouteConfig:
        tls_mode = _get(obj, "tlsMode", str, where, "acme")
        if tls_mode not in TLS_MODES:
            raise ProtocolError(f"{where}: tlsMode must be one of {', '.join(TLS_MODES)}, got {tls_mode!r}")
        return cls(domain=_value(Domain, _get(obj, "domain", str, where), f"{where}.domain"),
                   agent_ip=_address(_get(obj, "agentIp", str, where), f"{where}.agentIp"),
                   gateway_ip=_address(_get(obj, "gatewayIp", str, where), f"{where}.gatewayIp"),
                   tunnel_id=_get(obj, "tunnelId", str, where),
                   port=_port(_get(obj, "port", int, where, TUNNEL_PORT), where),
                   enabled=_get(obj, "enabled", bool, where, True),
                   tls_mode=tls_mode,
                   force_https=_get(obj, "forceHttps", bool, where, False),
                   exit=_get(obj, "exit", bool, where, False),
                   agent_stopped=_get(obj, "agentStopped", bool, where, False))


@dataclass(frozen=True)
class GatewayConfig:
    """Everything one gateway needs: its WireGuard port and addresses, the agents to peer with, its routes."""

    version: int
    wireguard_port: int | None = None  # None: keep the port the gateway was started with
    addresses: list[str] = field(default_factory=list)
    peers: list[AgentPeer] = field(default_factory=list)
    routes: list[RouteConfig] = field(default_factory=list)

    role: ClassVar[str] = "gateway"

    def to_json(self) -> dict:
        return {"wireguardPort": self.wireguard_port, "addresses": list(self.addresses),
                "peers": [p.to_json() for p in self.peers], "routes": [r.to_json() for r in self.routes]}

    @classmethod
    def from_json(cls, obj: dict, version: int, where: str = "config") -> GatewayConfig:
        port = _get(obj, "wireguardPort", int, where, None)
        return cls(version=version,
                   wireguard_port=None if port is None else _port(port, f"{where}.wireguardPort"),
                   addresses=_addresses(obj, "addresses", where),
                   peers=_objects(obj, "peers", where, AgentPeer),
                   routes=_objects(obj, "routes", where, RouteConfig))


@dataclass(frozen=True)
class GatewayPeer:
    """A gateway as an agent's WireGuard peer, reached outbound at its public endpoint."""

    public_key: str
    endpoint: str
    allowed_ips: list[str]
    persistent_keepalive: int = AGENT_KEEPALIVE

    def to_json(self) -> dict:
        return {"publicKey": self.public_key, "endpoint": self.endpoint, "allowedIps": list(self.allowed_ips),
                "persistentKeepalive": self.persistent_keepalive}

    @classmethod
    def from_json(cls, obj: dict, where: str = "gateway") -> GatewayPeer:
        keepalive = _get(obj, "persistentKeepalive", int, where, AGENT_KEEPALIVE)
        if not 0 <= keepalive < 65536:
            raise ProtocolError(f"{where}: persistentKeepalive {keepalive} is out of range 0-65535")
        return cls(public_key=check_public_key(_get(obj, "publicKey", str, where), f"{where}.publicKey"),
                   endpoint=check_endpoint(_get(obj, "endpoint", str, where), f"{where}.endpoint"),
                   allowed_ips=_cidrs(obj, "allowedIps", where),
                   persistent_keepalive=keepalive)


@dataclass(frozen=True)
class TunnelMapping:
    """A tunnel an agent serves: connections to `agent_ip`:TUNNEL_PORT go to the local `target`."""

    tunnel_id: str
    domain: str
    agent_ip: str
    target: str  # canonical kakuremichi.values.Target
    enabled: bool = True
    http_proxy: bool = False  # the agent offers a local HTTP proxy whose traffic leaves through a gateway
    socks_proxy: bool = False  # the same as a local SOCKS5 proxy
    gateway_ips: list[str] = field(default_factory=list)  # the gateways' addresses in this tunnel's subnet

    def to_json(self) -> dict:
        return {"tunnelId": self.tunnel_id, "domain": self.domain, "agentIp": self.agent_ip,
                "target": self.target, "enabled": self.enabled, "httpProxy": self.http_proxy,
                "socksProxy": self.socks_proxy, "gatewayIps": list(self.gateway_ips)}

    @classmethod
    def from_json(cls, obj: dict, where: str = "tunnel") -> TunnelMapping:
        return cls(tunnel_id=_get(obj, "tunnelId", str, where),
                   domain=_value(Domain, _get(obj, "domain", str, where), f"{where}.domain"),
                   agent_ip=_address(_get(obj, "agentIp", str, where), f"{where}.agentIp"),
                   target=_value(Target, _get(obj, "target", str, where), f"{where}.target"),
                   enabled=_get(obj, "enabled", bool, where, True),
                   http_proxy=_get(obj, "httpProxy", bool, where, False),
                   socks_proxy=_get(obj, "socksProxy", bool, where, False),
                   gateway_ips=_addresses(obj, "gatewayIps", where) if "gatewayIps" in obj else [])


@dataclass(frozen=True)
class AgentConfig:
    """Everything one agent needs: its tunnel addresses, the gateways to peer with, its tunnels."""

    version: int
    addresses: list[str] = field(default_factory=list)
    gateways: list[GatewayPeer] = field(default_factory=list)
    tunnels: list[TunnelMapping] = field(default_factory=list)

    role: ClassVar[str] = "agent"

    def to_json(self) -> dict:
        return {"addresses": list(self.addresses), "gateways": [g.to_json() for g in self.gateways],
                "tunnels": [t.to_json() for t in self.tunnels]}

    @classmethod
    def from_json(cls, obj: dict, version: int, where: str = "config") -> AgentConfig:
        return cls(version=version, addresses=_addresses(obj, "addresses", where),
                   gateways=_objects(obj, "gateways", where, GatewayPeer),
                   tunnels=_objects(obj, "tunnels", where, TunnelMapping))


Config = Union[GatewayConfig, AgentConfig]


# -- messages --------------------------------------------------------------------------------------------------


class _Message:
    type: ClassVar[str]

    def to_json(self) -> str:
        """This message as one WebSocket text frame."""
        return json.dumps({"type": self.type, **self._fields()}, separators=(",", ":"))

    def _fields(self) -> dict:
        return {}

    @classmethod
    def from_json(cls, obj: dict) -> _Message:
        return cls()


@dataclass(frozen=True)
class Auth(_Message):
    """The client's first frame: who it is and how gateways are reached."""

    api_key: str
    role: str
    public_key: str
    public_endpoint: str | None = None  # gateways: host:port of their WireGuard UDP socket
    version: int = PROTOCOL_VERSION

    type: ClassVar[str] = "auth"

    def __repr__(self) -> str:  # never put the key into logs or tracebacks
        return f"Auth(role={self.role!r}, public_key={self.public_key!r}, public_endpoint={self.public_endpoint!r})"

    def _fields(self) -> dict:
        return {"apiKey": self.api_key, "role": self.role, "publicKey": self.public_key,
                "publicEndpoint": self.public_endpoint, "version": self.version}

    @classmethod
    def from_json(cls, obj: dict) -> Auth:
        role = _get(obj, "role", str, "auth")
        if role not in ROLES:
            raise ProtocolError(f"auth: role must be 'gateway' or 'agent', got {role!r}")
        endpoint = _get(obj, "publicEndpoint", str, "auth", None)
        return cls(api_key=_get(obj, "apiKey", str, "auth"), role=role,
                   public_key=check_public_key(_get(obj, "publicKey", str, "auth"), "auth.publicKey"),
                   public_endpoint=None if endpoint is None else check_endpoint(endpoint, "auth.publicEndpoint"),
                   version=_get(obj, "version", int, "auth"))


@dataclass(frozen=True)
class AuthSuccess(_Message):
    client_id: str
    name: str
    heartbeat_interval: float  # seconds between pings, both ways

    type: ClassVar[str] = "auth_success"

    def _fields(self) -> dict:
        return {"clientId": self.client_id, "name": self.name, "heartbeatInterval": self.heartbeat_interval}

    @classmethod
    def from_json(cls, obj: dict) -> AuthSuccess:
        interval = _get(obj, "heartbeatInterval", (int, float), "auth_success")
        if interval <= 0:
            raise ProtocolError("auth_success: heartbeatInterval must be positive")
        return cls(_get(obj, "clientId", str, "auth_success"), _get(obj, "name", str, "auth_success"),
                   float(interval))


@dataclass(frozen=True)
class AuthError(_Message):
    code: str  # invalid_key, wrong_role, unsupported_version, bad_request, timeout
    message: str

    type: ClassVar[str] = "auth_error"

    def _fields(self) -> dict:
        return {"code": self.code, "message": self.message}

    @classmethod
    def from_json(cls, obj: dict) -> AuthError:
        return cls(_get(obj, "code", str, "auth_error"), _get(obj, "message", str, "auth_error"))


@dataclass(frozen=True)
class Ping(_Message):
    type: ClassVar[str] = "ping"


@dataclass(frozen=True)
class Pong(_Message):
    type: ClassVar[str] = "pong"


@dataclass(frozen=True)
class Stopping(_Message):
    """A client stopping cleanly (SIGTERM, Ctrl-C), its last message: control tells the gateways of a stopped
    agent at once, so its requests get a 502 saying so rather than waiting out its silence."""

    type: ClassVar[str] = "stopping"


@dataclass(frozen=True)
class StatusUpdate(_Message):
    """Free-form client statistics (counters, peers up, routes served), kept for the UI and metrics."""

    stats: dict

    type: ClassVar[str] = "status_update"

    def _fields(self) -> dict:
        return {"stats": self.stats}

    @classmethod
    def from_json(cls, obj: dict) -> StatusUpdate:
        stats = _get(obj, "stats", dict, "status_update")
        _check_stats(stats)
        return cls(stats)


def _check_stats(stats: dict) -> None:
    """Refuse stats beyond the STATS_MAX_* bounds (iteratively: depth is what is being checked)."""
    entries, pending = 0, [(stats, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, (dict, list)):
            if depth > STATS_MAX_DEPTH:
                raise ProtocolError(f"status_update: stats nest deeper than {STATS_MAX_DEPTH} levels")
            entries += len(value)
            if entries > STATS_MAX_ENTRIES:
                raise ProtocolError(f"status_update: stats have more than {STATS_MAX_ENTRIES} entries")
            items = list(value.items()) if isinstance(value, dict) else [(None, item) for item in value]
            for key, item in items:
                if key is not None:
                    _check_stats_string(key)
                pending.append((item, depth + 1))
        elif isinstance(value, str):
            _check_stats_string(value)
        elif isinstance(value, int) and not isinstance(value, bool) and not -(1 << 63) <= value < (1 << 64):
            raise ProtocolError("status_update: a stats number is out of the 64-bit range")
        elif isinstance(value, float) and not math.isfinite(value):  # no JSON column stores Infinity or NaN
            raise ProtocolError("status_update: a stats number is not finite")


def _check_stats_string(text: str) -> None:
    if len(text) > STATS_MAX_STRING:
        raise ProtocolError(f"status_update: a stats string or key is longer than {STATS_MAX_STRING} characters")
    if "\0" in text:  # PostgreSQL's JSON refuses it
        raise ProtocolError("status_update: a stats string or key contains NUL")


@dataclass(frozen=True)
class ConfigUpdate(_Message):
    """A client's complete config. `version` only grows, so a client ignores a stale one."""

    config: Config

    type: ClassVar[str] = "config_update"

    @property
    def version(self) -> int:
        return self.config.version

    def _fields(self) -> dict:
        return {"version": self.config.version, "role": self.config.role, "config": self.config.to_json()}

    @classmethod
    def from_json(cls, obj: dict) -> ConfigUpdate:
        version = _get(obj, "version", int, "config_update")
        role = _get(obj, "role", str, "config_update")
        body = _get(obj, "config", dict, "config_update")
        if role == "gateway":
            return cls(GatewayConfig.from_json(body, version))
        if role == "agent":
            return cls(AgentConfig.from_json(body, version))
        raise ProtocolError(f"config_update: role must be 'gateway' or 'agent', got {role!r}")


@dataclass(frozen=True)
class ConfigAck(_Message):
    """The client applied config `version`."""

    version: int

    type: ClassVar[str] = "config_ack"

    def _fields(self) -> dict:
        return {"version": self.version}

    @classmethod
    def from_json(cls, obj: dict) -> ConfigAck:
        return cls(_get(obj, "version", int, "config_ack"))


# -- ACME coordination between gateways (see docs/control-protocol.md, "Certificates") ---------------------


def _token(obj: dict, where: str) -> str:
    token = _get(obj, "token", str, where)
    if not _ACME_TOKEN.match(token):
        raise ProtocolError(f"{where}: token must be base64url (RFC 8555), got {token[:40]!r}")
    return token


@dataclass(frozen=True)
class AcmeChallenge:
    """An HTTP-01 answer: GET http://<domain>/.well-known/acme-challenge/<token> returns key_authorization."""

    domain: str
    token: str
    key_authorization: str

    def to_json(self) -> dict:
        return {"domain": self.domain, "token": self.token, "keyAuthorization": self.key_authorization}

    @classmethod
    def from_json(cls, obj: dict, where: str = "challenge") -> AcmeChallenge:
        key_authorization = _get(obj, "keyAuthorization", str, where)
        if not _KEY_AUTHORIZATION.match(key_authorization):
            raise ProtocolError(f"{where}: keyAuthorization must be token.thumbprint in base64url (RFC 8555 §8.1)")
        return cls(_get(obj, "domain", str, where), _token(obj, where), key_authorization)


@dataclass(frozen=True)
class ChallengePublished(_Message):
    """Gateway → control: this gateway's ACME order needs `challenge` answered by every gateway."""

    challenge: AcmeChallenge

    type: ClassVar[str] = "acme_challenge_published"

    def _fields(self) -> dict:
        return self.challenge.to_json()

    @classmethod
    def from_json(cls, obj: dict) -> ChallengePublished:
        return cls(AcmeChallenge.from_json(obj, cls.type))


@dataclass(frozen=True)
class ChallengeWithdrawn(_Message):
    """Gateway → control: the order is over, the challenge need not be answered any more."""

    domain: str
    token: str

    type: ClassVar[str] = "acme_challenge_withdrawn"

    def _fields(self) -> dict:
        return {"domain": self.domain, "token": self.token}

    @classmethod
    def from_json(cls, obj: dict) -> ChallengeWithdrawn:
        return cls(_get(obj, "domain", str, cls.type), _token(obj, cls.type))


@dataclass(frozen=True)
class ChallengeReady(_Message):
    """Control → the publishing gateway: every connected gateway serving the domain now answers `token`."""

    token: str

    type: ClassVar[str] = "acme_challenge_ready"

    def _fields(self) -> dict:
        return {"token": self.token}

    @classmethod
    def from_json(cls, obj: dict) -> ChallengeReady:
        return cls(_token(obj, cls.type))


@dataclass(frozen=True)
class Challenges(_Message):
    """Control → gateway: the complete set of challenges other gateways published for this one's domains."""

    challenges: list[AcmeChallenge]

    type: ClassVar[str] = "acme_challenges"

    def _fields(self) -> dict:
        return {"challenges": [c.to_json() for c in self.challenges]}

    @classmethod
    def from_json(cls, obj: dict) -> Challenges:
        return cls(_objects(obj, "challenges", cls.type, AcmeChallenge))


@dataclass(frozen=True)
class ChallengesAck(_Message):
    """Gateway → control: these tokens are now answered (the `acme_challenges` just applied)."""

    tokens: list[str]

    type: ClassVar[str] = "acme_challenges_ack"

    def _fields(self) -> dict:
        return {"tokens": list(self.tokens)}

    @classmethod
    def from_json(cls, obj: dict) -> ChallengesAck:
        tokens = _list_of(obj, "tokens", cls.type, str)
        for token in tokens:
            if not _ACME_TOKEN.match(token):
                raise ProtocolError(f"{cls.type}: tokens must be base64url (RFC 8555), got {token[:40]!r}")
        return cls(tokens)


@dataclass(frozen=True)
class LeaseRequest(_Message):
    """Gateway → control: may this gateway order (or renew) the certificate of `domain` now?"""

    domain: str

    type: ClassVar[str] = "acme_lease_request"

    def _fields(self) -> dict:
        return {"domain": self.domain}

    @classmethod
    def from_json(cls, obj: dict) -> LeaseRequest:
        return cls(_get(obj, "domain", str, cls.type))


@dataclass(frozen=True)
class Lease(_Message):
    """Control → gateway: the answer to a lease request. Granted or not, `expires_in` seconds say how long
    the holder (named by `holder`) alone may order; a refused gateway asks again after that."""

    domain: str
    granted: bool
    holder: str
    expires_in: float

    type: ClassVar[str] = "acme_lease"

    def _fields(self) -> dict:
        return {"domain": self.domain, "granted": self.granted, "holder": self.holder, "expiresIn": self.expires_in}

    @classmethod
    def from_json(cls, obj: dict) -> Lease:
        expires_in = _get(obj, "expiresIn", (int, float), cls.type)
        if expires_in < 0:
            raise ProtocolError(f"{cls.type}: expiresIn must not be negative")
        return cls(_get(obj, "domain", str, cls.type), _get(obj, "granted", bool, cls.type),
                   _get(obj, "holder", str, cls.type), float(expires_in))


@dataclass(frozen=True)
class _CertificateMessage(_Message):
    """A certificate with its private key: travels only on this authenticated WebSocket, never logged."""

    domain: str
    chain_pem: str  # leaf first, then intermediates
    key_pem: str
    not_after: datetime.datetime  # UTC, aware

    def __repr__(self) -> str:  # never put the private key into logs or tracebacks
        return f"{type(self).__name__}(domain={self.domain!r}, not_after={self.not_after.isoformat()!r})"

    def _fields(self) -> dict:
        return {"domain": self.domain, "chain": self.chain_pem, "key": self.key_pem,
                "notAfter": self.not_after.isoformat().replace("+00:00", "Z")}

    @classmethod
    def from_json(cls, obj: dict) -> _CertificateMessage:
        text = _get(obj, "notAfter", str, cls.type)
        try:
            not_after = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ProtocolError(f"{cls.type}: notAfter {text!r} is not an ISO 8601 time") from None
        if not_after.tzinfo is None:
            raise ProtocolError(f"{cls.type}: notAfter {text!r} must carry a time zone (Z)")
        return cls(_get(obj, "domain", str, cls.type), _get(obj, "chain", str, cls.type),
                   _get(obj, "key", str, cls.type), not_after.astimezone(datetime.timezone.utc))


@dataclass(frozen=True, repr=False)
class CertificateUpload(_CertificateMessage):
    """Gateway → control: a certificate this gateway just obtained, for control to keep and share."""

    type: ClassVar[str] = "certificate_upload"


@dataclass(frozen=True, repr=False)
class CertificateInstall(_CertificateMessage):
    """Control → gateway: serve (and persist) this certificate for `domain`."""

    type: ClassVar[str] = "certificate"


Message = Union[Auth, AuthSuccess, AuthError, Ping, Pong, Stopping, StatusUpdate, ConfigUpdate, ConfigAck, ChallengePublished,
                ChallengeWithdrawn, ChallengeReady, Challenges, ChallengesAck, LeaseRequest, Lease, CertificateUpload,
                CertificateInstall]
_TYPES: dict[str, type] = {cls.type: cls for cls in Message.__args__}


def decode(frame: str | bytes) -> Message:
    """Parse one frame into its message, or raise ProtocolError saying what is wrong."""
    if not isinstance(frame, (str, bytes)):  # Quart hands an empty binary frame over as None
        raise ProtocolError("frame is empty")
    try:
        obj = json.loads(frame)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"frame is not JSON: {exc}") from None
    except RecursionError:
        raise ProtocolError("frame nests too deeply") from None
    if not isinstance(obj, dict):
        raise ProtocolError("frame must be a JSON object")
    kind = obj.get("type")
    cls = _TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(f"unknown message type {kind!r}; expected one of {', '.join(_TYPES)}")
    return cls.from_json(obj)

"""The admin REST API's request and response bodies, each declared once as a msgspec Struct: the API and the
web UI's forms decode with them, services.py answers with them, and openapi.py generates the document from
them, so what is documented is what is checked and sent.

Wire names are camelCase (`rename="camel"`), unknown fields are refused, and decoding is strict and reports
every problem at once as `{field: message}` in the API's error envelope. A field's description documents it
and, after "must be", is the message when a value does not fit it; domains and targets are parsed (and stored
in canonical form) by kakuremichi.values, whose messages say what is wrong.
"""

from __future__ import annotations

import datetime
import re
import typing
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar

import msgspec
from msgspec import UNSET, Meta, UnsetType

from kakuremichi import protocol
from kakuremichi.values import Domain, Target

# `(?![\s\S])` is the end of the text in Python's and ECMAScript's regexes alike; Python's `$` would also
# match before a final newline.
ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}(?![\s\S])"  # what control makes (uuid4 hex), with room; never blank or padded
_ID = re.compile(ID_PATTERN)
MAX_OFFSET = 2**31 - 1  # past it the database's integer overflows; no list is that long
_QUERY_INTEGER = re.compile(r"[0-9]{1,10}\Z")  # ASCII digits only: str.isdigit takes '²', int() takes '١'
T = TypeVar("T")


class ApiError(Exception):
    """An error the API reports as an `Error` body with an HTTP status."""

    def __init__(self, status: int, code: str, message: str, details: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details or {}

    def body(self) -> dict:
        return msgspec.to_builtins(Error(self.message, self.code, self.details))


def is_identifier(value: Any) -> bool:
    """Whether `value` could be an id control made. The database strips strings, so ' ' would reach it as ''."""
    return isinstance(value, str) and bool(_ID.match(value))


# -- field types -----------------------------------------------------------------------------------------------

Name = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,63}(?![\s\S])",
                           description="1-64 characters: letters, digits, space, '.', '_' or '-', starting with a "
                                       "letter or digit")]
Identifier = Annotated[str, Meta(pattern=ID_PATTERN, description="an id: 1-64 letters, digits, '_' or '-'")]
Flag = Annotated[bool, Meta(description="true or false")]
Metadata = Annotated[dict[str, Any], Meta(description="a JSON object")]
Description = Annotated[str, Meta(max_length=500, description="a string of at most 500 characters")]
TlsMode = Annotated[protocol.TlsMode, Meta(description="one of " + ", ".join(protocol.TLS_MODES))]
OptionalPort = Annotated[protocol.Port | None, Meta(description="a port number 1-65535, or null")]
Time = Annotated[datetime.datetime, Meta(tz=True)]  # UTC, written with Z
Status = Literal["online", "offline"]
# Parsed by kakuremichi.values (see _decode_hook), documented by _SCHEMAS
DomainName, TargetText = protocol.DomainName, protocol.TargetText
_PARSERS = {DomainName: Domain.parse, TargetText: Target.parse, protocol.IpNetwork: protocol.IpNetwork.canonical}
_SCHEMAS = {
    DomainName: {"type": "string", "description": "Host name (lowercased; `*.` wildcard allowed), unique"},
    TargetText: {"type": "string", "description": "host:port or http(s)://host:port, seen from the agent"},
    protocol.IpNetwork: {"type": "string", "description": "an address range in CIDR form, like 192.0.2.0/24"},
}
# tcp and udp tunnels on public ports (control/ports.py)
TunnelProtocol = Annotated[protocol.TunnelProtocol, Meta(description="one of " + ", ".join(protocol.TUNNEL_PROTOCOLS))]
PublicPort = Annotated[protocol.Port | None, Meta(description="a port number 1-65535, or null to have one allocated")]
ProxyProtocol = Annotated[protocol.ProxyProtocol | None, Meta(description="one of v1, v2, or null")]
IdleTimeout = Annotated[float, Meta(gt=0, le=86400, description="a number of seconds above 0, at most 86400")]
MaxFlows = Annotated[int, Meta(ge=1, le=65536, description="an integer from 1 to 65536")]
UDP_IDLE_TIMEOUT, UDP_MAX_FLOWS = protocol.UDP_IDLE_TIMEOUT, protocol.UDP_MAX_FLOWS  # `protocol` is a field too
OptionalName = Annotated[Name | None, Meta(description="1-64 characters: letters, digits, space, '.', '_' or '-', "
                                                       "starting with a letter or digit; or null")]


def _decode_hook(kind: type, value: Any) -> Any:
    return kind(str(_PARSERS[kind](value)))


def schema_hook(kind: type) -> dict:
    """The JSON Schema of a field type msgspec does not know (for msgspec.json.schema_components)."""
    return _SCHEMAS[kind]


# -- bodies ----------------------------------------------------------------------------------------------------


class Body(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """A JSON object of the API."""

    # Sets of fields one of which a body must give in full (beyond the fields always required); the first set is
    # what a body giving none is told it lacks. The OpenAPI document has them as anyOf.
    alternatives: ClassVar[tuple[tuple[str, ...], ...]] = ()

    @classmethod
    def missing(cls, body: dict) -> dict[str, str]:
        """The fields of `alternatives` a body lacks (wire name → "required"), when it gives no set in full."""
        if not cls.alternatives or any(all(name in body for name in names) for names in cls.alternatives):
            return {}
        given = next((names for names in cls.alternatives if any(name in body for name in names)),
                     cls.alternatives[0])
        return {name: "required" for name in given if name not in body}


class Error(Body):
    """What every failed request answers: a message, a code, and the fields at fault."""

    error: str
    code: str
    details: dict[str, str]


class Page(Body, Generic[T]):
    """One page of a list, and how long the whole list is."""

    items: list[T]
    total: int
    limit: int
    offset: int


class PageQuery(Body):
    """`?limit=&offset=` of a list."""

    limit: Annotated[int, Meta(ge=1, le=500, description="an integer from 1 to 500")] = 100
    offset: Annotated[int, Meta(ge=0, le=MAX_OFFSET, description=f"an integer from 0 to {MAX_OFFSET}")] = 0


class KeyRotation(Body):
    """The agent's or gateway's new API key, shown only here."""

    id: str
    api_key: str


class Agent(Body):
    id: str
    name: str
    public_key: str | None
    status: Status
    last_seen_at: Time | None
    metadata: dict[str, Any]
    created_at: Time
    tunnel_ids: list[str]


class AgentWithKey(Agent):
    api_key: Annotated[str, Meta(pattern="^agt_", description="Shown only here")]


class AgentCreate(Body):
    name: Name
    metadata: Metadata = {}


class GatewayWorker(Body):
    """One worker process of a gateway run with --workers beyond the first: a WireGuard peer of every agent,
    with an address in every tunnel."""
    index: Annotated[int, Meta(ge=1)]
    id: str
    public_key: str | None
    public_endpoint: str | None
    status: Status
    last_seen_at: Time | None


class Gateway(Body):
    id: str
    name: str
    public_key: str | None
    public_endpoint: str | None
    wireguard_port: protocol.Port | None
    metadata: dict[str, Any]
    status: Status
    last_seen_at: Time | None
    created_at: Time
    workers: Annotated[list[GatewayWorker], Meta(description="Its worker processes beyond the first "
                                                             "(kakuremichi gateway --workers)")]


class GatewayWithKey(Gateway):
    api_key: Annotated[str, Meta(pattern="^gtw_", description="Shown only here")]


class GatewayCreate(Body):
    name: Name
    wireguard_port: OptionalPort = None
    metadata: Metadata = {}


class Lease(Body):
    holder: str
    expires_at: Time


class Certificate(Body):
    issuer: Annotated[str, Meta(description="Issuer common name (organisation)")]
    not_before: Time
    not_after: Time
    days_left: Annotated[int, Meta(description="Whole days until notAfter; negative once expired")]
    fingerprint_sha256: Annotated[str, Meta(pattern="^[0-9A-F]{2}(:[0-9A-F]{2}){31}$")]
    domains: Annotated[list[str], Meta(description="DNS names of subjectAltName")]
    lease: Annotated[Lease | None, Meta(description="The gateway (name) that alone may renew it until expiresAt, "
                                                    "if any")]


# -- access control (control/access.py) -------------------------------------------------------------------------

AccessMode = Annotated[Literal["public", "password", "sso"], Meta(description="one of public, password, sso")]
EmailList = Annotated[list[Annotated[str, Meta(max_length=254)]], Meta(max_length=1000, description="a list of strings")]


class AccessRule(Body):
    """Ranked: the first rule whose CIDR holds the visitor decides. deny answers 403, bypass skips the login, allow
    goes on to it; with any allow rule, a visitor no rule holds is refused."""
    action: Annotated[Literal["allow", "deny", "bypass"], Meta(description="one of allow, deny, bypass")]
    cidr: Annotated[str, Meta(max_length=64, description="a CIDR such as 192.0.2.0/24 or 2001:db8::/32")]


class AccessCommon(Body):
    mode: AccessMode = "public"
    allowed_emails: EmailList = []
    allowed_domains: EmailList = []
    allowed_groups: EmailList = []
    rules: Annotated[list[AccessRule], Meta(max_length=256, description="a list of {action, cidr}")] = []
    bypass_paths: Annotated[list[Annotated[str, Meta(pattern="^/", max_length=256)]], Meta(
        max_length=64, description="a list of path prefixes starting with /")] = []
    session_hours: Annotated[int, Meta(ge=1, le=8760, description="an integer from 1 to 8760")] = 24
    max_connections_per_source: Annotated[Annotated[int, Meta(ge=1, le=65536)] | None, Meta(
        description="tcp/udp tunnels: an integer from 1 to 65536 (TCP connections or UDP flows at once from one "
                    "client address, on each gateway), or null")] = None
    login_tunnel_id: Annotated[str | None, Meta(
        description="tcp/udp tunnels: the id of an http tunnel of mode password or sso; the port then admits only "
                    "addresses that logged in there within loginGrantMinutes (besides allow and bypass rules)")] = None
    login_grant_minutes: Annotated[int, Meta(ge=1, le=10080, description="an integer from 1 to 10080")] = 60


class Access(AccessCommon):
    """A tunnel's access policy as written: `password` and `bypassSecret` are write-only (kept as hashes); left
    out, the stored ones stay; `bypassSecret` null removes it."""
    password: Annotated[str, Meta(min_length=8, max_length=1024, description="a password of 8 to 1024 "
                                                                             "characters")] | UnsetType = UNSET
    bypass_secret: Annotated[str, Meta(min_length=16, max_length=256, description="a secret of 16 to 256 "
                                       "characters, or null")] | None | UnsetType = UNSET


class AccessGrant(Body):
    address: str
    expires_at: Time


class AccessView(AccessCommon):
    password_set: bool = False
    bypass_secret_set: bool = False
    grants: Annotated[list[AccessGrant], Meta(description="tcp/udp tunnels with a loginTunnelId: the client "
                                                          "addresses a login opened the port to, until expiresAt")] = []


class SessionRevocation(Body):
    """Whose sessions end: one SSO user's (by e-mail), or without `email` everyone's."""
    email: Annotated[str, Meta(min_length=3, max_length=254, description="an e-mail address")] | None = None


class ShareLinkCreate(Body):
    expires_in_hours: Annotated[int, Meta(ge=1, le=8760, description="an integer from 1 to 8760")] = 24
    note: Description = ""


class ShareLink(Body):
    id: str
    note: str
    created_at: Time
    expires_at: Time
    revoked: bool


class ShareLinkWithUrl(ShareLink):
    url: Annotated[str, Meta(description="Opens the tunnel without an account until expiresAt; shown only here")]


class ShareLinks(Body):
    items: list[ShareLink]


# -- several backends per tunnel (issue 17) ---------------------------------------------------------------------

HealthPath = Annotated[str, Meta(pattern=r"^/[!-~]{0,1023}(?![\s\S])",
                                 description="a path starting with '/', printable ASCII without spaces")]


class HealthCheck(Body):
    """How the agents probe a backend's target: `http` (GET `path`; healthy when the status is `expectStatus`,
    or any 2xx/3xx when null), `tcp` (a connect) or `none` (never probed: counts as up). Unhealthy after
    `unhealthyThreshold` failures in a row, healthy again after `healthyThreshold` successes."""

    type: Annotated[protocol.HealthType, Meta(description="one of " + ", ".join(protocol.HEALTH_TYPES))] = "none"
    path: HealthPath = "/"
    expect_status: Annotated[Annotated[int, Meta(ge=100, le=599)] | None,
                             Meta(description="an HTTP status 100-599, or null")] = None
    interval_seconds: Annotated[float, Meta(ge=0.1, le=3600, description="seconds from 0.1 to 3600")] = 10.0
    timeout_seconds: Annotated[float, Meta(ge=0.05, le=600, description="seconds from 0.05 to 600")] = 2.0
    healthy_threshold: Annotated[int, Meta(ge=1, le=100, description="an integer from 1 to 100")] = 2
    unhealthy_threshold: Annotated[int, Meta(ge=1, le=100, description="an integer from 1 to 100")] = 3


Weight = Annotated[int, Meta(ge=0, le=1000, description="an integer from 0 to 1000")]
Priority = Annotated[int, Meta(ge=0, le=1000, description="an integer from 0 to 1000 (lower is preferred)")]
MAX_BACKENDS = 64


class BackendSpec(Body):
    """A backend as a tunnel's create or change gives it; with the `id` of an existing backend, that one is
    changed (it keeps its address and health), else a new one is made."""

    agent_id: Identifier
    target: TargetText
    id: Identifier | UnsetType = UNSET
    weight: Weight = 1
    priority: Priority = 0
    enabled: Flag = True
    draining: Annotated[bool, Meta(description="true or false (true: no new connections; running ones finish)")] \
        = False
    health_check: Annotated[HealthCheck | None, Meta(description="the tunnel's health check for this backend "
                                                                 "alone, or null")] = None


class BackendHealth(Body):
    status: protocol.HealthStatus
    last_check: Time | None
    error: str | None


class Backend(Body):
    id: str
    agent_id: str
    target: str
    address: Annotated[str, Meta(description="Its own address in the tunnel's subnet (.2 upward)")]
    weight: int
    priority: int
    enabled: bool
    draining: bool
    health_check: HealthCheck | None
    health: BackendHealth
    active_connections: Annotated[int, Meta(description="Connections the online gateways hold to it (what a "
                                                        "draining backend still has to finish)")]


class Tunnel(Body):
    id: str
    domain: Annotated[str | None, Meta(description="null for a tcp or udp tunnel without one")]
    agent_id: str
    target: str
    enabled: bool
    description: str
    subnet: str
    agent_ip: str
    gateway_ips: Annotated[dict[str, str], Meta(description="gateway id → its address in this tunnel's subnet")]
    tls_mode: protocol.TlsMode
    force_https: bool
    http_proxy_enabled: bool
    socks_proxy_enabled: bool
    created_at: Time
    certificate: Annotated[Certificate | None, Meta(
        description="The ACME certificate control stores and pushes to the gateways; null until one is obtained, "
                    "and for the other TLS modes. Never the key.")]
    protocol: TunnelProtocol
    public_port: Annotated[int | None, Meta(description="tcp/udp: the port every gateway listens on")]
    proxy_protocol: ProxyProtocol
    name: str | None
    udp_idle_timeout: float | None
    udp_max_flows: int | None
    bind_errors: Annotated[dict[str, str], Meta(
        description="gateway name → why it cannot listen on publicPort (tcp/udp tunnels)")]
    access: AccessView

    backends: Annotated[list[Backend], Meta(description="agentId, target and agentIp are the first one's")]
    health_check: HealthCheck
    affinity: bool


class TunnelCreate(Body, kw_only=True):
    domain: DomainName | None = None  # required for an http tunnel (control/ports.py says so)
    agent_id: Identifier | UnsetType = UNSET  # the one backend's (or give backends)
    target: TargetText | UnsetType = UNSET
    enabled: Flag = True
    description: Description = ""
    tls_mode: TlsMode = "acme"
    force_https: Flag = False
    http_proxy_enabled: Flag = False
    socks_proxy_enabled: Flag = False
    protocol: TunnelProtocol = "http"
    public_port: PublicPort = None
    proxy_protocol: ProxyProtocol = None
    name: OptionalName = None
    udp_idle_timeout: IdleTimeout = UDP_IDLE_TIMEOUT
    udp_max_flows: MaxFlows = UDP_MAX_FLOWS
    access: Access | None = None  # None: public
    backends: Annotated[list[BackendSpec], Meta(
        min_length=1, max_length=MAX_BACKENDS,
        description=f"a list of 1-{MAX_BACKENDS} backends (instead of agentId and target)")] | UnsetType = UNSET
    health_check: HealthCheck = msgspec.field(default_factory=HealthCheck)
    affinity: Annotated[bool, Meta(description="true or false (true: an HTTP client keeps its backend, by a "
                                                "cookie)")] = False
    alternatives: ClassVar[tuple[tuple[str, ...], ...]] = (("agentId", "target"), ("backends",))


def _changes(name: str, create: type[Body]) -> type[Body]:
    """The body of a PATCH: `create`'s fields, each optional (UNSET unless given)."""
    return msgspec.defstruct(name, [(field.name, field.type | UnsetType, UNSET)
                                    for field in msgspec.structs.fields(create)], bases=(Body,), module=__name__)


AgentUpdate = _changes("AgentUpdate", AgentCreate)
GatewayUpdate = _changes("GatewayUpdate", GatewayCreate)
TunnelUpdate = _changes("TunnelUpdate", TunnelCreate)
VIEWS = {"agent": Agent, "gateway": Gateway, "tunnel": Tunnel}
CREATED = {"agent": AgentWithKey, "gateway": GatewayWithKey, "tunnel": Tunnel}  # what a creation answers
CREATES = {"agent": AgentCreate, "gateway": GatewayCreate, "tunnel": TunnelCreate}
UPDATES = {"agent": AgentUpdate, "gateway": GatewayUpdate, "tunnel": TunnelUpdate}


class Install(Body):
    """Where this control serves the kakuremichi it runs (kakuremichi/control/dist.py): the wheel for pip and
    pipx, and a build context (its Containerfile and that wheel) for `podman build` / `docker build`."""

    version: str
    wheel_url: str
    image_context_url: str


# -- decoding --------------------------------------------------------------------------------------------------


def decode(model: type[Body], body: Any, what: str = "request") -> Body:
    """`body` (parsed JSON, or a form's values) as `model`; else an ApiError naming every field at fault."""
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "the request body must be a JSON object")
    errors = model.missing(body)
    try:
        decoded = msgspec.convert(body, model, dec_hook=_decode_hook)
        if not errors:
            return decoded
    except msgspec.ValidationError:
        pass  # msgspec stops at the first problem: look at each field for all of them
    fields = msgspec.structs.fields(model)
    known = {field.encode_name for field in fields}
    errors.update({name: "unknown field" for name in body if name not in known})
    for field in fields:
        if field.encode_name not in body:
            if field.required:
                errors[field.encode_name] = "required"
            continue
        try:
            msgspec.convert(body[field.encode_name], field.type, dec_hook=_decode_hook)
        except msgspec.ValidationError as exc:
            errors[field.encode_name] = _message(field.type, exc)
    raise ApiError(400, "validation_failed", f"invalid {what}: " + ", ".join(sorted(errors)), errors)


def _message(kind: Any, exc: msgspec.ValidationError) -> str:
    """"must be" and the field type's description, else what msgspec or kakuremichi.values said."""
    description = _description(kind)
    return f"must be {description}" if description else str(exc).partition(" - at `$")[0]


def _description(kind: Any) -> str | None:
    if typing.get_origin(kind) is Annotated:
        return next((meta.description for meta in kind.__metadata__
                     if isinstance(meta, Meta) and meta.description), None)
    return next(filter(None, map(_description, typing.get_args(kind))), None)  # a union: its described type


def given(values: Body) -> dict[str, Any]:
    """The fields a request set (PATCH: those it changes), by attribute name."""
    return {name: value for name, value in msgspec.structs.asdict(values).items() if value is not UNSET}


def page_query(args: Any) -> PageQuery:
    """The list query of `args` (the request's query string): ASCII-digit numbers only."""
    values = {field.encode_name: args[field.encode_name] for field in msgspec.structs.fields(PageQuery)
              if field.encode_name in args}
    return decode(PageQuery, {name: int(raw) if _QUERY_INTEGER.match(raw) else raw for name, raw in values.items()},
                  "query")


def as_json(value: Body) -> dict:
    """A body as JSON types (dicts, lists, strings): what services hand to the API and the web UI's templates."""
    return msgspec.to_builtins(value)

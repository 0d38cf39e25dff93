"""One tunnel's access policy as a gateway enforces it: ranked CIDR rules, the mode, the bypasses for native
apps, and what a session must carry to be let in.

Rules are tried in order and the first whose CIDR holds the client decides: `deny` answers 403, `bypass` lets
it through without logging in, `allow` lets it on to the login (or straight in on a public tunnel). A client
no rule holds is refused when the rules include an `allow` (they are then an allowlist), else it goes on.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import unquote_to_bytes

from kakuremichi.access.tokens import Claims

Action = Literal["allow", "deny", "bypass"]
ACTIONS = ("allow", "deny", "bypass")
Mode = Literal["public", "password", "sso"]
MODES = ("public", "password", "sso")
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
DEFAULT_SESSION_LIFETIME = 24 * 3600.0


@dataclass(frozen=True)
class Rule:
    action: Action
    network: IPNetwork

    @classmethod
    def parse(cls, action: str, cidr: str) -> Rule:
        """A rule from its wire form; ValueError names what is wrong."""
        if action not in ACTIONS:
            raise ValueError(f"rule action {action!r} is not one of {', '.join(ACTIONS)}")
        return cls(action, ipaddress.ip_network(cidr.strip(), strict=False))  # type: ignore[arg-type]


def decide(rules: tuple[Rule, ...], client_ip: str) -> Action | None:
    """The first matching rule's action; `deny` for a client outside an allowlist; None: no rule says."""
    if not rules:
        return None
    allowlist = any(rule.action == "allow" for rule in rules)
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return "deny" if allowlist else None
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for rule in rules:
        if address.version == rule.network.version and address in rule.network:
            return rule.action
    return "deny" if allowlist else None


def secret_digest(secret: str) -> str:
    """How a bypass secret is kept (hex SHA-256): it is a long random value, so no slow hash is needed."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class AccessPolicy:
    """What a gateway knows of one tunnel's access settings (hashable: routes carry it)."""

    tunnel_id: str
    key: bytes = b""  # the deployment's access key (signs and checks sessions and links)
    mode: Mode = "public"
    password_hash: str = ""
    rules: tuple[Rule, ...] = ()
    bypass_paths: tuple[str, ...] = ()
    bypass_secret_digest: str = ""
    allowed_emails: frozenset[str] = field(default_factory=frozenset)
    allowed_domains: frozenset[str] = field(default_factory=frozenset)
    allowed_groups: frozenset[str] = field(default_factory=frozenset)
    epoch: int = 0  # sessions issued under an older epoch are revoked
    revoked_links: frozenset[str] = field(default_factory=frozenset)
    revoked_before: float = 0.0  # sessions issued before this Unix time are revoked
    revoked_users: dict[str, float] = field(default_factory=dict, hash=False)  # e-mail → the same, per user
    session_lifetime: float = DEFAULT_SESSION_LIFETIME
    login_url: str = ""  # control's SSO login start (sso mode)

    @classmethod
    def from_config(cls, tunnel_id: str, config, key: bytes) -> AccessPolicy:
        """The policy of a route's pushed AccessConfig (kakuremichi.protocol), with the deployment's key."""
        return cls(tunnel_id, key, config.mode, config.password_hash,
                   tuple(Rule.parse(rule.action, rule.cidr) for rule in config.rules), tuple(config.bypass_paths),
                   config.bypass_secret_digest, frozenset(config.allowed_emails), frozenset(config.allowed_domains),
                   frozenset(config.allowed_groups), config.epoch, frozenset(config.revoked_links),
                   config.revoked_before, dict(config.revoked_users), float(config.session_lifetime),
                   config.login_url)

    def rule_for(self, client_ip: str) -> Action | None:
        return decide(self.rules, client_ip)

    def bypassed_path(self, target: bytes) -> bool:
        """Whether the request path falls under a bypass prefix. Dot segments and encoded slashes never
        bypass: `/caldav/../admin` must not slip past on the `/caldav/` prefix."""
        if not self.bypass_paths:
            return False
        path = target.split(b"?", 1)[0]
        decoded = unquote_to_bytes(path)
        if b"\\" in decoded or decoded.count(b"/") != path.count(b"/"):
            return False
        if any(segment in (b".", b"..") for segment in decoded.split(b"/")):
            return False
        text = decoded.decode("utf-8", "replace")
        return any(text.startswith(prefix) for prefix in self.bypass_paths)

    def bypassed_secret(self, presented: str) -> bool:
        if not self.bypass_secret_digest or not presented:
            return False
        return hmac.compare_digest(secret_digest(presented), self.bypass_secret_digest)

    def current(self, claims: Claims) -> bool:
        """Whether a genuine session is this tunnel's and not revoked (all, its user's, or its share link's)."""
        if claims.tunnel != self.tunnel_id or claims.epoch != self.epoch or claims.issued < self.revoked_before:
            return False
        if claims.email and claims.issued < self.revoked_users.get(claims.email, 0.0):
            return False
        return not claims.link or claims.link not in self.revoked_links

    def admits(self, claims: Claims) -> bool:
        """Whether a genuine session opens the tunnel: current, and of the kind its mode takes (single sign-on:
        a user the tunnel allows)."""
        if not self.current(claims):
            return False
        if claims.link:
            return True
        if self.mode == "password":
            return claims.user == "password"
        if self.mode == "sso":
            return self.allows_user(claims.email, claims.groups)
        return False

    def allows_user(self, email: str, groups: tuple[str, ...]) -> bool:
        """An SSO user passes if any list names them (no lists: any user of the providers)."""
        if not (self.allowed_emails or self.allowed_domains or self.allowed_groups):
            return bool(email)
        email = email.lower()
        return (email in self.allowed_emails
                or (bool(email) and email.rpartition("@")[2] in self.allowed_domains)
                or bool(self.allowed_groups.intersection(groups)))

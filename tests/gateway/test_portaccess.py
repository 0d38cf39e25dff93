"""Access to a tcp/udp tunnel's port: CIDR rules in order, the default they imply, the per-source limit, and the
grants of logins on the tunnel's login tunnel (against a fake clock)."""

from __future__ import annotations

from kakuremichi.gateway.portaccess import SourceCounts, rule_refusal
from kakuremichi.protocol import AccessRule, PortRoute


def route(*rules: tuple[str, str], limit: int | None = None, login: str | None = None,
          granted: dict[str, float] | None = None) -> PortRoute:
    return PortRoute("t1", "tcp", 20000, "10.1.0.2", "10.1.0.254", max_connections_per_source=limit,
                     access_rules=[AccessRule(action, cidr) for action, cidr in rules], login_tunnel_id=login,
                     granted=granted or {})


def allowed(port: PortRoute, client_ip: str, now: float = 1000.0) -> bool:
    return rule_refusal(port, client_ip, now) is None


def test_the_first_matching_rule_decides_and_allow_rules_close_the_rest():
    assert allowed(route(), "203.0.113.9")
    only_lan = route(("deny", "192.168.1.66/32"), ("allow", "192.168.1.0/24"))
    assert allowed(only_lan, "192.168.1.7") and not allowed(only_lan, "192.168.1.66")
    assert not allowed(only_lan, "203.0.113.9")  # an allow list admits only what it lists
    blocked = route(("deny", "198.51.100.0/24"))
    assert allowed(blocked, "203.0.113.9") and not allowed(blocked, "198.51.100.3")
    assert not allowed(blocked, "::ffff:198.51.100.3")  # a dual-stack listener's mapped client
    six = route(("allow", "2001:db8::/32"))
    assert allowed(six, "2001:db8::1") and not allowed(six, "10.0.0.1")


def test_the_limit_counts_what_each_address_holds():
    counts, limited = SourceCounts(), route(limit=2)
    with counts.holding(limited, "192.0.2.1"), counts.holding(limited, "192.0.2.1"):
        assert "maxConnectionsPerSource" in counts.refusal(limited, "192.0.2.1", 0.0)
        assert counts.refusal(limited, "192.0.2.2", 0.0) is None
    assert counts.refusal(limited, "192.0.2.1", 0.0) is None
    assert "access rules" in counts.refusal(route(("allow", "10.0.0.0/8")), "192.0.2.1", 0.0)


def test_a_login_tunnel_admits_only_granted_addresses_until_their_grant_ends():
    closed = route(login="web")
    assert not allowed(closed, "192.0.2.1")
    assert "loginTunnelId" in SourceCounts().refusal(closed, "192.0.2.1", 1000.0)
    open_ = route(login="web", granted={"192.0.2.1": 1060.0})
    assert allowed(open_, "192.0.2.1", now=1059.0) and allowed(open_, "::ffff:192.0.2.1", now=1059.0)
    assert not allowed(open_, "192.0.2.1", now=1060.0)  # expiry is checked at connection time, not at push
    assert not allowed(open_, "192.0.2.2", now=1000.0)
    assert not allowed(route(login="web", granted={"192.0.2.1": 1060.0}), "not an address")


def test_rules_still_decide_before_the_login_grants():
    granted = {"192.0.2.1": 2000.0, "198.51.100.7": 2000.0}
    port = route(("deny", "192.0.2.0/24"), ("bypass", "203.0.113.0/24"), login="web", granted=granted)
    assert not allowed(port, "192.0.2.1")  # a deny rule refuses even a granted address
    assert allowed(port, "203.0.113.5")  # a bypass rule admits without a login
    assert allowed(port, "198.51.100.7")  # no rule says: the grant admits
    lan = route(("allow", "10.0.0.0/8"), login="web")
    assert allowed(lan, "10.2.3.4") and not allowed(lan, "192.0.2.1")

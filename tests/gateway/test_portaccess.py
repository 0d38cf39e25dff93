"""Access to a tcp/udp tunnel's port: CIDR rules in order, the default they imply, and the per-source limit."""

from __future__ import annotations

from kakuremichi.gateway.portaccess import SourceCounts, allowed
from kakuremichi.protocol import AccessRule, PortRoute


def route(*rules: tuple[str, str], limit: int | None = None) -> PortRoute:
    return PortRoute("t1", "tcp", 20000, "10.1.0.2", "10.1.0.254", max_connections_per_source=limit,
                     access_rules=[AccessRule(action, cidr) for action, cidr in rules])


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
        assert "maxConnectionsPerSource" in counts.refusal(limited, "192.0.2.1")
        assert counts.refusal(limited, "192.0.2.2") is None
    assert counts.refusal(limited, "192.0.2.1") is None
    assert "access rules" in counts.refusal(route(("allow", "10.0.0.0/8")), "192.0.2.1")

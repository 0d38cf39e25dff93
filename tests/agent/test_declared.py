"""The agent's tunnels file is read with the protocol's checks plus its own (no unknown fields), and control
delegates a domain with every name under it, nothing beside it."""

from __future__ import annotations

import pytest

from kakuremichi import protocol
from kakuremichi.agent.declared import TunnelsFileError, parse
from kakuremichi.control.declarations import delegated


def test_a_tunnels_file_reads_as_canonical_declared_tunnels():
    tunnels = parse("tunnels:\n  - {domain: App.Home.Test, target: 'http://localhost:8080/', forceHttps: true}\n",
                    "t.yaml")
    assert tunnels == [protocol.DeclaredTunnel("app.home.test", "localhost:8080", "acme", True)]
    assert parse("", "t.yaml") == [] and parse("tunnels:\n", "t.yaml") == []


@pytest.mark.parametrize("text, message", [
    ("tunnels:\n  - {domain: a.home.test, target: 'localhost:1', tls: off}\n",
     "t.yaml: tunnels[0]: unknown field tls; the fields are domain, forceHttps, target, tlsMode"),
    ("tunnels:\n  - {domain: a.home.test}\n", "t.yaml: tunnels[0]: Object missing required field `target`"),
    ("tunnels: [\n", "t.yaml line 2: not YAML"),
    ("gateways: []\n", "t.yaml: must be a mapping with one key, tunnels"),
    ("tunnels:\n  - {domain: a.home.test, target: 'localhost:99999'}\n", "t.yaml: tunnels[0].target:"),
])
def test_a_broken_tunnels_file_says_where(text, message):
    with pytest.raises(TunnelsFileError) as raised:
        parse(text, "t.yaml")
    assert str(raised.value).startswith(message)


def test_a_delegated_domain_covers_the_names_under_it_only():
    assert delegated("home.test", ["home.test"]) and delegated("a.b.home.test", ["home.test"])
    assert delegated("*.home.test", ["home.test"])
    assert not delegated("myhome.test", ["home.test"]) and not delegated("test", ["home.test"])
    assert not delegated("home.test", [])

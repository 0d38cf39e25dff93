"""One grammar per value (kakuremichi.values): what each accepts, its canonical form, what it refuses and
why; and that control, the protocol decoder and the agent share it."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pony.orm import db_session

from kakuremichi import protocol
from kakuremichi.control import configs
from kakuremichi.control.models import open_database
from kakuremichi.values import (Domain, Endpoint, InvalidDomain, InvalidEndpoint, InvalidHost, InvalidTarget,
                                Target, request_host)
from tests.control.conftest import control, database_url, settings  # noqa: F401 (fixtures of the API test)


@pytest.mark.parametrize("text, canonical", [
    ("app.example.com", "app.example.com"),
    (" App.EXAMPLE.com. ", "app.example.com"),
    ("Bücher.example", "xn--bcher-kva.example"),
    ("straße.de", "xn--strae-oqa.de"),  # IDNA 2008, as browsers: ß is kept, not mapped to ss
    ("*.Example.com", "*.example.com"),
    ("*.example.co.uk", "*.example.co.uk"),
    ("app.localhost", "app.localhost"),  # RFC 6761: `kakuremichi dev`
    ("foo.github.io", "foo.github.io"),
    ("app.test", "app.test"),
    ("a-b.example.com", "a-b.example.com"),
    ("1.example.com", "1.example.com"),  # a numeric label is fine unless it is the last
])
def test_domains_accepted_in_canonical_form(text, canonical):
    domain = Domain.parse(text)
    assert str(domain) == canonical and Domain.parse(str(domain)) == domain
    assert domain.wildcard == canonical.startswith("*.")


@pytest.mark.parametrize("text, message", [
    ("*.com", "a wildcard must stand before a registered domain, like *.example.com (com is a public suffix)"),
    ("*.co.uk", "(co.uk is a public suffix)"),
    ("*.github.io", "(github.io is a public suffix)"),
    ("*.localhost", "(localhost is a public suffix)"),
    ("com", "has one label"),
    ("co.uk", "is a public suffix, shared by many owners (like com, co.uk or github.io): use a name under it, "
              "like app.co.uk"),
    ("github.io", "is a public suffix"),
    ("localhost", "localhost is every machine's own name: use a name under it like app.localhost"),
    ("2130706433", "reads as a numeric IPv4 address"),
    ("0x7f.1", "reads as a numeric IPv4 address"),
    ("127.1", "reads as a numeric IPv4 address"),
    ("1.0x7f", "reads as a numeric IPv4 address"),
    ("example.123", "reads as a numeric IPv4 address"),
    ("127.0.0.1", "is an IP address: a tunnel needs a host name"),
    ("::1", "without scheme, port or path"),
    ("https://app.example.com/", "without scheme, port or path"),
    ("app.example.com:443", "without scheme, port or path"),
    ("exa mple.com", "without scheme, port or path"),
    ("a..example.com", "has an empty label"),
    ("-a.example.com", "the label '-a': labels are 1-63 letters, digits or '-', not starting or ending with '-'"),
    ("a_b.example.com", "the label 'a_b'"),
    ("a.*.example.com", "the label '*'"),
    ("a" * 64 + ".com", "labels are 1-63"),
    (".".join(["a" * 63] * 4) + ".com", "longer than 253 characters"),
    ("xn--a.example.com", "is not valid punycode"),
    ("", "has no name"),
    (42, "must be a string"),
])
def test_domains_refused_saying_why(text, message):
    with pytest.raises(InvalidDomain) as refused:
        Domain.parse(text)
    assert message in str(refused.value)


@pytest.mark.parametrize("text, canonical, value", [
    ("localhost:8080", "localhost:8080", Target("localhost", 8080)),
    ("http://localhost", "localhost:80", Target("localhost", 80)),
    ("HTTP://LocalHost:3000/", "localhost:3000", Target("localhost", 3000)),
    ("https://127.0.0.1", "https://127.0.0.1:443", Target("127.0.0.1", 443, tls=True)),
    ("https://nas.lan:5001", "https://nas.lan:5001", Target("nas.lan", 5001, tls=True)),
    ("[::1]:8080", "[::1]:8080", Target("::1", 8080)),
    ("http://[0:0::1]", "[::1]:80", Target("::1", 80)),
    ("db_1:5432", "db_1:5432", Target("db_1", 5432)),  # a compose service name
])
def test_targets_accepted_in_canonical_form(text, canonical, value):
    target = Target.parse(text)
    assert target == value and str(target) == canonical and Target.parse(canonical) == target


@pytest.mark.parametrize("text, message", [
    ("tcp://127.0.0.1:8080", "the agent serves no tcp:// target; expected host:port, http://host[:port] or "
                             "https://host[:port], like localhost:8080"),
    ("ftp://files:21", "no ftp:// target"),
    ("localhost", "has no port: expected host:port, like localhost:8080"),
    ("http://localhost:3000/app", "a target has no path, query or fragment"),
    ("http://localhost/?a=1", "a target has no path, query or fragment"),
    ("http://user:pw@localhost", "a target has no user or password"),
    ("::1:8080", "write IPv6 hosts in brackets, like [2001:db8::1]:8080"),
    ("[::1:8080", "has an unclosed IPv6 bracket"),
    ("[example.com]:80", "only IPv6 addresses go in brackets"),
    ("localhost:0", "the port '0' is not a number from 1 to 65535"),
    ("localhost:65536", "the port '65536'"),
    ("localhost:²", "the port '²'"),
    (":8080", "has no host"),
    ("127.1:80", "reads as a numeric IPv4 address"),
    ("exa mple:80", "the label 'exa mple'"),
    (None, "must be a string"),
])
def test_targets_refused_saying_why(text, message):
    with pytest.raises(InvalidTarget) as refused:
        Target.parse(text)
    assert message in str(refused.value)


@pytest.mark.parametrize("text, canonical, address", [
    ("1.2.3.4:51820", "1.2.3.4:51820", ("1.2.3.4", 51820)),
    (" [FE80::1]:1 ", "[fe80::1]:1", ("fe80::1", 1)),
    ("Host.Example:65535", "host.example:65535", ("host.example", 65535)),
    ("gateway:51820", "gateway:51820", ("gateway", 51820)),
])
def test_endpoints_accepted_in_canonical_form(text, canonical, address):
    endpoint = Endpoint.parse(text)
    assert str(endpoint) == canonical and endpoint.address == address and Endpoint.parse(canonical) == endpoint


@pytest.mark.parametrize("text, message", [
    (":80", "has no host"), ("host", "has no port"), ("host:", "the port ''"), ("host:65536", "the port '65536'"),
    ("[::1]", "has no port: expected host:port, like [::1]:51820"), ("[::1]80", "expected :port after"),
    ("2001:db8::1:51820", "write IPv6 hosts in brackets"), ("[fe80::1%eth0]:1", "scoped IPv6"),
    ("udp://1.2.3.4:1", "must be host:port"),
])
def test_endpoints_refused_saying_why(text, message):
    with pytest.raises(InvalidEndpoint) as refused:
        Endpoint.parse(text)
    assert message in str(refused.value)


def test_request_hosts_of_the_gateway_match_the_domains_of_control():
    for spelling in ("App.Example.com", "app.example.com.:8443", b"APP.example.com"):
        assert request_host(spelling) == str(Domain.parse("app.example.com"))
    assert request_host("xn--bcher-kva.example") == str(Domain.parse("bücher.example"))
    assert request_host("[2001:DB8::1]:80") == "[2001:db8::1]"
    for bad in ("127.1", "2130706433:80", "*.example.com", "a b", "x:0"):
        with pytest.raises(InvalidHost):
            request_host(bad)


def test_the_protocol_decodes_to_canonical_forms_and_names_the_field():
    tunnel = protocol.TunnelMapping.from_json({"tunnelId": "t", "domain": "App.Example.com.", "agentIp": "10.1.0.2",
                                               "target": "HTTP://Localhost:3000/"})
    assert (tunnel.domain, tunnel.target) == ("app.example.com", "localhost:3000")
    peer = protocol.GatewayPeer.from_json({"publicKey": "A" * 43 + "=", "endpoint": "[2001:DB8::1]:51820",
                                           "allowedIps": []})
    assert peer.endpoint == "[2001:db8::1]:51820"
    for obj, message in (({"target": "tcp://127.0.0.1:8080"}, "^target: 'tcp://127.0.0.1:8080'"),
                         ({"domain": "*.com"}, "^domain: '*.com': a wildcard")):
        with pytest.raises(protocol.ProtocolError, match=message.replace("*", r"\*")):
            protocol.TunnelMapping.from_json({"tunnelId": "t", "domain": "a.test", "agentIp": "10.1.0.2",
                                              "target": "localhost:80", **obj})


def loaded_modules(imports: str, *prefixes: str) -> list[str]:
    """The modules under `prefixes` that a fresh interpreter has loaded after `import <imports>`."""
    code = f"import sys, {imports}; print(*sorted(m for m in sys.modules if m.startswith({prefixes!r})))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()


def test_values_load_no_trio_and_nothing_of_control_or_the_gateway():
    assert loaded_modules("kakuremichi.values, kakuremichi.httpheaders",
                          "trio", "kakuremichi.control", "kakuremichi.gateway") == []


def test_control_the_agent_and_egress_import_nothing_of_the_gateway():
    assert loaded_modules("kakuremichi.control.app, kakuremichi.agent.agent, kakuremichi.egress.httpproxy",
                          "kakuremichi.gateway") == []


async def test_control_refuses_what_the_agent_cannot_serve_naming_the_field(control):
    agent = await control.create("agents", name="home")
    for field, value, message in (("target", "tcp://127.0.0.1:8080", "the agent serves no tcp:// target"),
                                  ("domain", "*.com", "a wildcard must stand before a registered domain"),
                                  ("domain", "2130706433", "reads as a numeric IPv4 address"),
                                  ("domain", "localhost", "use a name under it like app.localhost")):
        body = {"domain": "app.example.com", "agentId": agent["id"], "target": "localhost:8080", field: value}
        response = await control.api.post("/api/tunnels", json=body)
        assert response.status_code == 400, (field, value)
        assert set(response.json()["details"]) == {field} and message in response.json()["details"][field]
    stored = await control.create("tunnels", domain="App.Localhost.", agentId=agent["id"],
                                  target="http://localhost:3000/")
    assert (stored["domain"], stored["target"]) == ("app.localhost", "localhost:3000")


def test_a_tunnel_stored_before_the_grammar_tightened_is_left_out_of_configs(tmp_path):
    db = open_database(f"sqlite:///{tmp_path}/control.sqlite")
    with db_session:
        agent = db.Agent(name="home", api_key_hash="a")
        gateway = db.Gateway(id="gw", name="gw", api_key_hash="g")
        for i, (domain, target) in enumerate([("*.com", "localhost:80"), ("old.test", "tcp://127.0.0.1:80"),
                                              ("app.test", "localhost:80")], 1):
            tunnel = db.Tunnel(domain=domain, agent=agent, target=target, subnet=f"10.{i}.0.0/24",
                               agent_ip=f"10.{i}.0.2")
            db.TunnelGatewayIp(tunnel=tunnel, gateway=gateway, ip=f"10.{i}.0.254")
        gateway_config = configs.gateway_config(db, "gw")
        agent_config = configs.agent_config(db, agent.id)
    assert [r.domain for r in gateway_config.routes] == ["app.test"]
    assert [t.domain for t in agent_config.tunnels] == ["app.test"] and agent_config.addresses == ["10.3.0.2"]
    # what is pushed decodes: one bad row no longer makes every gateway and agent refuse its whole config
    protocol.GatewayConfig.from_json(gateway_config.to_json(), 1)
    protocol.AgentConfig.from_json(agent_config.to_json(), 1)

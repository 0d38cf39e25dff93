"""Several gateways ordering one certificate together through control, against a real CA (Pebble).

Everything is the production code in one process over real sockets: control, gateway daemons with their
WireGuard tunnel to an agent, and the agent in front of a local app. Pebble validates HTTP-01 only through
a gateway that never orders (ACME off there), so issuance works only if the ordering gateway's challenge
reaches it through control.
"""

from __future__ import annotations

import inspect
import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio
from cryptography.hazmat.primitives import hashes

from kakuremichi.agent.agent import Agent
from kakuremichi.control.server import serve
from kakuremichi.control.state import Settings
from kakuremichi.controlclient import ControlClient
from kakuremichi.gateway.certs.acme import AcmeError, AcmeSettings
from kakuremichi.gateway.certs.manager import LeaseHeld
from kakuremichi.gateway.gateway import Gateway, Listen
from kakuremichi.tunnel import TunnelNode
from kakuremichi.wg import keyfile, keys
from tests.gateway.app import start_app
from tests.gateway.conftest import peer_certificate, tls_handshake
from tests.gateway.pebble import Pebble, free_port, needs_pebble

pytestmark = needs_pebble
DOMAIN = "shared.kakuremichi.test"
ADMIN = "kma_cluster-test-admin-token"


@dataclass
class Daemon:
    """One gateway daemon, stoppable on its own (as if its host went down)."""

    gateway: Gateway
    scope: trio.CancelScope

    @property
    def certs(self):
        return self.gateway.certs

    def serial(self) -> int | None:
        stored = self.certs.store.load(DOMAIN)
        return None if stored is None else stored.serial


class Cluster:
    """Control on a real port, and the daemons started against it in this test."""

    def __init__(self, nursery: trio.Nursery, tmp: Path, control_url: str, api: httpx.AsyncClient) -> None:
        self.nursery, self.tmp, self.api = nursery, tmp, api
        self.ws_url = control_url.replace("http://", "ws://") + "/ws"
        self.keys: dict[str, str] = {}

    async def create(self, kind: str, **body) -> dict:
        response = await self.api.post(f"/api/{kind}", json=body)
        assert response.status_code == 201, response.text
        self.keys[body["name"]] = response.json()["apiKey"]
        return response.json()

    async def tunnel(self, agent_id: str, target: str = "127.0.0.1:9") -> None:
        response = await self.api.post("/api/tunnels", json={"domain": DOMAIN, "agentId": agent_id,
                                                             "target": target, "tlsMode": "acme"})
        assert response.status_code == 201, response.text

    async def gateway(self, name: str, http_port: int, acme: AcmeSettings | None) -> Daemon:
        node = TunnelNode(keyfile.load_or_create(self.tmp / name / "wireguard.key"), listen_host="127.0.0.1")
        gateway = Gateway(node, self.tmp / name, Listen("127.0.0.1", http_port, 0, acme))
        client = gateway.control_client(self.ws_url, self.keys[name], f"127.0.0.1:{node.listen_port}",
                                        heartbeat=1.0)
        return Daemon(gateway, await self._run(gateway.run, client.run))

    async def agent(self, name: str) -> Agent:
        node = TunnelNode(keyfile.load_or_create(self.tmp / name / "wireguard.key"), listen_host="127.0.0.1")
        agent = Agent(node)
        client = ControlClient(self.ws_url, self.keys[name], "agent", keys.encode(node.public_key),
                               on_config=agent.apply, stats=agent.stats, heartbeat=1.0)
        await self._run(agent.run, client.run)
        return agent

    async def _run(self, *services) -> trio.CancelScope:
        async def run(task_status=trio.TASK_STATUS_IGNORED):
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as inner:
                    for service in services:
                        await inner.start(service)
                    task_status.started(scope)
        return await self.nursery.start(run)

    async def offline(self, name: str) -> bool:
        items = (await self.api.get("/api/gateways")).json()["items"]
        return next(g["status"] for g in items if g["name"] == name) == "offline"


@pytest.fixture
async def cluster(nursery, tmp_path):
    control_url = await nursery.start(serve, Settings(listen="127.0.0.1:0", data_dir=str(tmp_path / "control"),
                                                      admin_token=ADMIN, heartbeat_interval=1.0))
    async with httpx.AsyncClient(base_url=control_url, headers={"authorization": f"Bearer {ADMIN}"},
                                 timeout=10) as api:
        yield Cluster(nursery, tmp_path, control_url, api)


async def start_pebble(tmp_path: Path, http_port: int, started: list) -> tuple[Pebble, AcmeSettings, ssl.SSLContext]:
    """Pebble validating through `http_port`, the gateways' settings for it, and a context trusting its root."""
    pebble = Pebble(tmp_path, http_port=http_port)
    await pebble.start()
    started.append(pebble)
    acme = AcmeSettings(directory_url=pebble.directory_url, ca_bundle=str(pebble.ca_bundle), timeout=30)
    return pebble, acme, ssl.create_default_context(cadata=(await pebble.root_pem()).decode())


async def until(condition, what: str, timeout: float = 60) -> None:
    """Poll `condition` (plain or async) until it holds."""
    with trio.move_on_after(timeout):
        while True:
            result = condition()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
            await trio.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


async def served_certificate(daemon: Daemon, trust: ssl.SSLContext):
    stream = await tls_handshake(daemon.gateway.https_ports[0], DOMAIN, trust)
    certificate = peer_certificate(stream)
    await stream.aclose()
    return certificate


def orders(pebble: Pebble) -> int:
    """New orders the CA has received (its request log)."""
    return (pebble.workdir / "pebble.log").read_text(errors="replace").count("POST /order-plz")


async def test_gateways_share_challenges_and_certificates_through_control(nursery, tmp_path, cluster,
                                                                         pebble_processes, caplog):
    caplog.set_level(logging.DEBUG)
    app_port = await start_app(nursery, "behind-the-tunnel")
    for name in ("orderer", "validator", "latecomer"):
        await cluster.create("gateways", name=name)
    agent = await cluster.create("agents", name="home")
    await cluster.tunnel(agent["id"], f"127.0.0.1:{app_port}")
    validator_http = free_port()
    pebble, acme, trust = await start_pebble(tmp_path, validator_http, pebble_processes)  # reaches the validator only
    await cluster.agent("home")
    validator = await cluster.gateway("validator", validator_http, None)  # ACME off: it never orders
    await until(lambda: validator.gateway.routes.lookup(DOMAIN) is not None, "the validator's route")
    orderer = await cluster.gateway("orderer", free_port(), acme)

    # The orderer's challenge is answered by the validator, and both then serve the same certificate.
    await until(lambda: orderer.serial() is not None and validator.serial() == orderer.serial(), "issuance")
    first = await served_certificate(orderer, trust)
    assert (await served_certificate(validator, trust)).fingerprint(hashes.SHA256()) == \
        first.fingerprint(hashes.SHA256())
    assert first.serial_number == orderer.serial() and orders(pebble) == 1
    assert os.stat(validator.certs.store.path(DOMAIN)).st_mode & 0o777 == 0o600

    # An HTTPS client trusting the CA reaches the local app through the validator and the tunnel.
    async with httpx.AsyncClient(verify=trust, timeout=30) as client:
        async def through_tunnel() -> bool:
            response = await client.get(f"https://127.0.0.1:{validator.gateway.https_ports[0]}/hello",
                                        headers={"host": DOMAIN}, extensions={"sni_hostname": DOMAIN})
            return response.status_code == 200 and response.json()["app"] == "behind-the-tunnel"
        await until(through_tunnel, "HTTPS through the tunnel", 30)

    # A gateway started later gets the stored certificate from control and orders nothing.
    latecomer = await cluster.gateway("latecomer", free_port(), acme)
    await until(lambda: latecomer.serial() == first.serial_number, "the latecomer's certificate", 10)
    await until(lambda: latecomer.gateway.routes.lookup(DOMAIN) is not None, "the latecomer's route", 10)
    await trio.sleep(1)  # time enough to have ordered, had it wanted to
    assert (await served_certificate(latecomer, trust)).serial_number == first.serial_number
    assert orders(pebble) == 1 and not latecomer.certs.states[DOMAIN].history

    # While the orderer holds the lease and is online, nobody else orders, not even when forced.
    with pytest.raises(LeaseHeld, match="orderer"):
        await latecomer.certs.obtain(DOMAIN)
    # A domain none of its routes serves with ACME is refused as an error (backed off), not as a wait.
    with pytest.raises(AcmeError, match="does not serve it"):
        await latecomer.certs.obtain("elsewhere.example.test")
    # The holder goes offline: the lease passes on at once, and a forced renewal goes through the validator.
    orderer.scope.cancel()
    await until(lambda: cluster.offline("orderer"), "control to notice the orderer is gone", 10)
    renewed = await latecomer.certs.obtain(DOMAIN)
    assert renewed.serial != first.serial_number and orders(pebble) == 2
    await until(lambda: validator.serial() == renewed.serial, "the renewed certificate on the validator", 10)
    for daemon in (latecomer, validator):
        assert (await served_certificate(daemon, trust)).serial_number == renewed.serial

    # The private key travelled only over the control WebSocket: not in any log line, not in the REST API.
    for kind in ("gateways", "tunnels", "agents"):
        assert "PRIVATE KEY" not in (await cluster.api.get(f"/api/{kind}")).text
    assert not [r for r in caplog.records if "PRIVATE KEY" in r.getMessage() + str(getattr(r, "fields", ""))]


async def test_gateways_starting_together_order_once(tmp_path, cluster, pebble_processes, caplog):
    caplog.set_level(logging.INFO, logger="kakuremichi.gateway.certs")
    for name in ("gw1", "gw2"):
        await cluster.create("gateways", name=name)
    agent = await cluster.create("agents", name="home")
    http_ports = [free_port(), free_port()]
    pebble, acme, trust = await start_pebble(tmp_path, http_ports[0], pebble_processes)
    gateways = [await cluster.gateway(name, port, acme) for name, port in zip(("gw1", "gw2"), http_ports)]
    await cluster.tunnel(agent["id"])  # both get the route at the same moment, and both want a certificate

    await until(lambda: gateways[0].serial() is not None and gateways[0].serial() == gateways[1].serial(),
                "one certificate on both gateways")
    assert orders(pebble) == 1
    waited = [r for r in caplog.records if r.getMessage() == "another gateway orders this certificate; waiting for it"]
    assert len(waited) == 1 and waited[0].fields["holder"] in ("gw1", "gw2")
    assert all(not g.certs.states[DOMAIN].failures for g in gateways)  # waiting for a lease is no failure
    for daemon in gateways:
        assert (await served_certificate(daemon, trust)).serial_number == gateways[0].serial()

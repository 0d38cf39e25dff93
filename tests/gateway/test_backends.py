"""Balancing at the gateway over real local apps: weights, priorities, health, reachability, draining, retries."""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter

import httpx
import trio

from kakuremichi.gateway.backends import LIVENESS_LIMIT, PING_INTERVAL, Liveness
from kakuremichi.gateway.routes import Backend, Route, RouteTable
from tests.gateway.app import payload_sha256, start_app
from tests.gateway.conftest import start_gateway
from tests.gateway.test_proxy import closed_port

DOMAIN = "app.example.com"


def route(*backends: tuple[str, int, dict], affinity: bool = False) -> Route:
    """A route whose backends are local ports (the gateway's tests dial loopback, not agent addresses)."""
    base = Route(DOMAIN, "127.0.0.1", backends[0][1], tls="off")
    return dataclasses.replace(base, affinity=affinity, backends=tuple(
        Backend(name, dataclasses.replace(base, port=port, backend_id=name), **options)
        for name, port, options in backends))


async def apps_answering(client: httpx.AsyncClient, url: str, count: int, **options) -> Counter:
    shares = Counter()
    for _ in range(count):
        response = await client.get(url + "/headers", headers={"host": DOMAIN}, **options)
        shares[response.json()["app"] if response.status_code == 200 else response.status_code] += 1
    return shares


async def test_weights_and_priorities(nursery):
    one, two, spare = [await start_app(nursery, name) for name in ("one", "two", "spare")]
    table = RouteTable([route(("one", one, {"weight": 3}), ("two", two, {}), ("spare", spare, {"priority": 1}))])
    gateway = await start_gateway(nursery, table)
    async with httpx.AsyncClient() as client:
        assert await apps_answering(client, gateway.url, 40) == {"one": 30, "two": 10}
        table.replace([route(("one", one, {"health": "unhealthy"}), ("two", two, {"draining": True}),
                             ("spare", spare, {"priority": 1}))])
        assert await apps_answering(client, gateway.url, 5) == {"spare": 5}  # the fallback, only now
        table.replace([route(("one", one, {"enabled": False}), ("spare", spare, {"health": "unhealthy"}))])
        response = await client.get(gateway.url + "/headers", headers={"host": DOMAIN, "accept": "application/json"})
        assert response.status_code == 502 and response.json()["code"] == "no_healthy_backend"


async def test_an_agent_whose_session_is_silent_is_left_out(nursery):
    gateway, node, liveness = await agents_at(nursery, {"10.1.0.2": await start_app(nursery, "one"),
                                                        "10.1.0.3": await start_app(nursery, "two")})
    async with httpx.AsyncClient() as client:
        assert await apps_answering(client, gateway.url, 4) == {"one": 2, "two": 2}
        node.silent["10.1.0.2"] = LIVENESS_LIMIT + 0.5  # killed: its pings go unanswered
        assert await apps_answering(client, gateway.url, 4) == {"two": 4}
        node.silent["10.1.0.2"] = 0.0  # heard from again
        assert await apps_answering(client, gateway.url, 4) == {"one": 2, "two": 2}


async def test_requests_waiting_on_an_agent_that_goes_silent_are_retried_on_another(nursery):
    async def mute(stream):  # an agent that was killed: connections accepted (by the kernel), never answered
        await trio.sleep_forever()

    mute_port = (await nursery.start(trio.serve_tcp, mute, 0))[0].socket.getsockname()[1]
    gateway, node, liveness = await agents_at(nursery, {"10.1.0.2": mute_port,
                                                        "10.1.0.3": await start_app(nursery, "two")})
    liveness.on_down = gateway.proxy.backends.went_down
    await nursery.start(liveness.run)
    answers = []

    async def get(client):
        answers.append((await client.get(gateway.url + "/headers", headers={"host": DOMAIN})).json()["app"])

    async with httpx.AsyncClient(timeout=30) as client, trio.open_nursery() as requests:
        for _ in range(4):
            requests.start_soon(get, client)
        await trio.sleep(1)
        assert answers == ["two", "two"]  # the other two wait on the mute agent
        node.silent["10.1.0.2"] = LIVENESS_LIMIT + 1
    assert answers == ["two"] * 4  # retried once it was found silent, well before any timeout


async def agents_at(nursery, ports: dict[str, int]):
    """A gateway whose route's backends are agent addresses (`ports`: the local app each stands for), with their
    liveness read off a FakeNode: the gateway, the node and the liveness."""
    async def dial(upstream: Route) -> trio.abc.Stream:  # as the netstack would reach the agents
        return await trio.open_tcp_stream("127.0.0.1", ports[upstream.address])

    base = Route(DOMAIN, next(iter(ports)), 80, tls="off")
    table = RouteTable([dataclasses.replace(base, backends=tuple(
        Backend(address, dataclasses.replace(base, address=address, backend_id=address)) for address in ports))])
    gateway = await start_gateway(nursery, table, dial=dial)
    node = FakeNode(dict.fromkeys(ports, 0.0))
    liveness = Liveness(node, silence_limit=55)
    liveness.watched = dict.fromkeys(ports, "10.1.0.254")
    gateway.proxy.backends.reachable = liveness
    return gateway, node, liveness


class FakeNode:
    """The tunnel node as Liveness reads it: per address, seconds of silence (None: never reached us)."""

    def __init__(self, silent: dict[str, float | None]) -> None:
        self.silent = silent
        self.never_heard: set[str] = set()  # a peer with an endpoint but no session yet
        self.pings: list[tuple[str, str]] = []

    def silence(self, address: str) -> float | None:
        return self.silent.get(address)

    def peer_alive(self, address: str) -> bool:
        return address not in self.never_heard and self.silent.get(address) is not None

    def ping(self, source: str, address: str, sequence: int) -> None:
        self.pings.append((source, address))


async def test_liveness_pings_only_quiet_watched_agents(autojump_clock, nursery):
    node = FakeNode({"10.1.0.2": 0.0, "10.1.0.3": 5.0, "10.2.0.2": None, "10.3.0.2": 30.0, "10.4.0.2": 0.0})
    node.never_heard.add("10.4.0.2")
    liveness = Liveness(node, silence_limit=55)
    liveness.watched = {"10.1.0.2": "10.1.0.254", "10.1.0.3": "10.1.0.254", "10.2.0.2": "10.2.0.254",
                        "10.4.0.2": "10.4.0.254"}
    await nursery.start(liveness.run)
    await trio.sleep(PING_INTERVAL * 1.5)
    # the busy one and the unreachable one get none; the quiet one and the one without a session do
    assert node.pings == [("10.1.0.254", "10.1.0.3"), ("10.4.0.254", "10.4.0.2")]
    assert [liveness(a) for a in ("10.1.0.2", "10.1.0.3", "10.2.0.2", "10.3.0.2", "10.4.0.2", "10.9.0.2")] == [
        True, False, False, True, False, False]  # 10.3.0.2 is not watched: the keepalives' allowance applies


async def test_a_request_whose_backend_cannot_be_reached_goes_to_another(nursery):
    alive = await start_app(nursery, "alive")
    gateway = await start_gateway(nursery, RouteTable([route(("dead", closed_port(), {}), ("alive", alive, {}))]))
    async with httpx.AsyncClient() as client:
        assert await apps_answering(client, gateway.url, 10) == {"alive": 10}
        posted = await client.post(gateway.url + "/upload", headers={"host": DOMAIN}, content=b"x" * 1000)
        assert posted.status_code == 200 and posted.json()["length"] == 1000  # never sent: safe to send again


async def test_affinity_keeps_a_client_on_its_backend_by_a_cookie_while_it_is_up(nursery):
    ports = [await start_app(nursery, name) for name in ("a", "b", "c")]
    table = RouteTable([route(*((name, port, {}) for name, port in zip("abc", ports)), affinity=True)])
    gateway = await start_gateway(nursery, table)
    async with httpx.AsyncClient() as browser, httpx.AsyncClient() as other:
        shares = await apps_answering(browser, gateway.url, 9)
        assert len(shares) == 1  # the cookie from its first answer keeps it there
        (pinned,) = shares
        assert browser.cookies["kakuremichi-backend"] == pinned
        first = await other.get(gateway.url + "/headers", headers={"host": DOMAIN})
        assert "HttpOnly" in first.headers["set-cookie"]
        again = await other.get(gateway.url + "/headers", headers={"host": DOMAIN})
        assert "set-cookie" not in again.headers  # pinned already
        table.replace([route(*((name, port, {"health": "unhealthy"} if name == pinned else {})
                               for name, port in zip("abc", ports)), affinity=True)])
        moved = await apps_answering(browser, gateway.url, 6)
        assert len(moved) == 1 and pinned not in moved and browser.cookies["kakuremichi-backend"] in moved
    async with httpx.AsyncClient() as client:  # without affinity: no cookie
        table.replace([route(*((name, port, {}) for name, port in zip("abc", ports)))])
        assert "set-cookie" not in (await client.get(gateway.url + "/headers", headers={"host": DOMAIN})).headers


async def test_draining_lets_a_running_download_finish_while_new_requests_go_elsewhere(nursery):
    old, new = await start_app(nursery, "old"), await start_app(nursery, "new")
    table = RouteTable([route(("old", old, {}), ("new", new, {"priority": 1}))])
    gateway = await start_gateway(nursery, table)
    size = 20_000_000
    async with httpx.AsyncClient(timeout=60) as client:
        async with client.stream("GET", gateway.url + f"/download?size={size}", headers={"host": DOMAIN}) as download:
            assert download.status_code == 200
            chunks = download.aiter_bytes()
            first = await chunks.__anext__()
            table.replace([route(("old", old, {"draining": True}), ("new", new, {"priority": 1}))])
            assert gateway.proxy.backends.stats() == {"old": 1}
            assert await apps_answering(client, gateway.url, 3) == {"new": 3}
            digest = hashlib.sha256(first)
            async for chunk in chunks:
                digest.update(chunk)
        assert digest.hexdigest() == payload_sha256(size)
        table.replace([route(("new", new, {}))])  # removed once drained
        assert gateway.proxy.backends.stats() == {}


async def test_removing_a_backend_leaves_the_exchanges_of_the_one_that_stays(nursery):
    stays, goes = await start_app(nursery, "stays"), await start_app(nursery, "goes")
    table = RouteTable([route(("stays", stays, {}), ("goes", goes, {"priority": 1}))])
    gateway = await start_gateway(nursery, table)
    async with httpx.AsyncClient(timeout=30) as client, trio.open_nursery() as requests:
        answers = []

        async def slow() -> None:
            answers.append((await client.get(gateway.url + "/slow?delay=1", headers={"host": DOMAIN})).json())

        requests.start_soon(slow)
        await trio.sleep(0.3)
        table.replace([Route(DOMAIN, "127.0.0.1", stays, tls="off")])  # its one plain backend: no list
    assert answers == [{"app": "stays", "slow": True}]

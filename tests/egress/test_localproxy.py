"""The agent's local proxies on real loopback sockets: one client's failure stays with that client."""

from __future__ import annotations


import msgspec
import trio
import trio.testing

from kakuremichi.egress.dialer import ExitDialer
from kakuremichi.egress.localproxy import LocalProxies, ProxyListen
from kakuremichi.protocol import TunnelMapping

REQUESTS = {"socks": b"\x05\x01\x00\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x50",
            "http": b"GET http://127.0.0.1/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"}


class BrokenDialer(ExitDialer):
    """A dialer with a bug: the fault to contain."""

    async def open(self, routes, host, port):
        raise RuntimeError("a bug in the dialer")


async def test_a_failure_in_one_connection_leaves_the_proxies_serving(caplog):
    proxies = LocalProxies(BrokenDialer(node=None), ProxyListen(socks=("127.0.0.1", 0), http=("127.0.0.1", 0)))
    async with trio.open_nursery() as nursery:
        await nursery.start(proxies.run)
        await proxies.update([TunnelMapping("t1", "exit.example.test", "10.0.0.2", "127.0.0.1:1", socks_proxy=True,
                                            http_proxy=True, gateway_ips=["10.0.0.254"])])
        for _round in range(2):  # the second round finds both listeners still there
            for kind, request in REQUESTS.items():
                with trio.fail_after(10):
                    stream = await trio.open_tcp_stream("127.0.0.1", proxies.ports[kind])
                    await stream.send_all(request)
                    reply = b""
                    while data := await stream.receive_some():
                        reply += data
                    await stream.aclose()
                assert reply[:2] == (b"\x05\x00" if kind == "socks" else b""), reply  # closed after the greeting
        assert set(proxies.ports) == {"socks", "http"}
        assert proxies.faults.counts == {"RuntimeError": 4}  # counted, and logged once per interval:
        assert caplog.text.count("local proxy connection: unexpected error contained") == 1
        nursery.cancel_scope.cancel()


async def test_a_proxy_turned_off_and_on_at_once_keeps_its_port():
    """The old listener's cleanup runs after the new one started: it must not forget the new one's port."""
    proxies = LocalProxies(ExitDialer(node=None), ProxyListen(socks=("127.0.0.1", 0), http=("127.0.0.1", 0)))
    on = [TunnelMapping("t1", "exit.example.test", "10.0.0.2", "127.0.0.1:1", socks_proxy=True,
                        gateway_ips=["10.0.0.254"])]
    async with trio.open_nursery() as nursery:
        await nursery.start(proxies.run)
        await proxies.update(on)
        await proxies.update([msgspec.structs.replace(on[0], socks_proxy=False)])
        await proxies.update(on)
        await trio.testing.wait_all_tasks_blocked()
        assert set(proxies.ports) == {"socks"}
        stream = await trio.open_tcp_stream("127.0.0.1", proxies.ports["socks"])
        await stream.aclose()
        nursery.cancel_scope.cancel()

"""The agent also interoperates at the WireGuard layer: here wireguard-go and the Linux kernel stand in for
our gateway, and the kernel's curl reaches the agent's local app through the tunnel."""

from __future__ import annotations

import subprocess
import sys

import pytest
import trio

from kakuremichi.agent.agent import Agent
from kakuremichi.protocol import AgentConfig, GatewayPeer, TunnelMapping
from kakuremichi.tunnel import TunnelNode
from kakuremichi.wg import keys
from tests.netns import KernelWireGuardPeer, require_netns

pytestmark = pytest.mark.netns


async def test_kernel_gateway_reaches_the_agents_local_app(tmp_path):
    require_netns()
    (tmp_path / "index.html").write_text("served from behind the agent\n")
    app = subprocess.Popen([sys.executable, "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory",
                            str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        app_port = int(app.stdout.readline().split("port ")[1].split()[0])
        with KernelWireGuardPeer("10.1.0.254/24") as kernel:
            node = TunnelNode(keys.generate_private(), listen_host=kernel.host_ip)
            agent = Agent(node)
            kernel.set_peer(node.public_key, allowed_ips="10.1.0.2/32")
            async with trio.open_nursery() as nursery:
                await nursery.start(agent.run)
                await agent.apply(AgentConfig(
                    version=1, addresses=["10.1.0.2"],
                    gateways=[GatewayPeer(keys.encode(kernel.public_key), f"{kernel.ns_ip}:{kernel.listen_port}",
                                          ["10.1.0.254/32"], 25)],
                    tunnels=[TunnelMapping("t1", "app.example.test", "10.1.0.2", f"127.0.0.1:{app_port}")]))
                result = await trio.to_thread.run_sync(lambda: kernel.exec(
                    "curl", "-sS", "--max-time", "10", "-H", "Host: app.example.test", "http://10.1.0.2/",
                    check=False))
                assert result.returncode == 0, result.stderr
                assert result.stdout == "served from behind the agent\n"
                assert kernel.latest_handshake(node.public_key) > 0
                nursery.cancel_scope.cancel()
    finally:
        app.kill()

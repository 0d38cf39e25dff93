"""Many agents in one process, for the scale benchmark: each is the real Agent on its own TunnelNode (own
WireGuard key and UDP socket, own netstack) with its own ControlClient session, all in one Trio loop,
because 100 agent processes would cost gigabytes before measuring anything.

Run as `python bench/agent_swarm.py CONTROL_URL KEYS_FILE` where KEYS_FILE holds one agt_ key per line;
prints "ready" once every agent runs (connecting to control happens after, as with real agents).
"""

from __future__ import annotations

import sys

import trio

from kakuremichi import command, logs
from kakuremichi.agent.agent import Agent
from kakuremichi.tunnel import TunnelNode
from kakuremichi.wg import keys


async def main(control_url: str, api_keys: list[str]) -> None:
    async with trio.open_nursery() as nursery:
        for api_key in api_keys:
            node = TunnelNode(keys.generate_private(), listen_host="127.0.0.1")
            agent = Agent(node)
            client = agent.control_client(control_url, api_key)
            await nursery.start(agent.run)
            await nursery.start(client.run)
        print("ready", flush=True)


if __name__ == "__main__":
    logs.setup("warning")
    url, keys_file = sys.argv[1:]
    sys.exit(command.run("agent_swarm", main, url, open(keys_file).read().split()))

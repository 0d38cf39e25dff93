"""The one `kakuremichi` console script: each subcommand is a component's own command line."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "wg": ("kakuremichi.tools.cli", "userspace WireGuard tools: genkey, pubkey, genpsk, ping, forward, expose"),
    "control": ("kakuremichi.control.cli", "run the control server (web UI, REST API and the WebSocket that configures gateways and agents)"),
    "gateway": ("kakuremichi.gateway.cli", "run a public gateway"),
    "agent": ("kakuremichi.agent.cli", "run an agent next to private services"),
    "status": ("kakuremichi.status", "what a running agent or gateway sees: control link, peers, tunnels"),
    "dev": ("kakuremichi.dev", "control + gateway + agent in one process, exposing a local port"),
    "healthcheck": ("kakuremichi.healthcheck", "exit 0 when this container's control, gateway or agent serves"),
}


def usage() -> str:
    lines = ["usage: kakuremichi [--version] COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<12} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "options:", f"  {'--version':<12} print the version and exit",
              "", "Run `kakuremichi COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] == "--version":
        from kakuremichi import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"kakuremichi: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(COMMANDS[name][0])
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("kakuremichi"):
            print(f"kakuremichi: command {name!r} is not available in this build", file=sys.stderr)
            return 2
        raise
    return module.main(rest, prog=f"kakuremichi {name}")


if __name__ == "__main__":
    sys.exit(main())

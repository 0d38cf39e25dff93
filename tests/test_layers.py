"""The sans-IO cores load no I/O: importing one brings in neither Trio nor any daemon package, so a core can be
fed bytes and a clock anywhere (tests, fuzzers, another event loop)."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

CORES = ["kakuremichi.netstack.stack", "kakuremichi.netstack.tcp", "kakuremichi.netstack.ipv4",
         "kakuremichi.wg.device", "kakuremichi.egress.socks5", "kakuremichi.protocol", "kakuremichi.values",
         "kakuremichi.faults", "kakuremichi.httpheaders", "kakuremichi.buckets", "kakuremichi.h1parse",
         "kakuremichi.proxyprotocol", "kakuremichi.access.gate", "kakuremichi.balancing", "kakuremichi.health"]
FORBIDDEN = ("trio", "kakuremichi.gateway", "kakuremichi.control", "kakuremichi.agent")


@pytest.mark.parametrize("core", CORES)
def test_importing_a_core_loads_no_io(core):
    probe = (f"import sys, {core}; "
             f"print(sorted(m for m in sys.modules if m.split('.')[0] == 'trio' or m.startswith({FORBIDDEN[1:]!r})))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]", f"importing {core} loaded {loaded.strip()}"


def test_gateway_egress_and_agent_ask_the_tunnel_node_not_its_device():
    """They use TunnelNode's silence / peer_alive / hint_endpoint / endpoints, not the device's peer tables, so
    the WireGuard core can change inside without the daemons following it."""
    root = Path(__file__).parent.parent / "kakuremichi"
    reaching = [f"{path.relative_to(root)}:{number}" for package in ("gateway", "egress", "agent")
                for path in sorted((root / package).rglob("*.py"))
                for number, line in enumerate(path.read_text().splitlines(), 1)
                if re.search(r"\.device\.(peers|allowed_ips|clock)\b", line)]
    assert reaching == []


def test_netstack_modules_import_each_other_without_a_circle():
    """Each layer of the stack only calls down (a connection hands its output back to the stack, a stream
    asks its driver through a Protocol), so every module reads without the ones above it; type-only
    imports count too."""
    package = Path(__file__).parent.parent / "kakuremichi" / "netstack"
    names = {path.stem for path in package.glob("*.py")}
    imports = {}
    for path in package.glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kakuremichi.netstack."):
                found.add(node.module.split(".")[2])
            elif isinstance(node, ast.ImportFrom) and node.module == "kakuremichi.netstack":
                found.update(alias.name for alias in node.names)
        imports[path.stem] = found & names

    def reaches(start: str, target: str, seen: set) -> bool:
        return any(step == target or (step not in seen and reaches(step, target, seen | {step}))
                   for step in imports[start])

    assert [name for name in sorted(names) if reaches(name, name, set())] == []

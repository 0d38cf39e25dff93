"""The `kakuremichi wg` command line: key tools match `wg`, and `ping` works through wireguard-go."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kakuremichi.wg import keys
from tests.netns import KernelWireGuardPeer, require_netns

ROOT = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(ROOT))


def wg_tool(*args: str, stdin: str = "", check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kakuremichi.tools", *args], input=stdin, text=True,
                          capture_output=True, env=ENV, check=check, timeout=60)


def test_genkey_pubkey_genpsk_roundtrip():
    private = wg_tool("genkey").stdout.strip()
    assert len(keys.decode(private)) == 32
    raw = keys.decode(private)
    assert raw[0] & 7 == 0 and raw[31] & 0x80 == 0 and raw[31] & 0x40  # clamped like `wg genkey`
    public = wg_tool("pubkey", stdin=private + "\n").stdout.strip()
    assert public == keys.encode(keys.public_from_private(raw))
    assert len(keys.decode(wg_tool("genpsk").stdout)) == 32


@pytest.mark.skipif(shutil.which("wg") is None, reason="needs wireguard-tools")
def test_pubkey_matches_wireguard_tools():
    private = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout
    theirs = subprocess.run(["wg", "pubkey"], input=private, capture_output=True, text=True, check=True).stdout
    assert wg_tool("pubkey", stdin=private).stdout == theirs


def test_pubkey_rejects_garbage_with_a_clear_error():
    result = wg_tool("pubkey", stdin="not a key\n", check=False)
    assert result.returncode == 1
    assert "base64" in result.stderr and "Traceback" not in result.stderr


def test_ping_reports_config_errors_with_line_numbers(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text("[Interface]\nPrivateKey = nope\n")
    result = wg_tool("ping", "--config", str(conf), "10.0.0.1", check=False)
    assert result.returncode == 2
    assert f"{conf}:2:" in result.stderr and "PrivateKey" in result.stderr
    assert "Traceback" not in result.stderr


def _our_config(tmp_path, kernel: KernelWireGuardPeer, private: bytes) -> Path:
    conf = tmp_path / "ours.conf"
    conf.write_text(f"""# our end of the tunnel
[Interface]
PrivateKey = {keys.encode(private)}
Address = 10.77.0.1/24
DNS = 1.1.1.1

[Peer]
PublicKey = {keys.encode(kernel.public_key)}
Endpoint = {kernel.ns_ip}:{kernel.listen_port}
AllowedIPs = 10.77.0.0/24
""")
    return conf


@pytest.mark.netns
def test_ping_through_wireguard_go(tmp_path):
    require_netns()
    private = keys.generate_private()
    with KernelWireGuardPeer("10.77.0.2/24") as kernel:
        kernel.set_peer(keys.public_from_private(private), allowed_ips="10.77.0.1/32")
        result = wg_tool("ping", "--config", str(_our_config(tmp_path, kernel, private)), "-c", "3", "-i", "0.2",
                         "10.77.0.2", check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("bytes from 10.77.0.2: icmp_seq=") == 3
    assert "3 packets transmitted, 3 received, 0% packet loss" in result.stdout


@pytest.mark.netns
def test_ping_exits_1_when_the_peer_does_not_know_us(tmp_path):
    require_netns()
    with KernelWireGuardPeer("10.77.0.2/24") as kernel:
        kernel.set_peer(keys.public_from_private(keys.generate_private()), allowed_ips="10.77.0.1/32")
        result = wg_tool("ping", "--config", str(_our_config(tmp_path, kernel, keys.generate_private())),
                         "-c", "2", "-i", "0.2", "-W", "1", "10.77.0.2", check=False)
    assert result.returncode == 1
    assert "2 packets transmitted, 0 received, 100% packet loss" in result.stdout

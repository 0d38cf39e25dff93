"""wg-quick configuration files: a full valid file, and bad ones whose errors name the line and the problem."""

from __future__ import annotations

import ipaddress
import re

import pytest

from kakuremichi.wg import keys
from kakuremichi.wg.config import ConfigError, load, parse

PRIVATE = bytes([0x48] * 31 + [0x41])  # fixed keys: test ids stay stable
PEER1, PEER2 = keys.public_from_private(bytes([1] * 32)), keys.public_from_private(bytes([2] * 32))
PSK = bytes(range(32))
E = keys.encode

VALID = f"""\
# a full wg-quick file
[Interface]
PrivateKey = {E(PRIVATE)}
ListenPort = 51820
Address = 10.0.0.1/24
Address = fd00::1/64, 10.0.1.1/24
MTU = 1380
DNS = 1.1.1.1, 8.8.8.8
PostUp = iptables -A FORWARD -i %i -j ACCEPT
SaveConfig = true

[Peer]   # the gateway
PublicKey = {E(PEER1)}
PresharedKey = {E(PSK)}
Endpoint = [::1]:51820
AllowedIPs = 10.0.0.2/32, fd00::2/128
AllowedIPs = 192.168.0.0/16
PersistentKeepalive = off

[peer]
publickey={E(PEER2)}
endpoint = gw.example.com:4500
allowedips = 0.0.0.0/0
persistentkeepalive = 25
"""


def test_full_valid_file():
    config = parse(VALID, "wg0.conf")
    assert config.private_key == PRIVATE and config.listen_port == 51820 and config.mtu == 1380
    assert config.addresses == [ipaddress.ip_interface(a) for a in ("10.0.0.1/24", "fd00::1/64", "10.0.1.1/24")]
    first, second = config.peers
    assert first.public_key == PEER1 and first.preshared_key == PSK
    assert first.endpoint == ("::1", 51820)
    assert first.allowed_ips == [ipaddress.ip_network(n) for n in ("10.0.0.2/32", "fd00::2/128", "192.168.0.0/16")]
    assert first.persistent_keepalive == 0
    assert second.public_key == PEER2 and second.preshared_key is None
    assert second.endpoint == ("gw.example.com", 4500) and second.persistent_keepalive == 25
    assert second.allowed_ips == [ipaddress.ip_network("0.0.0.0/0")]


def test_minimal_file_defaults():
    config = parse(f"[Interface]\nPrivateKey = {E(PRIVATE)}\n")
    assert config.listen_port is None and config.addresses == [] and config.peers == [] and config.mtu == 1420


def test_load_reads_a_file_and_names_it_in_errors(tmp_path):
    path = tmp_path / "wg0.conf"
    path.write_text(VALID)
    assert load(path).peers[0].public_key == PEER1
    path.write_text("[Interface]\nPrivateKey = short\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}:2:")):
        load(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "missing.conf")


def error_of(text: str) -> tuple[int, str]:
    with pytest.raises(ConfigError) as info:
        parse(text, "bad.conf")
    message = str(info.value)
    match = re.match(r"bad\.conf:(\d+): (.+)", message)
    assert match, f"error does not name a line: {message!r}"
    return int(match.group(1)), match.group(2)


INTERFACE = f"[Interface]\nPrivateKey = {E(PRIVATE)}\n"


BAD_FILES = [
    ("[Interface]\nPrivateKey = not*base64\n", 2, ["PrivateKey", "base64"]),
    (f"[Interface]\nPrivateKey = {E(bytes(16))}\n", 2, ["PrivateKey", "16 bytes"]),
    (INTERFACE + "Colour = blue\n", 3, ["unknown", "colour"]),
    (INTERFACE + "ListenPort = 70000\n", 3, ["ListenPort", "70000"]),
    (INTERFACE + "ListenPort = http\n", 3, ["ListenPort", "http"]),
    (INTERFACE + "Address = 10.0.0.300/24\n", 3, ["10.0.0.300"]),
    (INTERFACE + "MTU = 100\n", 3, ["MTU"]),
    (INTERFACE + "MTU = big\n", 3, ["big"]),
    (INTERFACE + "ListenPort = 1\nListenPort = 2\n", 4, ["twice"]),
    (INTERFACE + "\n[Peer]\nPublicKey = abc\n", 5, ["PublicKey", "base64"]),
    (INTERFACE + f"[Peer]\nPublicKey = {E(PEER1)}\nAllowedIPs = 10.0.0.0/33\n", 5, ["10.0.0.0/33"]),
    (INTERFACE + f"[Peer]\nPublicKey = {E(PEER1)}\nAllowedIPs = banana\n", 5, ["banana"]),
    (INTERFACE + f"[Peer]\nPublicKey = {E(PEER1)}\nEndpoint = 1.2.3.4\n", 5, ["1.2.3.4", "host:port"]),
    (INTERFACE + f"[Peer]\nPublicKey = {E(PEER1)}\nEndpoint = 1.2.3.4:0\n", 5, ["port", "0"]),
    (INTERFACE + f"[Peer]\nPublicKey = {E(PEER1)}\nEndpoint = [::1]:99999\n", 5, ["99999"]),
    (INTERFACE + f"[Peer]\nPublicKey = {E(PEER1)}\nEndpoint = [::1]\n", 5, ["[::1]"]),
    (INTERFACE + f"[Peer]\nPublicKey = {E(PEER1)}\nPresharedKey = {E(bytes(31))}\n", 5, ["PresharedKey", "31"]),
    (INTERFACE + f"[Peer]\nPublicKey = {E(PEER1)}\nPersistentKeepalive = -1\n", 5, ["PersistentKeepalive"]),
    (INTERFACE + f"[Peer]\nPublicKey = {E(PEER1)}\nPersistentKeepalive = often\n", 5, ["often"]),
    (INTERFACE + f"[Peer]\nPublicKey = {E(PEER1)}\nDNS = 1.1.1.1\n", 5, ["unknown", "dns"]),
    ("PrivateKey = x\n[Interface]\n", 1, ["before", "section"]),
    ("\n# comment\nListenPort = 1\n", 3, ["before", "section"]),
    (INTERFACE + "[Interface]\n", 3, ["second [Interface]"]),
    (INTERFACE + "[Peers]\n", 3, ["unknown section"]),
    (INTERFACE + "just some words\n", 3, ["Key = Value"]),
]


@pytest.mark.parametrize("text,line,words", BAD_FILES, ids=[f"{i}-{w[-1]}" for i, (_, _, w) in enumerate(BAD_FILES)])
def test_errors_name_the_line_and_the_problem(text, line, words):
    got_line, message = error_of(text)
    assert got_line == line, message
    for word in words:
        assert word.lower() in message.lower(), message


def test_error_on_the_first_of_two_repeated_lines_names_that_line():
    """AllowedIPs and Address may repeat; a bad value must be reported on its own line, not the last one."""
    text = INTERFACE + f"[Peer]\nPublicKey = {E(PEER1)}\nAllowedIPs = 10.0.0.0/33\nAllowedIPs = 10.1.0.0/16\n"
    assert error_of(text)[0] == 5
    text = "[Interface]\nAddress = 10.0.0.999/24\nAddress = 10.0.1.1/24\nPrivateKey = " + E(PRIVATE) + "\n"
    assert error_of(text)[0] == 2


def test_missing_private_key_names_the_interface_section():
    line, message = error_of("# comment\n[Interface]\nListenPort = 51820\n")
    assert line in (2, 3) and "PrivateKey" in message


@pytest.mark.parametrize("text,lines", [
    (INTERFACE + "[Peer]\nEndpoint = 1.2.3.4:5\nAllowedIPs = 10.0.0.0/8\n", (3, 4, 5)),
    (INTERFACE + f"[Peer]\n[Peer]\nPublicKey = {E(PEER1)}\n", (3,)),
], ids=["keys-but-no-PublicKey", "empty-section"])
def test_missing_public_key_names_the_peer_section(text, lines):
    line, message = error_of(text)
    assert line in lines and "PublicKey" in message


def test_no_interface_section_at_all():
    with pytest.raises(ConfigError, match="no \\[Interface\\]"):
        parse(f"[Peer]\nPublicKey = {E(PEER1)}\n", "bad.conf")

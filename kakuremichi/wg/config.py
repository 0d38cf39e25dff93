"""wg-quick configuration files: the `[Interface]`/`[Peer]` format every WireGuard user already has.

Errors name the file, the line and what is wrong, because a typo in a key file is the most common way a
tunnel fails to come up.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from kakuremichi.wg import keys
from kakuremichi.wg.constants import DEFAULT_MTU

# wg-quick keys that only make sense for a kernel interface; accepted so existing files load unchanged.
_IGNORED_INTERFACE_KEYS = {"dns", "table", "preup", "postup", "predown", "postdown", "saveconfig", "fwmark"}


class ConfigError(ValueError):
    pass


@dataclass
class PeerConfig:
    public_key: bytes
    preshared_key: bytes | None = None
    endpoint: tuple[str, int] | None = None
    allowed_ips: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(default_factory=list)
    persistent_keepalive: int = 0


@dataclass
class InterfaceConfig:
    private_key: bytes
    listen_port: int | None = None
    addresses: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface] = field(default_factory=list)
    mtu: int = DEFAULT_MTU
    peers: list[PeerConfig] = field(default_factory=list)


def load(path: str | Path) -> InterfaceConfig:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc.strerror}") from exc
    return parse(text, str(path))


def parse(text: str, name: str = "<config>") -> InterfaceConfig:
    interface: dict[str, tuple[int, str]] | None = None
    peers: list[dict[str, tuple[int, str]]] = []
    section: dict[str, tuple[int, str]] | None = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{name}:{lineno}"
        if line.startswith("["):
            title = line.strip("[]").strip().lower()
            if not line.endswith("]") or title not in ("interface", "peer"):
                raise ConfigError(f"{where}: unknown section {line!r}; expected [Interface] or [Peer]")
            if title == "interface":
                if interface is not None:
                    raise ConfigError(f"{where}: second [Interface] section; a file describes one interface")
                section = interface = {}
            else:
                section = {}
                peers.append(section)
            continue
        if section is None:
            raise ConfigError(f"{where}: {line!r} comes before any [Interface] or [Peer] section")
        key, sep, value = line.partition("=")
        if not sep:
            raise ConfigError(f"{where}: expected `Key = Value`, got {line!r}")
        key = key.strip().lower()
        if key in section and key not in ("address", "allowedips"):
            raise ConfigError(f"{where}: {key!r} is given twice in this section")
        previous = section.get(key)
        value = value.strip()
        section[key] = (lineno, f"{previous[1]},{value}" if previous else value)
    if interface is None:
        raise ConfigError(f"{name}: no [Interface] section")
    return _build_interface(interface, peers, name)


def _build_interface(entries, peers, name) -> InterfaceConfig:
    known = {"privatekey", "listenport", "address", "mtu"}
    for key, (lineno, _) in entries.items():
        if key not in known and key not in _IGNORED_INTERFACE_KEYS:
            raise ConfigError(f"{name}:{lineno}: unknown [Interface] key {key!r}")
    if "privatekey" not in entries:
        raise ConfigError(f"{name}: [Interface] has no PrivateKey (generate one with `kakuremichi wg genkey`)")
    with _at(name, entries, "privatekey"):
        config = InterfaceConfig(private_key=keys.decode(entries["privatekey"][1], "PrivateKey"))
    if "listenport" in entries:
        with _at(name, entries, "listenport"):
            config.listen_port = _port(entries["listenport"][1], "ListenPort", allow_zero=True)
    if "address" in entries:
        with _at(name, entries, "address"):
            config.addresses = [ipaddress.ip_interface(a.strip()) for a in _items(entries["address"][1])]
    if "mtu" in entries:
        with _at(name, entries, "mtu"):
            config.mtu = int(entries["mtu"][1])
            if not 576 <= config.mtu <= 65535:
                raise ValueError("MTU must be between 576 and 65535")
    config.peers = [_build_peer(p, name) for p in peers]
    return config


def _build_peer(entries, name) -> PeerConfig:
    known = {"publickey", "presharedkey", "endpoint", "allowedips", "persistentkeepalive"}
    for key, (lineno, _) in entries.items():
        if key not in known:
            raise ConfigError(f"{name}:{lineno}: unknown [Peer] key {key!r}")
    if "publickey" not in entries:
        line = min(lineno for lineno, _ in entries.values()) if entries else "?"
        raise ConfigError(f"{name}:{line}: [Peer] has no PublicKey")
    with _at(name, entries, "publickey"):
        peer = PeerConfig(public_key=keys.decode(entries["publickey"][1], "PublicKey"))
    if "presharedkey" in entries:
        with _at(name, entries, "presharedkey"):
            peer.preshared_key = keys.decode(entries["presharedkey"][1], "PresharedKey")
    if "endpoint" in entries:
        with _at(name, entries, "endpoint"):
            peer.endpoint = parse_endpoint(entries["endpoint"][1])
    if "allowedips" in entries:
        with _at(name, entries, "allowedips"):
            peer.allowed_ips = [ipaddress.ip_network(a.strip(), strict=False)
                                for a in _items(entries["allowedips"][1])]
    if "persistentkeepalive" in entries:
        with _at(name, entries, "persistentkeepalive"):
            value = entries["persistentkeepalive"][1].lower()
            peer.persistent_keepalive = 0 if value == "off" else int(value)
            if not 0 <= peer.persistent_keepalive <= 65535:
                raise ValueError("PersistentKeepalive must be 0-65535 seconds or 'off'")
    return peer


def parse_endpoint(text: str) -> tuple[str, int]:
    """`host:port` or `[v6addr]:port` into (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"endpoint {text!r} must be host:port (IPv6 as [addr]:port)")
    return host, _port(port, "endpoint port")


def _port(text: str, what: str, allow_zero: bool = False) -> int:
    try:
        port = int(text)
    except ValueError:
        raise ValueError(f"{what} {text!r} is not a number") from None
    if not (0 if allow_zero else 1) <= port <= 65535:
        raise ValueError(f"{what} {port} is out of range")
    return port


def _items(value: str) -> list[str]:
    return [v for v in (x.strip() for x in value.split(",")) if v]


class _at:
    """Re-raise a value error from parsing one key as a ConfigError naming its line."""

    def __init__(self, name: str, entries: dict, key: str) -> None:
        self.where = f"{name}:{entries[key][0]}"

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None and issubclass(exc_type, ValueError) and not issubclass(exc_type, ConfigError):
            raise ConfigError(f"{self.where}: {exc}") from exc
        return False

"""wg-quick configuration files: the `[Interface]`/`[Peer]` format every WireGuard user already has.

Errors name the file, the line and what is wrong, because a typo in a key file is the most common way a
tunnel fails to come up.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from kakuremichi.values import Endpoint
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


@dataclass
class _Section:
    """One `[Interface]`/`[Peer]` block: its header line, and each key's (line, value) occurrences."""

    line: int
    entries: dict[str, list[tuple[int, str]]] = field(default_factory=dict)

    def get(self, key: str) -> tuple[int, str] | None:
        occurrences = self.entries.get(key)
        return occurrences[0] if occurrences else None


_REPEATABLE = ("address", "allowedips")  # wg-quick allows these on several lines; the lists add up


def parse(text: str, name: str = "<config>") -> InterfaceConfig:
    interface: _Section | None = None
    peers: list[_Section] = []
    section: _Section | None = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{name}:{lineno}"
        if line.startswith("["):
            title = line.strip("[]").strip().lower()
            if not line.endswith("]") or title not in ("interface", "peer"):
                raise ConfigError(f"{where}: unknown section {line!r}; expected [Interface] or [Peer]")
            section = _Section(lineno)
            if title == "interface":
                if interface is not None:
                    raise ConfigError(f"{where}: second [Interface] section; a file describes one interface")
                interface = section
            else:
                peers.append(section)
            continue
        if section is None:
            raise ConfigError(f"{where}: {line!r} comes before any [Interface] or [Peer] section")
        key, sep, value = line.partition("=")
        if not sep:
            raise ConfigError(f"{where}: expected `Key = Value`, got {line!r}")
        key = key.strip().lower()
        if key in section.entries and key not in _REPEATABLE:
            raise ConfigError(f"{where}: {key!r} is given twice in this section")
        section.entries.setdefault(key, []).append((lineno, value.strip()))
    if interface is None:
        raise ConfigError(f"{name}: no [Interface] section")
    return _build_interface(interface, peers, name)


def _check_keys(section: _Section, known: set[str], title: str, name: str) -> None:
    for key, occurrences in section.entries.items():
        if key not in known:
            raise ConfigError(f"{name}:{occurrences[0][0]}: unknown {title} key {key!r}")


def _build_interface(section: _Section, peers: list[_Section], name: str) -> InterfaceConfig:
    _check_keys(section, {"privatekey", "listenport", "address", "mtu"} | _IGNORED_INTERFACE_KEYS,
                "[Interface]", name)
    private = section.get("privatekey")
    if private is None:
        raise ConfigError(f"{name}:{section.line}: [Interface] has no PrivateKey "
                          f"(generate one with `kakuremichi wg genkey`)")
    with _at(name, private[0]):
        config = InterfaceConfig(private_key=keys.decode(private[1], "PrivateKey"))
    if entry := section.get("listenport"):
        with _at(name, entry[0]):
            config.listen_port = _port(entry[1], "ListenPort", allow_zero=True)
    for lineno, value in section.entries.get("address", []):
        with _at(name, lineno):
            config.addresses += [ipaddress.ip_interface(a) for a in _items(value)]
    if entry := section.get("mtu"):
        with _at(name, entry[0]):
            config.mtu = _number(entry[1], "MTU")
            if not 576 <= config.mtu <= 65535:
                raise ValueError("MTU must be between 576 and 65535")
    config.peers = [_build_peer(p, name) for p in peers]
    return config


def _build_peer(section: _Section, name: str) -> PeerConfig:
    _check_keys(section, {"publickey", "presharedkey", "endpoint", "allowedips", "persistentkeepalive"},
                "[Peer]", name)
    public = section.get("publickey")
    if public is None:
        raise ConfigError(f"{name}:{section.line}: [Peer] has no PublicKey")
    with _at(name, public[0]):
        peer = PeerConfig(public_key=keys.decode(public[1], "PublicKey"))
    if entry := section.get("presharedkey"):
        with _at(name, entry[0]):
            peer.preshared_key = keys.decode(entry[1], "PresharedKey")
    if entry := section.get("endpoint"):
        with _at(name, entry[0]):
            peer.endpoint = Endpoint.parse(entry[1]).address
    for lineno, value in section.entries.get("allowedips", []):
        with _at(name, lineno):
            peer.allowed_ips += [ipaddress.ip_network(a, strict=False) for a in _items(value)]
    if entry := section.get("persistentkeepalive"):
        with _at(name, entry[0]):
            value = entry[1].lower()
            peer.persistent_keepalive = 0 if value == "off" else _number(value, "PersistentKeepalive")
            if not 0 <= peer.persistent_keepalive <= 65535:
                raise ValueError("PersistentKeepalive must be 0-65535 seconds or 'off'")
    return peer


def _port(text: str, what: str, allow_zero: bool = False) -> int:
    port = _number(text, what)
    if not (0 if allow_zero else 1) <= port <= 65535:
        raise ValueError(f"{what} {port} is out of range")
    return port


def _items(value: str) -> list[str]:
    return [v for v in (x.strip() for x in value.split(",")) if v]


def _number(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{what} {text!r} is not a number") from None


class _at:
    """Re-raise a value error from parsing one line as a ConfigError naming that line."""

    def __init__(self, name: str, lineno: int) -> None:
        self.where = f"{name}:{lineno}"

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None and issubclass(exc_type, ValueError) and not issubclass(exc_type, ConfigError):
            raise ConfigError(f"{self.where}: {exc}") from exc
        return False

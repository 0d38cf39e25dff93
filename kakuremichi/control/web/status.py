"""What the web UI shows live about agents and gateways, as display text.

Built from the database rows (status, last seen) and the stats each client sends with its heartbeats (per
WireGuard peer: connected, bytes received and sent). The same strings fill the first render and the
server-sent updates, so a page and its updates never disagree.
"""

from __future__ import annotations

from datetime import datetime

from pony.orm import Database, db_session

from kakuremichi.control import services
from kakuremichi.control.models import utcnow


def live_key(role: str, client_id: str) -> str:
    return f"{role}-{client_id}"


def format_bytes(count: int) -> str:
    units = ("B", "kB", "MB", "GB", "TB")
    value, exponent = float(count), 0
    while value >= 1000 and exponent < len(units) - 1:
        value, exponent = value / 1000, exponent + 1
    return f"{count} B" if exponent == 0 else f"{value:.1f} {units[exponent]}"


def format_ago(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "never connected"
    seconds = max(0, int((now - moment).total_seconds()))
    for size, unit in ((86400, "day"), (3600, "hour"), (60, "minute")):
        if seconds >= size:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''} ago"
    return "less than a minute ago"


def peers(row, names: dict[str, str]) -> list[dict]:
    """The client's WireGuard peers as it last reported them, named after the agent/gateway they belong to."""
    reported = ((row.metadata or {}).get("stats") or {}).get("peers") or {}
    result = []
    for public_key, peer in sorted(reported.items(), key=lambda item: names.get(item[0], item[0])):
        if not isinstance(peer, dict):
            continue
        result.append({"name": names.get(public_key, public_key[:12] + "…"),
                       "connected": bool(peer.get("connected")) and row.status == "online",
                       "rx": _count(peer.get("rxBytes")), "tx": _count(peer.get("txBytes"))})
    return result


def _count(value) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


def describe(row, reported: list[dict], now: datetime) -> dict[str, str]:
    """Display text for one agent or gateway row and its `peers`: status, last seen, connected peers, traffic."""
    online = row.status == "online"
    connected = [peer["name"] for peer in reported if peer["connected"]]
    if not online:
        connected_text = "—"
    elif reported:
        connected_text = f"{len(connected)} of {len(reported)}" + (f": {', '.join(connected)}" if connected else "")
    else:
        connected_text = "none yet"
    rx, tx = sum(peer["rx"] for peer in reported), sum(peer["tx"] for peer in reported)
    return {"status": "online" if online else "offline",
            "lastSeen": "now" if online else format_ago(row.last_seen_at, now),
            "peers": connected_text,
            "traffic": f"↓ {format_bytes(rx)} · ↑ {format_bytes(tx)}" if reported else "—"}


def key_names(db: Database) -> dict[str, str]:
    """WireGuard public key → agent/gateway name, to name the peers in reported stats."""
    names = {}
    for entity in (db.Agent, db.Gateway):
        for row in entity.select(lambda r: r.public_key is not None):
            names[row.public_key] = row.name
    return names


@db_session
def snapshot(db: Database) -> dict[str, dict[str, str]]:
    """Live text of every agent and gateway (not of a gateway's workers, which no list shows), keyed by
    `live_key`."""
    names, now = key_names(db), utcnow()
    result = {}
    for role in ("agent", "gateway"):
        for row in services.ordered(db, role):
            result[live_key(role, row.id)] = {"name": row.name, **describe(row, peers(row, names), now)}
    return result

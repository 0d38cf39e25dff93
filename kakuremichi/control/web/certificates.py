"""How the web UI words a tunnel's certificate status: the badge in the tunnel list and the times on its page.

Works from the tunnel's REST representation (kakuremichi.control.services.tunnel_json), so the page says exactly
what the API reports.
"""

from __future__ import annotations

WARN_DAYS = 14  # fewer days left than this and the badge warns: renewal (at 2/3 of 90 days) is overdue


def badge(tunnel: dict) -> dict | None:
    """{"style", "text", "until"}: "valid until <date>", "expiring in N days", "none yet" or "expired";
    None for TLS modes whose certificates control does not keep."""
    if tunnel["tlsMode"] != "acme":
        return None
    certificate = tunnel["certificate"]
    if certificate is None:
        return {"style": "none", "text": "none yet", "until": None}
    days = certificate["daysLeft"]
    if days < 0:
        return {"style": "expired", "text": "expired", "until": None}
    if days < WARN_DAYS:
        text = "expiring today" if days == 0 else f"expiring in {days} day{'s' if days != 1 else ''}"
        return {"style": "warning", "text": text, "until": None}
    return {"style": "valid", "text": "valid until", "until": certificate["notAfter"]}


def utc_date(moment: str) -> str:
    """The date of one of the API's times: 2030-01-31T12:00:00Z → 2030-01-31."""
    return moment[:10]


def utc_time(moment: str) -> str:
    """One of the API's times for people: 2030-01-31T12:00:00Z → 2030-01-31 12:00 UTC."""
    return f"{moment[:10]} {moment[11:16]} UTC"

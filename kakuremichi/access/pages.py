"""The pages a protected tunnel's visitors see from the gateway: the password form, and why they are refused."""

from __future__ import annotations

import html

_STYLE = ("font-family:system-ui,sans-serif;max-width:24rem;margin:4rem auto;padding:0 1rem")


def page(title: str, content: str) -> bytes:
    """A small page around `content` (HTML the caller escaped)."""
    return ("<!doctype html>\n<html lang=en><meta charset=utf-8>"
            "<meta name=viewport content='width=device-width,initial-scale=1'>"
            f"<title>{html.escape(title)}</title><body style='{_STYLE}'><h1>{html.escape(title)}</h1>"
            f"{content}<hr><small>kakuremichi gateway</small></body></html>\n").encode()


def login(host: str, next_path: str, error: str = "") -> bytes:
    """The password form: it posts to the gateway's login path on the tunnel's own domain."""
    warning = f"<p role=alert style='color:#b00'>{html.escape(error)}</p>" if error else ""
    return page(f"{host} is protected",
                 f"{warning}<form method=post action='/.kakuremichi/login'>"
                 f"<input type=hidden name=next value='{html.escape(next_path, quote=True)}'>"
                 "<label>Password <input type=password name=password autofocus required "
                 "autocomplete=current-password></label> <button type=submit>Open</button></form>")


def refused(title: str, details: str) -> bytes:
    return page(title, f"<p>{html.escape(details)}</p>")

"""The web UI's pages: log in, then gateways, agents and tunnels — lists with live status, forms, install commands.

Every form is decoded with the REST API's bodies (kakuremichi.control.bodies), and every read and change goes
through the functions behind the API (kakuremichi.control.services), so the web UI validates exactly as the
API does and shows the API's messages next to the fields they are about.
"""

from __future__ import annotations

import json
import re
import shlex
import unicodedata
from typing import Any
from urllib.parse import unquote, urlsplit

import trio
from pony.orm import db_session
from quart import Blueprint, redirect, render_template, request, url_for
from quart_trio.wrappers.response import TrioResponse as Response

from kakuremichi import protocol
from kakuremichi.control import auth, bodies, dist, ports, services
from kakuremichi.control.bodies import ApiError
from kakuremichi.control.models import utcnow
from kakuremichi.control.state import current
from kakuremichi.control.web import certificates, status
from kakuremichi.control.web.session import (CSRF_FIELD, LoginThrottled, csrf_token, csrf_valid, log_in, log_out,
                                             logged_in, session_id, session_open)

blueprint = Blueprint("web", __name__, template_folder="templates", static_folder="static",
                      static_url_path="/assets")
blueprint.add_app_template_filter(status.format_bytes, "bytes")
blueprint.add_app_template_filter(certificates.badge, "certificate_badge")
blueprint.add_app_template_filter(certificates.utc_date, "utc_date")
blueprint.add_app_template_filter(certificates.utc_time, "utc_time")
blueprint.add_app_template_filter(ports.label, "tunnel_label")
blueprint.add_app_template_global(csrf_token, "csrf_token")  # globals: imported macros see them too
blueprint.add_app_template_global(CSRF_FIELD, "csrf_field")

POLL_INTERVAL = 2.0  # live pages also see changes made by other control instances, and "5 minutes ago" ageing
KEEPALIVE = 15.0  # an event-stream comment this often keeps proxies from closing an idle stream
COALESCE = 0.5  # many clients heartbeating cost one snapshot per stream per COALESCE, not one per heartbeat
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
                               "form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}
_TLS_NAMES = {"acme": "ACME (Let’s Encrypt)", "self-signed": "Self-signed", "off": "Off (HTTP only)",
              "custom": "Custom certificate"}
TLS_LABELS = {mode: _TLS_NAMES.get(mode, mode) for mode in protocol.TLS_MODES}
_PORT_DIGITS = re.compile(r"[0-9]{1,5}\Z")  # str.isdigit takes '²', which int() refuses
SECTIONS = {"": "overview", "gateways": "gateway", "agents": "agent", "tunnels": "tunnel"}  # path → navigation item
ROLES = {
    "agent": {"title": "Agents", "label": "agent",
              "about": "An agent runs next to your private services and connects out to every gateway. "
                       "It needs no root and opens no inbound port.",
              "peers": "Gateways"},
    "gateway": {"title": "Gateways", "label": "gateway",
                "about": "A gateway is a public entry node: it accepts HTTP(S) for your domains and forwards it "
                         "through WireGuard to the right agent. Run one or several.",
                "peers": "Agents"},
}


# -- access ----------------------------------------------------------------------------------------------------


@blueprint.before_request
async def guard() -> Any:
    """Every POST carries this session's CSRF token; every page but the login form needs a logged-in admin."""
    if request.endpoint == "web.static":
        return None
    if request.method == "POST" and not csrf_valid((await request.form).get(CSRF_FIELD)):
        return await _page("message.html", 400, title="Form expired",
                           message="This form was not sent from this session (or the session ended). "
                                   "Go back, reload the page and try again.")
    if request.endpoint != "web.login" and not logged_in():
        if request.endpoint == "web.events":
            return Response("log in first", 401, content_type="text/plain")
        return redirect(url_for("web.login", next=request.path))
    return None


@blueprint.after_request
async def security_headers(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    if request.endpoint != "web.static":
        response.headers["Cache-Control"] = "no-store"  # pages can carry a new API key
    return response


@blueprint.errorhandler(ApiError)
async def api_error(error: ApiError) -> Response:
    title = "Not found" if error.status == 404 else "Not possible"
    return await _page("message.html", error.status, title=title, message=error.message)


async def error_page(status: int, title: str, message: str) -> Response:
    """An HTTP error on a URL outside the API (an unknown page, a wrong method), in the UI's frame."""
    response = await _page("message.html", status, title=title, message=message, **template_globals())
    response.headers.update(SECURITY_HEADERS)
    return response


@blueprint.context_processor
def template_globals() -> dict:
    return {"logged_in": logged_in(), "tls_labels": TLS_LABELS,
            "section": SECTIONS.get(request.path.split("/")[1])}


async def _page(template: str, code: int = 200, **context: Any) -> Response:
    return Response(await render_template(template, **context), code, content_type="text/html; charset=utf-8")


async def _confirm(title: str, action: str, consequence: str, cancel: str) -> Response:
    """A page asking to confirm what a POST to the same address will do; nothing changes on GET."""
    return await _page("confirm.html", title=title, action=action, consequence=consequence, cancel=cancel)


def _safe_next(target: str | None) -> str:
    """Where to go after logging in: only a path on this site, else the overview. Browsers drop tabs and
    newlines from a Location and read a backslash as a slash, so `/\t/evil.example` would be `//evil.example`."""
    return target if target and is_local_target(target) else url_for("web.overview")


def is_local_target(target: str) -> bool:
    """Whether `target`, and what it reads as once percent-decoded, are both a plain path of this site."""
    return all(_same_origin_path(text) for text in (target, unquote(target)))


def _same_origin_path(text: str) -> bool:
    if (not text.startswith("/") or text.startswith("//") or "\\" in text
            or any(char.isspace() or unicodedata.category(char).startswith("C") for char in text)):
        return False
    parts = urlsplit(text)  # and what a URL parser makes of it agrees
    return not parts.scheme and not parts.netloc and parts.path.startswith("/") and not parts.path.startswith("//")


@blueprint.route("/login", methods=["GET", "POST"])
async def login() -> Any:
    error = None
    if request.method == "POST":
        try:
            if log_in((await request.form).get("password", "")):
                return redirect(_safe_next(request.args.get("next")))
        except LoginThrottled as throttled:
            page = await _page("login.html", 429, error=f"Too many wrong tokens from your address. Try again in "
                                                        f"{throttled.retry_after} seconds.")
            page.headers["Retry-After"] = str(throttled.retry_after)
            return page
        error = "That is not the admin token. Use the token control printed on its first start."
    elif logged_in():
        return redirect(url_for("web.overview"))
    return await _page("login.html", 401 if error else 200, error=error)


@blueprint.post("/logout")
async def logout() -> Any:
    log_out()
    return redirect(url_for("web.login"))


# -- overview and live status ------------------------------------------------------------------------------------


@blueprint.get("/")
async def overview() -> Response:
    counts, online = services.counts(current())
    return await _page("overview.html", counts=counts, online=online)


@blueprint.get("/events")
async def events() -> Response:
    """Server-sent events: the live text of every agent and gateway, sent again whenever it changes, until
    the session that opened the stream is logged out."""
    state = current()
    opened_by = session_id()

    async def stream():
        sent, quiet_since = None, trio.current_time()
        while session_open(state.db, opened_by):
            snapshot = status.snapshot(state.db)
            if snapshot != sent:
                sent, quiet_since = snapshot, trio.current_time()
                yield f"event: status\ndata: {json.dumps(snapshot)}\n\n".encode()
            elif trio.current_time() - quiet_since >= KEEPALIVE:
                quiet_since = trio.current_time()
                yield b": keepalive\n\n"
            await state.status_changes.wait(POLL_INTERVAL)
            await trio.sleep(COALESCE)

    response = Response(stream(), content_type="text/event-stream",
                        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
    response.timeout = None  # a stream, not a slow response
    return response


# -- agents and gateways ---------------------------------------------------------------------------------------


def _client_body(role: str, form) -> dict:
    body = {"name": form.get("name", "").strip()}
    if role == "gateway":
        port = form.get("wireguardPort", "").strip()
        body["wireguardPort"] = None if not port else int(port) if _PORT_DIGITS.match(port) else port
    return body


def _client_item(role: str, row, names: dict[str, str], now) -> dict:
    """What the pages show of one agent/gateway: its API object, live text and the peers it reported."""
    reported = status.peers(row, names)
    return {**services.SERIALISERS[role](row), "live": status.describe(row, reported, now),
            "liveKey": status.live_key(role, row.id), "peers": reported}


def _client_rows(role: str) -> list[dict]:
    with db_session:
        db = current().db
        names, now = status.key_names(db), utcnow()
        return [_client_item(role, row, names, now) for row in services.ordered(db, role)]


def _client_detail(role: str, item_id: str) -> dict:
    with db_session:
        db = current().db
        row = services.get_row(db, role, item_id)
        detail = _client_item(role, row, status.key_names(db), utcnow())
        if role == "agent":
            detail["tunnels"] = [services.tunnel_json(t) for t in sorted(row.tunnels, key=lambda t: t.domain)]
        return detail


def _client_json(role: str, item_id: str) -> dict:
    """The agent's/gateway's API object alone: what its forms and confirmations show (no live status)."""
    return services.get(current(), role, item_id)


def install_commands(role: str, control_url: str, api_key: str | None, wireguard_port: int | None = None) -> list[dict]:
    """Copy-paste commands that install kakuremichi from this control (the wheel and image of its own version,
    kakuremichi/control/dist.py) and start this agent/gateway with its key (or a placeholder once it was shown).
    The key goes into a 0600 file, never onto a command line, where every user of the machine sees it in `ps`."""
    key = api_key or f"{auth.PREFIXES[role]}YOUR_KEY"
    where = dist.locations(control_url)
    image = f"kakuremichi:{where['version']}"
    settings = {"control-url": control_url}
    if role == "agent":
        ports = "--network host"
    else:
        port = wireguard_port or 51820
        settings.update({"public-host": "gw.example.com", "acme-email": "you@example.com", "http-port": "8080",
                         "https-port": "8443"})
        if wireguard_port:
            settings["wireguard-port"] = str(port)
        ports = f"-p 80:8080 -p 443:8443 -p {port}:{port}/udp"
    flags = " ".join(f"--{name} {shlex.quote(value)}" for name, value in settings.items())
    # one worker in a container: each worker has its own WireGuard port, and only one is published
    in_container = settings if role == "agent" else {**settings, "workers": "1"}
    variables = [f"-e KAKUREMICHI_{name.upper().replace('-', '_')}={shlex.quote(value)}"
                 for name, value in in_container.items()]
    docker = " \\\n  ".join([f"docker run -d --name kakuremichi-{role} --restart unless-stopped {ports}",
                              f"-v kakuremichi-{role}:/data --env-file kakuremichi-{role}.env", *variables,
                              f"{image} {role}"])
    # echo is a shell builtin: the key never appears in a process list
    key_file = f"(umask 077 && echo {shlex.quote(key)} > kakuremichi-{role}.key)\n"
    run = f"kakuremichi {role} {flags} --api-key-file kakuremichi-{role}.key"
    return [{"id": f"install-{installer}", "label": label,
             "command": f"{installer} install {where['wheelUrl']}\n{key_file}{run}"}
            for installer, label in (("pip", "With pip (Python 3.11 or newer)"),
                                     ("pipx", "With pipx (its own venv, Python 3.11 or newer)"))] + [
            {"id": "install-docker", "label": "With Docker or Podman (the image built from this control's wheel)",
             "command": f"docker build -t {image} {where['imageContextUrl']}\n"
                        f"(umask 077 && echo KAKUREMICHI_API_KEY={shlex.quote(key)} > kakuremichi-{role}.env)\n"
                        f"{docker}"}]


async def _client_page(role: str, item_id: str, new_key: str | None = None, code: int = 200) -> Response:
    item = _client_detail(role, item_id)
    commands = install_commands(role, request.host_url.rstrip("/"), new_key, item.get("wireguardPort"))
    return await _page("client.html", code, role=role, kind=ROLES[role], item=item,
                       new_key=new_key, commands=commands)


async def _client_form(role: str, item: dict | None, values: dict, errors: dict, message: str | None,
                       code: int = 200) -> Response:
    return await _page("client_form.html", code, role=role, kind=ROLES[role], item=item,
                       values=values, errors=errors, message=message)


def _client_routes(role: str) -> None:
    """List/new/show/edit/delete/rotate-key pages for agents or gateways, which differ only in fields."""
    kind = ROLES[role]
    base = f"/{role}s"

    async def index() -> Response:
        return await _page("clients.html", role=role, kind=kind, items=_client_rows(role))

    async def new() -> Response:
        values = {}
        if request.method == "POST":
            values = _client_body(role, await request.form)
            try:
                created = services.create(current(), role, bodies.decode(bodies.CREATES[role], values))
            except ApiError as error:
                return await _client_form(role, None, values, error.details, error.message, error.status)
            return await _client_page(role, created["id"], new_key=created["apiKey"], code=201)
        return await _client_form(role, None, values, {}, None)

    async def show(item_id: str) -> Response:
        return await _client_page(role, item_id)

    async def edit(item_id: str) -> Response:
        item = _client_json(role, item_id)
        if request.method == "POST":
            values = _client_body(role, await request.form)
            try:
                services.update(current(), role, item_id, bodies.decode(bodies.UPDATES[role], values))
            except ApiError as error:
                return await _client_form(role, item, values, error.details, error.message, error.status)
            return redirect(url_for(f"web.{role}_show", item_id=item_id))
        return await _client_form(role, item, item, {}, None)

    async def delete(item_id: str) -> Response:
        if request.method == "POST":
            services.delete(current(), role, item_id)
            return redirect(url_for(f"web.{role}_index"))
        item = _client_json(role, item_id)
        count = len(item.get("tunnelIds", []))
        consequence = ("" if count == 0 else "Its tunnel is deleted with it. " if count == 1
                       else f"Its {count} tunnels are deleted with it. ")
        return await _confirm(f"Delete {kind['label']} {item['name']}", "Delete",
                              consequence + f"A running {kind['label']} using its key is disconnected. "
                                            "This cannot be undone.", url_for(f"web.{role}_show", item_id=item_id))

    async def rotate_key(item_id: str) -> Response:
        if request.method == "POST":
            return await _client_page(role, item_id, new_key=services.rotate_client_key(current(), role, item_id)["apiKey"])
        item = _client_json(role, item_id)
        return await _confirm(f"Rotate the key of {item['name']}", "Rotate key",
                              f"A new key is made and shown once. The current key stops working at once: a running "
                              f"{kind['label']} using it is disconnected until it is restarted with the new key.",
                              url_for(f"web.{role}_show", item_id=item_id))

    for path, view, methods in ((base, index, ["GET"]), (base + "/new", new, ["GET", "POST"]),
                                (base + "/<item_id>", show, ["GET"]),
                                (base + "/<item_id>/edit", edit, ["GET", "POST"]),
                                (base + "/<item_id>/delete", delete, ["GET", "POST"]),
                                (base + "/<item_id>/rotate-key", rotate_key, ["GET", "POST"])):
        blueprint.add_url_rule(path, f"{role}_{view.__name__}", view, methods=methods)


_client_routes("gateway")
_client_routes("agent")


# -- tunnels ---------------------------------------------------------------------------------------------------


def _tunnel_body(form) -> dict:
    return {"domain": form.get("domain", "").strip() or None, "agentId": form.get("agentId", ""),
            "target": form.get("target", "").strip(), "description": form.get("description", ""),
            "tlsMode": form.get("tlsMode", ""), "enabled": "enabled" in form, "forceHttps": "forceHttps" in form,
            "socksProxyEnabled": "socksProxyEnabled" in form, "httpProxyEnabled": "httpProxyEnabled" in form,
            **_port_fields(form), "access": _access_body(form)}


_DIGITS = re.compile(r"[0-9]{1,5}\Z")  # ASCII only: int() takes '١'


def _port_fields(form) -> dict:
    """A tcp/udp tunnel's fields of the form: a blank port is allocated by control, a blank name is none."""
    port = form.get("publicPort", "").strip()
    udp = {key: _number(form[key].strip()) for key in ("udpIdleTimeout", "udpMaxFlows") if form.get(key, "").strip()}
    return {"protocol": form.get("protocol", "http"), "publicPort": int(port) if _DIGITS.match(port) else port or None,
            "proxyProtocol": form.get("proxyProtocol") or None, "name": form.get("name", "").strip() or None, **udp}


def _number(text: str) -> float | int | str:
    """A form's number as the API takes it; anything else is left for the API's message."""
    try:
        return int(text) if _DIGITS.match(text) else float(text) if text.isascii() else text
    except ValueError:
        return text


def _access_body(form) -> dict:
    """The access section of the tunnel form: lists one item a line (or comma-separated), rules as `action cidr`
    lines; a blank password or bypass secret keeps the stored one."""
    def lines(name: str, separators: str = ",") -> list[str]:
        text = form.get(name, "")
        for separator in separators:
            text = text.replace(separator, "\n")
        return [line.strip() for line in text.splitlines() if line.strip()]

    rules = [line.split(None, 1) + [""] for line in lines("accessRules", "")]
    access = {"mode": form.get("accessMode", "public"), "allowedEmails": lines("allowedEmails"),
              "allowedDomains": lines("allowedDomains"), "allowedGroups": lines("allowedGroups"),
              "rules": [{"action": rule[0], "cidr": rule[1].strip()} for rule in rules],
              "bypassPaths": lines("bypassPaths")}
    access["loginTunnelId"] = form.get("loginTunnelId") or None
    if form.get("loginGrantMinutes", "").strip():
        access["loginGrantMinutes"] = _number(form["loginGrantMinutes"].strip())
    limit = form.get("maxConnectionsPerSource", "").strip()
    access["maxConnectionsPerSource"] = _number(limit) if limit else None
    for field, name in (("accessPassword", "password"), ("bypassSecret", "bypassSecret")):
        if form.get(field):
            access[name] = form[field]
    return access


def _tunnel(item_id: str) -> dict:
    with db_session:
        tunnel = services.get_row(current().db, "tunnel", item_id)
        return {**services.tunnel_json(tunnel), "agentName": tunnel.agent.name}


async def _tunnel_form(item: dict | None, values: dict, errors: dict, message: str | None,
                       code: int = 200, new_link: dict | None = None) -> Response:
    links = services.share_links(current(), item["id"])["items"] if item else []
    return await _page("tunnel_form.html", code, item=item, values=values, errors=errors,
                       message=message, agents=services.agent_names(current()), links=links, new_link=new_link,
                       login_tunnels=services.login_tunnels(current()))


@blueprint.post("/tunnels/<item_id>/share-links")
async def tunnel_share_link(item_id: str) -> Response:
    """A new share link, shown once on the tunnel's page."""
    item = _tunnel(item_id)
    form = await request.form
    hours = form.get("expiresInHours", "24")
    try:
        body = bodies.decode(bodies.ShareLinkCreate, {"expiresInHours": int(hours) if hours.isdigit() else hours,
                                                      "note": form.get("note", "")})
        link = services.create_share_link(current(), item_id, body)
    except ApiError as error:
        return await _tunnel_form(item, item, error.details, error.message, error.status)
    return await _tunnel_form(item, item, {}, None, new_link=link)


@blueprint.post("/tunnels/<item_id>/share-links/<link_id>/revoke")
async def tunnel_revoke_link(item_id: str, link_id: str) -> Response:
    services.revoke_share_link(current(), item_id, link_id)
    return redirect(url_for("web.tunnel_edit", item_id=item_id))


@blueprint.post("/tunnels/<item_id>/revoke-sessions")
async def tunnel_revoke_sessions(item_id: str) -> Response:
    email = (await request.form).get("email", "").strip()
    services.revoke_sessions(current(), item_id, bodies.SessionRevocation(email=email or None))
    return redirect(url_for("web.tunnel_edit", item_id=item_id))


@blueprint.get("/tunnels")
async def tunnel_index() -> Response:
    with db_session:
        items = [{**services.tunnel_json(t), "agentName": t.agent.name,
                  "agentLive": status.live_key("agent", t.agent.id), "agentStatus": t.agent.status}
                 for t in services.ordered(current().db, "tunnel")]
    return await _page("tunnels.html", items=items, have_agents=bool(services.agent_names(current())))


@blueprint.route("/tunnels/new", methods=["GET", "POST"])
async def tunnel_new() -> Response:
    if request.method == "POST":
        values = _tunnel_body(await request.form)
        try:
            services.create(current(), "tunnel", bodies.decode(bodies.TunnelCreate, values))
        except ApiError as error:
            return await _tunnel_form(None, values, error.details, error.message, error.status)
        return redirect(url_for("web.tunnel_index"))
    values = {"enabled": True, "tlsMode": "acme", "agentId": request.args.get("agent", "")}
    return await _tunnel_form(None, values, {}, None)


@blueprint.route("/tunnels/<item_id>/edit", methods=["GET", "POST"])
async def tunnel_edit(item_id: str) -> Response:
    item = _tunnel(item_id)
    if request.method == "POST":
        values = _tunnel_body(await request.form)
        try:
            services.update(current(), "tunnel", item_id, bodies.decode(bodies.TunnelUpdate, values))
        except ApiError as error:
            return await _tunnel_form(item, values, error.details, error.message, error.status)
        return redirect(url_for("web.tunnel_index"))
    return await _tunnel_form(item, item, {}, None)


BACKEND_ACTIONS = {"drain": {"draining": True}, "undrain": {"draining": False}, "disable": {"enabled": False},
                   "enable": {"enabled": True}}


@blueprint.post("/tunnels/<item_id>/backends")
async def tunnel_backends(item_id: str) -> Response:
    """Add a backend, or change (weight, priority, drain, disable) or remove one: the tunnel's list, changed."""
    item = _tunnel(item_id)
    form = await request.form
    specs = [{name: backend[name] for name in ("id", "agentId", "target", "weight", "priority", "enabled",
                                               "draining", "healthCheck")} for backend in item["backends"]]
    chosen = next((spec for spec in specs if spec["id"] == form.get("backend")), None)
    action = form.get("action", "")
    if action == "add":
        specs.append({"agentId": form.get("agentId", ""), "target": form.get("target", "").strip(),
                      **_numbers(form)})
    elif chosen is not None and action == "remove":
        specs.remove(chosen)
    elif chosen is not None and action == "save":
        chosen.update(_numbers(form))
    elif chosen is not None and action in BACKEND_ACTIONS:
        chosen.update(BACKEND_ACTIONS[action])
    try:
        services.update(current(), "tunnel", item_id, bodies.decode(bodies.TunnelUpdate, {"backends": specs}))
    except ApiError as error:
        return await _tunnel_form(item, item, error.details, error.message, error.status)
    return redirect(url_for("web.tunnel_edit", item_id=item_id))


def _numbers(form) -> dict:
    """A backend form's weight and priority, as numbers when they are (else as given, for the API to refuse)."""
    return {name: int(form[name]) if form.get(name, "").strip().isascii() and form[name].strip().isdigit()
            else form.get(name, "") for name in ("weight", "priority") if name in form}


@blueprint.route("/tunnels/<item_id>/delete", methods=["GET", "POST"])
async def tunnel_delete(item_id: str) -> Response:
    item = _tunnel(item_id)
    if request.method == "POST":
        services.delete(current(), "tunnel", item_id)
        return redirect(url_for("web.tunnel_index"))
    return await _confirm(f"Delete tunnel {ports.label(item)}", "Delete",
                          f"{ports.label(item)} stops being served by every gateway, and control forgets its "
                          "certificate. This cannot be undone.", url_for("web.tunnel_index"))

"""`kakuremichi apply -f kakuremichi.yaml`: make control's gateways, agents and tunnels what a file says.

It lists what control has through the REST API, prints the difference (`+` created, `~` changed, `-` deleted),
and makes the changes, unless --dry-run. Applying the same file again changes nothing. --prune also deletes
what a listed section does not list. A new agent's or gateway's API key is shown once, or written to
--key-dir. The file is checked whole, with the API's own rules, before anything is sent.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx

from kakuremichi import manifest
from kakuremichi.manifest import AGENT_NAME, Change, ManifestError
from kakuremichi.options import EnvArgumentParser

EXIT_REFUSED = 1  # control refused a change, or could not be reached
EXIT_USAGE = 2  # the file or the flags are wrong: nothing was sent
PAGE = 500  # the API's largest page


class Refused(Exception):
    """Control could not be reached or refused a request: the message says which item and why."""


def build_parser(prog: str) -> EnvArgumentParser:
    parser = EnvArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                               epilog="Example: KAKUREMICHI_ADMIN_TOKEN_FILE=admin.token kakuremichi apply -f "
                                      "kakuremichi.yaml --dry-run")
    parser.add_argument("-f", "--file", required=True, metavar="PATH",
                        help="YAML with `gateways`, `agents` and `tunnels` lists, each entry the REST API's body "
                             "(a tunnel may name its agent: `agent: home`); - reads standard input")
    parser.add_argument("--control-url", default="http://127.0.0.1:8000", help="control server URL (http(s)://)")
    parser.add_secret("admin-token", "control's admin token (kma_...)", required=True)
    parser.add_argument("--prune", action="store_true",
                        help="also delete the gateways, agents and tunnels of each section the file has that it "
                             "does not list (a section left out is not touched)")
    parser.add_argument("--dry-run", action="store_true", help="print the changes without making them")
    parser.add_argument("--key-dir", default=None, metavar="DIR",
                        help="write each new agent's and gateway's API key to DIR/<agent|gateway>-NAME.key (0600) "
                             "instead of printing it")
    return parser


class Control:
    """Control's REST API as the admin."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, headers={"authorization": f"Bearer {token}"}, timeout=30)

    def request(self, method: str, path: str, what: str, **kwargs) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise Refused(f"cannot reach control at {self.url} (--control-url): {exc}") from None
        if response.status_code >= 400:
            try:
                error = response.json()
                reason = f"{error['error']} ({response.status_code} {error['code']})"
                if error.get("details"):
                    reason += ": " + ", ".join(f"{name}: {message}" for name, message in error["details"].items())
            except (ValueError, KeyError, TypeError, AttributeError):
                reason = f"HTTP {response.status_code}: {response.text[:200]}"
            raise Refused(f"{what}: {reason}")
        return response

    def items(self, kind: str) -> list[dict]:
        found: list[dict] = []
        while True:
            page = self.request("GET", f"/api/{kind}s", f"listing {kind}s",
                                params={"limit": PAGE, "offset": len(found)}).json()
            found += page["items"]
            if not page["items"] or len(found) >= page["total"]:
                return found


def apply(control: Control, changes: list[Change], agent_ids: dict[str, str], key_dir: Path | None) -> None:
    """Make `changes` in order; `agent_ids` (name → id) grows with the agents created, for the tunnels after."""
    for change in changes:
        what = f"{change.action} {change.kind} {change.key}"
        if change.action == "delete":
            control.request("DELETE", f"/api/{change.kind}s/{change.id}", what)
            continue
        body = {name: new for name, (_, new) in change.fields.items()} if change.action == "update" else change.fields
        if AGENT_NAME in body:
            body = {**{k: v for k, v in body.items() if k != AGENT_NAME}, "agentId": agent_ids[body[AGENT_NAME]]}
        if change.action == "update":
            control.request("PATCH", f"/api/{change.kind}s/{change.id}", what, json=body)
            continue
        created = control.request("POST", f"/api/{change.kind}s", what, json=body).json()
        if change.kind == "agent":
            agent_ids[change.key] = created["id"]
        if "apiKey" in created:
            print(show_key(change, created["apiKey"], key_dir))


def show_key(change: Change, api_key: str, key_dir: Path | None) -> str:
    """The line that tells where a new API key is: in a new 0600 file of `key_dir`, or (without) the key itself."""
    if key_dir is None:
        return f"  {change.kind} {change.key} API key (shown once; keep it in a 0600 file): {api_key}"
    key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = key_dir / f"{change.kind}-{change.key.replace(' ', '_')}.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(api_key + "\n")
    return f"  {change.kind} {change.key} API key written to {path}"


def summary(changes: list[Change], unchanged: int, dry_run: bool) -> str:
    counts = {action: sum(c.action == action for c in changes) for action in ("create", "update", "delete")}
    if not changes:
        return f"no changes ({unchanged} unchanged)"
    verbs = ("to create", "to change", "to delete") if dry_run else ("created", "changed", "deleted")
    text = ", ".join(f"{count} {verb}" for count, verb in zip(counts.values(), verbs)) + f", {unchanged} unchanged"
    return text + ("; dry run: nothing was changed" if dry_run else "")


def read(path: str) -> tuple[str, str]:
    """The file's text and its name for messages (`-`: standard input)."""
    if path == "-":
        return sys.stdin.read(), "standard input"
    try:
        return Path(path).read_text(), path
    except OSError as exc:
        raise ManifestError(f"--file: cannot read {path}: {exc.strerror or exc}") from None


def run(args) -> None:
    """Check the file, list control's items, print the changes and (unless --dry-run) make them."""
    wanted = manifest.load(*read(args.file))
    control = Control(args.control_url, args.admin_token)
    with control.http:
        existing = {kind: control.items(kind) for kind in manifest.KINDS}
        changes, unchanged = manifest.plan(wanted, existing, prune=args.prune)
        for change in changes:
            print(change.describe())
        if not args.dry_run:
            try:
                apply(control, changes, {item["name"]: item["id"] for item in existing["agent"]},
                      Path(args.key_dir) if args.key_dir else None)
            except Refused as exc:
                raise Refused(f"{exc}; the changes above it were made, the rest were not") from None
    print(summary(changes, unchanged, args.dry_run))


def main(argv: list[str] | None = None, prog: str = "kakuremichi apply") -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        run(args)
    except ManifestError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Refused as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    return 0

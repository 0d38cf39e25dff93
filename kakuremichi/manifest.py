"""A kakuremichi.yaml: the gateways, agents and tunnels control should have, and the changes that get it there.

Each entry is checked with the REST API's own bodies (kakuremichi.control.bodies) before anything is sent, so
a file is refused with the same messages the API would give, every field at fault at once. Gateways and agents
are known by their name, tunnels by their domain; a tunnel names its agent (`agent: home`) or gives its
`agentId`. Only the fields an entry gives are managed: those left out keep what control has. `plan` compares
the file with what control lists and is pure (no I/O), so `kakuremichi apply` and its tests share it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
import yaml

from kakuremichi.control import bodies

KINDS = ("gateway", "agent", "tunnel")  # the order things are created in (a tunnel needs its agent)
SECTIONS = {kind: f"{kind}s" for kind in KINDS}
KEYS = {"gateway": "name", "agent": "name", "tunnel": "domain"}
AGENT_NAME = "agent"  # a tunnel's agent by name, a field of the file only (the API takes agentId)
OWN_METADATA = ("stats",)  # metadata keys control writes itself (a client's heartbeat stats): never a difference
PLACEHOLDER_ID = "agent-in-this-file"  # stands for an agent id while a tunnel naming its agent is checked


class ManifestError(ValueError):
    """The file cannot be applied: says where (line, or section[index] and field) and what is wrong."""


@dataclass(frozen=True)
class Entry:
    """One gateway, agent or tunnel of the file: the fields it gives, as the API's JSON in canonical form
    (a tunnel's `agent` by name in place of `agentId` when the file names it)."""

    kind: str
    key: str
    fields: dict[str, Any]
    where: str


@dataclass(frozen=True)
class Manifest:
    entries: list[Entry]
    sections: frozenset[str]  # the kinds the file lists, even empty: only these are pruned


@dataclass(frozen=True)
class Change:
    """What applying does to one item: create it with `fields`, update `fields` ({name: (was, becomes)}) of
    item `id`, or delete item `id`."""

    action: Literal["create", "update", "delete"]
    kind: str
    key: str
    fields: dict[str, Any] = field(default_factory=dict)
    id: str | None = None

    def describe(self) -> str:
        """One line of the diff: `+ tunnel app.example.com target="localhost:8080"`, `~ … target: "a" -> "b"`."""
        sign = {"create": "+", "update": "~", "delete": "-"}[self.action]
        if self.action == "update":
            details = ", ".join(f"{name}: {_show(was)} -> {_show(new)}" for name, (was, new) in self.fields.items())
            return f"{sign} {self.kind} {self.key}: {details}"
        details = " ".join(f"{name}={_show(value)}" for name, value in self.fields.items() if name != KEYS[self.kind])
        return f"{sign} {self.kind} {self.key}" + (f" {details}" if details else "")


def _show(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def load(text: str, source: str) -> Manifest:
    """The manifest in YAML `text` (from `source`, for messages); ManifestError naming every problem."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ManifestError(f"{source}{where}: not YAML: {getattr(exc, 'problem', None) or exc}") from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ManifestError(f"{source}: must be a mapping with {', '.join(SECTIONS.values())}")
    unknown = sorted(str(name) for name in document if name not in SECTIONS.values())
    if unknown:
        raise ManifestError(f"{source}: unknown section {', '.join(unknown)}: the sections are "
                            f"{', '.join(SECTIONS.values())}")
    document = msgspec.json.decode(msgspec.json.encode(document))  # YAML's dates and numeric keys as JSON has them
    entries, problems, seen = [], [], set()
    for kind in KINDS:
        section = document.get(SECTIONS[kind]) or []
        if not isinstance(section, list):
            problems.append(f"{SECTIONS[kind]}: must be a list")
            continue
        for index, raw in enumerate(section):
            where = f"{SECTIONS[kind]}[{index}]"
            try:
                entry = _entry(kind, raw, where)
            except ManifestError as exc:
                problems.append(str(exc))
                continue
            if (kind, entry.key) in seen:
                problems.append(f"{where}: {kind} {entry.key} is listed twice")
            seen.add((kind, entry.key))
            entries.append(entry)
    if problems:
        raise ManifestError(f"{source}: " + "; ".join(problems))
    return Manifest(entries, frozenset(kind for kind in KINDS if SECTIONS[kind] in document))


def _entry(kind: str, raw: Any, where: str) -> Entry:
    """One entry checked as the API's create body (every required field) and read as its update body (only
    the fields given, canonical)."""
    if not isinstance(raw, dict):
        raise ManifestError(f"{where}: must be a mapping of fields")
    values, agent = dict(raw), None
    if kind == "tunnel" and AGENT_NAME in values:
        agent = values.pop(AGENT_NAME)
        if "agentId" in values:
            raise ManifestError(f"{where}: give agent (a name) or agentId, not both")
        if not isinstance(agent, str):
            raise ManifestError(f"{where}: agent: must be the name of an agent")
        values["agentId"] = PLACEHOLDER_ID
    elif kind == "tunnel" and "agentId" not in values:
        raise ManifestError(f"{where}: agent (an agent's name) or agentId is required")
    try:
        bodies.decode(bodies.CREATES[kind], values, where)
        fields = msgspec.to_builtins(bodies.decode(bodies.UPDATES[kind], values, where), enc_hook=str)
    except bodies.ApiError as exc:
        raise ManifestError(f"{where}: " + ", ".join(f"{name}: {message}" for name, message in exc.details.items())
                            ) from None
    if agent is not None:
        del fields["agentId"]
        fields[AGENT_NAME] = agent
    return Entry(kind, fields[KEYS[kind]], fields, f"{where} ({fields[KEYS[kind]]})")


def plan(manifest: Manifest, existing: dict[str, list[dict]], prune: bool = False) -> tuple[list[Change], int]:
    """The changes that make control's items (`existing`: kind → the API's list items) what the manifest says,
    in the order to make them, and how many listed items are already so. With `prune`, items of a listed
    section that the file does not list are deleted."""
    agent_names = {item["id"]: item["name"] for item in existing.get("agent", [])}
    known_agents = {e.key for e in manifest.entries if e.kind == "agent"}
    if not (prune and "agent" in manifest.sections):  # else the others are deleted, and their tunnels with them
        known_agents |= set(agent_names.values())
    listed, changes, unchanged = {(e.kind, e.key) for e in manifest.entries}, [], 0
    current = {kind: {item[KEYS[kind]]: item for item in existing.get(kind, [])} for kind in KINDS}
    for entry in manifest.entries:
        agent = entry.fields.get(AGENT_NAME) if entry.kind == "tunnel" else None
        if agent is not None and agent not in known_agents:
            raise ManifestError(f"{entry.where}: agent: no agent named {entry.fields[AGENT_NAME]!r} in this file"
                                + ("" if prune and "agent" in manifest.sections else " or in control")
                                + ": list it under agents")
        item = current[entry.kind].get(entry.key)
        if item is None:
            changes.append(Change("create", entry.kind, entry.key, entry.fields))
            continue
        seen = dict(item, **{AGENT_NAME: agent_names.get(item.get("agentId"))})
        if isinstance(seen.get("metadata"), dict):
            seen["metadata"] = {k: v for k, v in seen["metadata"].items() if k not in OWN_METADATA}
        differ = {name: (seen.get(name), value) for name, value in entry.fields.items() if seen.get(name) != value}
        if differ:
            changes.append(Change("update", entry.kind, entry.key, differ, item["id"]))
        else:
            unchanged += 1
    deletes = [Change("delete", kind, key, id=item["id"]) for kind in reversed(KINDS) if prune and kind in manifest.sections
               for key, item in current[kind].items() if (kind, key) not in listed]
    tunnels_first = [c for c in deletes if c.kind == "tunnel"]
    return tunnels_first + changes + [c for c in deletes if c.kind != "tunnel"], unchanged
